//! consul-eds-server between a real Consul 1.8.7 and a real Envoy 1.40.

mod common;

use std::time::{Duration, Instant};

use common::{
    EdsServer, check_id, consul_client, gateway, hostnames, register, register_passing,
    wait_for_hostnames, wait_for_hosts,
};
use consul_client::{CheckStatus, Maintenance};
use test_support::bootstrap::EdsTransport;
use test_support::{Backend, ConsulAgent, http_get, http_request};

#[tokio::test]
async fn envoy_gets_consul_instances_follows_health_and_weights_and_proxies() {
    let consul = ConsulAgent::start().await.expect("consul");
    let client = consul_client(&consul);
    let backends = [
        Backend::start("web-1").await.expect("backend"),
        Backend::start("web-2").await.expect("backend"),
        Backend::start("web-3").await.expect("backend"),
    ];
    for (i, backend) in backends.iter().enumerate() {
        register(
            &client,
            "web",
            backend.name(),
            backend.addr(),
            CheckStatus::Passing,
            Some((i as u32 + 1, 1)),
        )
        .await;
    }
    let eds = EdsServer::start(&consul, &[]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;

    let hosts = wait_for_hosts(&envoy, "web", "3 web hosts", Duration::from_secs(10), |h| {
        h.len() == 3
    })
    .await;
    assert_eq!(hostnames(&hosts), vec!["web-1", "web-2", "web-3"]);
    let weights: Vec<u64> = hosts.iter().map(|h| h.weight).collect();
    assert_eq!(
        weights,
        vec![1, 2, 3],
        "Consul's Weights.Passing reach Envoy"
    );

    for _ in 0..60 {
        let response = http_get(listener, "/").await.expect("through envoy");
        assert_eq!(response.status, 200, "{}", response.body);
    }
    for backend in &backends {
        assert!(backend.requests() > 0, "{} got no traffic", backend.name());
    }

    // A check going critical removes the instance within a second.
    let started = Instant::now();
    client
        .agent_check_fail(&check_id("web-2"), "down")
        .await
        .expect("fail check");
    wait_for_hostnames(&envoy, "web", &["web-1", "web-3"], Duration::from_secs(1)).await;
    eprintln!("critical -> removed from Envoy in {:?}", started.elapsed());

    // Maintenance mode drains instead of removing.
    client
        .agent_service_maintenance(
            "web-3",
            &Maintenance::Enable {
                reason: Some("deploy".to_owned()),
            },
        )
        .await
        .expect("maintenance");
    let hosts = wait_for_hosts(
        &envoy,
        "web",
        "web-3 draining",
        Duration::from_secs(5),
        |h| {
            h.iter()
                .any(|host| host.hostname == "web-3" && host.eds_health == "DRAINING")
        },
    )
    .await;
    assert!(
        hosts
            .iter()
            .any(|h| h.hostname == "web-1" && h.eds_health == "HEALTHY")
    );

    // The EDS server's own view says why.
    let snapshot = http_get(eds.admin, "/debug/snapshot")
        .await
        .expect("snapshot");
    assert!(
        snapshot.body.contains("check critical"),
        "{}",
        snapshot.body
    );
    assert!(
        snapshot.body.contains("maintenance mode"),
        "{}",
        snapshot.body
    );
    let metrics = http_get(eds.admin, "/metrics").await.expect("metrics");
    assert!(
        metrics
            .body
            .contains("consul_eds_cluster_endpoints{cluster=\"web\"} 2"),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn a_service_registered_later_appears_in_envoy() {
    let (consul, client, _web) = common::consul_with_one_web_instance().await;
    let eds = EdsServer::start(&consul, &[]).await;
    // Envoy asks for `api` before it exists: it gets an empty assignment at
    // once (no 15 s initial fetch timeout), then the instance when it comes.
    let started = Instant::now();
    let (envoy, listener) = gateway(eds.xds, &["web", "api"], EdsTransport::Ads).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "Envoy waited for a missing cluster"
    );
    assert!(common::hosts(&envoy, "api").await.is_empty());

    let api = Backend::start("api-1").await.expect("backend");
    register_passing(&client, "api", &api).await;
    wait_for_hostnames(&envoy, "api", &["api-1"], Duration::from_secs(5)).await;
    let response = http_request("GET", listener, "/", &[("host", "api")], vec![])
        .await
        .expect("through envoy");
    assert_eq!(response.body, "api-1");
}

#[tokio::test]
async fn consul_outage_keeps_endpoints_reports_degraded_and_recovers() {
    let (mut consul, _, _web) = common::consul_with_one_web_instance().await;
    let eds = EdsServer::start(&consul, &[]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hosts(&envoy, "web", "web-1", Duration::from_secs(10), |h| {
        h.len() == 1
    })
    .await;
    assert_eq!(eds.readyz().await.0, 200);

    consul.kill();
    test_support::eventually(
        "readyz to report degraded",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async {
            let (status, body) = eds.readyz().await;
            (status == 429 && body.contains("degraded")).then_some(())
        },
    )
    .await
    .expect("degraded");
    assert_eq!(
        common::hosts(&envoy, "web").await.len(),
        1,
        "endpoints kept"
    );
    assert_eq!(
        http_get(listener, "/").await.expect("proxied").body,
        "web-1"
    );

    // Consul comes back empty (a dev agent keeps no state); registrations
    // made now flow to Envoy again.
    consul.restart().await.expect("consul restarts");
    let client = consul_client(&consul);
    let web2 = Backend::start("web-2").await.expect("backend");
    register_passing(&client, "web", &web2).await;
    let recovered = test_support::eventually(
        "web-2 after recovery",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let hosts = common::hosts(&envoy, "web").await;
            (hostnames(&hosts) == ["web-2"]).then_some(())
        },
    )
    .await;
    assert!(
        recovered.is_ok(),
        "{recovered:?}\neds log:\n{}",
        eds.process.log_tail()
    );
    test_support::eventually(
        "readyz to recover",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (eds.readyz().await.0 == 200).then_some(()) },
    )
    .await
    .expect("ready again");
}

#[tokio::test]
async fn services_beyond_the_watch_budget_follow_changes_through_the_dc_wide_view() {
    let (consul, client, _web1) = common::consul_with_one_web_instance().await;
    // A budget of 3 blocking queries leaves no per-service watch: every
    // service rides the DC-wide view (its 3 queries).
    let eds = EdsServer::start(
        &consul,
        &["--max-blocking-queries", "3", "--dc-wide-sweep", "60s"],
    )
    .await;
    let (envoy, _) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(10)).await;

    let web2 = Backend::start("web-2").await.expect("backend");
    register_passing(&client, "web", &web2).await;
    wait_for_hostnames(&envoy, "web", &["web-1", "web-2"], Duration::from_secs(5)).await;

    // An instance without any check leaves no trace in the checks: the
    // services' summaries show it, well before the 60 s sweep.
    let web3 = Backend::start("web-3").await.expect("backend");
    client
        .agent_service_register(&consul_client::AgentServiceRegistration {
            id: Some("web-3".to_owned()),
            name: "web".to_owned(),
            address: web3.addr().ip().to_string(),
            port: web3.addr().port(),
            ..consul_client::AgentServiceRegistration::default()
        })
        .await
        .expect("register without a check");
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-1", "web-2", "web-3"],
        Duration::from_secs(5),
    )
    .await;
    client
        .agent_service_deregister("web-3")
        .await
        .expect("deregister");
    wait_for_hostnames(&envoy, "web", &["web-1", "web-2"], Duration::from_secs(5)).await;

    client
        .agent_check_fail(&check_id("web-1"), "down")
        .await
        .expect("fail");
    wait_for_hostnames(&envoy, "web", &["web-2"], Duration::from_secs(5)).await;

    client
        .agent_service_deregister("web-2")
        .await
        .expect("deregister");
    wait_for_hostnames(&envoy, "web", &[], Duration::from_secs(5)).await;
    // Changes came through the DC-wide view, not per-service queries.
    let metrics = http_get(eds.admin, "/metrics").await.expect("metrics");
    assert!(
        metrics
            .body
            .contains("endpoint=\"health_state\",class=\"blocking\""),
        "no DC-wide blocking query:\n{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("endpoint=\"ui_services\""),
        "the services' summaries were never read:\n{}",
        metrics.body
    );
    assert!(
        !metrics
            .body
            .contains("endpoint=\"health_service\",class=\"blocking\""),
        "a per-service blocking query ran despite the budget:\n{}",
        metrics.body
    );
}

#[tokio::test]
async fn sigterm_drains_and_envoy_keeps_its_endpoints() {
    let (consul, _, _web) = common::consul_with_one_web_instance().await;
    let mut eds = EdsServer::start(&consul, &["--shutdown-grace", "2s"]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Ads).await;
    wait_for_hosts(&envoy, "web", "web-1", Duration::from_secs(10), |h| {
        h.len() == 1
    })
    .await;

    let pid = eds.process.pid().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exited = test_support::eventually(
        "consul-eds-server to exit",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let running = eds.process.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    assert!(exited.is_ok(), "still running:\n{}", eds.process.log_tail());
    assert!(
        eds.process.log_tail().contains("stopped"),
        "{}",
        eds.process.log_tail()
    );
    // Envoy lost its control plane, not its endpoints.
    assert_eq!(common::hosts(&envoy, "web").await.len(), 1);
    assert_eq!(
        http_get(listener, "/").await.expect("proxied").body,
        "web-1"
    );
}

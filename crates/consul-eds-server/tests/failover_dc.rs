//! `--failover-dc` between two WAN-joined Consul 1.8.7 datacenters and a
//! real Envoy: the second datacenter is served at priority 1, takes the
//! traffic when the first has no healthy instance, and keeps its endpoints
//! (degraded) when it becomes unreachable.

mod common;

use std::time::{Duration, Instant};

use common::{
    EdsServer, Host, check_id, consul_client, gateway, hosts, register_passing, wait_for_hostnames,
    wait_for_hosts,
};
use serde_json::Value;
use test_support::bootstrap::EdsTransport;
use test_support::{Backend, ConsulAgent, ConsulOptions, eventually, http_get};

async fn datacenter(name: &str, join_wan: Option<&ConsulAgent>) -> ConsulAgent {
    ConsulAgent::start_with(ConsulOptions {
        datacenter: Some(name.to_owned()),
        join_wan: join_wan.map(ConsulAgent::serf_wan_addr),
        ..ConsulOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("consul {name} starts: {e}"))
}

/// Waits until `local` answers a health query for `service` in `remote_dc`
/// with `instance`: the WAN join is done and queries are forwarded.
async fn wait_for_forwarding(local: &ConsulAgent, remote_dc: &str, service: &str, instance: &str) {
    let path = format!("/v1/health/service/{service}?dc={remote_dc}");
    eventually(
        "the WAN-joined datacenter to answer through the local Consul",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            http_get(local.http_addr(), &path)
                .await
                .ok()
                .filter(|r| r.status == 200 && r.body.contains(instance))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nlocal Consul log:\n{}", local.log_tail()));
}

async fn proxied_bodies(listener: std::net::SocketAddr, requests: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let response = http_get(listener, "/").await.expect("through envoy");
        assert_eq!(response.status, 200, "{}", response.body);
        bodies.push(response.body);
    }
    bodies
}

fn host<'a>(hosts: &'a [Host], name: &str) -> &'a Host {
    hosts
        .iter()
        .find(|h| h.hostname == name)
        .unwrap_or_else(|| panic!("no host {name} in {hosts:?}"))
}

#[tokio::test]
async fn the_failover_datacenter_is_priority_1_takes_traffic_and_is_kept_when_unreachable() {
    let dc1 = datacenter("dc1", None).await;
    let mut dc2 = datacenter("dc2", Some(&dc1)).await;
    let web_dc1 = Backend::start("web-dc1").await.expect("backend");
    let web_dc2 = Backend::start("web-dc2").await.expect("backend");
    let dc1_client = consul_client(&dc1);
    register_passing(&dc1_client, "web", &web_dc1).await;
    register_passing(&consul_client(&dc2), "web", &web_dc2).await;
    wait_for_forwarding(&dc1, "dc2", "web", "web-dc2").await;

    let eds = EdsServer::start(&dc1, &["--failover-dc", "dc2"]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;

    // dc2's instance is there, one priority below dc1's.
    let both = wait_for_hostnames(
        &envoy,
        "web",
        &["web-dc1", "web-dc2"],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(host(&both, "web-dc1").priority, 0, "{both:?}");
    assert_eq!(host(&both, "web-dc2").priority, 1, "{both:?}");
    assert_eq!(eds.readyz().await.0, 200);

    // While dc1 has a healthy instance, priority 1 gets nothing.
    let bodies = proxied_bodies(listener, 30).await;
    assert!(
        bodies.iter().all(|b| b == "web-dc1"),
        "traffic left dc1 while it was healthy: {bodies:?}"
    );
    assert_eq!(web_dc2.requests(), 0, "dc2 served while dc1 was healthy");

    // dc1's only instance fails: traffic moves to dc2.
    let failed = Instant::now();
    dc1_client
        .agent_check_fail(&check_id("web-dc1"), "down")
        .await
        .expect("fail check");
    let left = wait_for_hostnames(&envoy, "web", &["web-dc2"], Duration::from_secs(5)).await;
    assert_eq!(left[0].priority, 1, "{left:?}");
    eprintln!(
        "dc1 critical -> only dc2 in Envoy in {:?}",
        failed.elapsed()
    );
    let bodies = proxied_bodies(listener, 20).await;
    assert!(
        bodies.iter().all(|b| b == "web-dc2"),
        "traffic did not move to dc2: {bodies:?}"
    );
    let dc1_requests = web_dc1.requests();

    // dc2 becomes unreachable: its endpoints are kept, degraded.
    dc2.kill();
    let killed = Instant::now();
    let readyz = eventually(
        "readyz to report degraded",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let (status, body) = eds.readyz().await;
            (status == 429 && body.contains("degraded")).then_some(body)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\neds log:\n{}", eds.process.log_tail()));
    eprintln!("dc2 killed -> degraded in {:?}: {readyz}", killed.elapsed());
    assert!(readyz.contains("web"), "{readyz}");

    let snapshot: Value = serde_json::from_str(
        &http_get(eds.admin, "/debug/snapshot")
            .await
            .expect("snapshot")
            .body,
    )
    .expect("snapshot is JSON");
    let web = snapshot["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["cluster"] == "web")
        .unwrap_or_else(|| panic!("no web cluster in {snapshot:#}"));
    assert_eq!(web["freshness"]["state"], "degraded", "{web:#}");
    let endpoints: Vec<(&str, u64)> = web["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["instance_id"].as_str().unwrap_or_default(),
                e["priority"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(endpoints, vec![("web-dc2", 1)], "{web:#}");

    // Envoy keeps dc2's endpoint and traffic still reaches it, for longer
    // than the server's reset grace (3 s in these tests).
    while killed.elapsed() < Duration::from_secs(6) {
        let now = hosts(&envoy, "web").await;
        assert_eq!(
            common::hostnames(&now),
            ["web-dc2"],
            "{:?} after dc2 became unreachable\n{}",
            killed.elapsed(),
            eds.process.log_tail()
        );
        assert_eq!(
            http_get(listener, "/").await.expect("proxied").body,
            "web-dc2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        web_dc1.requests(),
        dc1_requests,
        "the failed dc1 instance got traffic"
    );

    // dc1 recovers while dc2 is still unreachable: priority 0 is back.
    dc1_client
        .agent_check_pass(&check_id("web-dc1"), "up")
        .await
        .expect("pass check");
    let back = wait_for_hosts(&envoy, "web", "web-dc1 back", Duration::from_secs(5), |h| {
        h.iter().any(|h| h.hostname == "web-dc1" && h.priority == 0)
    })
    .await;
    assert_eq!(common::hostnames(&back), ["web-dc1", "web-dc2"]);
    let bodies = proxied_bodies(listener, 20).await;
    assert!(bodies.iter().all(|b| b == "web-dc1"), "{bodies:?}");
}

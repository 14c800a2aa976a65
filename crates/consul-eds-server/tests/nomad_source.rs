//! consul-eds-server reading Nomad's own service registry (services with
//! `provider = "nomad"`) and serving it to a real Envoy 1.40.
//!
//! Nomad itself cannot run here (docs/adr/0007-nomad-api-stand-in.md): its
//! HTTP API is test-support's `FakeNomad`, which answers as Nomad 1.6.5 does.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{EdsServer, consul_client, gateway, hostnames, register_passing, wait_for_hostnames};
use test_support::bootstrap::EdsTransport;
use test_support::nomad_api::{FakeNomad, Registration};
use test_support::{Backend, ConsulAgent, free_port, http_get};

fn registration(id: &str, backend: &Backend) -> Registration {
    let addr = backend.addr();
    Registration::new("web", &addr.ip().to_string(), addr.port()).id(id)
}

/// A Consul address nothing listens on: with `--sources nomad` the server
/// must not need Consul at all.
fn no_consul() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

async fn nomad_only_server(nomad: &FakeNomad, extra: &[&str]) -> EdsServer {
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let address = nomad.address();
    let mut args = vec!["--sources", "nomad", "--nomad-addr", address.as_str()];
    args.extend_from_slice(extra);
    EdsServer::start_reading(&no_consul(), xds, &args).await
}

#[tokio::test]
async fn nomad_registrations_reach_envoy_and_leave_it_with_their_allocation() {
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let backends = [
        Backend::start("web-1").await.expect("backend"),
        Backend::start("web-2").await.expect("backend"),
    ];
    let first = registration("web-1", &backends[0]);
    let second = registration("web-2", &backends[1]);
    let second_alloc = second.alloc_id.clone();
    nomad.register(first);
    nomad.register(second);

    let eds = nomad_only_server(&nomad, &[]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-1", "web-2"], Duration::from_secs(10)).await;
    for _ in 0..20 {
        let response = http_get(listener, "/").await.expect("through envoy");
        assert_eq!(response.status, 200, "{}", response.body);
    }
    assert!(
        backends.iter().all(|b| b.requests() > 0),
        "both backends get traffic"
    );

    // Nomad removes an allocation's registrations when it stops.
    nomad.stop_allocation(&second_alloc);
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(5)).await;
    nomad.deregister("default", "web-1");
    wait_for_hostnames(&envoy, "web", &[], Duration::from_secs(5)).await;
    let (status, body) = eds.readyz().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn nomad_failures_and_index_resets_keep_the_last_good_endpoints() {
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let backend = Backend::start("web-1").await.expect("backend");
    nomad.register(registration("web-1", &backend));
    let eds = nomad_only_server(&nomad, &[]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(10)).await;

    for status in [500, 403] {
        nomad.fail_with(Some(status));
        // Long enough for the watch to have failed several times.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let hosts = common::hosts(&envoy, "web").await;
        assert_eq!(hostnames(&hosts), ["web-1"], "Nomad answering {status}");
        let response = http_get(listener, "/").await.expect("through envoy");
        assert_eq!(
            response.status, 200,
            "Nomad answering {status}: {}",
            response.body
        );
        let degraded = http_get(eds.admin, "/metrics").await.expect("metrics").body;
        assert!(
            degraded.contains("consul_eds_service_degraded{service=\"web\",datacenter=\"local\",source=\"nomad\",namespace=\"default\"} 1"),
            "Nomad answering {status}, the service shows as degraded:\n{degraded}"
        );
        nomad.fail_with(None);
    }

    // A restored Nomad: its index goes back, and its table is empty for a
    // moment. The last endpoints stay for the reset grace (3 s here).
    let index = nomad.index();
    nomad.deregister("default", "web-1");
    nomad.reset_index(1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let hosts = common::hosts(&envoy, "web").await;
    assert_eq!(
        hostnames(&hosts),
        ["web-1"],
        "held after the reset from {index}"
    );
    nomad.register(registration("web-1", &backend));
    let response = http_get(listener, "/").await.expect("through envoy");
    assert_eq!(response.status, 200, "{}", response.body);

    // And Nomad unreachable altogether.
    drop(nomad);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hosts = common::hosts(&envoy, "web").await;
    assert_eq!(hostnames(&hosts), ["web-1"], "Nomad gone");
}

#[tokio::test]
async fn a_service_in_both_registries_is_one_cluster_unless_the_template_parts_them() {
    let consul = ConsulAgent::start().await.expect("consul");
    let client = consul_client(&consul);
    let in_consul = Backend::start("web-consul").await.expect("backend");
    register_passing(&client, "web", &in_consul).await;
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let in_nomad = Backend::start("web-nomad").await.expect("backend");
    nomad.register(registration("web-nomad", &in_nomad));
    let address = nomad.address();

    let merged = EdsServer::start(
        &consul,
        &[
            "--sources",
            "consul,nomad",
            "--nomad-addr",
            address.as_str(),
        ],
    )
    .await;
    let (envoy, _) = gateway(merged.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-consul", "web-nomad"],
        Duration::from_secs(10),
    )
    .await;
    // Nomad failing takes nothing away, Consul's changes still go through.
    nomad.fail_with(Some(500));
    let more = Backend::start("web-consul-2").await.expect("backend");
    register_passing(&client, "web", &more).await;
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-consul", "web-consul-2", "web-nomad"],
        Duration::from_secs(10),
    )
    .await;
    nomad.fail_with(None);

    let parted = EdsServer::start(
        &consul,
        &[
            "--sources",
            "consul,nomad",
            "--nomad-addr",
            address.as_str(),
            "--cluster-name-template",
            "{source}-{service}",
        ],
    )
    .await;
    let (envoy, _) = gateway(parted.xds, &["consul-web", "nomad-web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "nomad-web", &["web-nomad"], Duration::from_secs(10)).await;
    wait_for_hostnames(
        &envoy,
        "consul-web",
        &["web-consul", "web-consul-2"],
        Duration::from_secs(10),
    )
    .await;
}

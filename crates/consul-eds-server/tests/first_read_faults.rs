//! Nothing lost while Consul is slow to give the first answer: an Envoy
//! that subscribes before the server's first Consul read completes must get
//! the real endpoints as its first assignment, not an empty one (an empty
//! first assignment warms the cluster with no hosts: 503 until the next
//! change).
//!
//! The ACL-filtered answer that looks like every instance leaving is the
//! other "empty cluster" fault; `acl_narrowed.rs` covers it against a real
//! Consul with ACLs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{EdsServer, wait_for_hostnames};
use test_support::bootstrap::{EdsTransport, GatewayBootstrap};
use test_support::{Envoy, FreezableProxy, eventually, free_port, http_get};

/// Well inside the server's 2 s wait for a cluster's first real data.
const HELD_AFTER_SUBSCRIBING: Duration = Duration::from_millis(700);

/// Envoy's discovery stream to the server is open: an active request on
/// its `xds` cluster (over ADS and over the per-cluster EDS service alike).
async fn subscribed(envoy: &Envoy) -> bool {
    envoy
        .admin_get("/stats?filter=^cluster.xds.upstream_rq_active$")
        .await
        .ok()
        .and_then(|body| {
            body.trim()
                .strip_prefix("cluster.xds.upstream_rq_active: ")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .is_some_and(|active| active >= 1)
}

/// What a client of the gateway saw at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The listener is not open yet: Envoy is still initialising.
    NotListening,
    Answered(u16, String),
}

async fn probe(listener: SocketAddr) -> Seen {
    match http_get(listener, "/").await {
        Ok(response) => Seen::Answered(response.status, response.body),
        Err(_) => Seen::NotListening,
    }
}

async fn first_assignment_is_real(transport: EdsTransport) {
    let (consul, _, _web) = common::consul_with_one_web_instance().await;
    let proxy = FreezableProxy::start(consul.http_addr())
        .await
        .expect("proxy");
    // Consul hangs from the start: the server's first read gets no answer.
    proxy.freeze();
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let eds = EdsServer::start_reading(&format!("http://{}", proxy.addr()), xds, &[]).await;
    assert_eq!(eds.readyz().await.0, 503, "no Consul read has completed");

    let listener_port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
    let yaml = GatewayBootstrap {
        node_id: format!("gateway-{listener_port}"),
        xds,
        transport,
        clusters: vec!["web".to_owned()],
        listener_port,
        retries: true,
    }
    .yaml();
    let envoy = Envoy::start_no_wait(&yaml).await.expect("envoy starts");
    eventually(
        "Envoy to connect to the server",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || async { subscribed(&envoy).await.then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    let subscribed = Instant::now();

    // While Consul is held, Envoy must not have been told "no endpoints":
    // it stays initialising (listener closed), never answering 503.
    let mut seen = Vec::new();
    while subscribed.elapsed() < HELD_AFTER_SUBSCRIBING {
        seen.push(probe(listener).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.iter().all(|s| *s == Seen::NotListening),
        "Envoy served before any Consul data existed: {seen:?}"
    );
    let ready_before = http_get(envoy.admin_addr(), "/ready")
        .await
        .expect("envoy /ready");
    assert_ne!(
        ready_before.status, 200,
        "Envoy finished initialising on an empty assignment"
    );

    proxy.thaw();
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(5)).await;
    eventually(
        "Envoy to be LIVE",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async {
            http_get(envoy.admin_addr(), "/ready")
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await
    .expect("live");
    // The first answers after initialising come from the real instance.
    for _ in 0..10 {
        assert_eq!(
            probe(listener).await,
            Seen::Answered(200, "web-1".to_owned()),
            "{}",
            eds.process.log_tail()
        );
    }
    // Envoy counts each request it had no host for.
    let stats = envoy
        .admin_get("/stats?filter=^cluster.web.upstream_cx_none_healthy$")
        .await
        .expect("stats");
    assert!(
        stats.contains("cluster.web.upstream_cx_none_healthy: 0"),
        "requests met an empty cluster: {stats}"
    );
}

#[tokio::test]
async fn an_envoy_subscribing_over_eds_before_the_first_consul_read_gets_real_data_first() {
    first_assignment_is_real(EdsTransport::Grpc).await;
}

#[tokio::test]
async fn an_envoy_subscribing_over_ads_before_the_first_consul_read_gets_real_data_first() {
    first_assignment_is_real(EdsTransport::Ads).await;
}

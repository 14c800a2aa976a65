//! The seed demo's scenario: backends come and go every second while load
//! flows through Envoy; no request may fail except by the backends' own
//! deliberate errors.

mod common;

use std::time::Duration;

use common::{EdsServer, consul_client, gateway, wait_for_hosts};
use demo::backend::Behaviour;
use demo::churn::{ChurnPlan, Churner};
use demo::consul::ConsulRegistrar;
use demo::load::{LoadPlan, run};
use test_support::ConsulAgent;
use test_support::bootstrap::EdsTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_added_or_removed_every_second_for_a_minute_loses_no_request() {
    let consul = ConsulAgent::start().await.expect("consul");
    let client = consul_client(&consul);
    let eds = EdsServer::start(&consul, &[]).await;
    let mut churner = Churner::new(
        ChurnPlan {
            id_prefix: "web".to_owned(),
            ip: "127.0.0.1".parse().expect("ip"),
            min_instances: 2,
            max_instances: 6,
            behaviour: Behaviour {
                error_ratio: 0.02,
                slow_ratio: 0.05,
                slow_delay: Duration::from_millis(100),
            },
            // Deregistered instances keep serving while Envoy catches up,
            // as a Nomad task's shutdown_delay does.
            drain: Duration::from_secs(2),
        },
        ConsulRegistrar::new(client, "web"),
    );
    churner.start().await.expect("initial instances");
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hosts(
        &envoy,
        "web",
        "initial hosts",
        Duration::from_secs(10),
        |h| h.len() == 2,
    )
    .await;

    let load = tokio::spawn(run(LoadPlan {
        url: format!("http://{listener}/").parse().expect("url"),
        requests_per_second: 100,
        duration: Duration::from_secs(60),
        max_in_flight: 64,
        timeout: Duration::from_secs(5),
    }));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    for _ in 0..60 {
        ticker.tick().await;
        churner.step().await.expect("churn step");
    }
    let report = load.await.expect("load task");
    churner.shutdown().await;
    eprintln!("churn load: {}", report.summary());
    assert!(report.sent >= 5_000, "load too thin: {}", report.summary());
    assert!(report.deliberate_errors > 0, "{}", report.summary());
    assert_eq!(
        report.failed(),
        0,
        "requests failed for other reasons: {}",
        report.summary()
    );
}

//! The renewal lock when Consul hangs: a session renewal that gets no
//! answer must neither keep this replica renewing past the session's TTL
//! (another replica may hold the lock by then) nor hold up a shutdown.

use std::time::{Duration, Instant};

use consul_client::{Address, Client, ClientConfig};
use envoy_acme_sds::election::{Election, ElectionConfig, Leadership};
use test_support::{ConsulAgent, FreezableProxy, eventually};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(10);

struct Candidate {
    _consul: ConsulAgent,
    proxy: FreezableProxy,
    state: watch::Receiver<Leadership>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One replica reaching Consul through a proxy that can freeze, elected.
async fn elected() -> Candidate {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let proxy = FreezableProxy::start(consul.http_addr())
        .await
        .expect("proxy");
    let client = Client::new(ClientConfig::new(
        format!("http://{}", proxy.addr())
            .parse::<Address>()
            .expect("address"),
    ))
    .expect("client");
    let election = Election::new(
        client,
        ElectionConfig {
            lock_delay: Duration::ZERO,
            session_ttl: TTL,
            retry_interval: Duration::from_millis(200),
            ..ElectionConfig::new("elect/leader", "a")
        },
    );
    let state = election.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(election.run(stop.clone()));
    let mut watching = state.clone();
    eventually(
        "elected",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let leads = watching.borrow_and_update().is_leader();
            async move { leads.then_some(()) }
        },
    )
    .await
    .expect("the only candidate is elected");
    Candidate {
        _consul: consul,
        proxy,
        state,
        stop,
        task,
    }
}

#[tokio::test]
async fn a_hung_session_renewal_steps_down_within_the_ttl() {
    let candidate = elected().await;
    candidate.proxy.freeze();
    let frozen_at = Instant::now();
    let state = candidate.state.clone();
    eventually(
        "stepped down",
        Duration::from_secs(40),
        Duration::from_millis(50),
        || {
            let leads = state.borrow().is_leader();
            async move { (!leads).then_some(()) }
        },
    )
    .await
    .expect("steps down");
    let after = frozen_at.elapsed();
    assert!(
        after <= TTL + Duration::from_millis(1500),
        "stepped down {after:?} after Consul froze; the session's TTL is {TTL:?}"
    );
    candidate.stop.cancel();
}

#[tokio::test]
async fn a_shutdown_does_not_wait_behind_a_hung_renewal() {
    let candidate = elected().await;
    candidate.proxy.freeze();
    // Renewals go out every half TTL: by now one is in flight and hangs.
    tokio::time::sleep(TTL / 2 + Duration::from_secs(1)).await;
    let stopping = Instant::now();
    candidate.stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), candidate.task)
        .await
        .expect("the election ends")
        .expect("no panic");
    let took = stopping.elapsed();
    assert!(!candidate.state.borrow().is_leader(), "stepped down");
    // Releasing the lock and destroying the session get 5 s each against a
    // frozen Consul; the hung renewal (30 s request timeout) is not waited for.
    assert!(
        took <= Duration::from_secs(12),
        "the shutdown took {took:?}"
    );
}

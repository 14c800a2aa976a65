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
    consul: ConsulAgent,
    proxy: FreezableProxy,
    state: watch::Receiver<Leadership>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A replica running for the lock through `client`.
fn candidate(
    client: Client,
    holder: &str,
) -> (
    watch::Receiver<Leadership>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let election = Election::new(
        client,
        ElectionConfig {
            lock_delay: Duration::ZERO,
            session_ttl: TTL,
            retry_interval: Duration::from_millis(200),
            ..ElectionConfig::new("elect/leader", holder)
        },
    );
    let state = election.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(election.run(stop.clone()));
    (state, stop, task)
}

fn client_of(addr: std::net::SocketAddr) -> Client {
    Client::new(ClientConfig::new(
        format!("http://{addr}")
            .parse::<Address>()
            .expect("address"),
    ))
    .expect("client")
}

/// One replica reaching Consul through a proxy that can freeze, elected.
async fn elected() -> Candidate {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let proxy = FreezableProxy::start(consul.http_addr())
        .await
        .expect("proxy");
    let (state, stop, task) = candidate(client_of(proxy.addr()), "a");
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
        consul,
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

/// The property the step-down exists for: while the lock holder's renewal
/// hangs, a second replica (reaching Consul directly) takes the lock once
/// the holder's lock expires, and at no moment do both consider themselves the
/// renewer.
#[tokio::test]
async fn a_second_replica_takes_over_a_hung_holder_and_never_while_it_still_leads() {
    let first = elected().await;
    let (second, second_stop, _second_task) = candidate(client_of(first.consul.http_addr()), "b");
    // The second replica waits on the held lock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.borrow().is_leader(), "two holders of one lock");

    first.proxy.freeze();
    let frozen_at = Instant::now();
    let mut first_stepped_down = None;
    let taken_over = loop {
        let first_leads = first.state.borrow().is_leader();
        let second_leads = second.borrow().is_leader();
        assert!(
            !(first_leads && second_leads),
            "both replicas lead {:?} after the holder's Consul froze",
            frozen_at.elapsed()
        );
        if !first_leads && first_stepped_down.is_none() {
            first_stepped_down = Some(frozen_at.elapsed());
        }
        if second_leads {
            break frozen_at.elapsed();
        }
        // Consul lets a lock go within twice its TTL.
        assert!(
            frozen_at.elapsed() < TTL * 3,
            "the second replica never took over (the first stepped down after {first_stepped_down:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stepped_down = first_stepped_down.expect("the first stepped down before the takeover");
    eprintln!("hung holder stepped down after {stepped_down:?}; taken over after {taken_over:?}");
    assert!(
        stepped_down <= TTL + Duration::from_millis(1500),
        "{stepped_down:?}"
    );
    second_stop.cancel();
    first.stop.cancel();
}

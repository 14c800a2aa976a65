//! The DC-wide view against an in-process Consul whose targeted reads can be
//! made slow: what a real agent does under load, on demand.
//!
//! A sweep reads every covered service. It must run beside the rest of the
//! view: a service subscribed during a sweep is answered at once, and the
//! view's blocking queries keep being sent while the sweep is still reading.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use consul_client::{Client, ClientConfig, RequestClass, WatchConfig};
use consul_eds_server::config::AddressSource;
use consul_eds_server::engine::{ServiceSource, SourceEvent, WatchKey};
use consul_eds_server::source::{ConsulSource, EntryReader};
use futures::StreamExt;
use futures::stream::BoxStream;
use test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Services subscribed before the sweep: more than the view reads at once,
/// so the sweep takes several rounds of slow reads.
const COVERED: usize = 48;
/// How long each read of a covered service takes once the agent is slow.
const SLOW_READ: Duration = Duration::from_millis(500);
/// Only guards against a hang.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// A catalog blocking query as the fake received it.
#[derive(Debug, Clone, Copy)]
struct CatalogQuery {
    index: u64,
    /// Slow reads answered when it arrived.
    slow_reads_done: usize,
}

#[derive(Debug, Default)]
struct Counters {
    slow: AtomicBool,
    slow_reads_started: AtomicUsize,
    slow_reads_done: AtomicUsize,
    catalog_queries: Mutex<Vec<CatalogQuery>>,
}

/// Just enough of a Consul agent for the DC-wide view: checks whose index
/// never moves, a catalog whose index the test moves, summaries that never
/// change, and per-service reads
/// that take [`SLOW_READ`] for `slow-*` services once `slow` is set.
struct FakeConsul {
    addr: SocketAddr,
    counters: Arc<Counters>,
    catalog_index: watch::Sender<u64>,
}

impl FakeConsul {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let counters = Arc::new(Counters::default());
        let catalog_index = watch::Sender::new(1u64);
        let (shared, index) = (Arc::clone(&counters), catalog_index.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, Arc::clone(&shared), index.subscribe()));
            }
        });
        Self {
            addr,
            counters,
            catalog_index,
        }
    }

    fn slow_reads_started(&self) -> usize {
        self.counters.slow_reads_started.load(Ordering::SeqCst)
    }

    fn slow_reads_done(&self) -> usize {
        self.counters.slow_reads_done.load(Ordering::SeqCst)
    }

    fn catalog_queries(&self) -> Vec<CatalogQuery> {
        self.counters
            .catalog_queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Answers one request on `stream`, then closes it.
async fn answer(mut stream: TcpStream, counters: Arc<Counters>, mut catalog: watch::Receiver<u64>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let index: u64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("index="))
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let (index, body) = if path == "/v1/health/state/critical" || path == "/v1/health/state/warning"
    {
        if index > 0 {
            // Nothing ever changes: the blocking query runs out its wait.
            std::future::pending::<()>().await;
        }
        (1, "[]".to_owned())
    } else if path == "/v1/catalog/services" {
        counters
            .catalog_queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(CatalogQuery {
                index,
                slow_reads_done: counters.slow_reads_done.load(Ordering::SeqCst),
            });
        let now = *catalog
            .wait_for(|now| *now > index)
            .await
            .expect("the fake lives as long as the test");
        (now, "{}".to_owned())
    } else if path == "/v1/internal/ui/services" {
        // The same summaries every time: a catalog change they do not
        // explain, which the view sweeps for.
        (*catalog.borrow(), "[]".to_owned())
    } else if let Some(service) = path.strip_prefix("/v1/health/service/") {
        let slow = service.starts_with("slow-") && counters.slow.load(Ordering::SeqCst);
        if slow {
            counters.slow_reads_started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(SLOW_READ).await;
            counters.slow_reads_done.fetch_add(1, Ordering::SeqCst);
        }
        (10, entry(service))
    } else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-consul-index: {index}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// One passing instance of `service`, as `/v1/health/service/` lists it.
fn entry(service: &str) -> String {
    format!(
        r#"[{{"Node": {{"ID": "a1", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                "TaggedAddresses": {{}}, "Meta": {{}}, "CreateIndex": 5, "ModifyIndex": 6}},
            "Service": {{"ID": "{service}-1", "Service": "{service}", "Tags": [], "Address": "",
                "Port": 8080, "Weights": {{"Passing": 1, "Warning": 1}},
                "CreateIndex": 7, "ModifyIndex": 7}},
            "Checks": []}}]"#
    )
}

fn key(service: &str) -> WatchKey {
    WatchKey::consul(service, None)
}

async fn first_instances(stream: &mut BoxStream<'static, SourceEvent>) -> usize {
    match tokio::time::timeout(HANG_GUARD, stream.next()).await {
        Ok(Some(SourceEvent::Instances { instances, .. })) => instances.len(),
        other => panic!("expected instances, got {other:?}"),
    }
}

#[tokio::test]
async fn a_sweep_does_not_hold_up_new_subscribers_or_the_views_watches() {
    let fake = FakeConsul::start().await;
    let client = Client::new(ClientConfig::new(
        format!("http://{}", fake.addr).parse().expect("address"),
    ))
    .expect("client");
    // No per-service watches: every service is covered by the DC-wide view.
    let source = ConsulSource::new(
        client,
        EntryReader::new(AddressSource::Service, "zone".to_owned()),
        WatchConfig::default(),
        0,
        Duration::from_millis(100),
    );
    let mut covered: Vec<_> = (0..COVERED)
        .map(|n| source.watch(&key(&format!("slow-{n}"))))
        .collect();
    for stream in &mut covered {
        assert_eq!(first_instances(stream).await, 1);
    }
    // The view settles while reads are fast.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The agent turns slow, and the catalog moves: the view sweeps.
    fake.counters.slow.store(true, Ordering::SeqCst);
    fake.catalog_index.send_replace(2);
    eventually(
        "the sweep to start",
        HANG_GUARD,
        Duration::from_millis(5),
        || async { (fake.slow_reads_started() > 0).then_some(()) },
    )
    .await
    .expect("a sweep after the catalog change");

    let mut fresh = source.watch(&key("fresh"));
    assert_eq!(first_instances(&mut fresh).await, 1);
    let done = fake.slow_reads_done();
    assert!(
        done < COVERED,
        "the new subscriber was answered only after the sweep ({done} of {COVERED} slow reads done)"
    );

    // The catalog watch asked again without waiting for the sweep to end.
    let sent_during_sweep = eventually(
        "the next catalog query",
        HANG_GUARD,
        Duration::from_millis(5),
        || async {
            fake.catalog_queries()
                .into_iter()
                .find(|query| query.index == 2)
        },
    )
    .await
    .expect("the catalog watch keeps running");
    assert!(
        sent_during_sweep.slow_reads_done < COVERED,
        "the catalog watch was not polled during the sweep: its next query came after \
         {} of {COVERED} slow reads",
        sent_during_sweep.slow_reads_done
    );
    // The sweep itself still reaches every covered service.
    eventually(
        "the sweep to finish",
        HANG_GUARD,
        Duration::from_millis(20),
        || async { (fake.slow_reads_done() >= COVERED).then_some(()) },
    )
    .await
    .expect("every covered service read");
}

#[tokio::test]
async fn the_view_stops_when_its_last_subscriber_goes() {
    let fake = FakeConsul::start().await;
    let client = Client::new(ClientConfig::new(
        format!("http://{}", fake.addr).parse().expect("address"),
    ))
    .expect("client");
    let source = ConsulSource::new(
        client.clone(),
        EntryReader::new(AddressSource::Service, "zone".to_owned()),
        WatchConfig::default(),
        0,
        Duration::from_secs(10),
    );
    let blocking = || client.metrics().requests_in_flight(RequestClass::Blocking);
    let mut web = source.watch(&key("web"));
    let mut api = source.watch(&key("api"));
    assert_eq!(first_instances(&mut web).await, 1);
    assert_eq!(first_instances(&mut api).await, 1);
    eventually(
        "the view's three blocking queries",
        HANG_GUARD,
        Duration::from_millis(5),
        || async { (blocking() == 3).then_some(()) },
    )
    .await
    .expect("the two checks queries and the catalog query in flight");

    drop(web);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(blocking(), 3, "api still needs the view");

    drop(api);
    eventually(
        "the view to stop",
        Duration::from_secs(3),
        Duration::from_millis(5),
        || async { (blocking() == 0).then_some(()) },
    )
    .await
    .expect("no blocking query left once nothing is subscribed");

    // A later subscriber starts a new view.
    let mut again = source.watch(&key("web"));
    assert_eq!(first_instances(&mut again).await, 1);
    eventually(
        "the new view's queries",
        HANG_GUARD,
        Duration::from_millis(5),
        || async { (blocking() == 3).then_some(()) },
    )
    .await
    .expect("a new view");
}

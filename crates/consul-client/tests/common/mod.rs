//! A tiny in-process stand-in for a Consul agent, for the faults a real
//! agent cannot produce on demand: indexes going backwards, 500s, resets,
//! slow answers, malformed JSON.
//!
//! Each test gives it a handler deciding the [`Reply`] to every request; it
//! records what it received (path, query, headers, arrival time, protocol
//! version) and counts connections and concurrent blocking queries.

#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub index: Option<u64>,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// Waits this long before answering.
    pub delay: Duration,
    /// Waits until the gate opens (true) before answering.
    pub gate: Option<watch::Receiver<bool>>,
    /// Drops the connection instead of answering.
    pub reset: bool,
}

impl Reply {
    pub fn json(index: Option<u64>, body: impl Into<String>) -> Self {
        Self {
            status: 200,
            index,
            body: body.into(),
            headers: Vec::new(),
            delay: Duration::ZERO,
            gate: None,
            reset: false,
        }
    }

    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::json(None, body)
        }
    }

    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::json(None, "")
        }
    }

    /// Never answers within any test's lifetime: a blocking query with no change.
    pub fn stall() -> Self {
        Self {
            delay: Duration::from_secs(3600),
            ..Self::json(None, "")
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn gated(mut self, gate: watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string (empty when none).
    pub raw_query: String,
    pub query: BTreeMap<String, String>,
    pub headers: hyper::HeaderMap,
    pub version: hyper::Version,
    pub body: Bytes,
    pub arrived: Instant,
}

impl Recorded {
    /// `?index=` as a number; `None` for a plain read.
    pub fn index(&self) -> Option<u64> {
        self.query.get("index").and_then(|i| i.parse().ok())
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    blocking_in_flight: AtomicUsize,
    max_blocking_in_flight: AtomicUsize,
}

/// A running fake agent; stops when dropped.
pub struct FakeConsul {
    addr: Option<SocketAddr>,
    socket: Option<PathBuf>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    counters: Arc<Counters>,
    server: JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A handler answering `replies` in order, then stalling every request.
pub fn scripted(replies: Vec<Reply>) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let replies = Mutex::new(VecDeque::from(replies));
    move |_| lock(&replies).pop_front().unwrap_or_else(Reply::stall)
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeConsul {
    /// Plain HTTP on 127.0.0.1, a free port.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let (recorded, counters, handler) = Self::shared(handler);
        let server = {
            let (recorded, counters) = (recorded.clone(), counters.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    serve(stream, handler.clone(), recorded.clone(), counters.clone());
                }
            })
        };
        Self {
            addr: Some(addr),
            socket: None,
            recorded,
            counters,
            server,
        }
    }

    /// HTTPS with ALPN `h2` and `http/1.1`; `tls` decides certificates and
    /// client authentication.
    pub async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let (recorded, counters, handler) = Self::shared(handler);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let server = {
            let (recorded, counters) = (recorded.clone(), counters.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, handler, recorded, counters) = (
                        acceptor.clone(),
                        handler.clone(),
                        recorded.clone(),
                        counters.clone(),
                    );
                    tokio::spawn(async move {
                        // A failed handshake (e.g. no client certificate) just drops.
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve(tls, handler, recorded, counters);
                        }
                    });
                }
            })
        };
        Self {
            addr: Some(addr),
            socket: None,
            recorded,
            counters,
            server,
        }
    }

    /// HTTP over a Unix socket at `path`.
    pub async fn start_unix(
        path: &Path,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = UnixListener::bind(path).expect("bind unix socket");
        let (recorded, counters, handler) = Self::shared(handler);
        let server = {
            let (recorded, counters) = (recorded.clone(), counters.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    serve(stream, handler.clone(), recorded.clone(), counters.clone());
                }
            })
        };
        Self {
            addr: None,
            socket: Some(path.to_path_buf()),
            recorded,
            counters,
            server,
        }
    }

    fn shared(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> (Arc<Mutex<Vec<Recorded>>>, Arc<Counters>, Arc<Handler>) {
        (Arc::default(), Arc::default(), Arc::new(handler))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("a TCP fake")
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.recorded).clone()
    }

    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    pub fn blocking_in_flight(&self) -> usize {
        self.counters.blocking_in_flight.load(Ordering::SeqCst)
    }

    pub fn max_blocking_in_flight(&self) -> usize {
        self.counters.max_blocking_in_flight.load(Ordering::SeqCst)
    }
}

fn serve<S>(
    stream: S,
    handler: Arc<Handler>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    counters: Arc<Counters>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    counters.connections.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let service = service_fn(move |request: Request<Incoming>| {
            let (handler, recorded, counters) =
                (handler.clone(), recorded.clone(), counters.clone());
            async move { answer(request, &*handler, &recorded, &counters).await }
        });
        // Errors are the point of some tests (resets); nothing to report.
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// A service error makes hyper drop the connection without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deliberate reset")
    }
}

impl std::error::Error for Reset {}

async fn answer(
    request: Request<Incoming>,
    handler: &Handler,
    recorded: &Mutex<Vec<Recorded>>,
    counters: &Counters,
) -> Result<Response<Full<Bytes>>, Reset> {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let request = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        raw_query,
        query,
        headers: parts.headers,
        version: parts.version,
        body,
        arrived,
    };
    let reply = handler(&request);
    let blocking = request.index().is_some();
    lock(recorded).push(request);

    let _in_flight = blocking.then(|| InFlight::new(counters));
    if let Some(mut gate) = reply.gate.clone() {
        let _ = gate.wait_for(|open| *open).await;
    }
    tokio::time::sleep(reply.delay).await;
    if reply.reset {
        return Err(Reset);
    }
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", "application/json");
    if let Some(index) = reply.index {
        response = response.header("x-consul-index", index.to_string());
    }
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    Ok(response
        .body(Full::new(Bytes::from(reply.body)))
        .expect("valid response"))
}

struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn new(counters: &'a Counters) -> Self {
        let now = counters.blocking_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters
            .max_blocking_in_flight
            .fetch_max(now, Ordering::SeqCst);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.blocking_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A `/v1/health/service/<name>` body with one instance per `(id, port)`.
pub fn health_body(instances: &[(&str, u16)]) -> String {
    let entries: Vec<String> = instances
        .iter()
        .map(|(id, port)| {
            format!(
                r#"{{"Node": {{"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"}},
                    "Service": {{"ID": "{id}", "Service": "web", "Port": {port}}},
                    "Checks": []}}"#
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

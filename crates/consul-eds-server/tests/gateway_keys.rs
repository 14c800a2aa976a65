//! Every route and cluster key of gateway mode, shown by what a real Envoy
//! does with requests: real Consul 1.8.7, the real server with `--gateway`,
//! a real Envoy with the small ADS bootstrap. No assertion reads the
//! configuration Envoy was sent; each one is a response, a header or one of
//! Envoy's own counters.
//!
//! One gateway per test function; the services of a function are registered
//! together so that their routes settle at the same time.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::EdsServer;
use consul_client::{AgentCheck, AgentServiceRegistration, CheckStatus, Client, ClientConfig};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use test_support::bootstrap::control_plane_cluster;
use test_support::{
    Backend, ConsulAgent, Envoy, HttpResponse, TestCa, eventually, free_port, http_request,
    https_get,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use xds_core::{Listen, SharedKey, SnapshotCache, XdsServer};

const SETTLE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

struct Gateway {
    _consul: ConsulAgent,
    client: Client,
    eds: EdsServer,
    envoy: Envoy,
    web: SocketAddr,
    /// A second plain listener, for routes that name their listeners.
    internal: SocketAddr,
    /// The TLS listener, when the gateway has one.
    websecure: Option<SocketAddr>,
}

impl Gateway {
    /// A gateway with the plain listener `web` and, when `sds` is given, the
    /// TLS listener `websecure` whose certificates Envoy asks `sds` for.
    async fn start(sds: Option<SocketAddr>) -> Self {
        let consul = ConsulAgent::start().await.expect("consul");
        let address: consul_client::config::Address = consul.http_url().parse().expect("address");
        let client = Client::new(ClientConfig::new(address)).expect("client");

        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let internal = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let websecure = sds.map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut args = vec![
            "--gateway".to_owned(),
            "--listener".to_owned(),
            format!("web={web}"),
            "--listener".to_owned(),
            format!("internal={internal}"),
            "--coalesce".to_owned(),
            "20ms".to_owned(),
        ];
        if let Some(websecure) = websecure {
            args.push("--listener".to_owned());
            args.push(format!("websecure={websecure},tls"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let eds = EdsServer::start(&consul, &args).await;

        let mut static_clusters = control_plane_cluster("xds", eds.xds, "");
        if let Some(sds) = sds {
            static_clusters.push_str(&control_plane_cluster("sds", sds, ""));
        }
        let bootstrap = format!(
            r#"node: {{ id: gw-{port}, cluster: gateway }}
dynamic_resources:
  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
  cds_config: {{ resource_api_version: V3, ads: {{}} }}
  lds_config: {{ resource_api_version: V3, ads: {{}} }}
static_resources:
  clusters:
{static_clusters}"#,
            port = web.port(),
        );
        let envoy = Envoy::start(&bootstrap)
            .await
            .expect("Envoy starts with the small bootstrap");
        Self {
            _consul: consul,
            client,
            eds,
            envoy,
            web,
            internal,
            websecure,
        }
    }

    /// Registers one passing instance `id` of `service` at `addr`.
    async fn register(&self, service: &str, id: &str, addr: SocketAddr, tags: &[&str]) {
        let registration = AgentServiceRegistration {
            id: Some(id.to_owned()),
            name: service.to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            checks: vec![
                AgentCheck::ttl("ttl", Duration::from_secs(600))
                    .with_id(format!("ttl:{id}"))
                    .with_initial_status(CheckStatus::Passing),
            ],
            ..AgentServiceRegistration::default()
        };
        self.client
            .agent_service_register(&registration)
            .await
            .expect("register");
    }

    /// A request through the plain listener; `None` when it got no answer.
    async fn send(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        http_request("GET", self.web, path, &all, Vec::new())
            .await
            .ok()
    }

    /// Status and body of a `method` request through the plain listener.
    async fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        match http_request(method, self.web, path, &all, Vec::new()).await {
            Ok(response) => (response.status, response.body),
            Err(_) => (0, String::new()),
        }
    }

    /// Status and body of a GET through `listener`.
    async fn get_on(&self, listener: SocketAddr, host: &str, path: &str) -> (u16, String) {
        match http_request("GET", listener, path, &[("host", host)], Vec::new()).await {
            Ok(response) => (response.status, response.body),
            Err(_) => (0, String::new()),
        }
    }

    async fn get(&self, host: &str, path: &str) -> (u16, String) {
        match self.send(host, path, &[]).await {
            Some(response) => (response.status, response.body),
            None => (0, String::new()),
        }
    }

    /// Waits until `host` answers `status` (and `body`, when given).
    async fn expect(&self, host: &str, status: u16, body: Option<&str>) {
        let what = format!("{host} to answer {status} {body:?}");
        let outcome = eventually(&what, SETTLE, Duration::from_millis(50), || async {
            let answer = self.get(host, "/").await;
            (answer.0 == status && body.is_none_or(|b| answer.1 == b)).then_some(())
        })
        .await;
        if let Err(error) = outcome {
            let last = self.get(host, "/").await;
            self.fail(&format!("{error}; last answer {last:?}"));
        }
    }

    /// Sends `count` requests, one connection each, and counts the bodies
    /// of the answers (`status:body` for an answer other than 200).
    async fn spread(&self, host: &str, count: usize, headers: &[(&str, &str)]) -> Counts {
        let mut counts = Counts::new();
        for _ in 0..count {
            let key = match self.send(host, "/", headers).await {
                Some(response) if response.status == 200 => response.body,
                Some(response) => format!("{}:{}", response.status, response.body),
                None => "no answer".to_owned(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\nEnvoy:\n{}\nserver:\n{}",
            self.envoy.log_tail(),
            self.eds.process.log_tail()
        )
    }

    async fn stat(&self, name: &str) -> u64 {
        self.envoy
            .stat(name)
            .await
            .expect("Envoy's stats")
            .unwrap_or(0)
    }

    /// Envoy accepted every cluster, listener and route configuration.
    async fn assert_nothing_rejected(&self) {
        let mut stats = vec![
            "cluster_manager.cds.update_rejected".to_owned(),
            "listener_manager.lds.update_rejected".to_owned(),
            "http.web.rds.web.update_rejected".to_owned(),
            "http.internal.rds.internal.update_rejected".to_owned(),
        ];
        if self.websecure.is_some() {
            stats.push("http.websecure.rds.websecure.update_rejected".to_owned());
        }
        for stat in stats {
            match self.envoy.stat(&stat).await.expect("Envoy's stats") {
                Some(0) => {}
                other => self.fail(&format!("{stat} is {other:?}, not 0")),
            }
        }
    }
}

type Counts = BTreeMap<String, usize>;

/// The share of `key` among all answers, in percent.
fn share(counts: &Counts, key: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * counts.get(key).copied().unwrap_or(0) as f64 / total as f64
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// An in-process HTTP server on a loopback port, stopped when dropped.
struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// HTTP/1.1: every request is answered `status` with body `name`, after
    /// `delay`.
    async fn http1(name: &str, status: u16, delay: Duration) -> Self {
        let body = Bytes::from(name.to_owned());
        Self::serve(move |stream, requests| {
            let body = body.clone();
            async move {
                let service = service_fn(move |_request| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let body = body.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut response = hyper::Response::new(Full::new(body));
                        *response.status_mut() =
                            hyper::StatusCode::from_u16(status).expect("a status code");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await
    }

    /// HTTP/1.1: every request is answered 200 with `name` after `delay`;
    /// the second value is the most requests it ever had in flight at once.
    async fn concurrency(name: &str, delay: Duration) -> (Self, Arc<AtomicU64>) {
        let body = Bytes::from(name.to_owned());
        let in_flight = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let seen = most.clone();
        let upstream = Self::serve(move |stream, requests| {
            let body = body.clone();
            let in_flight = in_flight.clone();
            let most = most.clone();
            async move {
                let service = service_fn(move |_request| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let body = body.clone();
                    let in_flight = in_flight.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        (upstream, seen)
    }

    /// HTTP/1.1: every request is answered 200 with `name`, the method and
    /// the path (with its query) the backend received.
    async fn echo(name: &str) -> Self {
        let name = name.to_owned();
        Self::serve(move |stream, requests| {
            let name = name.clone();
            async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{name} {} {}", request.method(), request.uri());
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await
    }

    /// HTTP/2 with prior knowledge only (an HTTP/1.1 request is a protocol
    /// error): the body is `name` and the version the request arrived with.
    async fn h2c(name: &str) -> Self {
        let name = name.to_owned();
        Self::serve(move |stream, requests| {
            let name = name.clone();
            async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{name} {:?}", request.version());
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await
    }

    /// HTTPS with `leaf`: HTTP/2 when `http2` (ALPN `h2` only), else
    /// HTTP/1.1. The body is the SNI the client sent and the version the
    /// request arrived with.
    async fn https(leaf: &test_support::LeafPem, http2: bool) -> Self {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::serve(move |stream, requests| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                let service = service_fn(move |request: hyper::Request<_>| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{sni} {:?}", request.version());
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let io = TokioIo::new(tls);
                let _ = if http2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            }
        })
        .await
    }

    /// A raw TCP server: a request with `Upgrade: websocket` is answered
    /// 101 and then every byte is echoed; any other request gets 200. Only
    /// upgrade requests are counted.
    async fn websocket() -> Self {
        Self::serve(|mut stream, upgrades| async move {
            let Some(head) = read_head(&mut stream).await else {
                return;
            };
            if !head.to_ascii_lowercase().contains("upgrade: websocket") {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
                    .await;
                return;
            }
            upgrades.fetch_add(1, Ordering::Relaxed);
            let answer = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let mut buffer = [0u8; 1024];
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        })
        .await
    }

    async fn serve<F, Fut>(handle: F) -> Self
    where
        F: Fn(TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream, counter.clone()));
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads an HTTP head, up to and with the blank line; `None` on EOF or
/// after 5 s.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()??;
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A websocket handshake for `host` through the listener: the status Envoy
/// answered, and the stream for what follows a 101.
async fn websocket_handshake(listener: SocketAddr, host: &str) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(listener).await.expect("connect");
    let request = format!(
        "GET /chat HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("handshake sent");
    let head = read_head(&mut stream).await.unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head, stream)
}

// ---------------------------------------------------------------------------
// Route keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn route_keys_change_how_envoy_forwards() {
    let gw = Gateway::start(None).await;

    let slow = Upstream::http1("slow-1", 200, Duration::from_secs(2)).await;
    gw.register(
        "slow",
        "slow-1",
        slow.addr,
        &["edge.route=slow.test/ timeout=300ms"],
    )
    .await;

    let flaky_good = Upstream::http1("flaky-good", 200, Duration::ZERO).await;
    let flaky_bad = Upstream::http1("flaky-bad", 503, Duration::ZERO).await;
    for (id, upstream) in [("flaky-good", &flaky_good), ("flaky-bad", &flaky_bad)] {
        gw.register(
            "flaky",
            id,
            upstream.addr,
            &["edge.route=flaky.test/ retries=2"],
        )
        .await;
    }

    // Envoy would take this condition and never retry: no key gives the
    // status codes it needs. The route is refused instead.
    let picky = Upstream::http1("picky-1", 200, Duration::ZERO).await;
    gw.register(
        "picky",
        "picky-1",
        picky.addr,
        &["edge.route=picky.test/ retries=2 retry_on=retriable-status-codes"],
    )
    .await;

    let narrow = Upstream::http1("narrow-1", 200, Duration::from_millis(1500)).await;
    gw.register(
        "narrow",
        "narrow-1",
        narrow.addr,
        &[
            "edge.route=narrow.test/",
            "edge.cluster.max_requests=1",
            "edge.cluster.max_pending_requests=1",
        ],
    )
    .await;

    let h2 = Upstream::h2c("h2-1").await;
    gw.register(
        "h2",
        "h2-1",
        h2.addr,
        &["edge.route=h2.test/", "edge.cluster.protocol=h2c"],
    )
    .await;

    let grpc = Upstream::h2c("grpc-1").await;
    gw.register(
        "grpc",
        "grpc-1",
        grpc.addr,
        &["edge.route=grpc.test/", "edge.cluster.protocol=grpc"],
    )
    .await;

    let ws = Upstream::websocket().await;
    gw.register(
        "ws",
        "ws-1",
        ws.addr,
        &["edge.route=ws.test/ websocket=true"],
    )
    .await;
    let plain_ws = Upstream::websocket().await;
    gw.register("nows", "nows-1", plain_ws.addr, &["edge.route=nows.test/"])
        .await;

    let landing = Backend::start("landing-1").await.expect("backend");
    gw.register(
        "landing",
        "landing-1",
        landing.addr(),
        &[
            "edge.route=old.test/ redirect=https://new.test/landing",
            "edge.route=moved.test/ redirect=/elsewhere redirect_code=308",
            "edge.route=port.test/ redirect=//new.test:8443/search?q=1 redirect_code=302",
            "edge.route=busy.test/ redirect=https://new.test/ rate_limit=1",
        ],
    )
    .await;

    let limited = Backend::start("limited-1").await.expect("backend");
    gw.register(
        "limited",
        "limited-1",
        limited.addr(),
        &["edge.route=limited.test/ rate_limit=2"],
    )
    .await;

    // timeout=300ms: a backend taking 2 s is cut off with 504.
    gw.expect("slow.test", 504, None).await;
    let started = Instant::now();
    let (status, body) = gw.get("slow.test", "/").await;
    let elapsed = started.elapsed();
    println!("timeout=300ms answered {status} after {elapsed:?}");
    assert_eq!(status, 504, "{body}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}, the backend's own 2 s were not cut"
    );
    gw.assert_nothing_rejected().await;

    // retries=2: one of two instances answers 503, every request gets 200.
    gw.expect("flaky.test", 200, Some("flaky-good")).await;
    let before = flaky_bad.requests();
    let counts = gw.spread("flaky.test", 20, &[]).await;
    assert_eq!(
        counts,
        Counts::from([("flaky-good".to_owned(), 20)]),
        "every request is retried onto the good instance"
    );
    assert!(
        flaky_bad.requests() > before,
        "the failing instance was tried (and retried away from)"
    );
    assert!(gw.stat("cluster.flaky.upstream_rq_retry").await > 0);
    let reported = eventually(
        "retry_on=retriable-status-codes reported",
        SETTLE,
        Duration::from_millis(50),
        || async {
            let response = test_support::http_get(gw.eds.admin, "/debug/routes")
                .await
                .ok()?;
            let routes: serde_json::Value = serde_json::from_str(&response.body).ok()?;
            routes["problems"]
                .as_array()?
                .iter()
                .find(|p| p["service"] == "picky" && p["kind"]["kind"] == "invalid_tag")
                .cloned()
        },
    )
    .await;
    if let Err(error) = reported {
        gw.fail(&error.to_string());
    }
    assert_eq!(gw.get("picky.test", "/").await.0, 404);
    assert_eq!(picky.requests(), 0);
    gw.assert_nothing_rejected().await;

    // max_requests=1, max_pending_requests=1: of concurrent requests to a
    // slow backend, Envoy refuses the overflow itself.
    gw.expect("narrow.test", 200, Some("narrow-1")).await;
    let requests = (0..6).map(|_| gw.send("narrow.test", "/", &[]));
    let answers = futures::future::join_all(requests).await;
    let overloaded = answers
        .iter()
        .flatten()
        .filter(|r| r.status == 503 && r.headers.contains_key("x-envoy-overloaded"))
        .count();
    let served = answers.iter().flatten().filter(|r| r.status == 200).count();
    let overflow = gw.stat("cluster.narrow.upstream_rq_pending_overflow").await;
    println!(
        "circuit breaker: {served} served, {overloaded} refused with x-envoy-overloaded, upstream_rq_pending_overflow {overflow}"
    );
    assert!(served >= 1, "the first request is served");
    assert!(overloaded >= 1, "the overflow is refused by Envoy");
    assert!(overflow >= 1);
    gw.assert_nothing_rejected().await;

    // protocol=h2c: an HTTP/2-only backend answers through Envoy.
    gw.expect("h2.test", 200, Some("h2-1 HTTP/2.0")).await;
    assert!(h2.requests() > 0);
    // protocol=grpc is HTTP/2 in clear text as well.
    gw.expect("grpc.test", 200, Some("grpc-1 HTTP/2.0")).await;
    gw.assert_nothing_rejected().await;

    // websocket=true: the upgrade reaches the backend and data flows both
    // ways; without the key Envoy refuses the upgrade itself.
    gw.expect("ws.test", 200, Some("plain")).await;
    let (status, head, mut stream) = websocket_handshake(gw.web, "ws.test").await;
    assert_eq!(status, 101, "{head}");
    stream
        .write_all(b"ping")
        .await
        .expect("send over the upgrade");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .expect("the echo in time")
        .expect("the echo");
    assert_eq!(&echo, b"ping");
    assert_eq!(ws.requests(), 1);

    gw.expect("nows.test", 200, Some("plain")).await;
    let (status, head, _) = websocket_handshake(gw.web, "nows.test").await;
    println!("an upgrade without websocket=true: {head:?}");
    assert_eq!(status, 403, "{head}");
    assert_eq!(plain_ws.requests(), 0, "no upgrade reached the backend");
    assert_eq!(
        gw.stat("http.web.downstream_rq_ws_on_non_ws_route").await,
        1
    );
    gw.assert_nothing_rejected().await;

    // redirect= answers 301 by default; redirect_code=308 answers 308.
    let location = |response: &HttpResponse| {
        response
            .headers
            .get("location")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    gw.expect("old.test", 301, None).await;
    let response = gw
        .send("old.test", "/some/page", &[])
        .await
        .expect("answer");
    assert_eq!(response.status, 301);
    assert_eq!(location(&response), "https://new.test/landing");
    gw.expect("moved.test", 308, None).await;
    let response = gw.send("moved.test", "/a", &[]).await.expect("answer");
    assert_eq!(response.status, 308);
    assert_eq!(location(&response), "http://moved.test/elsewhere");
    // A scheme-relative target keeps the request's scheme; its query
    // replaces the request's.
    gw.expect("port.test", 302, None).await;
    let response = gw.send("port.test", "/a?b=2", &[]).await.expect("answer");
    assert_eq!(location(&response), "http://new.test:8443/search?q=1");
    // rate_limit= holds for a redirect as for a forwarded route.
    gw.expect("busy.test", 301, None).await;
    let counts = gw.spread("busy.test", 10, &[]).await;
    println!("a redirect with rate_limit=1, a burst of 10: {counts:?}");
    let redirected = counts.get("301:").copied().unwrap_or(0);
    assert!(redirected <= 2, "{counts:?}");
    assert_eq!(
        counts.get("429:local_rate_limited").copied().unwrap_or(0),
        10 - redirected,
        "{counts:?}"
    );
    assert_eq!(landing.requests(), 0, "a redirect forwards nothing");
    gw.assert_nothing_rejected().await;

    // rate_limit=2: a burst of 10 gets 429 past the bucket's 2 tokens.
    gw.expect("limited.test", 200, Some("limited-1")).await;
    // A full bucket to start the burst with.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let counts = gw.spread("limited.test", 10, &[]).await;
    println!("rate_limit=2, a burst of 10: {counts:?}");
    let limited_count = counts
        .iter()
        .filter(|(key, _)| key.starts_with("429:"))
        .map(|(_, n)| n)
        .sum::<usize>();
    let passed = counts.get("limited-1").copied().unwrap_or(0);
    assert_eq!(limited_count + passed, 10, "{counts:?}");
    assert!((1..=4).contains(&passed), "{counts:?}");
    assert!(limited_count >= 6, "{counts:?}");
    gw.assert_nothing_rejected().await;
}

// ---------------------------------------------------------------------------
// Match and path keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn match_and_path_keys_shape_what_the_backend_sees() {
    let gw = Gateway::start(None).await;
    let paths = Upstream::echo("paths-1").await;
    gw.register(
        "paths",
        "paths-1",
        paths.addr,
        &[
            "edge.route=paths.test/api strip=/api",
            "edge.route=paths.test/old rewrite=/v2",
            r"edge.route=paths.test/re rewrite_regex=^/re/([a-z]+)/([0-9]+)$ rewrite_to=/\2/\1",
            "edge.route=paths.test/",
        ],
    )
    .await;
    let matched = Upstream::echo("matched-1").await;
    gw.register(
        "matched",
        "matched-1",
        matched.addr,
        &["edge.route=match.test/ methods=GET,POST header=x-tenant:acme"],
    )
    .await;

    let probe = Upstream::echo("probe-1").await;
    gw.register("probe", "probe-1", probe.addr, &["edge.route=/edge-status"])
        .await;
    let inside = Upstream::echo("inside-1").await;
    gw.register(
        "inside",
        "inside-1",
        inside.addr,
        &["edge.route=inside.test/ listener=internal"],
    )
    .await;
    let idle = Upstream::http1("idle-1", 200, Duration::from_secs(2)).await;
    gw.register(
        "idle",
        "idle-1",
        idle.addr,
        &["edge.route=idle.test/ idle_timeout=300ms"],
    )
    .await;
    let broad = Upstream::echo("broad-1").await;
    gw.register(
        "broad",
        "broad-1",
        broad.addr,
        &[
            "edge.route=prio.test/ priority=10",
            "edge.route=*.wild.test/",
        ],
    )
    .await;
    let api = Upstream::echo("api-1").await;
    gw.register(
        "api",
        "api-1",
        api.addr,
        &[
            "edge.route=prio.test/api",
            "edge.route=prio.test/v2 priority=20",
        ],
    )
    .await;

    // strip=, rewrite= and rewrite_regex= change the path the backend
    // receives; the query is kept.
    gw.expect("paths.test", 200, Some("paths-1 GET /")).await;
    let cases = [
        ("/api/items?page=2", "paths-1 GET /items?page=2"),
        ("/api", "paths-1 GET /"),
        ("/apix", "paths-1 GET /apix"),
        ("/old/a/b", "paths-1 GET /v2/a/b"),
        ("/old", "paths-1 GET /v2"),
        ("/re/shoes/42?size=9", "paths-1 GET /42/shoes?size=9"),
        ("/re/shoes/x", "paths-1 GET /re/shoes/x"),
    ];
    for (path, seen) in cases {
        let outcome = eventually(
            &format!("{path} to reach the backend as {seen}"),
            SETTLE,
            Duration::from_millis(50),
            || async { (gw.get("paths.test", path).await == (200, seen.to_owned())).then_some(()) },
        )
        .await;
        if let Err(error) = outcome {
            let last = gw.get("paths.test", path).await;
            gw.fail(&format!("{error}; last answer {last:?}"));
        }
    }
    gw.assert_nothing_rejected().await;

    // A route without a host answers for every host, beside the host's
    // own routes.
    for host in ["unknown.test", "paths.test"] {
        let outcome = eventually(
            &format!("{host}/edge-status to reach probe"),
            SETTLE,
            Duration::from_millis(50),
            || async {
                (gw.get(host, "/edge-status").await == (200, "probe-1 GET /edge-status".to_owned()))
                    .then_some(())
            },
        )
        .await;
        if let Err(error) = outcome {
            let last = gw.get(host, "/edge-status").await;
            gw.fail(&format!("{error}; last answer {last:?}"));
        }
    }
    assert_eq!(gw.get("paths.test", "/other").await.1, "paths-1 GET /other");
    assert_eq!(gw.get("unknown.test", "/other").await.0, 404);
    gw.assert_nothing_rejected().await;

    // listener=internal: served there only; a route naming no listener is
    // served by every plain one.
    let outcome = eventually(
        "inside.test on the internal listener",
        SETTLE,
        Duration::from_millis(50),
        || async { (gw.get_on(gw.internal, "inside.test", "/").await.0 == 200).then_some(()) },
    )
    .await;
    if let Err(error) = outcome {
        gw.fail(&error.to_string());
    }
    assert_eq!(gw.get("inside.test", "/").await.0, 404);
    assert_eq!(
        gw.get_on(gw.internal, "paths.test", "/x").await,
        (200, "paths-1 GET /x".to_owned())
    );
    gw.assert_nothing_rejected().await;

    // idle_timeout=300ms: a backend silent for 2 s is given up on.
    gw.expect("idle.test", 504, None).await;
    let started = Instant::now();
    let (status, body) = gw.get("idle.test", "/").await;
    let elapsed = started.elapsed();
    println!("idle_timeout=300ms answered {status} {body:?} after {elapsed:?}");
    assert_eq!(status, 504, "{body}");
    assert!(elapsed < Duration::from_millis(1500), "after {elapsed:?}");
    gw.assert_nothing_rejected().await;

    // priority=: the route with the higher priority is matched first, even
    // a shorter prefix; without it the longer prefix wins.
    gw.expect("prio.test", 200, Some("broad-1 GET /")).await;
    let outcome = eventually(
        "prio.test/v2 to reach api",
        SETTLE,
        Duration::from_millis(50),
        || async { (gw.get("prio.test", "/v2/x").await.1 == "api-1 GET /v2/x").then_some(()) },
    )
    .await;
    if let Err(error) = outcome {
        gw.fail(&error.to_string());
    }
    assert_eq!(gw.get("prio.test", "/api/x").await.1, "broad-1 GET /api/x");
    assert_eq!(api.requests(), 1, "only /v2 outranks the broad route");
    // A wildcard host matches every name under it, and only those.
    gw.expect("a.wild.test", 200, Some("broad-1 GET /")).await;
    assert_eq!(gw.get("b.c.wild.test", "/").await.0, 200);
    assert_eq!(gw.get("wild.test", "/").await.0, 404);
    gw.assert_nothing_rejected().await;

    // methods= and header=: only a GET or POST carrying the header matches.
    let tenant = [("x-tenant", "acme")];
    let other_tenant = [("x-tenant", "umbrella")];
    eventually(
        "match.test to answer a GET with the header",
        SETTLE,
        Duration::from_millis(50),
        || async { (gw.request("GET", "match.test", "/", &tenant).await.0 == 200).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| gw.fail(&e.to_string()));
    assert_eq!(
        gw.request("POST", "match.test", "/p", &tenant).await,
        (200, "matched-1 POST /p".to_owned())
    );
    assert_eq!(
        gw.request("DELETE", "match.test", "/", &tenant).await.0,
        404
    );
    assert_eq!(gw.request("GET", "match.test", "/", &[]).await.0, 404);
    assert_eq!(
        gw.request("GET", "match.test", "/", &other_tenant).await.0,
        404
    );
    gw.assert_nothing_rejected().await;
}

// ---------------------------------------------------------------------------
// Upstream TLS keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_tls_keys_verify_the_instance_and_speak_its_protocol() {
    let gw = Gateway::start(None).await;
    let ca = TestCa::new("instances CA").expect("CA");
    let leaf = ca.leaf(&["backend.internal"]).expect("leaf");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("instances-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("CA file");
    let ca_tag = format!("edge.cluster.tls_ca_file={}", ca_file.display());

    let tls1 = Upstream::https(&leaf, false).await;
    gw.register(
        "tls1",
        "tls1-1",
        tls1.addr,
        &[
            "edge.route=tls1.test/",
            "edge.cluster.tls=true",
            "edge.cluster.tls_sni=backend.internal",
            &ca_tag,
        ],
    )
    .await;
    let tls2 = Upstream::https(&leaf, true).await;
    gw.register(
        "tls2",
        "tls2-1",
        tls2.addr,
        &[
            "edge.route=tls2.test/",
            "edge.cluster.protocol=h2",
            "edge.cluster.tls_sni=backend.internal",
            &ca_tag,
        ],
    )
    .await;
    // The instance's certificate does not name the SNI asked for.
    let misnamed = Upstream::https(&leaf, false).await;
    gw.register(
        "misnamed",
        "misnamed-1",
        misnamed.addr,
        &[
            "edge.route=misnamed.test/",
            "edge.cluster.tls=true",
            "edge.cluster.tls_sni=other.internal",
            &ca_tag,
        ],
    )
    .await;

    // tls=true with tls_sni and tls_ca_file: HTTPS to the instance, with
    // that SNI, its certificate checked against the CA.
    gw.expect("tls1.test", 200, Some("backend.internal HTTP/1.1"))
        .await;
    // protocol=h2: HTTP/2 over TLS, negotiated by ALPN.
    gw.expect("tls2.test", 200, Some("backend.internal HTTP/2.0"))
        .await;
    // A certificate without the SNI's name is refused: Envoy answers 503
    // and the instance never sees a request.
    gw.expect("misnamed.test", 503, None).await;
    assert_eq!(misnamed.requests(), 0);
    assert!(
        gw.stat("cluster.misnamed.ssl.fail_verify_san").await >= 1,
        "the name check refused it"
    );
    gw.assert_nothing_rejected().await;
}

// ---------------------------------------------------------------------------
// Cluster keys that protect a service
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cluster_keys_keep_failing_instances_out_and_bound_load() {
    let gw = Gateway::start(None).await;

    let burst = Backend::start("burst-1").await.expect("backend");
    gw.register(
        "burst",
        "burst-1",
        burst.addr(),
        &["edge.route=burst.test/ rate_limit=1 rate_limit_burst=5"],
    )
    .await;

    let checked_good = Upstream::http1("checked-good", 200, Duration::ZERO).await;
    let checked_bad = Upstream::http1("checked-bad", 503, Duration::ZERO).await;
    for (id, upstream) in [
        ("checked-good", &checked_good),
        ("checked-bad", &checked_bad),
    ] {
        gw.register(
            "checked",
            id,
            upstream.addr,
            &[
                "edge.route=checked.test/",
                "edge.cluster.health_check_path=/healthz",
                "edge.cluster.health_check_interval=200ms",
                "edge.cluster.health_check_timeout=1s",
            ],
        )
        .await;
    }

    let ejected_good = Upstream::http1("ejected-good", 200, Duration::ZERO).await;
    let ejected_bad = Upstream::http1("ejected-bad", 503, Duration::ZERO).await;
    for (id, upstream) in [
        ("ejected-good", &ejected_good),
        ("ejected-bad", &ejected_bad),
    ] {
        gw.register(
            "ejected",
            id,
            upstream.addr,
            &[
                "edge.route=ejected.test/",
                "edge.cluster.outlier_consecutive_5xx=2",
                "edge.cluster.outlier_interval=500ms",
                "edge.cluster.outlier_ejection_time=1s",
            ],
        )
        .await;
    }

    let (one_at_a_time, most_in_flight) =
        Upstream::concurrency("serial-1", Duration::from_millis(200)).await;
    gw.register(
        "serial",
        "serial-1",
        one_at_a_time.addr,
        &[
            "edge.route=serial.test/",
            "edge.cluster.max_connections_per_endpoint=1",
        ],
    )
    .await;

    let checked_h2 = Upstream::h2c("checked-h2").await;
    gw.register(
        "checkedh2",
        "checked-h2",
        checked_h2.addr,
        &[
            "edge.route=checkedh2.test/",
            "edge.cluster.protocol=h2c",
            "edge.cluster.health_check_path=/healthz",
            "edge.cluster.health_check_interval=200ms",
        ],
    )
    .await;

    let capped = Upstream::http1("capped-1", 503, Duration::ZERO).await;
    gw.register(
        "capped",
        "capped-1",
        capped.addr,
        &[
            "edge.route=capped.test/ retries=3",
            "edge.cluster.max_retries=0",
        ],
    )
    .await;

    let hashed: Vec<Backend> = futures::future::join_all(
        (1..=3).map(|n| async move { Backend::start(&format!("hashed-{n}")).await }),
    )
    .await
    .into_iter()
    .map(|b| b.expect("backend"))
    .collect();
    for backend in &hashed {
        gw.register(
            "hashed",
            backend.name(),
            backend.addr(),
            &[
                "edge.route=hashed.test/",
                "edge.cluster.lb=maglev",
                "edge.cluster.hash_header=x-user",
            ],
        )
        .await;
    }

    // The local rate limit is per-route configuration, so every new route
    // table refills the bucket: a burst sent while the routes registered
    // above are still arriving would see tokens for four plus five requests.
    // `hashed` is registered last, and nothing below changes a route.
    gw.expect("hashed.test", 200, None).await;

    // rate_limit=1 rate_limit_burst=5: a full bucket holds five tokens, one
    // of which the first answer took.
    gw.expect("burst.test", 200, Some("burst-1")).await;
    let counts = gw.spread("burst.test", 10, &[]).await;
    println!("rate_limit=1 rate_limit_burst=5, a burst of 10: {counts:?}");
    let passed = counts.get("burst-1").copied().unwrap_or(0);
    assert!((4..=6).contains(&passed), "{counts:?}");
    assert_eq!(
        counts.get("429:local_rate_limited").copied().unwrap_or(0),
        10 - passed,
        "{counts:?}"
    );
    gw.assert_nothing_rejected().await;

    // health_check_path=: the instance failing its check gets no request.
    let membership = |service: &'static str| {
        let gw = &gw;
        async move {
            (
                gw.stat(&format!("cluster.{service}.membership_total"))
                    .await,
                gw.stat(&format!("cluster.{service}.membership_healthy"))
                    .await,
            )
        }
    };
    let outcome = eventually(
        "one of two checked instances healthy",
        SETTLE,
        Duration::from_millis(50),
        || async { (membership("checked").await == (2, 1)).then_some(()) },
    )
    .await;
    if let Err(error) = outcome {
        let last = membership("checked").await;
        gw.fail(&format!("{error}; last (total, healthy) {last:?}"));
    }
    let counts = gw.spread("checked.test", 20, &[]).await;
    assert_eq!(counts, Counts::from([("checked-good".to_owned(), 20)]));
    assert!(
        checked_bad.requests() > 0,
        "the failing instance was checked"
    );
    gw.assert_nothing_rejected().await;

    // The check of an HTTP/2-only instance speaks HTTP/2, and passes.
    let outcome = eventually(
        "the h2c instance healthy",
        SETTLE,
        Duration::from_millis(50),
        || async { (membership("checkedh2").await == (1, 1)).then_some(()) },
    )
    .await;
    if let Err(error) = outcome {
        let last = membership("checkedh2").await;
        gw.fail(&format!("{error}; last (total, healthy) {last:?}"));
    }
    gw.expect("checkedh2.test", 200, Some("checked-h2 HTTP/2.0"))
        .await;
    assert!(gw.stat("cluster.checkedh2.health_check.success").await >= 1);

    // outlier_consecutive_5xx=2: after two 503s in a row the failing
    // instance is ejected, and every request is then served.
    let outcome = eventually(
        "both ejected instances known",
        SETTLE,
        Duration::from_millis(50),
        || async { (membership("ejected").await.0 == 2).then_some(()) },
    )
    .await;
    if let Err(error) = outcome {
        gw.fail(&error.to_string());
    }
    let warm_up = gw.spread("ejected.test", 8, &[]).await;
    println!("outlier detection, before the ejection: {warm_up:?}");
    let ejections = gw
        .stat("cluster.ejected.outlier_detection.ejections_enforced_consecutive_5xx")
        .await;
    let counts = gw.spread("ejected.test", 20, &[]).await;
    assert_eq!(
        counts,
        Counts::from([("ejected-good".to_owned(), 20)]),
        "ejections {ejections}"
    );
    assert!(ejections >= 1);
    // outlier_ejection_time=1s, checked every outlier_interval=500ms: the
    // instance is back after its ejection and fails again.
    let before = ejected_bad.requests();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let counts = gw.spread("ejected.test", 10, &[]).await;
    println!("outlier detection, after the ejection time: {counts:?}");
    assert!(ejected_bad.requests() > before, "{counts:?}");
    gw.assert_nothing_rejected().await;

    // max_connections_per_endpoint=1: concurrent requests are all served,
    // one at a time over the instance's one connection.
    gw.expect("serial.test", 200, Some("serial-1")).await;
    let started = Instant::now();
    let answers = futures::future::join_all((0..4).map(|_| gw.send("serial.test", "/", &[]))).await;
    let elapsed = started.elapsed();
    let served = answers.iter().flatten().filter(|r| r.status == 200).count();
    println!("max_connections_per_endpoint=1: 4 concurrent requests served in {elapsed:?}");
    assert_eq!(served, 4);
    assert_eq!(most_in_flight.load(Ordering::SeqCst), 1);
    gw.assert_nothing_rejected().await;

    // max_retries=0 caps retries=3: each request is tried once.
    gw.expect("capped.test", 503, Some("capped-1")).await;
    let before = capped.requests();
    let counts = gw.spread("capped.test", 5, &[]).await;
    assert_eq!(counts, Counts::from([("503:capped-1".to_owned(), 5)]));
    assert_eq!(capped.requests() - before, 5, "no retry got past the cap");
    assert!(gw.stat("cluster.capped.upstream_rq_retry_overflow").await >= 5);
    gw.assert_nothing_rejected().await;

    // lb=maglev + hash_header=x-user: one user sticks to one instance.
    let instances = &hashed;
    let mut n = 0;
    let outcome = eventually(
        "all three hashed instances reachable",
        SETTLE,
        Duration::from_millis(10),
        || {
            n += 1;
            let user = format!("user-{n}");
            let gw = &gw;
            async move {
                gw.send("hashed.test", "/", &[("x-user", &user)]).await;
                instances.iter().all(|b| b.requests() > 0).then_some(())
            }
        },
    )
    .await;
    if let Err(error) = outcome {
        gw.fail(&error.to_string());
    }
    for user in ["alice", "bob", "carol"] {
        let counts = gw.spread("hashed.test", 15, &[("x-user", user)]).await;
        assert_eq!(counts.len(), 1, "{user} lands on one instance: {counts:?}");
    }
    gw.assert_nothing_rejected().await;
}

// ---------------------------------------------------------------------------
// Balancing keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn balancing_keys_pin_and_share_requests() {
    let gw = Gateway::start(None).await;

    let sticky: Vec<Backend> = futures::future::join_all(
        (1..=3).map(|n| async move { Backend::start(&format!("sticky-{n}")).await }),
    )
    .await
    .into_iter()
    .map(|b| b.expect("backend"))
    .collect();
    for backend in &sticky {
        gw.register(
            "sticky",
            backend.name(),
            backend.addr(),
            &[
                "edge.route=sticky.test/",
                "edge.cluster.lb=ring_hash",
                "edge.cluster.hash_cookie=visitor",
                "edge.cluster.hash_cookie_ttl=90s",
            ],
        )
        .await;
    }

    let blue = Backend::start("blue-1").await.expect("backend");
    gw.register(
        "blue",
        "blue-1",
        blue.addr(),
        &["edge.route=bg.test/ weight=3"],
    )
    .await;
    let green = Backend::start("green-1").await.expect("backend");
    gw.register(
        "green",
        "green-1",
        green.addr(),
        &["edge.route=bg.test/ weight=1"],
    )
    .await;

    let stable = Backend::start("shop-stable").await.expect("backend");
    gw.register(
        "shop",
        "shop-stable",
        stable.addr(),
        &["edge.route=canary.test/ canary=20"],
    )
    .await;
    let canary = Backend::start("shop-canary").await.expect("backend");
    gw.register(
        "shop",
        "shop-canary",
        canary.addr(),
        &["edge.route=canary.test/ canary=20", "edge.canary"],
    )
    .await;

    // canary= inside a blue/green pair: the canaries take their share of
    // their service's weight only.
    let mix_stable = Backend::start("mix-stable").await.expect("backend");
    gw.register(
        "mix",
        "mix-stable",
        mix_stable.addr(),
        &["edge.route=mix.test/ weight=3 canary=50"],
    )
    .await;
    let mix_canary = Backend::start("mix-canary").await.expect("backend");
    gw.register(
        "mix",
        "mix-canary",
        mix_canary.addr(),
        &["edge.route=mix.test/ weight=3 canary=50", "edge.canary"],
    )
    .await;
    let mix_other = Backend::start("mix-other").await.expect("backend");
    gw.register(
        "mixother",
        "mix-other",
        mix_other.addr(),
        &["edge.route=mix.test/ weight=1"],
    )
    .await;

    // A canary instance of a route without canary= gets nothing.
    let quiet_stable = Backend::start("quiet-stable").await.expect("backend");
    gw.register(
        "quiet",
        "quiet-stable",
        quiet_stable.addr(),
        &["edge.route=quiet.test/"],
    )
    .await;
    let quiet_canary = Backend::start("quiet-canary").await.expect("backend");
    gw.register(
        "quiet",
        "quiet-canary",
        quiet_canary.addr(),
        &["edge.route=quiet.test/", "edge.canary"],
    )
    .await;

    // lb=ring_hash + hash_cookie: a cookie pins a client to one of three
    // instances, and different cookies spread. Wait until every instance
    // is known to Envoy, so the ring is final.
    let cookie = |n: usize| format!("visitor=client-{n}");
    let mut n = 0;
    let instances = &sticky;
    eventually(
        "all three instances reachable",
        SETTLE,
        Duration::from_millis(10),
        || {
            n += 1;
            let header = cookie(n);
            let gw = &gw;
            async move {
                gw.send("sticky.test", "/", &[("cookie", &header)]).await;
                instances.iter().all(|b| b.requests() > 0).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| gw.fail(&e.to_string()));
    for client in [1, 2, 3] {
        let header = cookie(1000 + client);
        let counts = gw.spread("sticky.test", 15, &[("cookie", &header)]).await;
        assert_eq!(
            counts.len(),
            1,
            "{header} lands on one instance: {counts:?}"
        );
    }
    let mut spread = Counts::new();
    for client in 0..30 {
        let header = cookie(2000 + client);
        let counts = gw.spread("sticky.test", 1, &[("cookie", &header)]).await;
        for (backend, count) in counts {
            *spread.entry(backend).or_default() += count;
        }
    }
    println!("30 cookies over three instances: {spread:?}");
    assert!(spread.len() >= 2, "different cookies spread: {spread:?}");
    // Without the cookie, Envoy hands one out.
    let response = gw.send("sticky.test", "/", &[]).await.expect("answer");
    let set_cookie = response
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(set_cookie.starts_with("visitor="), "{:?}", response.headers);
    assert!(
        set_cookie.contains("Max-Age=90"),
        "hash_cookie_ttl=90s: {set_cookie}"
    );
    // A client sending back the cookie it was given stays where it landed.
    let given = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let counts = gw.spread("sticky.test", 10, &[("cookie", &given)]).await;
    assert_eq!(counts.len(), 1, "{given}: {counts:?}");
    assert_eq!(counts.keys().next(), Some(&response.body), "{given}");
    gw.assert_nothing_rejected().await;

    // weight=3 and weight=1 on one spot: blue/green share 3:1.
    gw.expect("bg.test", 200, Some("green-1")).await;
    let counts = gw.spread("bg.test", 400, &[]).await;
    let blue_share = share(&counts, "blue-1");
    println!("blue/green 3:1 over 400 requests: {counts:?} ({blue_share:.1} % blue)");
    assert_eq!(counts.values().sum::<usize>(), 400);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!((65.0..=85.0).contains(&blue_share), "{counts:?}");
    gw.assert_nothing_rejected().await;

    // canary=20: the instance tagged edge.canary gets a fifth.
    gw.expect("canary.test", 200, Some("shop-canary")).await;
    let counts = gw.spread("canary.test", 400, &[]).await;
    let canary_share = share(&counts, "shop-canary");
    println!("canary=20 over 400 requests: {counts:?} ({canary_share:.1} % canary)");
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!((10.0..=30.0).contains(&canary_share), "{counts:?}");
    gw.assert_nothing_rejected().await;

    gw.expect("mix.test", 200, Some("mix-canary")).await;
    gw.expect("mix.test", 200, Some("mix-other")).await;
    let counts = gw.spread("mix.test", 400, &[]).await;
    println!("weight=3 canary=50 beside weight=1 over 400 requests: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (backend, expected) in [
        ("mix-stable", 37.5),
        ("mix-canary", 37.5),
        ("mix-other", 25.0),
    ] {
        let got = share(&counts, backend);
        assert!((got - expected).abs() <= 10.0, "{backend}: {counts:?}");
    }
    gw.assert_nothing_rejected().await;

    // Without canary=, running a canary instance diverts no one.
    gw.expect("quiet.test", 200, Some("quiet-stable")).await;
    let counts = gw.spread("quiet.test", 50, &[]).await;
    assert_eq!(counts, Counts::from([("quiet-stable".to_owned(), 50)]));
    assert_eq!(quiet_canary.requests(), 0);
    gw.assert_nothing_rejected().await;
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

fn tls_secret(name: &str, leaf: &test_support::LeafPem) -> Secret {
    let inline = |pem: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_owned())),
        ..DataSource::default()
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&leaf.cert_pem)),
            private_key: Some(inline(&leaf.key_pem)),
            ..TlsCertificate::default()
        })),
    }
}

#[tokio::test]
async fn a_tls_route_is_served_with_its_certificate_and_redirected_from_plain_http() {
    // The SDS server: one secret named after the host, for every node.
    let ca = TestCa::new("gateway keys CA").expect("CA");
    let leaf = ca.leaf(&["secure.test"]).expect("leaf");
    let wild_leaf = ca.leaf(&["*.wild.test"]).expect("leaf");
    let cache = SnapshotCache::new(SharedKey("gateway".to_owned()));
    cache
        .set_secrets(
            "gateway",
            &[
                tls_secret("secure.test", &leaf),
                tls_secret("*.wild.test", &wild_leaf),
            ],
        )
        .expect("secrets");
    let bound = XdsServer::new(cache)
        .bind(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("SDS binds");
    let sds = bound.local_addr().expect("a TCP address");
    let sds_task = tokio::spawn(bound.serve(std::future::pending()));

    let gw = Gateway::start(Some(sds)).await;
    let websecure = gw.websecure.expect("the TLS listener");
    let secure = Backend::start("secure-1").await.expect("backend");
    gw.register(
        "secure",
        "secure-1",
        secure.addr(),
        &["edge.route=secure.test/ tls=true"],
    )
    .await;

    let wild = Backend::start("wild-1").await.expect("backend");
    gw.register(
        "wild",
        "wild-1",
        wild.addr(),
        &["edge.route=*.wild.test/ tls=true"],
    )
    .await;

    let challenge = Upstream::echo("challenge-1").await;
    gw.register(
        "challenge",
        "challenge-1",
        challenge.addr,
        &["edge.route=secure.test/.well-known/acme-challenge"],
    )
    .await;

    // HTTPS with that SNI: Envoy presents the SDS certificate and forwards.
    let answer = eventually(
        "https://secure.test/ to answer 200",
        SETTLE,
        Duration::from_millis(100),
        || async {
            https_get(websecure, "secure.test", ca.cert_pem(), "/")
                .await
                .ok()
                .filter(|(response, _)| response.status == 200)
        },
    )
    .await;
    let (response, presented) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let last = https_get(websecure, "secure.test", ca.cert_pem(), "/").await;
            gw.fail(&format!("{error}; last answer {last:?}"))
        }
    };
    // The client trusts only the test CA, which signed nothing but the
    // secret's certificate: the handshake itself proves Envoy presented it.
    assert!(!presented.is_empty());
    assert_eq!(response.body, "secure-1");
    // A wildcard host has its own chain, matched by SNI, and its own
    // certificate.
    let answer = eventually(
        "https://a.wild.test/ to answer 200",
        SETTLE,
        Duration::from_millis(100),
        || async {
            https_get(websecure, "a.wild.test", ca.cert_pem(), "/")
                .await
                .ok()
                .filter(|(response, _)| response.status == 200)
        },
    )
    .await;
    let (response, wild_presented) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let last = https_get(websecure, "a.wild.test", ca.cert_pem(), "/").await;
            gw.fail(&format!("{error}; last answer {last:?}"))
        }
    };
    assert_eq!(response.body, "wild-1");
    assert_ne!(wild_presented, presented, "each host its own certificate");
    assert!(gw.stat("sds.secure.test.update_success").await >= 1);
    assert_eq!(gw.stat("sds.secure.test.update_rejected").await, 0);

    // The plain listener answers the same host with a 308 to https.
    gw.expect("secure.test", 308, None).await;
    let response = gw
        .send("secure.test", "/cart?x=1", &[])
        .await
        .expect("answer");
    assert_eq!(response.status, 308);
    assert_eq!(
        response
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("https://secure.test/cart?x=1")
    );
    assert_eq!(secure.requests(), 1, "only the HTTPS request was forwarded");
    // HTTP-01 validation reaches its backend over plain http.
    let outcome = eventually(
        "the challenge path forwarded on plain http",
        SETTLE,
        Duration::from_millis(50),
        || async {
            (gw.get("secure.test", "/.well-known/acme-challenge/token-1")
                .await
                == (
                    200,
                    "challenge-1 GET /.well-known/acme-challenge/token-1".to_owned(),
                ))
                .then_some(())
        },
    )
    .await;
    if let Err(error) = outcome {
        let last = gw
            .get("secure.test", "/.well-known/acme-challenge/token-1")
            .await;
        gw.fail(&format!("{error}; last answer {last:?}"));
    }
    gw.assert_nothing_rejected().await;
    sds_task.abort();
}

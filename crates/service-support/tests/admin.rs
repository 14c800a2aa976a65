use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use service_support::admin::{AdminResponse, AdminRoutes, AdminServer};
use test_support::http_get;
use tokio_util::sync::CancellationToken;

struct Routes {
    ready: AtomicBool,
}

impl AdminRoutes for Routes {
    fn readiness(&self) -> AdminResponse {
        if self.ready.load(Ordering::SeqCst) {
            AdminResponse::text(200, "ready\n")
        } else {
            AdminResponse::text(503, "starting\n")
        }
    }

    fn route(&self, path: &str) -> Option<AdminResponse> {
        (path == "/debug/thing").then(|| AdminResponse::json("{\"thing\":1}"))
    }
}

#[tokio::test]
async fn serves_probes_metrics_and_service_routes_until_shutdown() {
    let mut registry = Registry::default();
    let requests = Counter::<u64>::default();
    registry.register("demo_requests", "Requests seen", requests.clone());
    requests.inc_by(7);
    let routes = Arc::new(Routes {
        ready: AtomicBool::new(false),
    });
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(Arc::new(registry), routes.clone(), shutdown.clone()));

    assert_eq!(
        http_get(addr, "/healthz").await.expect("healthz").status,
        200
    );
    assert_eq!(http_get(addr, "/readyz").await.expect("readyz").status, 503);
    routes.ready.store(true, Ordering::SeqCst);
    assert_eq!(http_get(addr, "/readyz").await.expect("readyz").status, 200);
    let metrics = http_get(addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.body.contains("demo_requests_total 7"),
        "{}",
        metrics.body
    );
    let thing = http_get(addr, "/debug/thing").await.expect("route");
    assert_eq!(thing.body, "{\"thing\":1}");
    assert_eq!(http_get(addr, "/nope").await.expect("404").status, 404);

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("server stops on shutdown")
        .expect("task");
    assert!(
        http_get(addr, "/healthz").await.is_err(),
        "still accepting after shutdown"
    );
}

/// A client that never finishes its headers is cut off, and the server keeps
/// answering others.
#[tokio::test]
async fn a_request_whose_headers_never_end_is_cut_off() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let routes = Arc::new(Routes {
        ready: AtomicBool::new(true),
    });
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind")
        .with_header_read_timeout(Duration::from_millis(300));
    let addr = server.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(Arc::new(Registry::default()), routes, shutdown.clone()));

    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the connection is still open after 5 s of unfinished headers"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the bound"
    );

    let healthz = http_get(addr, "/healthz").await.expect("healthz");
    assert_eq!(healthz.status, 200);
    shutdown.cancel();
}

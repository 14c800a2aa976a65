//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz` and whatever
//! pages a service adds (`/debug/...`, a status page at `/`).
//!
//! It binds its own listener, apart from xDS, so a scrape or a probe can
//! never queue behind Envoy's streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A response from a service's own admin route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl AdminResponse {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub fn html(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What a service plugs into the admin server.
pub trait AdminRoutes: Send + Sync + 'static {
    /// `/readyz`. Convention: 200 ready, 429 degraded (Consul reads an HTTP
    /// check's 429 as *warning*, not critical, so a degraded but serving
    /// instance is not restarted), 503 not ready.
    fn readiness(&self) -> AdminResponse;

    /// Any other GET path; `None` means 404.
    fn route(&self, path: &str) -> Option<AdminResponse>;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound admin server, not yet serving.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    header_read_timeout: Duration,
}

/// How long a client may take to send a request's headers. The admin port is
/// reachable by whatever can reach the node's address (Consul's checks,
/// Prometheus); without a bound, connections that never finish their
/// headers (slowloris) would each hold a task and a file descriptor forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after a failed accept. Accept fails when the process is out of
/// file descriptors (EMFILE) and keeps failing until one is freed: retrying
/// at once would spin a core and flood the log.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

impl AdminServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(Self {
            listener,
            header_read_timeout: HEADER_READ_TIMEOUT,
        })
    }

    /// Another bound for a request's headers than [`HEADER_READ_TIMEOUT`].
    #[must_use]
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` is cancelled. The registry is shared read-only:
    /// every metric is registered before serving starts.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        routes: Arc<dyn AdminRoutes>,
        shutdown: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                    continue;
                }
            };
            let header_read_timeout = self.header_read_timeout;
            let registry = registry.clone();
            let routes = routes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = respond(&request, &registry, routes.as_ref());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(error) = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }
}

fn respond<B>(
    request: &Request<B>,
    registry: &Registry,
    routes: &dyn AdminRoutes,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return build(AdminResponse::text(405, "only GET is served here\n"));
    }
    let answer = match request.uri().path() {
        "/healthz" => AdminResponse::text(200, "ok\n"),
        "/readyz" => routes.readiness(),
        "/metrics" => metrics(registry),
        path => routes
            .route(path)
            .unwrap_or_else(|| AdminResponse::text(404, format!("no such page: {path}\n"))),
    };
    build(answer)
}

fn metrics(registry: &Registry) -> AdminResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => AdminResponse {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: text,
        },
        Err(error) => AdminResponse::text(500, format!("encoding metrics failed: {error}\n")),
    }
}

fn build(answer: AdminResponse) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = answer.content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

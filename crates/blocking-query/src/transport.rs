//! Connections to the agent: plain TCP, TLS (HTTP/2 when the agent offers
//! it) or a Unix socket, each behind hyper's pooling client.
//!
//! Over HTTPS the connector offers ALPN `h2` then `http/1.1`: with HTTP/2 all
//! blocking queries share a few connections instead of holding one each
//! against the agent's per-client connection limit.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;

use crate::address::Address;
use crate::connection_cap::CappedConnector;
use crate::tls::{TlsConfig, TlsError};

/// The body of every request: small, and whole before it is sent.
pub type RequestBody = Full<Bytes>;

/// Idle pooled connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Detects a silently dead peer under a long blocking query.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The connection pool to one agent, over the scheme its [`Address`] names.
#[derive(Debug, Clone)]
pub enum Transport {
    Http(HyperClient<CappedConnector<HttpConnector>, RequestBody>),
    Https(HyperClient<HttpsConnector<CappedConnector<HttpConnector>>, RequestBody>),
    Unix(HyperClient<CappedConnector<UnixConnector>, RequestBody>),
}

impl Transport {
    /// `tls` is used for an `https` address only. `max_connections`: the
    /// most connections open at once, idle or busy: the most requests the
    /// caller's budget lets run at once (see [`crate::connection_cap`]).
    pub fn new(
        address: &Address,
        tls: &TlsConfig,
        connect_timeout: Duration,
        max_connections: usize,
    ) -> Result<Self, TlsError> {
        let mut builder = HyperClient::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(max_connections)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        Ok(match address {
            Address::Http(_) => {
                Self::Http(builder.build(CappedConnector::new(tcp, max_connections)))
            }
            Address::Https(_) => {
                tcp.enforce_http(false);
                let config = tls.rustls_config()?;
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only();
                let connector = match tls.server_name()? {
                    Some(name) => {
                        connector.with_server_name_resolver(FixedServerNameResolver::new(name))
                    }
                    None => connector,
                };
                let connector = connector
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(CappedConnector::new(tcp, max_connections));
                // HTTP/2 PINGs notice a dead connection that many queries share.
                builder
                    .http2_keep_alive_interval(TCP_KEEPALIVE)
                    .http2_keep_alive_while_idle(true);
                Self::Https(builder.build(connector))
            }
            Address::Unix(path) => Self::Unix(builder.build(CappedConnector::new(
                UnixConnector {
                    path: Arc::new(path.clone()),
                },
                max_connections,
            ))),
        })
    }

    pub async fn send(
        &self,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Self::Http(client) => client.request(request).await,
            Self::Https(client) => client.request(request).await,
            Self::Unix(client) => client.request(request).await,
        }
    }
}

/// Connects every request to one Unix socket, whatever the URI's authority.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: Arc<PathBuf>,
}

impl tower::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = Arc::clone(&self.path);
        Box::pin(async move {
            UnixStream::connect(path.as_path())
                .await
                .map(TokioIo::new)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("unix socket {}: {e}", path.display()))
                })
        })
    }
}

/// Renders an error with its whole `source()` chain: hyper's top-level
/// messages ("client error (Connect)") say little without their causes.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! The server: options, binding, serving, and graceful shutdown.
//!
//! Shutdown happens in three steps, like linkerd's drain or mini-redis:
//! 1. the shutdown future completes: the listener stops accepting;
//! 2. every stream finishes the response it is sending, then ends with
//!    `UNAVAILABLE` so Envoy reconnects (to another replica, or to this one
//!    once it is back); connections close once their streams are gone;
//! 3. whatever is still open when `drain_timeout` expires is cut.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::cache::SnapshotCache;
use crate::incoming::{self, Listen, Listener};
use crate::metrics::Metrics;
use crate::service::{Ads, Cds, DiscoveryService, Eds, Lds, Rds, Sds, ServerCore};
use crate::status::ConnectedClients;
use crate::subscription::SubscriptionRegistry;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {listen:?}")]
    Bind {
        listen: Listen,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// TLS for the xDS listener; with `client_ca_pem`, clients must present a
/// certificate signed by it (mTLS).
#[derive(Clone)]
pub struct TlsOptions {
    pub certificate_chain_pem: String,
    pub private_key_pem: String,
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("certificate_chain_pem", &self.certificate_chain_pem.len())
            .field("private_key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// Transport settings and limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest gRPC message accepted or sent. tonic's 4 MiB default is too
    /// small for the endpoint sets of large clusters.
    pub max_message_size: usize,
    /// HTTP/2 PING interval: detects dead peers behind idle streams.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Option<Duration>,
    /// HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams_per_connection: Option<u32>,
    /// Streams across all connections; further ones get `RESOURCE_EXHAUSTED`.
    pub max_streams: Option<usize>,
    /// How long streams get to finish after shutdown begins.
    pub drain_timeout: Duration,
    pub tls: Option<TlsOptions>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024 * 1024,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Some(Duration::from_secs(10)),
            max_concurrent_streams_per_connection: Some(100),
            max_streams: None,
            drain_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// An xDS server over a [`SnapshotCache`], not yet listening.
#[derive(Debug)]
pub struct XdsServer {
    cache: SnapshotCache,
    metrics: Metrics,
    options: ServerOptions,
    subscriptions: SubscriptionRegistry,
    clients: ConnectedClients,
}

impl XdsServer {
    pub fn new(cache: SnapshotCache) -> Self {
        Self {
            cache,
            metrics: Metrics::default(),
            options: ServerOptions::default(),
            subscriptions: SubscriptionRegistry::new(),
            clients: ConnectedClients::default(),
        }
    }

    /// Reports into `metrics` (also the cache's writes).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    #[must_use]
    pub fn with_options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// What connected Envoys subscribe to; valid before and after serving.
    pub fn subscriptions(&self) -> SubscriptionRegistry {
        self.subscriptions.clone()
    }

    /// The connected streams and their ACK/NACK state.
    pub fn clients(&self) -> ConnectedClients {
        self.clients.clone()
    }

    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// Binds the listener now, so callers learn the address (port 0) before
    /// serving.
    pub async fn bind(self, listen: Listen) -> Result<BoundServer, ServerError> {
        let listener = Listener::bind(&listen)
            .await
            .map_err(|source| ServerError::Bind {
                listen: listen.clone(),
                source,
            })?;
        let local_addr = match &listener {
            Listener::Tcp(tcp) => tcp.local_addr().ok(),
            Listener::Unix(..) => None,
        };
        tracing::info!(
            ?listen,
            ?local_addr,
            tls = self.options.tls.is_some(),
            "xDS server listening"
        );
        Ok(BoundServer {
            server: self,
            listener,
            local_addr,
        })
    }
}

/// A bound server; [`serve`](Self::serve) runs it.
#[derive(Debug)]
pub struct BoundServer {
    server: XdsServer,
    listener: Listener,
    local_addr: Option<SocketAddr>,
}

impl BoundServer {
    /// The bound TCP address (`None` for a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Unix socket path, if listening on one.
    pub fn unix_path(&self) -> Option<PathBuf> {
        match &self.listener {
            Listener::Unix(_, path) => Some(path.clone()),
            Listener::Tcp(_) => None,
        }
    }

    /// Serves until `shutdown` completes, then drains (see module docs).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let BoundServer {
            server, listener, ..
        } = self;
        let options = server.options.clone();
        server.cache.attach_metrics(&server.metrics);
        let drain = CancellationToken::new();
        let abort = CancellationToken::new();
        let core = Arc::new(ServerCore {
            cache: server.cache,
            subscriptions: server.subscriptions,
            clients: server.clients,
            metrics: server.metrics,
            drain: drain.clone(),
            max_message_size: options.max_message_size,
            max_streams: options.max_streams,
            open_streams: Arc::new(AtomicUsize::new(0)),
        });
        let router = router(&options, &core)?;
        let signal = {
            let drain = drain.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections, draining streams");
                drain.cancel();
            }
        };
        let serving: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match listener {
            Listener::Tcp(tcp) => Box::pin(
                router.serve_with_incoming_shutdown(incoming::accept(tcp, abort.clone()), signal),
            ),
            Listener::Unix(unix, _) => Box::pin(
                router.serve_with_incoming_shutdown(incoming::accept(unix, abort.clone()), signal),
            ),
        };
        let mut serving = serving;
        let deadline = async {
            drain.cancelled().await;
            tokio::time::sleep(options.drain_timeout).await;
        };
        let result = tokio::select! {
            result = &mut serving => result,
            () = deadline => {
                tracing::warn!(
                    timeout = ?options.drain_timeout,
                    "drain deadline passed; closing the remaining connections"
                );
                abort.cancel();
                serving.await
            }
        };
        tracing::info!("xDS server stopped");
        result.map_err(ServerError::Serve)
    }
}

fn router(options: &ServerOptions, core: &Arc<ServerCore>) -> Result<Router, ServerError> {
    let mut builder = Server::builder()
        .http2_keepalive_interval(options.http2_keepalive_interval)
        .http2_keepalive_timeout(options.http2_keepalive_timeout)
        .max_concurrent_streams(options.max_concurrent_streams_per_connection);
    if let Some(tls) = &options.tls {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            &tls.certificate_chain_pem,
            &tls.private_key_pem,
        ));
        if let Some(ca) = &tls.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config).map_err(ServerError::Tls)?;
    }
    Ok(builder
        .add_service(DiscoveryService::<Ads>::new(core.clone()))
        .add_service(DiscoveryService::<Cds>::new(core.clone()))
        .add_service(DiscoveryService::<Eds>::new(core.clone()))
        .add_service(DiscoveryService::<Lds>::new(core.clone()))
        .add_service(DiscoveryService::<Rds>::new(core.clone()))
        .add_service(DiscoveryService::<Sds>::new(core.clone())))
}

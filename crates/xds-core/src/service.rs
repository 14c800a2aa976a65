//! The gRPC services: ADS and the per-type CDS, EDS, LDS, RDS and SDS.
//!
//! All six are one generic service parameterised by an [`Api`] marker, so
//! each gets its own gRPC name while sharing every line of behaviour. They
//! are hand-routed rather than generated because responses are written by
//! this crate's own body (see `codec`). The unary `Fetch*` methods (xDS over REST
//! semantics) are not served: streams are how Envoy uses gRPC xDS.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::{Status, Streaming};

use crate::cache::SnapshotCache;
use crate::codec::{RequestDecoder, ResponseBody};
use crate::delta::Delta;
use crate::metrics::{Metrics, StreamLabel};
use crate::protocol::{Protocol, StreamContext};
use crate::resource::ResourceType;
use crate::sotw::Sotw;
use crate::status::ConnectedClients;
use crate::stream::{self, StreamParts};
use crate::subscription::SubscriptionRegistry;

/// One xDS gRPC service: its name, methods and (unless ADS) its type.
pub(crate) trait Api: Send + Sync + 'static {
    const SERVICE: &'static str;
    const SHORT_NAME: &'static str;
    const SOTW_METHOD: &'static str;
    const DELTA_METHOD: &'static str;
    const TYPE: Option<ResourceType>;
}

macro_rules! api {
    ($marker:ident, $service:literal, $short:literal, $sotw:literal, $delta:literal, $ty:expr) => {
        #[derive(Debug)]
        pub(crate) struct $marker;
        impl Api for $marker {
            const SERVICE: &'static str = $service;
            const SHORT_NAME: &'static str = $short;
            const SOTW_METHOD: &'static str = $sotw;
            const DELTA_METHOD: &'static str = $delta;
            const TYPE: Option<ResourceType> = $ty;
        }
    };
}

api!(
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    "ads",
    "StreamAggregatedResources",
    "DeltaAggregatedResources",
    None
);
api!(
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    "cds",
    "StreamClusters",
    "DeltaClusters",
    Some(ResourceType::Cluster)
);
api!(
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    "eds",
    "StreamEndpoints",
    "DeltaEndpoints",
    Some(ResourceType::Endpoint)
);
api!(
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    "lds",
    "StreamListeners",
    "DeltaListeners",
    Some(ResourceType::Listener)
);
api!(
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    "rds",
    "StreamRoutes",
    "DeltaRoutes",
    Some(ResourceType::Route)
);
api!(
    Sds,
    "envoy.service.secret.v3.SecretDiscoveryService",
    "sds",
    "StreamSecrets",
    "DeltaSecrets",
    Some(ResourceType::Secret)
);

/// State shared by every stream of a server.
#[derive(Debug)]
pub(crate) struct ServerCore {
    pub(crate) cache: SnapshotCache,
    pub(crate) subscriptions: SubscriptionRegistry,
    pub(crate) clients: ConnectedClients,
    pub(crate) metrics: Metrics,
    pub(crate) drain: CancellationToken,
    pub(crate) max_message_size: usize,
    pub(crate) max_streams: Option<usize>,
    pub(crate) open_streams: Arc<AtomicUsize>,
}

/// Holds one of the server's stream slots.
#[derive(Debug)]
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServerCore {
    fn take_slot(&self) -> Result<StreamSlot, Status> {
        let open = self.open_streams.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = StreamSlot(self.open_streams.clone());
        match self.max_streams {
            Some(max) if open > max => Err(Status::resource_exhausted(format!(
                "this server serves at most {max} streams"
            ))),
            _ => Ok(slot),
        }
    }

    /// Answers one gRPC call with a response stream, or an error status.
    fn respond<A, P, F, B>(
        &self,
        request: http::Request<B>,
        new_protocol: F,
    ) -> http::Response<tonic::body::Body>
    where
        A: Api,
        P: Protocol,
        F: FnOnce(StreamContext) -> P,
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        let compressed = request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|encoding| encoding != "identity");
        if compressed {
            return Status::unimplemented("compressed requests are not supported").into_http();
        }
        let (parts, body) = request.into_parts();
        let requests = Streaming::new_request(
            RequestDecoder::<P::Request>::default(),
            body,
            None,
            Some(self.max_message_size),
        );
        let request = tonic::Request::from_http(http::Request::from_parts(parts, requests));
        match self.open::<A, P, F>(request, new_protocol) {
            Ok(responses) => {
                let body = ResponseBody::new(responses, self.max_message_size);
                let mut response = http::Response::new(tonic::body::Body::new(body));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                response
            }
            Err(status) => status.into_http(),
        }
    }

    fn open<A: Api, P: Protocol, F: FnOnce(StreamContext) -> P>(
        &self,
        request: tonic::Request<Streaming<P::Request>>,
        new_protocol: F,
    ) -> Result<
        impl futures::Stream<Item = Result<P::Response, Status>> + Send + 'static + use<A, P, F>,
        Status,
    > {
        if self.drain.is_cancelled() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let slot = self.take_slot()?;
        let peer = request.remote_addr();
        let status = Arc::new(self.clients.register(A::SHORT_NAME, P::NAME, peer));
        let span = tracing::info_span!(
            "xds_stream",
            id = status.id(),
            service = A::SHORT_NAME,
            protocol = P::NAME,
            resource_type = A::TYPE.map(ResourceType::short_name),
            peer = peer.map(tracing::field::display),
            node_id = tracing::field::Empty,
            node_key = tracing::field::Empty,
        );
        let protocol = new_protocol(StreamContext::new(
            A::TYPE,
            self.subscriptions.clone(),
            self.metrics.clone(),
            status.clone(),
        ));
        let parts = StreamParts {
            cache: self.cache.clone(),
            drain: self.drain.clone(),
            metrics: self.metrics.clone(),
            label: StreamLabel {
                service: A::SHORT_NAME,
                protocol: P::NAME,
            },
            status,
            span,
        };
        let responses = stream::serve(protocol, request.into_inner(), parts);
        // The slot is released when the response body is dropped.
        Ok(futures::StreamExt::map(responses, move |item| {
            let _slot = &slot;
            item
        }))
    }
}

/// The tonic service for one [`Api`].
#[derive(Debug)]
pub(crate) struct DiscoveryService<A> {
    core: Arc<ServerCore>,
    _api: PhantomData<fn() -> A>,
}

impl<A> DiscoveryService<A> {
    pub(crate) fn new(core: Arc<ServerCore>) -> Self {
        Self {
            core,
            _api: PhantomData,
        }
    }
}

impl<A> Clone for DiscoveryService<A> {
    fn clone(&self) -> Self {
        Self::new(self.core.clone())
    }
}

impl<A: Api> NamedService for DiscoveryService<A> {
    const NAME: &'static str = A::SERVICE;
}

impl<A, B> Service<http::Request<B>> for DiscoveryService<A>
where
    A: Api,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(A::SERVICE))
            .and_then(|path| path.strip_prefix('/'))
            .unwrap_or_default();
        let response = if method == A::SOTW_METHOD {
            self.core.respond::<A, Sotw, _, B>(request, Sotw::new)
        } else if method == A::DELTA_METHOD {
            self.core.respond::<A, Delta, _, B>(request, Delta::new)
        } else {
            Status::unimplemented("").into_http()
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

//! What the two xDS protocol variants share: the stream's context and the
//! interface the stream driver calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tonic::Status;

use crate::cache::Snapshot;
use crate::codec::EncodeMessage;
use crate::metrics::Metrics;
use crate::resource::ResourceType;
use crate::status::{Rejection, StatusHandle};
use crate::subscription::{Subscription, SubscriptionRegistry};
use crate::version::Version;

/// One protocol variant's state machine for one stream.
///
/// The driver feeds it requests and snapshots and asks it, whenever it is
/// free to send, for the next response. Responses come out in push order
/// (clusters, endpoints, listeners, routes, secrets) and are computed at
/// the moment they can be sent, so a burst of cache writes collapses into
/// one response carrying the latest state.
pub(crate) trait Protocol: Send + 'static {
    type Request: XdsRequest;
    type Response: EncodeMessage + Send + 'static;

    /// `sotw` or `delta`, for logs and metrics.
    const NAME: &'static str;

    /// Applies a request; an error ends the stream with that status.
    fn on_request(&mut self, request: Self::Request, snapshot: &Snapshot) -> Result<(), Status>;

    /// The next response due, if any.
    fn next_response(&mut self, snapshot: &Snapshot) -> Option<Self::Response>;

    /// When a response falls due with no request or cache change to wake
    /// the stream (a deferred empty assignment), if one does.
    fn next_wake(&self) -> Option<std::time::Instant>;
}

/// A request of either protocol variant.
pub(crate) trait XdsRequest: Message + Default + Send + 'static {
    /// The node the request names; the first request of a stream must.
    fn node(&self) -> Option<&Node>;
}

impl XdsRequest for DiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

/// One stream's protocol state: its context and, per type it subscribes
/// to, the variant's state for that type, ordered by type (the push order).
#[derive(Debug)]
pub(crate) struct PerType<T> {
    pub(crate) ctx: StreamContext,
    pub(crate) types: BTreeMap<ResourceType, T>,
}

impl<T> PerType<T> {
    pub(crate) fn new(ctx: StreamContext) -> Self {
        Self {
            ctx,
            types: BTreeMap::new(),
        }
    }
}

/// What a protocol state machine needs from the server.
#[derive(Debug)]
pub(crate) struct StreamContext {
    /// The type of a per-type service (EDS...); `None` on ADS.
    pub(crate) service_type: Option<ResourceType>,
    pub(crate) subscriptions: SubscriptionRegistry,
    pub(crate) metrics: Metrics,
    pub(crate) status: Arc<StatusHandle>,
    next_nonce: u64,
}

impl StreamContext {
    pub(crate) fn new(
        service_type: Option<ResourceType>,
        subscriptions: SubscriptionRegistry,
        metrics: Metrics,
        status: Arc<StatusHandle>,
    ) -> Self {
        Self {
            service_type,
            subscriptions,
            metrics,
            status,
            next_nonce: 0,
        }
    }

    /// The type a request is about. `Ok(None)` for a type this server does
    /// not serve on ADS (ignored: Envoy may ask for types another control
    /// plane could answer, and that must not cost it the others).
    pub(crate) fn request_type(&self, type_url: &str) -> Result<Option<ResourceType>, Status> {
        match (self.service_type, ResourceType::from_type_url(type_url)) {
            (Some(service_type), _) if type_url.is_empty() => Ok(Some(service_type)),
            (Some(service_type), Some(requested)) if requested == service_type => {
                Ok(Some(service_type))
            }
            (Some(service_type), _) => Err(Status::invalid_argument(format!(
                "this service serves {}, not `{type_url}`",
                service_type.type_url()
            ))),
            (None, _) if type_url.is_empty() => Err(Status::invalid_argument(
                "requests on the aggregated service must carry a type_url",
            )),
            (None, requested) => Ok(requested),
        }
    }

    /// A nonce unique within the stream, which is all the protocol needs.
    pub(crate) fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    /// Counts and shows Envoy's answer to a response: both protocols
    /// report ACKs and NACKs alike, whatever tells them which was answered.
    pub(crate) fn record_reply(&self, resource_type: ResourceType, reply: Reply) {
        match reply {
            Reply::Accepted { version } => {
                self.metrics.acked(resource_type);
                self.status.update_type(resource_type, |status| {
                    status.acks += 1;
                    status.acked_version = Some(version);
                });
            }
            Reply::Rejected(rejection) => {
                self.metrics.nacked(resource_type);
                self.status.update_type(resource_type, |status| {
                    status.nacks += 1;
                    status.last_rejection = Some(rejection);
                });
            }
        }
    }

    /// Shows what a stream now subscribes to of `resource_type`.
    pub(crate) fn record_subscription(
        &self,
        resource_type: ResourceType,
        subscription: &Subscription,
    ) {
        let (wildcard, subscribed) = (subscription.is_wildcard(), subscription.names().count());
        self.status.update_type(resource_type, |status| {
            status.wildcard = wildcard;
            status.subscribed = subscribed;
        });
    }

    /// Shows that the stream has nothing of `resource_type` left to send
    /// from the cache's `version`. `shown` is the caller's record of the
    /// last version shown, so a stream woken by a write to another type
    /// takes no lock.
    pub(crate) fn record_caught_up(
        &self,
        resource_type: ResourceType,
        version: Version,
        shown: &mut Option<Version>,
    ) {
        if *shown == Some(version) {
            return;
        }
        *shown = Some(version);
        self.status.update_type(resource_type, |status| {
            status.caught_up_version = Some(version.to_string());
        });
    }

    /// Counts and shows a response about to be sent.
    pub(crate) fn record_push(
        &self,
        resource_type: ResourceType,
        version: &str,
        resources: usize,
        after_write: Option<Duration>,
    ) {
        self.metrics.pushed(resource_type, resources, after_write);
        self.status.update_type(resource_type, |status| {
            status.pushes += 1;
            status.sent_version = Some(version.to_owned());
        });
    }
}

/// Envoy's answer to one response.
#[derive(Debug)]
pub(crate) enum Reply {
    /// An ACK: the client now runs `version`.
    Accepted { version: String },
    /// A NACK, with the version refused and Envoy's message.
    Rejected(Rejection),
}

/// Counts a stream as watching a type for as long as it lives.
#[derive(Debug)]
pub(crate) struct TypeWatch {
    metrics: Metrics,
    resource_type: ResourceType,
}

impl TypeWatch {
    pub(crate) fn new(metrics: &Metrics, resource_type: ResourceType) -> Self {
        metrics.type_watched(resource_type);
        Self {
            metrics: metrics.clone(),
            resource_type,
        }
    }
}

impl Drop for TypeWatch {
    fn drop(&mut self) {
        self.metrics.type_unwatched(self.resource_type);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ConnectedClients;

    fn context(service_type: Option<ResourceType>) -> StreamContext {
        StreamContext::new(
            service_type,
            SubscriptionRegistry::new(),
            Metrics::default(),
            Arc::new(ConnectedClients::default().register("test", "sotw", None)),
        )
    }

    #[test]
    fn per_type_services_accept_their_type_implicitly_or_explicitly() {
        let eds = context(Some(ResourceType::Endpoint));
        assert_eq!(
            eds.request_type("").ok(),
            Some(Some(ResourceType::Endpoint))
        );
        assert_eq!(
            eds.request_type(ResourceType::Endpoint.type_url()).ok(),
            Some(Some(ResourceType::Endpoint))
        );
        assert!(eds.request_type(ResourceType::Cluster.type_url()).is_err());
    }

    #[test]
    fn ads_needs_a_type_and_ignores_unknown_ones() {
        let ads = context(None);
        assert!(ads.request_type("").is_err());
        assert_eq!(
            ads.request_type("type.googleapis.com/envoy.service.runtime.v3.Runtime")
                .ok(),
            Some(None)
        );
        assert_eq!(
            ads.request_type(ResourceType::Secret.type_url()).ok(),
            Some(Some(ResourceType::Secret))
        );
    }

    #[test]
    fn nonces_never_repeat_on_a_stream() {
        let mut ctx = context(None);
        let a = ctx.nonce();
        let b = ctx.nonce();
        assert_ne!(a, b);
        assert!(!a.is_empty());
    }
}

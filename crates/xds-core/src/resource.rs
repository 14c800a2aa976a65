//! The resources this crate serves: their types, names and encoded form.
//!
//! A [`Resource`] is encoded once, when the application puts it into the
//! cache, as a complete `google.protobuf.Any`. Every stream that sends it
//! shares those bytes (a reference-counted [`Bytes`]); a push to a thousand
//! Envoys copies them into a thousand gRPC frames and never re-encodes.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::version::Version;

/// A resource type this server knows, in the order ADS pushes them.
///
/// The order is make-before-break: Envoy only asks for endpoints of
/// clusters it has, and a route may name a cluster, so clusters go first,
/// then their endpoints, then listeners, then the routes listeners name.
/// Secrets go last: Envoy subscribes to a secret only once a cluster or
/// listener refers to it, and warms that resource until the secret arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|ty| ty.type_url() == type_url)
    }

    /// A short lowercase name for logs and metric labels.
    pub const fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoint => "endpoint",
            ResourceType::Listener => "listener",
            ResourceType::Route => "route",
            ResourceType::Secret => "secret",
        }
    }

    /// State-of-the-world responses of this type must list every resource:
    /// Envoy removes what a CDS or LDS response leaves out, while EDS, RDS
    /// and SDS responses may carry only the resources that changed.
    pub const fn is_full_state(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// Why a resource could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("type URL `{0}` is not one this server serves")]
    UnknownType(String),
    #[error("resource `{name}` is a `{actual}`, not a `{expected}`")]
    TypeMismatch {
        name: String,
        expected: &'static str,
        actual: String,
    },
    #[error("a resource must have a non-empty name")]
    EmptyName,
}

/// An Envoy API message this crate can serve, with the field that names it.
pub trait XdsResource: Message + Name + Sized {
    const TYPE: ResourceType;

    /// The name Envoy subscribes to (`Cluster.name`, `ClusterLoadAssignment.cluster_name`...).
    fn resource_name(&self) -> &str;
}

impl XdsResource for Cluster {
    const TYPE: ResourceType = ResourceType::Cluster;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for ClusterLoadAssignment {
    const TYPE: ResourceType = ResourceType::Endpoint;
    fn resource_name(&self) -> &str {
        &self.cluster_name
    }
}

impl XdsResource for Listener {
    const TYPE: ResourceType = ResourceType::Listener;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for RouteConfiguration {
    const TYPE: ResourceType = ResourceType::Route;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for Secret {
    const TYPE: ResourceType = ResourceType::Secret;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

/// One named, versioned, encoded resource; cheap to clone.
#[derive(Clone)]
pub struct Resource {
    inner: Arc<Inner>,
}

struct Inner {
    resource_type: ResourceType,
    name: Arc<str>,
    version: Version,
    /// The complete encoded `google.protobuf.Any`.
    any: Bytes,
}

impl Resource {
    /// Encodes a typed message; its name comes from the message itself.
    pub fn encode<M: XdsResource>(message: &M) -> Result<Self, ResourceError> {
        let any = Any {
            type_url: M::TYPE.type_url().to_owned(),
            value: message.encode_to_vec(),
        };
        Self::from_parts(M::TYPE, message.resource_name(), &any)
    }

    /// Wraps an already-packed `Any`, checking that it is of a served type.
    pub fn from_any(name: &str, any: &Any) -> Result<Self, ResourceError> {
        let resource_type = ResourceType::from_type_url(&any.type_url)
            .ok_or_else(|| ResourceError::UnknownType(any.type_url.clone()))?;
        Self::from_parts(resource_type, name, any)
    }

    /// Wraps an `Any` that must be of `resource_type`.
    pub fn from_typed_any(
        resource_type: ResourceType,
        name: &str,
        any: &Any,
    ) -> Result<Self, ResourceError> {
        if any.type_url != resource_type.type_url() {
            return Err(ResourceError::TypeMismatch {
                name: name.to_owned(),
                expected: resource_type.type_url(),
                actual: any.type_url.clone(),
            });
        }
        Self::from_parts(resource_type, name, any)
    }

    fn from_parts(
        resource_type: ResourceType,
        name: &str,
        any: &Any,
    ) -> Result<Self, ResourceError> {
        if name.is_empty() {
            return Err(ResourceError::EmptyName);
        }
        let any = Bytes::from(any.encode_to_vec());
        Ok(Self {
            inner: Arc::new(Inner {
                resource_type,
                name: Arc::from(name),
                version: Version::of(&any),
                any,
            }),
        })
    }

    /// The stand-in for a requested cluster the application has no
    /// endpoints for: answering at once with no endpoints lets Envoy finish
    /// initialising instead of waiting `initial_fetch_timeout` (15 s).
    pub(crate) fn empty_assignment(cluster_name: &str) -> Self {
        let assignment = ClusterLoadAssignment {
            cluster_name: cluster_name.to_owned(),
            ..ClusterLoadAssignment::default()
        };
        let any = Any {
            type_url: ResourceType::Endpoint.type_url().to_owned(),
            value: assignment.encode_to_vec(),
        };
        let any = Bytes::from(any.encode_to_vec());
        Self {
            inner: Arc::new(Inner {
                resource_type: ResourceType::Endpoint,
                name: Arc::from(cluster_name),
                version: Version::of(&any),
                any,
            }),
        }
    }

    pub fn resource_type(&self) -> ResourceType {
        self.inner.resource_type
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.inner.name
    }

    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The encoded `google.protobuf.Any`, shared with every stream sending it.
    pub fn encoded_any(&self) -> &Bytes {
        &self.inner.any
    }

    /// Decodes the `Any` again (for inspection; the server never needs to).
    pub fn to_any(&self) -> Result<Any, prost::DecodeError> {
        Any::decode(self.inner.any.clone())
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("type", &self.inner.resource_type)
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("bytes", &self.inner.any.len())
            .finish()
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.inner.resource_type == other.inner.resource_type
            && self.inner.name == other.inner.name
            && self.inner.version == other.inner.version
    }
}

impl Eq for Resource {}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(name: &str, port: u32) -> ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: "127.0.0.1".to_owned(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                    port,
                                )),
                                ..SocketAddress::default()
                            })),
                        }),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                }],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }
    }

    #[test]
    fn type_urls_round_trip_and_unknown_ones_are_refused() {
        for ty in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(ty.type_url()), Some(ty));
        }
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/envoy.config.core.v3.Node"),
            None
        );
    }

    #[test]
    fn the_push_order_is_clusters_endpoints_listeners_routes_secrets() {
        let mut shuffled = vec![
            ResourceType::Secret,
            ResourceType::Route,
            ResourceType::Endpoint,
            ResourceType::Listener,
            ResourceType::Cluster,
        ];
        shuffled.sort();
        assert_eq!(shuffled, ResourceType::ALL.to_vec());
    }

    #[test]
    fn an_encoded_resource_is_named_by_its_message_and_decodes_back() {
        let resource = Resource::encode(&assignment("web", 8080)).expect("encodes");
        assert_eq!(resource.name(), "web");
        assert_eq!(resource.resource_type(), ResourceType::Endpoint);
        let any = resource.to_any().expect("decodes");
        assert_eq!(any.type_url, ResourceType::Endpoint.type_url());
        let decoded = ClusterLoadAssignment::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(decoded, assignment("web", 8080));
    }

    #[test]
    fn the_version_follows_the_content() {
        let a = Resource::encode(&assignment("web", 8080)).expect("encodes");
        let same = Resource::encode(&assignment("web", 8080)).expect("encodes");
        let changed = Resource::encode(&assignment("web", 8081)).expect("encodes");
        assert_eq!(a.version(), same.version());
        assert_ne!(a.version(), changed.version());
    }

    #[test]
    fn an_empty_assignment_equals_one_the_application_could_set() {
        let stand_in = Resource::empty_assignment("web");
        let explicit = Resource::encode(&ClusterLoadAssignment {
            cluster_name: "web".to_owned(),
            ..ClusterLoadAssignment::default()
        })
        .expect("encodes");
        assert_eq!(stand_in, explicit);
    }

    #[test]
    fn anys_of_the_wrong_type_or_without_a_name_are_refused() {
        let any = Any {
            type_url: ResourceType::Cluster.type_url().to_owned(),
            value: Vec::new(),
        };
        assert!(matches!(
            Resource::from_typed_any(ResourceType::Endpoint, "web", &any),
            Err(ResourceError::TypeMismatch { .. })
        ));
        assert_eq!(
            Resource::from_any("", &any).unwrap_err(),
            ResourceError::EmptyName
        );
        let unknown = Any {
            type_url: "type.googleapis.com/example.Unknown".to_owned(),
            value: Vec::new(),
        };
        assert!(matches!(
            Resource::from_any("x", &unknown),
            Err(ResourceError::UnknownType(_))
        ));
        assert!(Resource::from_any("c", &any).is_ok());
    }
}

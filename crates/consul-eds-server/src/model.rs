//! What the server knows about services, in its own terms.
//!
//! These types sit between Consul's JSON and Envoy's protobuf, so the
//! decisions between the two are testable without either: `source` reads
//! Consul's answers into them (choosing each instance's address there, per
//! `--address`), `health` turns instances into endpoints by the health
//! policy, and `translate` writes the protobuf.

use std::sync::Arc;

use serde::Serialize;

/// The registry a service's instances come from.
///
/// Nomad (1.3 and later) keeps a service registry of its own for jobs whose
/// services say `provider = "nomad"`; a cluster may be fed from either
/// registry or from both (see `naming` for how a cluster name chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Consul,
    Nomad,
}

impl SourceKind {
    pub const ALL: [Self; 2] = [Self::Consul, Self::Nomad];

    /// The name used in `--sources`, in cluster names (`{source}`) and in
    /// metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consul => "consul",
            Self::Nomad => "nomad",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The aggregated state of an instance's checks, worst first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Passing,
    Warning,
    Critical,
}

/// Consul's `Weights`: how much traffic an instance gets in each state.
/// Consul's defaults are passing 1, warning 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// Where an instance runs, as Envoy's locality (region = datacenter).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// One instance of a Consul service, as read from the health endpoint.
///
/// Names, addresses and the locality are shared (`Arc`), not copied: an
/// [`Endpoint`] made from an instance points at the same text, and the
/// source gives instances on the same node the same node name and address
/// (100,000 instances on 500 nodes hold 500 of each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceInstance {
    /// Consul's service ID (unique per agent).
    #[serde(serialize_with = "shared")]
    pub id: Arc<str>,
    #[serde(serialize_with = "shared")]
    pub node: Arc<str>,
    /// The address chosen by the address policy (IPv4, IPv6 or hostname).
    #[serde(serialize_with = "shared")]
    pub address: Arc<str>,
    /// Whether `address` is an IP address, decided once when the entry is
    /// read: EDS endpoints must be IPs, so an instance registered with a
    /// hostname is shown as excluded instead of being served.
    #[serde(skip)]
    pub address_is_ip: bool,
    pub port: u16,
    pub checks: CheckState,
    /// Node or service maintenance mode is on.
    pub maintenance: bool,
    pub weights: Weights,
    pub tags: Vec<String>,
    #[serde(serialize_with = "shared")]
    pub locality: Arc<Locality>,
    /// The registry it was read from.
    pub source: SourceKind,
}

/// What Envoy is told about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealth {
    Healthy,
    Degraded,
    Unhealthy,
    /// In-flight requests finish; no new ones are sent.
    Draining,
}

/// One endpoint of a cluster, with the reason it is served as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    #[serde(serialize_with = "shared")]
    pub instance_id: Arc<str>,
    #[serde(serialize_with = "shared")]
    pub node: Arc<str>,
    #[serde(serialize_with = "shared")]
    pub address: Arc<str>,
    pub port: u16,
    pub health: EndpointHealth,
    /// Envoy's `load_balancing_weight`; always at least 1 (Envoy rejects 0).
    pub weight: u32,
    #[serde(serialize_with = "shared")]
    pub locality: Arc<Locality>,
    /// 0 for the local datacenter, 1.. for failover datacenters in order.
    pub priority: u32,
    /// Why this endpoint has this health and weight, for `/debug/snapshot`.
    pub reason: &'static str,
}

/// Everything one Envoy cluster serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterEndpoints {
    pub cluster: String,
    /// Shared with the admin view of the cluster and with what the engine
    /// remembers as published: one copy of each endpoint, not three.
    #[serde(serialize_with = "shared")]
    pub endpoints: Arc<[Endpoint]>,
}

/// Serializes what an `Arc` points at, as if it were held directly (serde's
/// own impl for `Arc` is behind its `rc` feature).
pub(crate) fn shared<T, S>(value: &Arc<T>, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Serialize + ?Sized,
    S: serde::Serializer,
{
    (**value).serialize(serializer)
}

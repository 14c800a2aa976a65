//! What the gateway shows: its metrics, and the route table as last
//! published, for `/debug/routes` and the status page.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use route_tags::{ListenerSpec, ProblemKind, RouteTable};
use serde::Serialize;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: &'static str,
}

type StepHistograms = Family<StepLabel, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // 0.1 ms to about 6.5 s: an acknowledgement on loopback takes well
    // under a millisecond, a wait at its bound 5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    /// Services whose catalog tags mention the prefix (watched for routes).
    pub services: Gauge,
    /// Routes served, summed over listeners.
    pub routes: Gauge,
    /// Route claims lost to another service's claim on the same host + path.
    pub conflicts: Gauge,
    /// Tags that could not be read.
    pub invalid_tags: Gauge,
    /// Routes whose listeners are not declared.
    pub unrouted: Gauge,
    /// Writes of gateway resources to the xDS cache, per type.
    pub pushes: Family<TypeLabel, Counter>,
    /// Make-before-break waits that ended at their bound.
    pub ack_timeouts: Counter,
    /// Building the route table and translating it, per rebuild.
    pub rebuild_seconds: Histogram,
    /// Each step of a publication (see `publish::PublishStep`).
    pub publish_step_seconds: StepHistograms,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            services: Gauge::default(),
            routes: Gauge::default(),
            conflicts: Gauge::default(),
            invalid_tags: Gauge::default(),
            unrouted: Gauge::default(),
            pushes: Family::default(),
            ack_timeouts: Counter::default(),
            rebuild_seconds: step_histogram(),
            publish_step_seconds: StepHistograms::new_with_constructor(step_histogram),
        }
    }
}

impl GatewayMetrics {
    /// Registers the metrics under `consul_eds_gateway_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("consul_eds_gateway");
        registry.register(
            "services",
            "Services whose tags mention the route-tag prefix",
            self.services.clone(),
        );
        registry.register(
            "routes",
            "Routes served, summed over listeners",
            self.routes.clone(),
        );
        registry.register(
            "conflicts",
            "Route claims not served because another service holds the same host and path",
            self.conflicts.clone(),
        );
        registry.register(
            "invalid_tags",
            "Route tags that could not be read (the rest of the service's tags still apply)",
            self.invalid_tags.clone(),
        );
        registry.register(
            "unrouted",
            "Routes not served because none of their listeners is declared",
            self.unrouted.clone(),
        );
        registry.register(
            "pushes",
            "Gateway resources written to the xDS cache, per type",
            self.pushes.clone(),
        );
        registry.register(
            "ack_timeouts",
            "Make-before-break waits for Envoy's acknowledgement that ended at their bound",
            self.ack_timeouts.clone(),
        );
        registry.register(
            "rebuild_seconds",
            "Time to build the route table from the tags and translate it into Envoy resources",
            self.rebuild_seconds.clone(),
        );
        registry.register(
            "publish_step_seconds",
            "Time of each step of writing a change make before break: endpoints_cached, clusters_acknowledged, routes_written, clusters_removed",
            self.publish_step_seconds.clone(),
        );
    }

    pub fn observe(&self, table: &RouteTable, services: usize) {
        let count = |wanted: fn(&ProblemKind) -> bool| {
            table.problems.iter().filter(|p| wanted(&p.kind)).count() as i64
        };
        self.services.set(services as i64);
        self.routes.set(table.route_count() as i64);
        self.conflicts
            .set(count(|kind| matches!(kind, ProblemKind::Conflict { .. })));
        self.invalid_tags
            .set(count(|kind| matches!(kind, ProblemKind::InvalidTag)));
        self.unrouted
            .set(count(|kind| matches!(kind, ProblemKind::NoListener)));
    }
}

/// One service that may route, as the gateway last read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub instances: usize,
    /// Set when its instances' tags disagree: which declaration was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
    /// Still held although the catalog no longer lists it.
    pub held: bool,
}

/// The gateway's state, as shown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayStatus {
    /// False until the first table was published.
    pub published: bool,
    pub listeners: Vec<ListenerSpec>,
    /// Shared with the gateway actor, so showing it copies nothing.
    #[serde(serialize_with = "shared_table")]
    pub table: Arc<RouteTable>,
    pub services: BTreeMap<String, ServiceStatus>,
    /// TLS listeners not sent to Envoy because no TLS host routes there yet.
    pub listeners_without_hosts: Vec<String>,
}

fn shared_table<S: serde::Serializer>(
    table: &Arc<RouteTable>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    table.as_ref().serialize(serializer)
}

/// A shared handle on the gateway's status (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct GatewayView {
    inner: Arc<RwLock<GatewayStatus>>,
}

impl GatewayView {
    pub fn get(&self) -> GatewayStatus {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, status: GatewayStatus) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = status;
    }
}

//! The engine's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
    pub datacenter: String,
}

#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    /// Consul watches currently running, one per (service, datacenter).
    pub watches: Gauge,
    /// Endpoints served per cluster.
    pub endpoints: Family<ClusterLabel, Gauge>,
    /// 1 while a service's Consul reads fail and its last endpoints are held.
    pub degraded: Family<ServiceLabel, Gauge>,
    /// Batches of changed clusters handed to the xDS cache.
    pub pushes: Counter,
    /// Clusters updated, summed over pushes.
    pub cluster_updates: Counter,
    /// Empty answers after a Consul index reset held back during the grace period.
    pub empty_after_reset_held: Counter,
}

impl EngineMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("consul_eds");
        registry.register(
            "watches",
            "Consul watches running, one per service and datacenter",
            self.watches.clone(),
        );
        registry.register(
            "cluster_endpoints",
            "Endpoints served per cluster",
            self.endpoints.clone(),
        );
        registry.register(
            "service_degraded",
            "1 while Consul reads for the service fail and its last endpoints are held",
            self.degraded.clone(),
        );
        registry.register(
            "pushes",
            "Batches of changed clusters handed to the xDS cache",
            self.pushes.clone(),
        );
        registry.register(
            "cluster_updates",
            "Cluster updates handed to the xDS cache",
            self.cluster_updates.clone(),
        );
        registry.register(
            "empty_after_reset_held",
            "Empty answers following a Consul index reset, held back during the grace period",
            self.empty_after_reset_held.clone(),
        );
    }
}

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
    /// `consul` or `nomad`.
    pub source: String,
    /// Nomad's namespace; empty for Consul.
    pub namespace: String,
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
    /// Answers that removed every instance of a service at once (no reset),
    /// held back during the grace period, degraded, then read afresh.
    pub vanished_held: Counter,
    /// Answers Consul said its ACLs filtered, not believed.
    pub acl_filtered: Counter,
}

impl EngineMetrics {
    /// Registers the metrics under `consul_eds_` in `registry`.
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
        registry.register(
            "vanished_held",
            "Answers that removed every instance of a service at once, held back during the \
             grace period, then read afresh",
            self.vanished_held.clone(),
        );
        registry.register(
            "acl_filtered_answers",
            "Answers Consul said its ACLs filtered (X-Consul-Results-Filtered-By-ACLs), not believed",
            self.acl_filtered.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_under_the_consul_eds_prefix_and_export() {
        let mut registry = Registry::default();
        let metrics = EngineMetrics::default();
        metrics.register(&mut registry);
        metrics.watches.set(2);
        metrics
            .endpoints
            .get_or_create(&ClusterLabel {
                cluster: "web".to_owned(),
            })
            .set(3);
        metrics
            .degraded
            .get_or_create(&ServiceLabel {
                service: "web".to_owned(),
                datacenter: "dc1".to_owned(),
                source: "consul".to_owned(),
                namespace: String::new(),
            })
            .set(1);
        metrics.pushes.inc();
        metrics.cluster_updates.inc_by(4);
        metrics.empty_after_reset_held.inc();
        metrics.vanished_held.inc();
        metrics.acl_filtered.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "consul_eds_watches 2",
            "consul_eds_cluster_endpoints{cluster=\"web\"} 3",
            "consul_eds_service_degraded{service=\"web\",datacenter=\"dc1\",source=\"consul\",namespace=\"\"} 1",
            "consul_eds_pushes_total 1",
            "consul_eds_cluster_updates_total 4",
            "consul_eds_empty_after_reset_held_total 1",
            "consul_eds_vanished_held_total 1",
            "consul_eds_acl_filtered_answers_total 1",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}

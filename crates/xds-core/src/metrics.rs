//! Prometheus metrics of the cache and the streams.
//!
//! Everything is labelled by resource type (and streams by service and
//! protocol), never by node or resource name: a fleet of Envoys or a
//! thousand clusters must not turn into a thousand series.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::resource::ResourceType;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// `ads`, `cds`, `eds`, `lds`, `rds` or `sds`.
    pub service: &'static str,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
}

type HistogramFamily = Family<TypeLabel, Histogram, fn() -> Histogram>;

/// The xDS metrics; clones share the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    streams: Family<StreamLabel, Gauge>,
    type_streams: Family<TypeLabel, Gauge>,
    pushes: Family<TypeLabel, Counter>,
    pushed_resources: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    stale_requests: Family<TypeLabel, Counter>,
    push_latency: HistogramFamily,
    snapshot_generation: Family<TypeLabel, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~26 s: a local push is sub-millisecond, a loaded fleet's
    // tail is seconds; beyond that something is wrong anyway.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn label(resource_type: ResourceType) -> TypeLabel {
    TypeLabel {
        r#type: resource_type.short_name(),
    }
}

impl Default for Metrics {
    /// Unregistered metrics: they count, and export once [`Metrics::register`]ed.
    fn default() -> Self {
        Self {
            streams: Family::default(),
            type_streams: Family::default(),
            pushes: Family::default(),
            pushed_resources: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            stale_requests: Family::default(),
            push_latency: Family::new_with_constructor(latency_histogram),
            snapshot_generation: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics under `xds_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("xds");
        registry.register(
            "streams",
            "Connected xDS streams by gRPC service and protocol",
            self.streams.clone(),
        );
        registry.register(
            "type_streams",
            "Connected streams that subscribe to each resource type",
            self.type_streams.clone(),
        );
        registry.register("pushes", "Discovery responses sent", self.pushes.clone());
        registry.register(
            "pushed_resources",
            "Resources sent, summed over responses",
            self.pushed_resources.clone(),
        );
        registry.register("acks", "Responses Envoy accepted", self.acks.clone());
        registry.register("nacks", "Responses Envoy rejected", self.nacks.clone());
        registry.register(
            "stale_requests",
            "Requests ignored because they answer a superseded response",
            self.stale_requests.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "Time from a snapshot write to the response carrying it being sent",
            self.push_latency.clone(),
        );
        registry.register(
            "snapshot_generation",
            "Generation of the latest snapshot write, per type",
            self.snapshot_generation.clone(),
        );
    }

    pub(crate) fn record_snapshot(&self, resource_type: ResourceType, generation: u64) {
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        self.snapshot_generation
            .get_or_create(&label(resource_type))
            .set(generation);
    }

    pub(crate) fn stream_opened(&self, stream: &StreamLabel) {
        self.streams.get_or_create(stream).inc();
    }

    pub(crate) fn stream_closed(&self, stream: &StreamLabel) {
        self.streams.get_or_create(stream).dec();
    }

    pub(crate) fn type_watched(&self, resource_type: ResourceType) {
        self.type_streams.get_or_create(&label(resource_type)).inc();
    }

    pub(crate) fn type_unwatched(&self, resource_type: ResourceType) {
        self.type_streams.get_or_create(&label(resource_type)).dec();
    }

    pub(crate) fn pushed(
        &self,
        resource_type: ResourceType,
        resources: usize,
        since_write: Option<Duration>,
    ) {
        let label = label(resource_type);
        self.pushes.get_or_create(&label).inc();
        self.pushed_resources
            .get_or_create(&label)
            .inc_by(u64::try_from(resources).unwrap_or(u64::MAX));
        if let Some(latency) = since_write {
            self.push_latency
                .get_or_create(&label)
                .observe(latency.as_secs_f64());
        }
    }

    pub(crate) fn acked(&self, resource_type: ResourceType) {
        self.acks.get_or_create(&label(resource_type)).inc();
    }

    pub(crate) fn nacked(&self, resource_type: ResourceType) {
        self.nacks.get_or_create(&label(resource_type)).inc();
    }

    pub(crate) fn stale_request(&self, resource_type: ResourceType) {
        self.stale_requests
            .get_or_create(&label(resource_type))
            .inc();
    }

    /// Responses of `resource_type` Envoy accepted so far.
    pub fn ack_count(&self, resource_type: ResourceType) -> u64 {
        self.acks.get_or_create(&label(resource_type)).get()
    }

    /// Responses of `resource_type` Envoy rejected so far.
    pub fn nack_count(&self, resource_type: ResourceType) -> u64 {
        self.nacks.get_or_create(&label(resource_type)).get()
    }

    /// Responses of `resource_type` sent so far.
    pub fn push_count(&self, resource_type: ResourceType) -> u64 {
        self.pushes.get_or_create(&label(resource_type)).get()
    }

    /// Resources of `resource_type` sent so far, summed over responses.
    pub fn pushed_resource_count(&self, resource_type: ResourceType) -> u64 {
        self.pushed_resources
            .get_or_create(&label(resource_type))
            .get()
    }

    /// Requests of `resource_type` ignored for carrying a stale nonce.
    pub fn stale_request_count(&self, resource_type: ResourceType) -> u64 {
        self.stale_requests
            .get_or_create(&label(resource_type))
            .get()
    }

    /// Streams connected to `service` (`ads`, `eds`...) with `protocol`.
    pub fn stream_count(&self, service: &'static str, protocol: &'static str) -> i64 {
        self.streams
            .get_or_create(&StreamLabel { service, protocol })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_register_under_the_xds_prefix_and_export() {
        let mut registry = Registry::default();
        let metrics = Metrics::default();
        metrics.register(&mut registry);
        metrics.pushed(ResourceType::Endpoint, 3, Some(Duration::from_millis(2)));
        metrics.nacked(ResourceType::Endpoint);
        metrics.stream_opened(&StreamLabel {
            service: "ads",
            protocol: "sotw",
        });
        metrics.record_snapshot(ResourceType::Cluster, 7);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("xds_pushes_total{type=\"endpoint\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("xds_pushed_resources_total{type=\"endpoint\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("xds_nacks_total{type=\"endpoint\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("xds_streams{service=\"ads\",protocol=\"sotw\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("xds_snapshot_generation{type=\"cluster\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("xds_push_latency_seconds_count{type=\"endpoint\"} 1"),
            "{text}"
        );
    }
}

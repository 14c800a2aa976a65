//! Per-request metrics, for the services to register in their Prometheus
//! registry. Labelled by endpoint kind and request class, never by path.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::budget::RequestClass;
use crate::endpoint::EndpointKind;
use crate::error::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: EndpointKind,
    class: RequestClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    endpoint: EndpointKind,
    error: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabels {
    class: RequestClass,
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~9 min: quick reads at the low end, blocking queries (which
    // last up to their `wait`) at the high end.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The client's metrics. Cloning shares the series; one `ClientMetrics` may
/// serve several clients (e.g. one per datacenter) and be registered once.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    duration: HistogramFamily,
    errors: Family<ErrorLabels, Counter>,
    in_flight: Family<ClassLabels, Gauge>,
    queued: Family<ClassLabels, Gauge>,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            in_flight: Family::default(),
            queued: Family::default(),
        }
    }
}

impl ClientMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics under `consul_client_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("consul_client");
        registry.register_with_unit(
            "request_duration",
            "Time from sending a request to Consul to having its whole answer",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "request_errors",
            "Requests to Consul that failed, by endpoint kind and error kind",
            self.errors.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests to Consul awaiting their answer",
            self.in_flight.clone(),
        );
        registry.register(
            "requests_queued",
            "Requests waiting for a slot of the per-agent request budget",
            self.queued.clone(),
        );
    }

    pub(crate) fn observe(
        &self,
        endpoint: EndpointKind,
        class: RequestClass,
        elapsed: Duration,
        error: Option<ErrorKind>,
    ) {
        self.duration
            .get_or_create(&RequestLabels { endpoint, class })
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.errors
                .get_or_create(&ErrorLabels { endpoint, error })
                .inc();
        }
    }

    /// Requests of `class` sent and awaiting their answer, now.
    pub fn requests_in_flight(&self, class: RequestClass) -> i64 {
        self.in_flight.get_or_create(&ClassLabels { class }).get()
    }

    /// Requests of `class` waiting for the request budget, now.
    pub fn requests_queued(&self, class: RequestClass) -> i64 {
        self.queued.get_or_create(&ClassLabels { class }).get()
    }

    /// Counts a request as queued until the guard drops.
    pub(crate) fn track_queued(&self, class: RequestClass) -> GaugeGuard {
        GaugeGuard::new(self.queued.get_or_create(&ClassLabels { class }).clone())
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn track_in_flight(&self, class: RequestClass) -> GaugeGuard {
        GaugeGuard::new(self.in_flight.get_or_create(&ClassLabels { class }).clone())
    }
}

/// Decrements on drop, so a cancelled request (a dropped future) is
/// uncounted too.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_under_the_consul_client_prefix_and_export() {
        let mut registry = Registry::default();
        let metrics = ClientMetrics::default();
        metrics.register(&mut registry);
        metrics.observe(
            EndpointKind::CatalogServices,
            RequestClass::Blocking,
            Duration::from_millis(3),
            Some(ErrorKind::Timeout),
        );
        let _queued = metrics.track_queued(RequestClass::Other);
        let _in_flight = metrics.track_in_flight(RequestClass::Blocking);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "# UNIT consul_client_request_duration_seconds seconds",
            "consul_client_request_duration_seconds_count{endpoint=",
            "consul_client_request_errors_total{endpoint=",
            "consul_client_requests_in_flight{class=\"blocking\"} 1",
            "consul_client_requests_queued{class=\"other\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}

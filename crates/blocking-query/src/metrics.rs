//! Per-request metrics of one client, for a service to register in its
//! Prometheus registry under the client's own prefix. Labelled by endpoint
//! kind and request class, never by path: a path holds service names and
//! keys, which would give a metric family one series per name.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::budget::RequestClass;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    class: RequestClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    endpoint: &'static str,
    error: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabels {
    class: RequestClass,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~9 min: quick reads at the low end, blocking queries (which
    // last up to their `wait`) at the high end.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Request durations, errors, and requests in flight and queued. Cloning
/// shares the series; one value may serve several clients of one kind (e.g.
/// one per datacenter) and be registered once.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    duration: HistogramFamily,
    errors: Family<ErrorLabels, Counter>,
    in_flight: Family<ClassLabels, Gauge>,
    queued: Family<ClassLabels, Gauge>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            in_flight: Family::default(),
            queued: Family::default(),
        }
    }
}

impl RequestMetrics {
    /// Registers the metrics under `<prefix>_` in `registry`; `server` names
    /// what the requests go to in the help texts (`Consul`, `Nomad`).
    pub fn register(&self, registry: &mut Registry, prefix: &str, server: &str) {
        let registry = registry.sub_registry_with_prefix(prefix);
        registry.register_with_unit(
            "request_duration",
            format!("Time from sending a request to {server} to having its whole answer"),
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "request_errors",
            format!("Requests to {server} that failed, by endpoint kind and error kind"),
            self.errors.clone(),
        );
        registry.register(
            "requests_in_flight",
            format!("Requests to {server} awaiting their answer"),
            self.in_flight.clone(),
        );
        registry.register(
            "requests_queued",
            "Requests waiting for a slot of the per-agent request budget",
            self.queued.clone(),
        );
    }

    /// One request's outcome: `endpoint` and `error` are low-cardinality
    /// labels (an endpoint kind, an error kind), never a path.
    pub fn observe(
        &self,
        endpoint: &'static str,
        class: RequestClass,
        elapsed: Duration,
        error: Option<&'static str>,
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
    pub fn track_queued(&self, class: RequestClass) -> GaugeGuard {
        GaugeGuard::new(self.queued.get_or_create(&ClassLabels { class }).clone())
    }

    /// Counts a request as in flight until the guard drops.
    pub fn track_in_flight(&self, class: RequestClass) -> GaugeGuard {
        GaugeGuard::new(self.in_flight.get_or_create(&ClassLabels { class }).clone())
    }
}

/// Decrements on drop, so a cancelled request (a dropped future) is
/// uncounted too.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

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
    fn metrics_register_under_the_given_prefix_and_export() {
        let mut registry = Registry::default();
        let metrics = RequestMetrics::default();
        metrics.register(&mut registry, "nomad_client", "Nomad");
        metrics.observe(
            "services",
            RequestClass::Blocking,
            Duration::from_millis(3),
            Some("timeout"),
        );
        let queued = metrics.track_queued(RequestClass::Other);
        let _in_flight = metrics.track_in_flight(RequestClass::Blocking);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "# UNIT nomad_client_request_duration_seconds seconds",
            "# HELP nomad_client_request_errors Requests to Nomad that failed",
            "nomad_client_request_duration_seconds_count{endpoint=\"services\",class=\"blocking\"} 1",
            "nomad_client_request_errors_total{endpoint=\"services\",error=\"timeout\"} 1",
            "nomad_client_requests_in_flight{class=\"blocking\"} 1",
            "nomad_client_requests_queued{class=\"other\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        drop(queued);
        assert_eq!(metrics.requests_queued(RequestClass::Other), 0);
    }
}

//! Per-request metrics, for the services to register in their Prometheus
//! registry. Labelled by endpoint kind and request class, never by path;
//! the series themselves are `blocking-query`'s, shared with `nomad-client`.

use std::time::Duration;

use blocking_query::{GaugeGuard, RequestClass, RequestMetrics};
use prometheus_client::registry::Registry;

use crate::endpoint::EndpointKind;
use crate::error::ErrorKind;

/// The client's metrics. Cloning shares the series; one `ClientMetrics` may
/// serve several clients (e.g. one per datacenter) and be registered once.
#[derive(Debug, Clone, Default)]
pub struct ClientMetrics {
    requests: RequestMetrics,
}

impl ClientMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics under `consul_client_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.requests.register(registry, "consul_client", "Consul");
    }

    pub(crate) fn observe(
        &self,
        endpoint: EndpointKind,
        class: RequestClass,
        elapsed: Duration,
        error: Option<ErrorKind>,
    ) {
        self.requests.observe(
            endpoint.as_str(),
            class,
            elapsed,
            error.map(ErrorKind::as_str),
        );
    }

    /// Requests of `class` sent and awaiting their answer, now.
    pub fn requests_in_flight(&self, class: RequestClass) -> i64 {
        self.requests.requests_in_flight(class)
    }

    /// Requests of `class` waiting for the request budget, now.
    pub fn requests_queued(&self, class: RequestClass) -> i64 {
        self.requests.requests_queued(class)
    }

    /// Counts a request as queued until the guard drops.
    pub(crate) fn track_queued(&self, class: RequestClass) -> GaugeGuard {
        self.requests.track_queued(class)
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn track_in_flight(&self, class: RequestClass) -> GaugeGuard {
        self.requests.track_in_flight(class)
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

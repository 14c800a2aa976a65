//! Per-request metrics under `nomad_client_`, labelled by [`EndpointKind`]
//! and request class, never by path (a path holds service names and
//! allocation IDs). The series are `blocking-query`'s, as for
//! `consul-client`.

use std::time::Duration;

use blocking_query::{GaugeGuard, RequestClass, RequestMetrics};
use prometheus_client::registry::Registry;

use crate::error::ErrorKind;

/// What a request does, as a low-cardinality label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointKind {
    /// `GET /v1/services`
    Services,
    /// `GET /v1/service/:name`
    Service,
    /// `GET /v1/client/allocation/:id/checks`
    AllocationChecks,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::Service => "service",
            Self::AllocationChecks => "allocation_checks",
        }
    }
}

/// The client's metrics. Cloning shares the series; one value may serve
/// several clients (one per region, say) and be registered once.
#[derive(Debug, Clone, Default)]
pub struct NomadMetrics {
    requests: RequestMetrics,
}

impl NomadMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics under `nomad_client_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.requests.register(registry, "nomad_client", "Nomad");
    }

    /// Requests of `class` sent and awaiting their answer, now.
    pub fn requests_in_flight(&self, class: RequestClass) -> i64 {
        self.requests.requests_in_flight(class)
    }

    /// Requests of `class` waiting for the request budget, now.
    pub fn requests_queued(&self, class: RequestClass) -> i64 {
        self.requests.requests_queued(class)
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

    pub(crate) fn track_queued(&self, class: RequestClass) -> GaugeGuard {
        self.requests.track_queued(class)
    }

    pub(crate) fn track_in_flight(&self, class: RequestClass) -> GaugeGuard {
        self.requests.track_in_flight(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_under_the_nomad_client_prefix() {
        let mut registry = Registry::default();
        let metrics = NomadMetrics::new();
        metrics.register(&mut registry);
        metrics.observe(
            EndpointKind::Service,
            RequestClass::Blocking,
            Duration::from_millis(2),
            Some(ErrorKind::PermissionDenied),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(
                "nomad_client_request_errors_total{endpoint=\"service\",error=\"permission_denied\"} 1"
            ),
            "{text}"
        );
    }
}

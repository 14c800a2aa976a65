//! Gateway mode: Envoy's whole configuration (clusters, listeners, routes)
//! from the route table the services' tags declare.

pub mod translate;

/// The Envoy cluster (and EDS resource) name of a service's stable or
/// canary instances. A `/` never appears in a Consul service name, so
/// `<service>/canary` cannot collide with another service's cluster.
pub fn cluster_name(service: &str, canary: bool) -> String {
    if canary {
        format!("{service}/canary")
    } else {
        service.to_owned()
    }
}

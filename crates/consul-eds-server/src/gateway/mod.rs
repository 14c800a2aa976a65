//! Gateway mode: Envoy's whole configuration (clusters, listeners, routes)
//! from the route table the services' tags declare.
//!
//! - [`candidates`]: which services may route (the catalog's tag union).
//! - [`actor`]: reads each candidate's instance tags into declarations,
//!   builds the table and asks the engine for the clusters it needs.
//! - [`translate`]: the table -> Envoy's protobuf (the only protobuf here).
//! - [`clusters`]: the table's clusters, encoded one at a time and reused
//!   while their options stay the same.
//! - [`publish`]: writes it to the xDS cache make before break.
//! - [`view`]: metrics, `/debug/routes` and the status page's data.

pub mod actor;
pub mod candidates;
pub mod clusters;
pub mod publish;
pub mod translate;
pub mod view;

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

//! Resources for the crate's unit tests.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};

/// An assignment for cluster `name` whose content is told apart by `priority`.
pub(crate) fn assignment(name: &str, priority: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            priority,
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

pub(crate) fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        ..Cluster::default()
    }
}

pub(crate) fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

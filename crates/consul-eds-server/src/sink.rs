//! The engine's output into the xDS snapshot cache.

use xds_core::SnapshotCache;

use crate::engine::EndpointSink;
use crate::model::ClusterEndpoints;
use crate::translate::cluster_load_assignment;

/// Every Envoy of this server shares one snapshot: the endpoints of a
/// service are the same whoever asks, and writing each change once keeps the
/// cost of a change independent of the number of Envoys.
pub const SHARED_NODE_KEY: &str = "consul";

#[derive(Debug, Clone)]
pub struct CacheSink {
    cache: SnapshotCache,
}

impl CacheSink {
    pub fn new(cache: SnapshotCache) -> Self {
        Self { cache }
    }
}

impl EndpointSink for CacheSink {
    fn publish(&mut self, clusters: Vec<ClusterEndpoints>) {
        let assignments: Vec<_> = clusters.iter().map(cluster_load_assignment).collect();
        if let Err(error) = self
            .cache
            .update_endpoints::<&str>(SHARED_NODE_KEY, &assignments, &[])
        {
            // Only a programming error (a duplicate name) gets here; the
            // previous snapshot stays in place.
            tracing::error!(%error, "the xDS cache refused an endpoint update");
        }
    }

    fn remove(&mut self, clusters: Vec<String>) {
        if let Err(error) = self.cache.update_endpoints(SHARED_NODE_KEY, &[], &clusters) {
            tracing::error!(%error, "the xDS cache refused an endpoint removal");
        }
    }
}

//! Writing the gateway's resources to the xDS cache, make before break.
//!
//! Envoy applies each type as it arrives, so the order of writes is what
//! decides whether a request can meet a route to a cluster Envoy does not
//! know yet (503 "no cluster"), or a cluster removed under a route still
//! pointing at it. One change is therefore published in three steps:
//!
//! 1. clusters added or changed are written, old ones kept, once the cache
//!    holds their endpoints (so Envoy's cluster warming ends with the first
//!    EDS answer instead of waiting for its initial fetch timeout); then the
//!    step waits until every connected Envoy acknowledged those clusters and
//!    the endpoints sent after them;
//! 2. listeners and routes are written (in one snapshot change);
//! 3. once those are acknowledged, clusters no route names any more are
//!    removed.
//!
//! Each wait is bounded: an Envoy that never answers (or rejects a version)
//! delays a change by at most the bound, never stops it; the next change
//! starts from what was written, so nothing is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use xds_core::{ConnectedClients, Resource, ResourceError, ResourceType, SnapshotCache};

use super::clusters::EncodedClusters;
use super::translate::GatewayResources;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("encoding a {resource_type:?} resource: {source}")]
    Encode {
        resource_type: ResourceType,
        #[source]
        source: ResourceError,
    },
    #[error("the xDS cache refused the {resource_type:?} resources: {source}")]
    Cache {
        resource_type: ResourceType,
        #[source]
        source: xds_core::CacheError,
    },
}

/// What one publication did, for logs, metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Resources written per type (added, changed or removed).
    pub changed: BTreeMap<&'static str, usize>,
    /// Waits that ended at their bound instead of on an acknowledgement.
    pub timed_out_waits: Vec<&'static str>,
    /// How long each step that ran took, in order: where a change's time
    /// between the rebuild and Envoy holding it goes.
    pub steps: Vec<(PublishStep, Duration)>,
}

/// The steps of a publication, as timed in [`Published::steps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishStep {
    /// Waiting for the engine to cache the endpoints of added clusters.
    EndpointsCached,
    /// Writing clusters until every Envoy acknowledged them and the
    /// endpoints sent after them.
    ClustersAcknowledged,
    /// Writing listeners and routes.
    RoutesWritten,
    /// Waiting for listeners and routes to be acknowledged before removing
    /// clusters, and removing them.
    ClustersRemoved,
}

impl PublishStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointsCached => "endpoints_cached",
            Self::ClustersAcknowledged => "clusters_acknowledged",
            Self::RoutesWritten => "routes_written",
            Self::ClustersRemoved => "clusters_removed",
        }
    }
}

impl Published {
    fn time(&mut self, step: PublishStep, started: Instant) {
        self.steps.push((step, started.elapsed()));
    }
}

#[derive(Debug)]
pub struct Publisher {
    cache: SnapshotCache,
    clients: ConnectedClients,
    node_key: String,
    ack_timeout: Duration,
    /// The clusters last written, by name (shared with the cache).
    clusters: BTreeMap<String, Resource>,
}

impl Publisher {
    pub fn new(
        cache: SnapshotCache,
        clients: ConnectedClients,
        node_key: impl Into<String>,
        ack_timeout: Duration,
    ) -> Self {
        Self {
            cache,
            clients,
            node_key: node_key.into(),
            ack_timeout,
            clusters: BTreeMap::new(),
        }
    }

    /// Publishes `next_clusters` and `next` make before break.
    pub async fn publish(
        &mut self,
        next_clusters: &EncodedClusters,
        next: &GatewayResources,
    ) -> Result<Published, PublishError> {
        let mut report = Published::default();
        let made: Vec<&str> = next_clusters
            .iter()
            .filter(|(name, cluster)| self.clusters.get(*name) != Some(*cluster))
            .map(|(name, _)| name)
            .collect();
        let broken: Vec<String> = self
            .clusters
            .keys()
            .filter(|name| !next_clusters.contains(name))
            .cloned()
            .collect();

        // 1. Make: new and changed clusters beside the old ones.
        if !made.is_empty() || !self.cache_has(ResourceType::Cluster) {
            let added: BTreeSet<&str> = made
                .iter()
                .filter(|name| !self.clusters.contains_key(**name))
                .copied()
                .collect();
            let started = Instant::now();
            if !self.endpoints_ready(&added).await {
                report.timed_out_waits.push("endpoints in cache");
            }
            report.time(PublishStep::EndpointsCached, started);
            let started = Instant::now();
            // Old and new side by side.
            for name in &made {
                if let Some(cluster) = next_clusters.get(name) {
                    self.clusters.insert((*name).to_owned(), cluster.clone());
                }
            }
            let written = self.write_clusters()?;
            report.changed.insert("cluster", written);
            if !self.acknowledged(ResourceType::Cluster).await {
                report.timed_out_waits.push("cluster");
            }
            if !self.acknowledged(ResourceType::Endpoint).await {
                report.timed_out_waits.push("endpoint");
            }
            report.time(PublishStep::ClustersAcknowledged, started);
        }

        // 2. Listeners and routes, together.
        let started = Instant::now();
        let listeners = encode(ResourceType::Listener, next.listeners.iter())?;
        let routes = next.routes.clone();
        let before_listeners = self.version(ResourceType::Listener);
        let before_routes = self.version(ResourceType::Route);
        self.cache
            .set_snapshot(
                &self.node_key,
                [
                    (ResourceType::Listener, listeners),
                    (ResourceType::Route, routes),
                ],
            )
            .map_err(|source| PublishError::Cache {
                resource_type: ResourceType::Listener,
                source,
            })?;
        if self.version(ResourceType::Listener) != before_listeners {
            report.changed.insert("listener", 1);
        }
        if self.version(ResourceType::Route) != before_routes {
            report.changed.insert("route", 1);
        }
        report.time(PublishStep::RoutesWritten, started);

        // 3. Break: clusters no route names any more.
        if !broken.is_empty() {
            let started = Instant::now();
            if !self.acknowledged(ResourceType::Listener).await {
                report.timed_out_waits.push("listener");
            }
            if !self.acknowledged(ResourceType::Route).await {
                report.timed_out_waits.push("route");
            }
            // What is written now is old and new minus the broken: exactly
            // the next set, since every made cluster was copied in above.
            for name in &broken {
                self.clusters.remove(name);
            }
            let written = self.write_clusters()?;
            *report.changed.entry("cluster").or_default() += written;
            report.time(PublishStep::ClustersRemoved, started);
        }
        Ok(report)
    }

    fn write_clusters(&self) -> Result<usize, PublishError> {
        let resources: Vec<Resource> = self.clusters.values().cloned().collect();
        self.cache
            .set_resources(&self.node_key, ResourceType::Cluster, resources)
            .map_err(|source| PublishError::Cache {
                resource_type: ResourceType::Cluster,
                source,
            })
    }

    fn cache_has(&self, resource_type: ResourceType) -> bool {
        self.cache
            .snapshot(&self.node_key)
            .is_some_and(|snapshot| snapshot.is_set(resource_type))
    }

    fn version(&self, resource_type: ResourceType) -> Option<String> {
        self.cache
            .snapshot(&self.node_key)
            .map(|snapshot| snapshot.version(resource_type).to_string())
    }

    /// Waits until the engine has put the endpoints of every added cluster
    /// in the cache: it feeds a new cluster within its coalescing window
    /// once the service's watch has read.
    async fn endpoints_ready(&self, added: &BTreeSet<&str>) -> bool {
        self.poll(|| {
            let Some(snapshot) = self.cache.snapshot(&self.node_key) else {
                return added.is_empty();
            };
            added
                .iter()
                .all(|name| snapshot.get(ResourceType::Endpoint, name).is_some())
        })
        .await
    }

    /// Waits until every Envoy stream carrying `resource_type` has nothing
    /// outstanding: it caught up with the cache's current version of the
    /// type (compared it with what it had sent, and sent what differed)
    /// and acknowledged what it was last sent.
    async fn acknowledged(&self, resource_type: ResourceType) -> bool {
        self.poll(|| {
            let Some(current) = self.version(resource_type) else {
                return true;
            };
            self.clients
                .streams()
                .iter()
                .filter(|stream| stream.node_key == self.node_key)
                .filter_map(|stream| stream.types.get(&resource_type))
                .all(|status| {
                    status.caught_up_version.as_deref() == Some(current.as_str())
                        && status.acked_version.is_some()
                        && status.acked_version == status.sent_version
                })
        })
        .await
    }

    /// Waits until `done` holds, re-checking it on every change of the
    /// cache or of a stream's status (an acknowledgement, a push): the
    /// wait ends with the event that ends it, not at the next tick of a
    /// poll. `false` when the bound passed first.
    async fn poll(&self, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + self.ack_timeout;
        // Taken before the first check, so a change between the check and
        // the wait still wakes it.
        let mut streams = self.clients.changes();
        let mut cache = self.cache.changes(&self.node_key);
        loop {
            if done() {
                return true;
            }
            tokio::select! {
                () = streams.changed() => {}
                () = cache.changed() => {}
                () = tokio::time::sleep_until(deadline) => return done(),
            }
        }
    }
}

fn encode<'a, M: xds_core::XdsResource + 'a>(
    resource_type: ResourceType,
    messages: impl Iterator<Item = &'a M>,
) -> Result<Vec<Resource>, PublishError> {
    messages
        .map(Resource::encode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PublishError::Encode {
            resource_type,
            source,
        })
}

//! What the server currently serves and how fresh it is, for the admin API.
//!
//! Written by the sync loop, read by `/readyz`, `/debug/snapshot` and the
//! status page. Readers take a cheap clone; the writer never waits on them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::model::Endpoint;

/// How fresh one service's data is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Freshness {
    /// Not read from Consul yet.
    #[default]
    Pending,
    /// The last read succeeded, at this Consul index.
    Synced { index: u64 },
    /// Reads are failing; the last good endpoints are still served.
    Degraded { error: String, since_unix: u64 },
}

/// One served cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub cluster: String,
    pub service: String,
    pub freshness: Freshness,
    /// Endpoints as served, each with the reason for its health and weight
    /// (the allocation the engine published: see [`crate::model::ClusterEndpoints`]).
    #[serde(serialize_with = "crate::model::shared")]
    pub endpoints: Arc<[Endpoint]>,
    /// Instances Consul returned that are not served, with the reason.
    pub excluded: Vec<Excluded>,
}

/// An instance left out of a cluster, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub instance_id: String,
    pub reason: String,
}

/// Overall readiness, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Readiness {
    /// The first Consul sync has not completed.
    Starting,
    Ready,
    /// Serving, but some data is stale because Consul reads fail.
    Degraded {
        services: Vec<String>,
    },
}

#[derive(Debug, Default)]
struct Inner {
    first_sync_done: bool,
    catalog: Option<Freshness>,
    clusters: BTreeMap<String, ClusterView>,
}

/// Shared, cheaply clonable handle.
#[derive(Debug, Clone, Default)]
pub struct ServedState {
    inner: Arc<RwLock<Inner>>,
}

impl ServedState {
    pub fn mark_first_sync_done(&self) {
        self.write(|inner| inner.first_sync_done = true);
    }

    pub fn set_catalog_freshness(&self, freshness: Freshness) {
        self.write(|inner| inner.catalog = Some(freshness));
    }

    pub fn upsert(&self, view: ClusterView) {
        self.write(|inner| {
            inner.clusters.insert(view.cluster.clone(), view);
        });
    }

    pub fn remove(&self, cluster: &str) {
        self.write(|inner| {
            inner.clusters.remove(cluster);
        });
    }

    pub fn clusters(&self) -> Vec<ClusterView> {
        self.read(|inner| inner.clusters.values().cloned().collect())
    }

    pub fn readiness(&self) -> Readiness {
        self.read(|inner| {
            if !inner.first_sync_done {
                return Readiness::Starting;
            }
            let mut services: Vec<String> = inner
                .clusters
                .values()
                .filter(|view| matches!(view.freshness, Freshness::Degraded { .. }))
                .map(|view| view.service.clone())
                .collect();
            if matches!(inner.catalog, Some(Freshness::Degraded { .. })) {
                services.insert(0, "(catalog)".to_owned());
            }
            services.dedup();
            if services.is_empty() {
                Readiness::Ready
            } else {
                Readiness::Degraded { services }
            }
        })
    }

    fn write(&self, f: impl FnOnce(&mut Inner)) {
        // A poisoned lock only means a writer panicked mid-update; the data is
        // still the best we have, so keep serving it.
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(cluster: &str, freshness: Freshness) -> ClusterView {
        ClusterView {
            cluster: cluster.to_owned(),
            service: cluster.to_owned(),
            freshness,
            endpoints: Arc::new([]),
            excluded: vec![],
        }
    }

    #[test]
    fn starting_until_first_sync_then_ready() {
        let state = ServedState::default();
        assert_eq!(state.readiness(), Readiness::Starting);
        state.upsert(view("web", Freshness::Synced { index: 3 }));
        state.mark_first_sync_done();
        assert_eq!(state.readiness(), Readiness::Ready);
    }

    #[test]
    fn a_failing_service_makes_the_server_degraded_and_keeps_its_endpoints() {
        let state = ServedState::default();
        state.mark_first_sync_done();
        state.upsert(view("web", Freshness::Synced { index: 3 }));
        state.upsert(view(
            "web",
            Freshness::Degraded {
                error: "connection refused".to_owned(),
                since_unix: 0,
            },
        ));
        assert_eq!(
            state.readiness(),
            Readiness::Degraded {
                services: vec!["web".to_owned()]
            }
        );
        assert_eq!(state.clusters().len(), 1, "the cluster is still served");
        state.upsert(view("web", Freshness::Synced { index: 4 }));
        assert_eq!(state.readiness(), Readiness::Ready);
    }
}

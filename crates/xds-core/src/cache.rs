//! The snapshot cache: what each node key is served, and who to wake on change.
//!
//! One entry per node key holds an immutable [`Snapshot`] behind a
//! `tokio::sync::watch` channel. Streams hold a receiver: they wake when the
//! snapshot is replaced (no polling) and read it by cloning an `Arc`, so a
//! reader never holds a lock while it diffs or encodes, and never delays a
//! writer by more than that clone. Writers build the next snapshot beside
//! the current one and swap it in; writers to the same key are serialised by
//! a per-key mutex so that read-modify-write updates never lose a change.
//!
//! Types are independent: setting endpoints copies nothing but the endpoint
//! map. Every effective write records which names changed since the previous
//! snapshot of that type, so a stream that was up to date only looks at
//! those names instead of diffing the whole set (a one-cluster change costs
//! each of a thousand streams one lookup, not a thousand).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::node::{DynNodeHash, NodeHash};
use crate::resource::{Resource, ResourceError, ResourceType, XdsResource};
use crate::version::{Version, VersionHasher};

/// Why a write to the cache was refused; the cache is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("resource `{name}` is a {actual}, written as a {expected}")]
    WrongType {
        name: String,
        expected: ResourceType,
        actual: ResourceType,
    },
    #[error("{0} resources are listed twice in one snapshot")]
    DuplicateType(ResourceType),
    #[error("two {resource_type} resources are named `{name}`")]
    DuplicateName {
        resource_type: ResourceType,
        name: String,
    },
}

/// Versioned resources per node key, shared by the application and the server.
#[derive(Debug, Clone)]
pub struct SnapshotCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    node_hash: DynNodeHash,
    nodes: RwLock<HashMap<String, Arc<NodeEntry>>>,
    generation: AtomicU64,
    metrics: OnceLock<Metrics>,
}

#[derive(Debug)]
struct NodeEntry {
    writer: Mutex<()>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

/// Wakes on each new snapshot of one node key; see [`SnapshotCache::changes`].
#[derive(Debug)]
pub struct SnapshotChanges {
    /// `None` once the node key was removed from the cache.
    receiver: Option<watch::Receiver<Arc<Snapshot>>>,
}

impl SnapshotChanges {
    /// Resolves at the next snapshot written after this value was made or
    /// after the last call returned; never, once the node key was removed.
    pub async fn changed(&mut self) {
        if let Some(receiver) = &mut self.receiver
            && receiver.changed().await.is_ok()
        {
            return;
        }
        self.receiver = None;
        std::future::pending::<()>().await;
    }
}

/// Everything one node key is served, at one moment; immutable.
#[derive(Debug, Clone)]
pub struct Snapshot {
    types: [Arc<TypeSnapshot>; 5],
}

/// The resources of one type in a [`Snapshot`].
#[derive(Debug)]
pub(crate) struct TypeSnapshot {
    pub(crate) resources: BTreeMap<Arc<str>, Resource>,
    /// Aggregate content version of all resources, the SotW `version_info`.
    pub(crate) version: Version,
    /// False until the application first sets this type for this key: an
    /// unset type is "not known yet", which is different from "empty".
    pub(crate) initialized: bool,
    /// Unique across the cache; bumped by every effective write.
    pub(crate) generation: u64,
    /// The generation this one was derived from.
    pub(crate) base_generation: u64,
    /// Names added, changed or removed since `base_generation`.
    pub(crate) changed: Vec<Arc<str>>,
    /// When the write happened, for the push latency histogram.
    pub(crate) written_at: Instant,
}

impl TypeSnapshot {
    fn unset() -> Self {
        Self {
            resources: BTreeMap::new(),
            version: aggregate_version(&BTreeMap::new()),
            initialized: false,
            generation: 0,
            base_generation: 0,
            changed: Vec::new(),
            written_at: Instant::now(),
        }
    }
}

impl Snapshot {
    /// A snapshot in which no type is set yet.
    pub(crate) fn empty() -> Self {
        Self {
            types: std::array::from_fn(|_| Arc::new(TypeSnapshot::unset())),
        }
    }

    pub(crate) fn of_type(&self, resource_type: ResourceType) -> &Arc<TypeSnapshot> {
        &self.types[resource_type.index()]
    }

    /// The resources of a type, in name order.
    pub fn resources(&self, resource_type: ResourceType) -> impl Iterator<Item = &Resource> {
        self.of_type(resource_type).resources.values()
    }

    pub fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Resource> {
        self.of_type(resource_type).resources.get(name)
    }

    /// The aggregate version of a type: equal contents, equal versions.
    pub fn version(&self, resource_type: ResourceType) -> Version {
        self.of_type(resource_type).version
    }

    /// Whether the application has set this type yet.
    pub fn is_set(&self, resource_type: ResourceType) -> bool {
        self.of_type(resource_type).initialized
    }
}

fn aggregate_version(resources: &BTreeMap<Arc<str>, Resource>) -> Version {
    resources
        .iter()
        .fold(VersionHasher::new(), |hasher, (name, resource)| {
            hasher
                .write(name.as_bytes())
                .write(&[0])
                .write_u64(resource.version().as_u64())
        })
        .finish()
}

impl SnapshotCache {
    pub fn new(node_hash: impl NodeHash) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                node_hash: DynNodeHash(Box::new(node_hash)),
                nodes: RwLock::new(HashMap::new()),
                generation: AtomicU64::new(0),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Reports writes into `metrics` (the server does this for its cache).
    pub(crate) fn attach_metrics(&self, metrics: &Metrics) {
        let _ = self.inner.metrics.set(metrics.clone());
    }

    /// The key of the snapshot `node` is served from.
    pub fn node_key(&self, node: &Node) -> String {
        self.inner.node_hash.0.node_key(node)
    }

    /// The current snapshot of a key, if anything ever asked for it.
    pub fn snapshot(&self, node_key: &str) -> Option<Arc<Snapshot>> {
        self.existing(node_key)
            .map(|entry| entry.snapshot.borrow().clone())
    }

    /// Keys that have an entry (set by the application or watched by a stream).
    pub fn node_keys(&self) -> Vec<String> {
        let nodes = self
            .inner
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<String> = nodes.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Forgets a key. Streams still attached keep what they were sent and
    /// get no further updates; call this when the nodes using it are gone.
    pub fn remove_node(&self, node_key: &str) {
        let mut nodes = self
            .inner
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        nodes.remove(node_key);
    }

    /// A handle that wakes on every later snapshot of `node_key`, for an
    /// application waiting for another writer's resources (endpoints a
    /// different task writes) without polling.
    pub fn changes(&self, node_key: &str) -> SnapshotChanges {
        SnapshotChanges {
            receiver: Some(self.watch(node_key)),
        }
    }

    /// A receiver that sees every snapshot of `node_key` from now on.
    pub(crate) fn watch(&self, node_key: &str) -> watch::Receiver<Arc<Snapshot>> {
        self.entry(node_key).snapshot.subscribe()
    }

    /// Replaces all resources of `resource_type` for `node_key`.
    ///
    /// Returns how many resources were added, changed or removed; writing
    /// identical contents changes nothing and wakes nobody.
    pub fn set_resources(
        &self,
        node_key: &str,
        resource_type: ResourceType,
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<usize, CacheError> {
        let next = by_name(resource_type, resources)?;
        Ok(self.write(node_key, vec![(resource_type, TypeUpdate::Replace(next))]))
    }

    /// Replaces several types at once: streams see all of them change in
    /// the same instant, and ADS pushes them in dependency order. Types not
    /// listed are left as they are.
    pub fn set_snapshot(
        &self,
        node_key: &str,
        types: impl IntoIterator<Item = (ResourceType, Vec<Resource>)>,
    ) -> Result<usize, CacheError> {
        let mut updates = Vec::new();
        for (resource_type, resources) in types {
            if updates.iter().any(|(ty, _)| *ty == resource_type) {
                return Err(CacheError::DuplicateType(resource_type));
            }
            updates.push((
                resource_type,
                TypeUpdate::Replace(by_name(resource_type, resources)?),
            ));
        }
        Ok(self.write(node_key, updates))
    }

    /// Adds or replaces `upserts` and removes `removals`, leaving the other
    /// resources of the type as they are.
    fn update_resources<S: AsRef<str>>(
        &self,
        node_key: &str,
        resource_type: ResourceType,
        upserts: impl IntoIterator<Item = Resource>,
        removals: &[S],
    ) -> Result<usize, CacheError> {
        let upserts = by_name(resource_type, upserts)?;
        let removals = removals
            .iter()
            .map(|name| name.as_ref().to_owned())
            .collect();
        Ok(self.write(
            node_key,
            vec![(resource_type, TypeUpdate::Patch { upserts, removals })],
        ))
    }

    /// Replaces all resources of `M`'s type with `messages`.
    fn set_typed<M: XdsResource>(
        &self,
        node_key: &str,
        messages: &[M],
    ) -> Result<usize, CacheError> {
        let resources = messages
            .iter()
            .map(Resource::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.set_resources(node_key, M::TYPE, resources)
    }

    /// Adds or replaces `messages` and removes `removals` of `M`'s type.
    fn update_typed<M: XdsResource, S: AsRef<str>>(
        &self,
        node_key: &str,
        messages: &[M],
        removals: &[S],
    ) -> Result<usize, CacheError> {
        let resources = messages
            .iter()
            .map(Resource::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.update_resources(node_key, M::TYPE, resources, removals)
    }

    pub fn set_clusters(&self, node_key: &str, clusters: &[Cluster]) -> Result<usize, CacheError> {
        self.set_typed(node_key, clusters)
    }

    pub fn set_endpoints(
        &self,
        node_key: &str,
        assignments: &[ClusterLoadAssignment],
    ) -> Result<usize, CacheError> {
        self.set_typed(node_key, assignments)
    }

    /// Adds or replaces these assignments, leaving other clusters' alone.
    pub fn update_endpoints<S: AsRef<str>>(
        &self,
        node_key: &str,
        assignments: &[ClusterLoadAssignment],
        removals: &[S],
    ) -> Result<usize, CacheError> {
        self.update_typed(node_key, assignments, removals)
    }

    pub fn set_routes(
        &self,
        node_key: &str,
        routes: &[RouteConfiguration],
    ) -> Result<usize, CacheError> {
        self.set_typed(node_key, routes)
    }

    pub fn set_secrets(&self, node_key: &str, secrets: &[Secret]) -> Result<usize, CacheError> {
        self.set_typed(node_key, secrets)
    }

    fn existing(&self, node_key: &str) -> Option<Arc<NodeEntry>> {
        let nodes = self
            .inner
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        nodes.get(node_key).cloned()
    }

    fn entry(&self, node_key: &str) -> Arc<NodeEntry> {
        if let Some(entry) = self.existing(node_key) {
            return entry;
        }
        let mut nodes = self
            .inner
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        nodes
            .entry(node_key.to_owned())
            .or_insert_with(|| {
                Arc::new(NodeEntry {
                    writer: Mutex::new(()),
                    snapshot: watch::Sender::new(Arc::new(Snapshot::empty())),
                })
            })
            .clone()
    }

    /// Applies `updates` to one key and publishes the result at once.
    fn write(&self, node_key: &str, updates: Vec<(ResourceType, TypeUpdate)>) -> usize {
        let entry = self.entry(node_key);
        let _writer = entry.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = entry.snapshot.borrow().clone();
        let mut next = Snapshot::clone(&current);
        let mut written = Vec::new();
        let mut total = 0;
        for (resource_type, update) in updates {
            let previous = current.of_type(resource_type);
            let (resources, changed) = update.apply(&previous.resources);
            if changed.is_empty() && previous.initialized {
                continue;
            }
            let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
            total += changed.len();
            tracing::debug!(node_key, %resource_type, changed = changed.len(), generation, "snapshot updated");
            next.types[resource_type.index()] = Arc::new(TypeSnapshot {
                version: aggregate_version(&resources),
                resources,
                initialized: true,
                generation,
                base_generation: previous.generation,
                changed,
                written_at: Instant::now(),
            });
            written.push((resource_type, generation));
        }
        if written.is_empty() {
            return 0;
        }
        entry.snapshot.send_replace(Arc::new(next));
        if let Some(metrics) = self.inner.metrics.get() {
            for (resource_type, generation) in written {
                metrics.record_snapshot(resource_type, generation);
            }
        }
        total
    }
}

/// A write to one type.
enum TypeUpdate {
    Replace(BTreeMap<Arc<str>, Resource>),
    Patch {
        upserts: BTreeMap<Arc<str>, Resource>,
        removals: HashSet<String>,
    },
}

impl TypeUpdate {
    /// The next resources, and the names that differ from `current`.
    fn apply(
        self,
        current: &BTreeMap<Arc<str>, Resource>,
    ) -> (BTreeMap<Arc<str>, Resource>, Vec<Arc<str>>) {
        match self {
            TypeUpdate::Replace(next) => {
                let mut changed: Vec<Arc<str>> = next
                    .iter()
                    .filter(|(name, resource)| {
                        current.get(*name).map(Resource::version) != Some(resource.version())
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                changed.extend(
                    current
                        .keys()
                        .filter(|name| !next.contains_key(*name))
                        .cloned(),
                );
                (next, changed)
            }
            TypeUpdate::Patch { upserts, removals } => {
                let mut next = current.clone();
                let mut changed = Vec::new();
                for name in &removals {
                    if let Some((name, _)) = next.remove_entry(name.as_str()) {
                        changed.push(name);
                    }
                }
                for (name, resource) in upserts {
                    if next.get(&name).map(Resource::version) != Some(resource.version()) {
                        changed.push(name.clone());
                        next.insert(name, resource);
                    }
                }
                (next, changed)
            }
        }
    }
}

/// Indexes resources by name, refusing wrong types and duplicates.
fn by_name(
    resource_type: ResourceType,
    resources: impl IntoIterator<Item = Resource>,
) -> Result<BTreeMap<Arc<str>, Resource>, CacheError> {
    let mut indexed = BTreeMap::new();
    for resource in resources {
        check_type(resource_type, &resource)?;
        if let Some(previous) = indexed.insert(resource.shared_name().clone(), resource) {
            return Err(CacheError::DuplicateName {
                resource_type,
                name: previous.name().to_owned(),
            });
        }
    }
    Ok(indexed)
}

fn check_type(expected: ResourceType, resource: &Resource) -> Result<(), CacheError> {
    if resource.resource_type() == expected {
        Ok(())
    } else {
        Err(CacheError::WrongType {
            name: resource.name().to_owned(),
            expected,
            actual: resource.resource_type(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{assignment, cluster};
    use crate::node::SharedKey;
    use envoy_types::pb::google::protobuf::Any;

    fn names(snapshot: &Snapshot, ty: ResourceType) -> Vec<String> {
        snapshot
            .resources(ty)
            .map(|r| r.name().to_owned())
            .collect()
    }

    #[test]
    fn an_unset_type_is_distinct_from_an_empty_one() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        let _watch = cache.watch("k");
        let before = cache.snapshot("k").expect("entry exists once watched");
        assert!(!before.is_set(ResourceType::Endpoint));
        cache.set_endpoints("k", &[]).expect("set");
        let after = cache.snapshot("k").expect("entry");
        assert!(after.is_set(ResourceType::Endpoint));
        assert_eq!(after.resources(ResourceType::Endpoint).count(), 0);
        assert!(!after.is_set(ResourceType::Cluster));
    }

    #[test]
    fn setting_one_type_leaves_the_others_untouched() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        cache.set_clusters("k", &[cluster("a")]).expect("set");
        let clusters_before = cache
            .snapshot("k")
            .expect("entry")
            .of_type(ResourceType::Cluster)
            .clone();
        cache
            .set_endpoints("k", &[assignment("a", 1)])
            .expect("set");
        let snapshot = cache.snapshot("k").expect("entry");
        assert!(Arc::ptr_eq(
            &clusters_before,
            snapshot.of_type(ResourceType::Cluster)
        ));
        assert_eq!(names(&snapshot, ResourceType::Endpoint), ["a"]);
    }

    #[test]
    fn a_write_records_exactly_the_names_that_changed() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        cache
            .set_endpoints(
                "k",
                &[assignment("a", 1), assignment("b", 1), assignment("c", 1)],
            )
            .expect("set");
        let first = cache
            .snapshot("k")
            .expect("entry")
            .of_type(ResourceType::Endpoint)
            .clone();
        let changed = cache
            .set_endpoints("k", &[assignment("a", 1), assignment("b", 2)])
            .expect("set");
        assert_eq!(changed, 2, "b changed and c was removed");
        let second = cache
            .snapshot("k")
            .expect("entry")
            .of_type(ResourceType::Endpoint)
            .clone();
        let mut recorded: Vec<&str> = second.changed.iter().map(|n| &**n).collect();
        recorded.sort_unstable();
        assert_eq!(recorded, ["b", "c"]);
        assert_eq!(second.base_generation, first.generation);
        assert!(second.generation > first.generation);
    }

    #[test]
    fn identical_contents_change_nothing_and_wake_nobody() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        cache
            .set_endpoints("k", &[assignment("a", 1)])
            .expect("set");
        let mut watch = cache.watch("k");
        watch.mark_unchanged();
        assert_eq!(
            cache
                .set_endpoints("k", &[assignment("a", 1)])
                .expect("set"),
            0
        );
        assert_eq!(
            cache
                .update_endpoints("k", &[assignment("a", 1)], &["not-there"])
                .expect("update"),
            0
        );
        assert!(!watch.has_changed().expect("sender alive"));
        cache
            .set_endpoints("k", &[assignment("a", 2)])
            .expect("set");
        assert!(watch.has_changed().expect("sender alive"));
    }

    #[test]
    fn updates_patch_without_rebuilding_the_rest() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        cache
            .set_endpoints("k", &[assignment("a", 1), assignment("b", 1)])
            .expect("set");
        let b_before = cache
            .snapshot("k")
            .and_then(|s| s.get(ResourceType::Endpoint, "b").cloned())
            .expect("b");
        cache
            .update_endpoints("k", &[assignment("c", 1)], &["a"])
            .expect("update");
        let snapshot = cache.snapshot("k").expect("entry");
        assert_eq!(names(&snapshot, ResourceType::Endpoint), ["b", "c"]);
        let b_after = snapshot.get(ResourceType::Endpoint, "b").expect("b");
        assert_eq!(b_after.version(), b_before.version());
        assert!(
            b_after.encoded_any().as_ptr() == b_before.encoded_any().as_ptr(),
            "shared, not re-encoded"
        );
    }

    #[test]
    fn the_aggregate_version_depends_on_content_only() {
        let one = SnapshotCache::new(SharedKey("k".to_owned()));
        let other = SnapshotCache::new(SharedKey("k".to_owned()));
        one.set_endpoints("k", &[assignment("b", 1), assignment("a", 1)])
            .expect("set");
        other
            .set_endpoints("k", &[assignment("x", 1)])
            .expect("set");
        other
            .set_endpoints("k", &[assignment("a", 1), assignment("b", 1)])
            .expect("set");
        let v1 = one
            .snapshot("k")
            .expect("entry")
            .version(ResourceType::Endpoint);
        let v2 = other
            .snapshot("k")
            .expect("entry")
            .version(ResourceType::Endpoint);
        assert_eq!(v1, v2, "same contents, same version, whatever the history");
        one.set_endpoints("k", &[assignment("a", 1)]).expect("set");
        assert_ne!(
            one.snapshot("k")
                .expect("entry")
                .version(ResourceType::Endpoint),
            v2
        );
    }

    #[test]
    fn bad_writes_are_refused_and_change_nothing() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        cache
            .set_endpoints("k", &[assignment("a", 1)])
            .expect("set");
        let duplicate = cache.set_endpoints("k", &[assignment("b", 1), assignment("b", 2)]);
        assert!(matches!(duplicate, Err(CacheError::DuplicateName { .. })));
        let cluster = Resource::encode(&cluster("c")).expect("encodes");
        let wrong = cache.set_resources("k", ResourceType::Endpoint, [cluster]);
        assert!(matches!(wrong, Err(CacheError::WrongType { .. })));
        let unknown = Resource::from_any(
            "x",
            &Any {
                type_url: "type.googleapis.com/x.Y".to_owned(),
                value: Vec::new(),
            },
        );
        assert!(
            matches!(unknown, Err(ResourceError::UnknownType(_))),
            "an unknown type never becomes a resource to write"
        );
        let unnamed = cache.set_endpoints("k", &[assignment("", 1)]);
        assert_eq!(unnamed, Err(CacheError::Resource(ResourceError::EmptyName)));
        let snapshot = cache.snapshot("k").expect("entry");
        assert_eq!(names(&snapshot, ResourceType::Endpoint), ["a"]);
    }

    #[tokio::test]
    async fn a_multi_type_snapshot_is_published_in_one_change() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        let mut watch = cache.watch("k");
        watch.mark_unchanged();
        let cluster = Resource::encode(&cluster("a")).expect("encodes");
        let endpoints = Resource::encode(&assignment("a", 1)).expect("encodes");
        cache
            .set_snapshot(
                "k",
                [
                    (ResourceType::Cluster, vec![cluster]),
                    (ResourceType::Endpoint, vec![endpoints]),
                ],
            )
            .expect("set");
        watch.changed().await.expect("woken");
        let snapshot = watch.borrow_and_update().clone();
        assert_eq!(names(&snapshot, ResourceType::Cluster), ["a"]);
        assert_eq!(names(&snapshot, ResourceType::Endpoint), ["a"]);
        assert!(!watch.has_changed().expect("alive"), "one change, not two");
        let twice = cache.set_snapshot(
            "k",
            [(ResourceType::Route, vec![]), (ResourceType::Route, vec![])],
        );
        assert_eq!(twice, Err(CacheError::DuplicateType(ResourceType::Route)));
    }

    #[test]
    fn packed_anys_are_set_as_resources() {
        use prost::Message;
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        let any = Any {
            type_url: ResourceType::Cluster.type_url().to_owned(),
            value: cluster("a").encode_to_vec(),
        };
        let resource = Resource::from_any("a", &any).expect("a served type");
        cache
            .set_resources("k", ResourceType::Cluster, [resource])
            .expect("set");
        let snapshot = cache.snapshot("k").expect("entry");
        assert_eq!(names(&snapshot, ResourceType::Cluster), ["a"]);
    }

    #[tokio::test]
    async fn a_watcher_wakes_on_change_without_polling() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        let mut watch = cache.watch("k");
        let writer = cache.clone();
        let task = tokio::spawn(async move {
            writer
                .set_endpoints("k", &[assignment("a", 1)])
                .expect("set");
        });
        watch.changed().await.expect("woken");
        assert_eq!(
            names(&watch.borrow_and_update(), ResourceType::Endpoint),
            ["a"]
        );
        task.await.expect("writer done");
    }

    #[test]
    fn concurrent_patches_to_one_key_never_lose_a_change() {
        let cache = SnapshotCache::new(SharedKey("k".to_owned()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let name = format!("c{t}-{i}");
                        cache
                            .update_endpoints("k", &[assignment(&name, 1)], &[] as &[&str])
                            .expect("update");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer thread");
        }
        let snapshot = cache.snapshot("k").expect("entry");
        assert_eq!(snapshot.resources(ResourceType::Endpoint).count(), 400);
    }

    #[test]
    fn node_keys_come_from_the_node_hash() {
        let cache = SnapshotCache::new(crate::node::ByNodeCluster);
        let node = Node {
            id: "envoy-7".to_owned(),
            cluster: "edge".to_owned(),
            ..Node::default()
        };
        assert_eq!(cache.node_key(&node), "edge");
        cache.set_clusters("edge", &[]).expect("set");
        assert_eq!(cache.node_keys(), ["edge"]);
        cache.remove_node("edge");
        assert!(cache.snapshot("edge").is_none());
    }
}

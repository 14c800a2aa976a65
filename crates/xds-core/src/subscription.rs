//! Who wants what: per-stream subscriptions and their union across streams.
//!
//! A `Subscription` is one stream's interest in one resource type: a set
//! of names, possibly plus a wildcard ("everything of this type"). It reports
//! every change to the [`SubscriptionRegistry`], which keeps, per type, how
//! many streams want each name, and publishes the set of wanted names on a
//! `watch` channel. That is how the application learns what to fetch: the
//! EDS service watches only the services some Envoy subscribes to, and stops
//! watching when the last stream unsubscribes or disconnects.
//!
//! Wildcard rules follow the xDS protocol: `*` asks for everything
//! explicitly; for compatibility, a first request that names nothing is a
//! wildcard too ("legacy wildcard"). In state-of-the-world, the legacy
//! wildcard lasts until the client first names resources; in delta, it
//! lasts until the client unsubscribes from `*`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::resource::ResourceType;

/// The explicit wildcard resource name.
pub const WILDCARD: &str = "*";

/// Union of subscribed names per type, across every stream of a server.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionRegistry {
    inner: Arc<[TypeRegistry; 5]>,
}

#[derive(Debug)]
struct TypeRegistry {
    counts: Mutex<Counts>,
    names: watch::Sender<BTreeSet<String>>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Streams subscribed to each name; a name at zero is removed.
    by_name: HashMap<Arc<str>, usize>,
    wildcards: usize,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            names: watch::Sender::new(BTreeSet::new()),
        }
    }
}

impl SubscriptionRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The names of `resource_type` some stream subscribes to, now and as
    /// they change. Wildcard subscriptions add no names: see
    /// [`wildcard_subscribers`](Self::wildcard_subscribers).
    pub fn watch(&self, resource_type: ResourceType) -> watch::Receiver<BTreeSet<String>> {
        self.of(resource_type).names.subscribe()
    }

    /// A copy of the currently subscribed names of `resource_type`.
    pub fn names(&self, resource_type: ResourceType) -> BTreeSet<String> {
        self.of(resource_type).names.borrow().clone()
    }

    /// How many streams subscribe to every resource of `resource_type`.
    pub fn wildcard_subscribers(&self, resource_type: ResourceType) -> usize {
        self.of(resource_type).lock().wildcards
    }

    fn of(&self, resource_type: ResourceType) -> &TypeRegistry {
        &self.inner[resource_type.index()]
    }

    /// Counts a subscription to each name and returns the names interned:
    /// every stream subscribed to a name shares one allocation of it (a
    /// thousand Envoys naming a thousand clusters are a thousand strings,
    /// not a million).
    fn add(&self, resource_type: ResourceType, names: &[&str]) -> Vec<Arc<str>> {
        let registry = self.of(resource_type);
        let mut counts = registry.lock();
        let mut interned = Vec::with_capacity(names.len());
        let mut new_names = Vec::new();
        for name in names {
            match counts.by_name.get_key_value(*name).map(|(k, _)| k.clone()) {
                Some(shared) => {
                    if let Some(count) = counts.by_name.get_mut(*name) {
                        *count += 1;
                    }
                    interned.push(shared);
                }
                None => {
                    let shared: Arc<str> = Arc::from(*name);
                    counts.by_name.insert(shared.clone(), 1);
                    new_names.push(*name);
                    interned.push(shared);
                }
            }
        }
        if !new_names.is_empty() {
            // Published under the counts lock so that concurrent add/remove
            // pairs cannot publish out of order.
            registry.names.send_modify(|published| {
                published.extend(new_names.into_iter().map(str::to_owned));
            });
        }
        interned
    }

    fn remove(&self, resource_type: ResourceType, names: &[Arc<str>]) {
        let registry = self.of(resource_type);
        let mut counts = registry.lock();
        let mut gone = Vec::new();
        for name in names {
            if let Some(count) = counts.by_name.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    counts.by_name.remove(name);
                    gone.push(name);
                }
            }
        }
        if !gone.is_empty() {
            registry.names.send_modify(|published| {
                for name in gone {
                    published.remove(&**name);
                }
            });
        }
    }

    fn set_wildcard(&self, resource_type: ResourceType, wildcard: bool) {
        let mut counts = self.of(resource_type).lock();
        if wildcard {
            counts.wildcards += 1;
        } else {
            counts.wildcards = counts.wildcards.saturating_sub(1);
        }
    }
}

impl TypeRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a request changed in a subscription.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SubscriptionChange {
    pub(crate) added: Vec<Arc<str>>,
    pub(crate) removed: Vec<Arc<str>>,
    pub(crate) wildcard_changed: bool,
}

impl SubscriptionChange {
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && !self.wildcard_changed
    }
}

/// One stream's interest in one resource type; releases it when dropped.
#[derive(Debug)]
pub(crate) struct Subscription {
    resource_type: ResourceType,
    registry: SubscriptionRegistry,
    names: HashSet<Arc<str>>,
    wildcard: bool,
    /// Whether an empty name list still means "everything" (see module docs).
    legacy_wildcard: bool,
}

impl Subscription {
    pub(crate) fn new(registry: SubscriptionRegistry, resource_type: ResourceType) -> Self {
        Self {
            resource_type,
            registry,
            names: HashSet::new(),
            wildcard: false,
            legacy_wildcard: true,
        }
    }

    pub(crate) fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether the client asked for this name explicitly.
    pub(crate) fn names_explicitly(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether a resource with this name is wanted at all.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.names.iter()
    }

    /// State of the world: `resource_names` is the complete new list.
    pub(crate) fn replace(&mut self, resource_names: &[String]) -> SubscriptionChange {
        let explicit_wildcard = resource_names.iter().any(|name| name == WILDCARD);
        let wildcard = explicit_wildcard || (resource_names.is_empty() && self.legacy_wildcard);
        if !resource_names.is_empty() {
            self.legacy_wildcard = false;
        }
        let wanted: HashSet<&str> = resource_names
            .iter()
            .map(String::as_str)
            .filter(|name| *name != WILDCARD)
            .collect();
        let removed: Vec<Arc<str>> = self
            .names
            .iter()
            .filter(|name| !wanted.contains(&***name))
            .cloned()
            .collect();
        let added: Vec<&str> = wanted
            .into_iter()
            .filter(|name| !self.names.contains(*name))
            .collect();
        self.apply(&added, removed, wildcard)
    }

    /// Delta: names to add and to remove; `first` for the stream's first
    /// request of this type.
    pub(crate) fn update(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        first: bool,
    ) -> SubscriptionChange {
        let mut wildcard = self.wildcard || (first && subscribe.is_empty());
        let mut added = Vec::new();
        let mut added_set = HashSet::new();
        for name in subscribe {
            if name == WILDCARD {
                wildcard = true;
            } else if !self.names.contains(name.as_str()) && added_set.insert(name.as_str()) {
                added.push(name.as_str());
            }
        }
        let mut removed = Vec::new();
        let mut removed_set = HashSet::new();
        for name in unsubscribe {
            if name == WILDCARD {
                wildcard = false;
            } else if let Some(existing) = self.names.get(name.as_str())
                && !added_set.contains(name.as_str())
                && removed_set.insert(name.as_str())
            {
                removed.push(existing.clone());
            }
        }
        self.apply(&added, removed, wildcard)
    }

    fn apply(
        &mut self,
        added: &[&str],
        removed: Vec<Arc<str>>,
        wildcard: bool,
    ) -> SubscriptionChange {
        for name in &removed {
            self.names.remove(name);
        }
        self.registry.remove(self.resource_type, &removed);
        let added = self.registry.add(self.resource_type, added);
        self.names.extend(added.iter().cloned());
        let wildcard_changed = wildcard != self.wildcard;
        if wildcard_changed {
            self.registry.set_wildcard(self.resource_type, wildcard);
            self.wildcard = wildcard;
        }
        SubscriptionChange {
            added,
            removed,
            wildcard_changed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let names: Vec<Arc<str>> = self.names.drain().collect();
        self.registry.remove(self.resource_type, &names);
        if self.wildcard {
            self.registry.set_wildcard(self.resource_type, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDS: ResourceType = ResourceType::Endpoint;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn published(registry: &SubscriptionRegistry) -> Vec<String> {
        registry.names(EDS).into_iter().collect()
    }

    #[test]
    fn the_registry_publishes_the_union_of_streams() {
        let registry = SubscriptionRegistry::new();
        let mut one = Subscription::new(registry.clone(), EDS);
        let mut two = Subscription::new(registry.clone(), EDS);
        one.replace(&strings(&["a", "b"]));
        two.replace(&strings(&["b", "c"]));
        assert_eq!(published(&registry), ["a", "b", "c"]);
        one.replace(&strings(&["a"]));
        assert_eq!(
            published(&registry),
            ["a", "b", "c"],
            "b is still wanted by two"
        );
        two.replace(&strings(&["c"]));
        assert_eq!(published(&registry), ["a", "c"]);
    }

    #[test]
    fn a_dropped_stream_releases_its_names() {
        let registry = SubscriptionRegistry::new();
        let mut watch = registry.watch(EDS);
        let mut one = Subscription::new(registry.clone(), EDS);
        one.replace(&strings(&["a"]));
        assert!(watch.has_changed().expect("registry alive"));
        assert_eq!(*watch.borrow_and_update(), BTreeSet::from(["a".to_owned()]));
        drop(one);
        assert!(watch.borrow_and_update().is_empty());
    }

    #[test]
    fn sotw_reports_what_a_request_added_and_removed() {
        let registry = SubscriptionRegistry::new();
        let mut sub = Subscription::new(registry, EDS);
        let change = sub.replace(&strings(&["a", "b"]));
        assert_eq!(change.added.len(), 2);
        let change = sub.replace(&strings(&["b", "c"]));
        assert_eq!(change.added, vec![Arc::<str>::from("c")]);
        assert_eq!(change.removed, vec![Arc::<str>::from("a")]);
        assert!(sub.replace(&strings(&["c", "b"])).is_empty());
    }

    #[test]
    fn sotw_legacy_wildcard_lasts_until_names_are_given() {
        let registry = SubscriptionRegistry::new();
        let mut sub = Subscription::new(registry.clone(), ResourceType::Cluster);
        sub.replace(&[]);
        assert!(sub.is_wildcard());
        assert_eq!(registry.wildcard_subscribers(ResourceType::Cluster), 1);
        sub.replace(&[]);
        assert!(sub.is_wildcard(), "still the legacy wildcard");
        sub.replace(&strings(&["a"]));
        assert!(!sub.is_wildcard());
        sub.replace(&[]);
        assert!(
            !sub.is_wildcard(),
            "an empty list now unsubscribes from all"
        );
        sub.replace(&strings(&["*", "a"]));
        assert!(sub.is_wildcard() && sub.names_explicitly("a"));
        drop(sub);
        assert_eq!(registry.wildcard_subscribers(ResourceType::Cluster), 0);
    }

    #[test]
    fn delta_subscribes_and_unsubscribes_incrementally() {
        let registry = SubscriptionRegistry::new();
        let mut sub = Subscription::new(registry.clone(), EDS);
        let change = sub.update(&strings(&["a", "b", "a"]), &[], true);
        assert_eq!(change.added.len(), 2, "duplicates are one subscription");
        assert!(!sub.is_wildcard());
        let mut other = Subscription::new(registry.clone(), EDS);
        other.update(&strings(&["a"]), &[], true);
        let change = sub.update(&strings(&["c"]), &strings(&["a", "zz", "a"]), false);
        assert_eq!(change.added, vec![Arc::<str>::from("c")]);
        assert_eq!(change.removed, vec![Arc::<str>::from("a")]);
        assert_eq!(
            published(&registry),
            ["a", "b", "c"],
            "a repeated unsubscribe releases one reference, not other streams' ones"
        );
    }

    #[test]
    fn delta_wildcards_are_legacy_on_first_request_or_explicit() {
        let registry = SubscriptionRegistry::new();
        let mut legacy = Subscription::new(registry.clone(), ResourceType::Listener);
        legacy.update(&[], &[], true);
        assert!(legacy.is_wildcard());
        legacy.update(&strings(&["extra"]), &[], false);
        assert!(legacy.is_wildcard(), "names add to the wildcard in delta");
        legacy.update(&[], &strings(&["*"]), false);
        assert!(!legacy.is_wildcard());
        let mut explicit = Subscription::new(registry, ResourceType::Listener);
        explicit.update(&strings(&["a"]), &[], true);
        assert!(!explicit.is_wildcard());
        explicit.update(&strings(&["*"]), &[], false);
        assert!(explicit.is_wildcard() && explicit.wants("anything"));
    }
}

//! What one client holds of one resource type, and what it must be sent next.
//!
//! The tracker remembers, per resource name, the version the client was
//! last sent (or reported holding when it reconnected). Planning a response
//! compares that with the snapshot: only resources whose version differs
//! are sent, so an endpoint change in one cluster sends that cluster alone.
//!
//! A NACKed version is not sent again until the application changes the
//! resource (re-sending a config Envoy just rejected would only be rejected
//! again, in a loop). Envoy rejects a response as a whole, though: in
//! SotW EDS/RDS/SDS the resources that were not at fault are not held
//! either, so the tracker rolls the whole response back to what the client
//! held before it, holds those resources back at the rejected versions,
//! and once any of them changes sends every one the client lacks. (SotW
//! CDS/LDS need none of this: each of their responses carries the whole
//! set. Delta is unchanged: the rejected versions stay recorded as sent.)
//!
//! Absent resources are where protocols and safety meet:
//! - A requested cluster with no endpoints in the cache gets an empty
//!   assignment if the client holds nothing for it, so Envoy never waits for
//!   `initial_fetch_timeout` (15 s); but only after [`STAND_IN_DELAY`]: an
//!   Envoy that connects before the application's first read of that
//!   cluster (a replica that has not heard from Consul yet) is answered with
//!   the real endpoints the moment they arrive, instead of warming with none
//!   and answering 503 until the next change. If the client already holds
//!   endpoints for it (it reconnected), "absent" means "not known yet", and
//!   its endpoints are left alone rather than emptied.
//! - Other types are only ever reported removed (delta, or a full-state
//!   SotW response) once the application has set the type at least once
//!   since the server started: an unset type is unknown, not empty, so a
//!   restarted control plane never wipes a reconnecting Envoy's config.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::TypeSnapshot;
use crate::resource::{Resource, ResourceType};
use crate::subscription::Subscription;
use crate::version::Version;

/// How long a requested cluster the cache does not know waits for its
/// first real data before it is answered with an empty assignment: well
/// inside Envoy's 15 s `initial_fetch_timeout`, long enough for a first
/// Consul read.
pub(crate) const STAND_IN_DELAY: Duration = Duration::from_secs(2);

/// What the client holds of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    Version(Version),
    /// Reported on reconnect, in a version this server cannot compare.
    Unknown,
}

/// How a response may express what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Incremental: changed resources plus the names of removed ones.
    Delta,
    /// State of the world for CDS/LDS: the whole set, absence is removal.
    SotwFullState,
    /// State of the world for EDS/RDS/SDS: changed resources only.
    SotwPartial,
}

impl Mode {
    pub(crate) fn sotw(resource_type: ResourceType) -> Self {
        if resource_type.is_full_state() {
            Mode::SotwFullState
        } else {
            Mode::SotwPartial
        }
    }
}

/// The difference between what the client holds and what it should hold.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) upserts: Vec<Resource>,
    pub(crate) removals: Vec<Arc<str>>,
    /// Time since the cache write this plan carries to a client that was
    /// up to date before it; `None` for answers to requests.
    pub(crate) after_write: Option<Duration>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Tracker {
    resource_type: ResourceType,
    mode: Mode,
    held: HashMap<Arc<str>, Held>,
    /// Generation of the snapshot last planned against; `None` forces a
    /// full comparison (after a subscription change, or before the first).
    synced: Option<u64>,
    /// Names to answer at the next plan even if the client holds them
    /// (newly subscribed: the protocol requires an answer).
    must_answer: HashSet<Arc<str>>,
    /// Full-state only: the next plan must produce a response.
    answer_all: bool,
    /// A resuming SotW client's version that the snapshot did not match
    /// yet. If the application restores exactly that state (a restarted
    /// control plane refilling its cache), the client is known to hold it.
    resumed_version: Option<Version>,
    /// SotW EDS/RDS/SDS: what the client held, before the last response,
    /// of each resource that response carried.
    before_last: Vec<(Arc<str>, Option<Held>)>,
    /// The resources of a rejected response, at the versions rejected.
    rejected: HashMap<Arc<str>, Version>,
    /// Requested clusters absent from the cache, each with the moment it is
    /// answered with an empty assignment unless real data arrives first.
    stand_ins_due: HashMap<Arc<str>, Instant>,
    stand_in_delay: Duration,
}

impl Tracker {
    pub(crate) fn new(resource_type: ResourceType, mode: Mode) -> Self {
        Self {
            resource_type,
            mode,
            held: HashMap::new(),
            synced: None,
            must_answer: HashSet::new(),
            answer_all: false,
            resumed_version: None,
            before_last: Vec::new(),
            rejected: HashMap::new(),
            stand_ins_due: HashMap::new(),
            stand_in_delay: STAND_IN_DELAY,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_stand_in_delay(mut self, delay: Duration) -> Self {
        self.stand_in_delay = delay;
        self
    }

    /// When the next deferred empty assignment falls due, if one waits.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.stand_ins_due.values().min().copied()
    }

    /// A state-of-the-world client's first request. An empty `version_info`
    /// is a fresh client: everything it names is answered. Otherwise it is
    /// resuming: if its version is the snapshot's it holds exactly what we
    /// have; if not, it holds something for every name, of unknown version.
    pub(crate) fn start_sotw(
        &mut self,
        version_info: &str,
        snapshot: &TypeSnapshot,
        subscription: &Subscription,
    ) {
        self.synced = None;
        if version_info.is_empty() {
            self.must_answer = subscription.names().cloned().collect();
            self.answer_all = self.mode == Mode::SotwFullState;
            return;
        }
        if Version::parse(version_info) == Some(snapshot.version) {
            for (name, resource) in &snapshot.resources {
                if subscription.wants(name) {
                    self.held
                        .insert(name.clone(), Held::Version(resource.version()));
                }
            }
        } else {
            self.resumed_version = Version::parse(version_info);
            self.answer_all = self.mode == Mode::SotwFullState;
        }
        for name in subscription.names() {
            self.held.entry(name.clone()).or_insert(Held::Unknown);
        }
    }

    /// A delta client's first request: it holds `initial_resource_versions`.
    pub(crate) fn start_delta<'a>(
        &mut self,
        initial_resource_versions: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) {
        self.synced = None;
        for (name, version) in initial_resource_versions {
            let held = Version::parse(version).map_or(Held::Unknown, Held::Version);
            self.held.insert(Arc::from(name.as_str()), held);
        }
    }

    /// Newly subscribed names must be answered even if already held.
    pub(crate) fn subscribed(&mut self, names: &[Arc<str>]) {
        self.synced = None;
        self.must_answer.extend(names.iter().cloned());
        if self.mode == Mode::SotwFullState && !names.is_empty() {
            self.answer_all = true;
        }
    }

    /// Delta first request: names the client holds need no answer.
    pub(crate) fn subscribed_unless_held(&mut self, names: &[Arc<str>]) {
        self.synced = None;
        self.must_answer.extend(
            names
                .iter()
                .filter(|name| !self.held.contains_key(*name))
                .cloned(),
        );
    }

    /// The client dropped interest: it no longer holds these.
    pub(crate) fn unsubscribed(&mut self, names: &[Arc<str>]) {
        self.synced = None;
        for name in names {
            self.held.remove(name);
            self.must_answer.remove(name);
            self.stand_ins_due.remove(name);
        }
        if self.mode == Mode::SotwFullState && !names.is_empty() {
            self.answer_all = true;
        }
    }

    /// Something changed that needs a full comparison (e.g. wildcard toggled).
    pub(crate) fn resync(&mut self) {
        self.synced = None;
        if self.mode == Mode::SotwFullState {
            self.answer_all = true;
        }
    }

    /// Whether `snapshot` may hold something this client has not seen.
    pub(crate) fn is_behind(&self, snapshot: &TypeSnapshot) -> bool {
        self.synced != Some(snapshot.generation)
            || !self.must_answer.is_empty()
            || self.answer_all
            || self.next_wake().is_some_and(|due| due <= Instant::now())
    }

    /// Compares the client with the snapshot. Returns `None` when nothing
    /// needs sending. The caller sends the plan, then calls
    /// [`record`](Self::record) (or [`record_full_state`](Self::record_full_state)).
    pub(crate) fn plan(
        &mut self,
        snapshot: &TypeSnapshot,
        subscription: &Subscription,
    ) -> Option<Plan> {
        if !self.is_behind(snapshot) {
            return None;
        }
        self.catch_up_with_resumed_version(snapshot, subscription);
        let mut plan = Plan::default();
        let caused_by_write = self
            .synced
            .is_some_and(|synced| synced != snapshot.generation);
        let incremental = self.synced == Some(snapshot.base_generation);
        let must_answer = std::mem::take(&mut self.must_answer);
        let released = self.release_rejected(snapshot);
        let mut candidates: Vec<&Arc<str>> = Vec::new();
        if self.synced == Some(snapshot.generation) {
            // Nothing changed in the cache: only new subscriptions.
        } else if incremental {
            candidates.extend(&snapshot.changed);
        } else {
            if subscription.is_wildcard() {
                candidates.extend(snapshot.resources.keys());
            }
            candidates.extend(subscription.names());
            candidates.extend(self.held.keys());
        }
        candidates.extend(&must_answer);
        candidates.extend(&released);
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .stand_ins_due
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(name, _)| name.clone())
            .collect();
        candidates.extend(&due);
        let mut seen: HashSet<&str> = HashSet::with_capacity(candidates.len());
        let mut deferred = Vec::new();
        for name in candidates {
            if seen.insert(name) {
                self.plan_one(
                    name,
                    snapshot,
                    subscription,
                    &must_answer,
                    now,
                    &mut deferred,
                    &mut plan,
                );
            }
        }
        for name in deferred {
            self.stand_ins_due
                .entry(name)
                .or_insert(now + self.stand_in_delay);
        }
        for resource in &plan.upserts {
            self.stand_ins_due.remove(resource.shared_name());
        }
        self.stand_ins_due
            .retain(|name, _| !snapshot.resources.contains_key(name) && subscription.wants(name));
        self.synced = Some(snapshot.generation);
        if caused_by_write {
            plan.after_write = Some(snapshot.written_at.elapsed());
        }
        if !snapshot.initialized && self.resource_type != ResourceType::Endpoint {
            // Unknown is not empty: nothing can be said about these names
            // until the application sets the type; keep owing the answers,
            // and compare everything the client holds once it is set.
            self.must_answer = must_answer;
            self.synced = None;
            return None;
        }
        if self.mode == Mode::SotwFullState {
            if plan.is_empty() && !self.answer_all {
                return None;
            }
            self.answer_all = false;
            return Some(plan);
        }
        (!plan.is_empty()).then_some(plan)
    }

    /// Once a resource of a rejected response changes, the whole response
    /// is released: the names to compare again.
    fn release_rejected(&mut self, snapshot: &TypeSnapshot) -> Vec<Arc<str>> {
        let changed = self.rejected.iter().any(|(name, rejected)| {
            snapshot.resources.get(name).map(Resource::version) != Some(*rejected)
        });
        if !changed {
            return Vec::new();
        }
        self.rejected.drain().map(|(name, _)| name).collect()
    }

    /// If the snapshot now is exactly what a resuming client reported, the
    /// client holds every resource in it.
    fn catch_up_with_resumed_version(
        &mut self,
        snapshot: &TypeSnapshot,
        subscription: &Subscription,
    ) {
        if self.resumed_version != Some(snapshot.version) || !snapshot.initialized {
            return;
        }
        self.resumed_version = None;
        for (name, resource) in &snapshot.resources {
            if subscription.wants(name) {
                self.held
                    .insert(name.clone(), Held::Version(resource.version()));
            }
        }
        self.answer_all = false;
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_one(
        &self,
        name: &Arc<str>,
        snapshot: &TypeSnapshot,
        subscription: &Subscription,
        must_answer: &HashSet<Arc<str>>,
        now: Instant,
        deferred: &mut Vec<Arc<str>>,
        plan: &mut Plan,
    ) {
        let held = self.held.get(name);
        if !subscription.wants(name) {
            if held.is_some() && self.mode != Mode::SotwPartial && snapshot.initialized {
                plan.removals.push(name.clone());
            }
            return;
        }
        match snapshot.resources.get(name) {
            Some(resource) => {
                let differs = held != Some(&Held::Version(resource.version()))
                    && self.rejected.get(name) != Some(&resource.version());
                if must_answer.contains(name) || differs {
                    plan.upserts.push(resource.clone());
                }
            }
            None if self.resource_type == ResourceType::Endpoint => {
                if held.is_none() && subscription.names_explicitly(name) {
                    let due = self
                        .stand_ins_due
                        .get(name)
                        .copied()
                        .unwrap_or(now + self.stand_in_delay);
                    if due <= now {
                        plan.upserts.push(Resource::empty_assignment(name));
                    } else {
                        deferred.push(name.clone());
                    }
                }
            }
            None => {
                let removable = self.mode != Mode::SotwPartial && snapshot.initialized;
                let announce =
                    held.is_some() || (self.mode == Mode::Delta && must_answer.contains(name));
                if removable && announce {
                    plan.removals.push(name.clone());
                }
            }
        }
    }

    /// The client was sent `plan` (whatever it answers).
    pub(crate) fn record(&mut self, plan: &Plan) {
        self.resumed_version = None;
        if self.mode == Mode::SotwPartial {
            self.before_last.clear();
            for resource in &plan.upserts {
                let name = resource.shared_name();
                self.before_last
                    .push((name.clone(), self.held.get(name).copied()));
            }
        }
        for resource in &plan.upserts {
            self.held.insert(
                resource.shared_name().clone(),
                Held::Version(resource.version()),
            );
        }
        for name in &plan.removals {
            self.held.remove(name);
        }
    }

    /// The client accepted the last response: what it held before is no
    /// longer needed. Freed, not just cleared: kept for every stream, the
    /// record of one full response (a thousand names) would stay allocated
    /// for the stream's life.
    pub(crate) fn accepted(&mut self) {
        self.before_last = Vec::new();
    }

    /// The client rejected the last response. In SotW EDS/RDS/SDS it still
    /// holds what it held before; the rejected versions are held back.
    pub(crate) fn rejected(&mut self) {
        if self.mode != Mode::SotwPartial {
            return;
        }
        for (name, before) in self.before_last.drain(..) {
            if let Some(Held::Version(sent)) = self.held.get(&name) {
                self.rejected.insert(name.clone(), *sent);
            }
            match before {
                Some(held) => self.held.insert(name, held),
                None => self.held.remove(&name),
            };
        }
    }

    /// The client was sent this complete set (SotW CDS/LDS).
    pub(crate) fn record_full_state(&mut self, resources: &[Resource]) {
        self.resumed_version = None;
        self.held = resources
            .iter()
            .map(|r| (r.shared_name().clone(), Held::Version(r.version())))
            .collect();
    }

    /// The complete set a SotW CDS/LDS response carries.
    pub(crate) fn full_state(
        snapshot: &TypeSnapshot,
        subscription: &Subscription,
    ) -> Vec<Resource> {
        if subscription.is_wildcard() {
            snapshot.resources.values().cloned().collect()
        } else {
            let mut names: Vec<&Arc<str>> = subscription.names().collect();
            names.sort();
            names
                .into_iter()
                .filter_map(|name| snapshot.resources.get(name).cloned())
                .collect()
        }
    }

    #[cfg(test)]
    pub(crate) fn held(&self, name: &str) -> Option<Held> {
        self.held.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::SnapshotCache;
    use crate::fixtures::{assignment, cluster, strings};
    use crate::node::SharedKey;
    use crate::subscription::SubscriptionRegistry;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    const KEY: &str = "k";

    struct Fixture {
        cache: SnapshotCache,
        subscription: Subscription,
        tracker: Tracker,
    }

    impl Fixture {
        fn new(resource_type: ResourceType, mode: Mode) -> Self {
            let cache = SnapshotCache::new(SharedKey(KEY.to_owned()));
            let _ = cache.watch(KEY);
            Self {
                cache,
                subscription: Subscription::new(SubscriptionRegistry::new(), resource_type),
                tracker: Tracker::new(resource_type, mode),
            }
        }

        fn set_endpoints(&self, assignments: &[ClusterLoadAssignment]) {
            self.cache.set_endpoints(KEY, assignments).expect("set");
        }

        fn update_endpoints(&self, assignments: &[ClusterLoadAssignment]) {
            self.cache
                .update_endpoints(KEY, assignments, &[] as &[&str])
                .expect("update");
        }

        /// Opens the SotW subscription to `names`, the client reporting
        /// `version` as held.
        fn start_sotw(&mut self, names: &[&str], version: &str) {
            self.subscription.replace(&strings(names));
            let snapshot = self.snapshot(self.tracker.resource_type);
            self.tracker
                .start_sotw(version, &snapshot, &self.subscription);
        }

        fn snapshot(&self, resource_type: ResourceType) -> Arc<TypeSnapshot> {
            self.cache
                .snapshot(KEY)
                .map(|s| s.of_type(resource_type).clone())
                .expect("entry")
        }

        /// Plans against the current snapshot and records it as sent.
        fn send(&mut self, resource_type: ResourceType) -> Option<(Vec<String>, Vec<String>)> {
            let snapshot = self.snapshot(resource_type);
            let plan = self.tracker.plan(&snapshot, &self.subscription)?;
            self.tracker.record(&plan);
            Some((
                plan.upserts.iter().map(|r| r.name().to_owned()).collect(),
                plan.removals.iter().map(|n| n.to_string()).collect(),
            ))
        }
    }

    #[test]
    fn only_changed_resources_are_planned() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        f.set_endpoints(&[assignment("a", 0), assignment("b", 0)]);
        f.start_sotw(&["a", "b"], "");
        let (mut first, _) = f.send(ResourceType::Endpoint).expect("initial answer");
        first.sort();
        assert_eq!(first, ["a", "b"]);
        assert_eq!(f.send(ResourceType::Endpoint), None, "nothing new");
        f.update_endpoints(&[assignment("b", 1)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["b".to_owned()], vec![]))
        );
    }

    #[test]
    fn unknown_requested_clusters_get_an_empty_assignment_once() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        f.tracker = Tracker::new(ResourceType::Endpoint, Mode::SotwPartial)
            .with_stand_in_delay(Duration::ZERO);
        f.start_sotw(&["missing"], "");
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["missing".to_owned()], vec![]))
        );
        f.set_endpoints(&[assignment("other", 0)]);
        assert_eq!(f.send(ResourceType::Endpoint), None, "answered already");
        f.set_endpoints(&[assignment("missing", 0)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["missing".to_owned()], vec![]))
        );
    }

    #[test]
    fn an_unknown_cluster_waits_for_its_first_real_data_then_for_the_bound() {
        {
            let mode = Mode::SotwPartial;
            let mut f = Fixture::new(ResourceType::Endpoint, mode);
            f.tracker = Tracker::new(ResourceType::Endpoint, mode)
                .with_stand_in_delay(Duration::from_millis(200));
            f.start_sotw(&["web", "gone"], "");
            // Not answered empty at once: the application may be reading it.
            assert_eq!(f.send(ResourceType::Endpoint), None, "{mode:?}");
            let wake = f.tracker.next_wake().expect("a stand-in is due later");
            assert!(wake > Instant::now());
            // The real data arrives within the bound: it is the first answer.
            f.set_endpoints(&[assignment("web", 2)]);
            assert_eq!(
                f.send(ResourceType::Endpoint),
                Some((vec!["web".to_owned()], vec![])),
                "{mode:?}"
            );
            // `gone` never arrives: once the bound passes, it gets the stand-in.
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            let snapshot = f.snapshot(ResourceType::Endpoint);
            assert!(f.tracker.is_behind(&snapshot));
            assert_eq!(
                f.send(ResourceType::Endpoint),
                Some((vec!["gone".to_owned()], vec![])),
                "{mode:?}"
            );
            assert_eq!(f.tracker.next_wake(), None, "nothing else is due");
        }
    }

    #[test]
    fn a_resuming_client_at_the_current_version_is_sent_nothing() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        f.set_endpoints(&[assignment("a", 0)]);
        let current = f.snapshot(ResourceType::Endpoint).version.to_string();
        f.start_sotw(&["a"], &current);
        assert_eq!(f.send(ResourceType::Endpoint), None);
    }

    #[test]
    fn a_resuming_client_keeps_its_endpoints_until_the_cache_knows_them() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        f.start_sotw(&["a", "b"], "0123456789abcdef");
        assert_eq!(
            f.send(ResourceType::Endpoint),
            None,
            "no empty stand-ins for clusters the client holds"
        );
        f.set_endpoints(&[assignment("a", 0)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["a".to_owned()], vec![]))
        );
        assert_eq!(f.tracker.held("b"), Some(Held::Unknown));
    }

    #[test]
    fn a_resuming_client_is_not_resent_the_state_it_reported() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        let reference = SnapshotCache::new(SharedKey(KEY.to_owned()));
        reference
            .set_endpoints(KEY, &[assignment("a", 0), assignment("b", 0)])
            .expect("set");
        let reported = reference
            .snapshot(KEY)
            .expect("entry")
            .version(ResourceType::Endpoint);
        f.start_sotw(&["a", "b"], &reported.to_string());
        f.set_endpoints(&[assignment("a", 0)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["a".to_owned()], vec![])),
            "a partial refill cannot be proven equal: a is sent"
        );
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        f.start_sotw(&["a", "b"], &reported.to_string());
        f.set_endpoints(&[assignment("a", 0), assignment("b", 0)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            None,
            "the very state it reported"
        );
        f.update_endpoints(&[assignment("b", 1)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["b".to_owned()], vec![]))
        );
    }

    #[test]
    fn a_nacked_version_is_not_planned_again_until_it_changes() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        f.set_endpoints(&[assignment("a", 0), assignment("b", 0)]);
        f.start_sotw(&["a", "b"], "");
        f.send(ResourceType::Endpoint).expect("initial");
        // "a" at priority 5 is what the client will reject; the tracker
        // records it as sent all the same.
        f.update_endpoints(&[assignment("a", 5)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["a".to_owned()], vec![]))
        );
        f.update_endpoints(&[assignment("b", 1)]);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["b".to_owned()], vec![])),
            "the rejected a is not re-sent with b"
        );
    }

    #[test]
    fn delta_reports_removals_and_missing_names_once_the_type_is_set() {
        let mut f = Fixture::new(ResourceType::Cluster, Mode::Delta);
        let change = f.subscription.update(&strings(&["a", "b"]), &[], true);
        f.tracker.subscribed_unless_held(&change.added);
        assert_eq!(
            f.send(ResourceType::Cluster),
            None,
            "unset: nothing known yet"
        );
        f.cache.set_clusters(KEY, &[cluster("a")]).expect("set");
        let (upserts, removals) = f.send(ResourceType::Cluster).expect("answer");
        assert_eq!(upserts, ["a"]);
        assert_eq!(removals, ["b"], "b does not exist");
        f.cache.set_clusters(KEY, &[]).expect("set");
        assert_eq!(
            f.send(ResourceType::Cluster),
            Some((vec![], vec!["a".to_owned()]))
        );
        assert_eq!(f.send(ResourceType::Cluster), None);
    }

    #[test]
    fn delta_resumes_from_initial_resource_versions() {
        let mut f = Fixture::new(ResourceType::Cluster, Mode::Delta);
        f.cache
            .set_clusters(KEY, &[cluster("a"), cluster("b")])
            .expect("set");
        let snapshot = f.cache.snapshot(KEY).expect("entry");
        let a_version = snapshot
            .get(ResourceType::Cluster, "a")
            .expect("a")
            .version()
            .to_string();
        let initial = HashMap::from([
            ("a".to_owned(), a_version),
            ("b".to_owned(), "from-another-server".to_owned()),
            ("gone".to_owned(), "0000000000000001".to_owned()),
        ]);
        f.tracker.start_delta(&initial);
        let change = f.subscription.update(&[], &[], true);
        assert!(change.wildcard_changed);
        f.tracker.subscribed_unless_held(&change.added);
        let (upserts, removals) = f.send(ResourceType::Cluster).expect("answer");
        assert_eq!(upserts, ["b"], "a is current, b of unknown version");
        assert_eq!(removals, ["gone"]);
    }

    #[test]
    fn full_state_waits_for_the_type_to_be_set() {
        let mut f = Fixture::new(ResourceType::Cluster, Mode::SotwFullState);
        f.start_sotw(&[], "");
        assert_eq!(f.send(ResourceType::Cluster), None);
        f.cache.set_clusters(KEY, &[]).expect("set");
        let snapshot = f.snapshot(ResourceType::Cluster);
        let plan = f.tracker.plan(&snapshot, &f.subscription);
        assert!(plan.is_some(), "an empty set is an answer once it is known");
    }

    #[test]
    fn a_one_cluster_change_looks_at_one_name() {
        let mut f = Fixture::new(ResourceType::Endpoint, Mode::SotwPartial);
        let names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let all: Vec<ClusterLoadAssignment> = names.iter().map(|n| assignment(n, 0)).collect();
        f.set_endpoints(&all);
        f.subscription.replace(&names);
        let snapshot = f.snapshot(ResourceType::Endpoint);
        f.tracker.start_sotw("", &snapshot, &f.subscription);
        f.send(ResourceType::Endpoint).expect("initial");
        f.update_endpoints(&[assignment("c500", 1)]);
        let snapshot = f.snapshot(ResourceType::Endpoint);
        assert_eq!(snapshot.changed.len(), 1);
        assert_eq!(
            f.send(ResourceType::Endpoint),
            Some((vec!["c500".to_owned()], vec![]))
        );
    }
}

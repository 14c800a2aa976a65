//! The sync engine: which Consul services to watch, and what each cluster serves.
//!
//! Inputs: the set of cluster names Envoys subscribe to (demand) and, per
//! watched service, a stream of [`SourceEvent`]s. Output: batches of changed
//! [`ClusterEndpoints`] handed to an [`EndpointSink`] (the xDS cache).
//!
//! Rules it keeps:
//! - A service is watched exactly while some demanded cluster needs it; a
//!   watch whose last cluster goes away is stopped (no leaked watches).
//! - What one service serves follows `rules`: an error never changes it
//!   (the last good endpoints stay, the clusters are degraded), and an empty
//!   answer after a Consul index reset is held for the reset grace.
//! - A change after a quiet spell is pushed at once (leading edge); what
//!   follows within the coalescing window is gathered into the next push, so
//!   a lone change pays no window and a burst still becomes few pushes. The
//!   latest state always wins and every change is eventually pushed.
//!
//! This module is the actor around those rules: it routes demand changes,
//! watch events and timers, and turns each `rules::Change` into logs,
//! metrics and rebuilt clusters. What a cluster is made of is `plan`.

mod plan;
mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use service_support::time::{sleep_until_opt, unix_now};

use crate::health::HealthPolicy;
use crate::metrics::{ClusterLabel, EngineMetrics, ServiceLabel};
use crate::model::{ClusterEndpoints, Endpoint, ServiceInstance, SourceKind};
use crate::naming::{ClusterNaming, ClusterTarget};
use crate::state::{Freshness, ServedState};
use plan::ClusterPlan;
use rules::{Change, Input, Now, ServiceState};

/// One watched service in one registry and datacenter (`None`: the local
/// one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchKey {
    pub service: String,
    pub datacenter: Option<String>,
    pub origin: Origin,
}

/// Which registry a watch reads, and where in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Consul,
    /// Nomad's own registry, in one namespace (`*`: every namespace the
    /// token can read).
    Nomad {
        namespace: String,
    },
}

impl Origin {
    pub fn kind(&self) -> SourceKind {
        match self {
            Self::Consul => SourceKind::Consul,
            Self::Nomad { .. } => SourceKind::Nomad,
        }
    }
}

impl WatchKey {
    /// `service` in Consul's catalog of `datacenter`.
    pub fn consul(service: &str, datacenter: Option<&str>) -> Self {
        Self {
            service: service.to_owned(),
            datacenter: datacenter.map(str::to_owned),
            origin: Origin::Consul,
        }
    }

    /// `service` in Nomad's registry, in `namespace`.
    pub fn nomad(service: &str, namespace: &str) -> Self {
        Self {
            service: service.to_owned(),
            datacenter: None,
            origin: Origin::Nomad {
                namespace: namespace.to_owned(),
            },
        }
    }

    fn datacenter_label(&self) -> String {
        self.datacenter
            .clone()
            .unwrap_or_else(|| "local".to_owned())
    }
}

/// The registries the server reads (`--sources`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSelection {
    pub consul: bool,
    /// Nomad's namespaces to read; empty: Nomad is not read.
    pub nomad_namespaces: Vec<String>,
}

impl SourceSelection {
    /// `--nomad-namespace '*'`: every namespace the token can read, each
    /// service in those the checked `*` listing names ([`NomadListing`]).
    pub fn reads_every_nomad_namespace(&self) -> bool {
        matches!(self.nomad_namespaces.as_slice(), [only] if only == nomad_client::ALL_NAMESPACES)
    }
}

/// With `--nomad-namespace '*'`: where each service is registered, from the
/// checked `*` listing (`source::nomad::all_namespaces`). A cluster of a
/// service is fed by one watch per namespace listed here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NomadListing {
    /// Service -> the namespaces that list it, held ones included.
    pub namespaces: BTreeMap<String, BTreeSet<String>>,
    /// Namespaces that vanished from the listing and whose direct read
    /// fails (403: the token lost them), with the failure: kept, and
    /// every watch in them degraded.
    pub held: BTreeMap<String, String>,
}

impl Default for SourceSelection {
    /// Consul alone, as before Nomad could be read.
    fn default() -> Self {
        Self {
            consul: true,
            nomad_namespaces: Vec::new(),
        }
    }
}

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A successful read: the service's instances now (empty if it has none).
    Instances {
        instances: Vec<ServiceInstance>,
        index: u64,
        /// The first read after Consul's index went backwards.
        after_reset: bool,
    },
    /// Consul answered but said its ACLs filtered the answer (Consul 1.11
    /// and later): it may lack instances that exist, so it is not believed.
    Filtered,
    /// Reads are failing; whatever was read last is still the best data.
    Failing { error: String },
}

/// Where instance data comes from (Consul in production, a fake in tests).
pub trait ServiceSource: Send + Sync + 'static {
    /// A stream of events for one service; dropping it stops the watch.
    fn watch(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent>;
}

/// Where cluster endpoints go (the xDS cache in production).
pub trait EndpointSink: Send + 'static {
    fn publish(&mut self, clusters: Vec<ClusterEndpoints>);
    fn remove(&mut self, clusters: Vec<String>);
}

/// The engine's fixed settings, built once from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub naming: ClusterNaming,
    pub policy: HealthPolicy,
    /// Datacenters tried, in order, as lower priorities (Consul's).
    pub failover_dcs: Vec<String>,
    /// The registries clusters are fed from.
    pub sources: SourceSelection,
    /// If not empty, only these services are ever watched.
    pub allowed_services: BTreeSet<String>,
    pub coalesce: Duration,
    pub reset_grace: Duration,
}

/// What gateway mode adds to the engine's inputs and outputs.
///
/// In gateway mode the clusters to feed come from the services' tags, not
/// only from what Envoys subscribe to, and the tags themselves are read from
/// the same per-service watches that feed the endpoints: one blocking query
/// per service serves both, so routing costs no extra connections.
#[derive(Debug)]
pub struct GatewayLink {
    /// Cluster name -> what it selects. These clusters are fed whether or
    /// not an Envoy asks; a name here wins over the same name parsed from a
    /// subscription (the gateway's canary split is not in the name).
    pub targets: watch::Receiver<BTreeMap<String, ClusterTarget>>,
    /// The last good instances of a watched service (local datacenter),
    /// each time they change: what its route tags are read from.
    pub instances: mpsc::UnboundedSender<ServiceInstances>,
}

/// One service's instances, as the rules last accepted them.
#[derive(Debug, Clone)]
pub struct ServiceInstances {
    pub service: String,
    pub instances: Arc<Vec<ServiceInstance>>,
}

/// A running watch and the state of its service.
#[derive(Debug)]
struct Watch {
    task: JoinHandle<()>,
    /// Tells this watch's events from those a replaced one left queued.
    generation: u64,
    service: ServiceState,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Engine<S, K> {
    settings: EngineSettings,
    source: Arc<S>,
    sink: K,
    state: ServedState,
    metrics: EngineMetrics,
    plans: BTreeMap<String, ClusterPlan>,
    watches: HashMap<WatchKey, Watch>,
    events_tx: mpsc::UnboundedSender<(WatchKey, u64, SourceEvent)>,
    events_rx: mpsc::UnboundedReceiver<(WatchKey, u64, SourceEvent)>,
    /// The generation the next started watch gets.
    next_generation: u64,
    dirty: BTreeSet<String>,
    flush_at: Option<Instant>,
    /// When the last push went out: the next one waits for the window.
    last_flush: Option<Instant>,
    /// What the sink has per cluster, so unchanged clusters are not re-sent.
    /// The same allocation as the admin view's endpoints: one copy each.
    published: HashMap<String, Arc<[Endpoint]>>,
    /// Gateway mode's own clusters (empty otherwise).
    gateway_targets: BTreeMap<String, ClusterTarget>,
    /// Where accepted instances go in gateway mode.
    instances_tx: Option<mpsc::UnboundedSender<ServiceInstances>>,
    /// The subscribed names last seen, so a change of the gateway's targets
    /// can recompute the demand.
    subscribed: BTreeSet<String>,
    /// With `--nomad-namespace '*'`: where services are registered.
    nomad_listing: NomadListing,
    nomad_listing_rx: Option<watch::Receiver<Arc<NomadListing>>>,
}

impl<S, K> std::fmt::Debug for Engine<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("clusters", &self.plans.len())
            .field("watches", &self.watches.len())
            .finish_non_exhaustive()
    }
}

impl<S: ServiceSource, K: EndpointSink> Engine<S, K> {
    pub fn new(
        settings: EngineSettings,
        source: Arc<S>,
        sink: K,
        state: ServedState,
        metrics: EngineMetrics,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            settings,
            source,
            sink,
            state,
            metrics,
            plans: BTreeMap::new(),
            watches: HashMap::new(),
            events_tx,
            events_rx,
            next_generation: 0,
            dirty: BTreeSet::new(),
            flush_at: None,
            last_flush: None,
            published: HashMap::new(),
            gateway_targets: BTreeMap::new(),
            instances_tx: None,
            subscribed: BTreeSet::new(),
            nomad_listing: NomadListing::default(),
            nomad_listing_rx: None,
        }
    }

    /// Feeds clusters from the namespaces `listing` names per service
    /// (`--nomad-namespace '*'`), planned again at each of its changes.
    #[must_use]
    pub fn with_nomad_listing(mut self, listing: watch::Receiver<Arc<NomadListing>>) -> Self {
        self.nomad_listing_rx = Some(listing);
        self
    }

    /// Runs until `shutdown`; every watch stops with it.
    pub async fn run(self, demand: watch::Receiver<BTreeSet<String>>, shutdown: CancellationToken) {
        self.run_with(demand, None, shutdown).await;
    }

    /// [`Engine::run`] in gateway mode: the gateway's clusters are fed too,
    /// and the instances read are reported to it.
    pub async fn run_gateway(
        self,
        demand: watch::Receiver<BTreeSet<String>>,
        link: GatewayLink,
        shutdown: CancellationToken,
    ) {
        self.run_with(demand, Some(link), shutdown).await;
    }

    async fn run_with(
        mut self,
        mut demand: watch::Receiver<BTreeSet<String>>,
        link: Option<GatewayLink>,
        shutdown: CancellationToken,
    ) {
        let (mut targets, targets_open) = match link {
            Some(link) => {
                self.instances_tx = Some(link.instances);
                (link.targets, true)
            }
            // A receiver that never changes stands in for no gateway.
            None => (watch::channel(BTreeMap::new()).1, false),
        };
        let mut targets_open = targets_open;
        self.gateway_targets = targets.borrow_and_update().clone();
        let (mut listing, mut listing_open) = match self.nomad_listing_rx.take() {
            Some(listing) => (listing, true),
            None => (watch::channel(Arc::default()).1, false),
        };
        self.nomad_listing = listing.borrow_and_update().as_ref().clone();
        let initial = demand.borrow_and_update().clone();
        self.set_demand(&initial);
        let mut demand_open = true;
        // Held empties are re-examined on this tick; the grace is seconds, so
        // a coarse tick costs nothing and keeps the select simple.
        let mut grace_tick =
            tokio::time::interval(self.settings.reset_grace.max(Duration::from_millis(100)) / 4);
        grace_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = demand.changed(), if demand_open => {
                    if changed.is_err() {
                        // The xDS server is gone; keep the last demand.
                        demand_open = false;
                        continue;
                    }
                    let wanted = demand.borrow_and_update().clone();
                    self.set_demand(&wanted);
                }
                changed = targets.changed(), if targets_open => {
                    if changed.is_err() {
                        // The gateway is gone; keep feeding what it asked for.
                        targets_open = false;
                        continue;
                    }
                    self.gateway_targets = targets.borrow_and_update().clone();
                    let subscribed = self.subscribed.clone();
                    self.set_demand(&subscribed);
                }
                changed = listing.changed(), if listing_open => {
                    if changed.is_err() {
                        // The listing's task is gone; keep what it said last.
                        listing_open = false;
                        continue;
                    }
                    self.nomad_listing = listing.borrow_and_update().as_ref().clone();
                    let subscribed = self.subscribed.clone();
                    self.set_demand(&subscribed);
                    self.degrade_held_namespaces();
                }
                Some((key, generation, event)) = self.events_rx.recv() => {
                    self.on_source_event(key, generation, event);
                    // Take in what is already queued (one Consul answer can
                    // bring many services) before a leading-edge push, so
                    // the push carries all of it.
                    for _ in 0..MAX_EVENTS_PER_TURN {
                        let Ok((key, generation, event)) = self.events_rx.try_recv() else {
                            break;
                        };
                        self.on_source_event(key, generation, event);
                    }
                }
                () = sleep_until_opt(flush_at), if flush_at.is_some() => self.flush(),
                _ = grace_tick.tick() => self.check_holds(),
            }
        }
        self.watches.clear();
        self.metrics.watches.set(0);
    }

    /// Starts and stops watches so exactly the demanded clusters are fed.
    fn set_demand(&mut self, clusters: &BTreeSet<String>) {
        self.subscribed.clone_from(clusters);
        let wanted = self.plans_for(clusters);

        let removed = keys_to_drop(&self.plans, |cluster| wanted.contains_key(cluster));
        for cluster in &removed {
            self.plans.remove(cluster);
            self.published.remove(cluster);
            self.dirty.remove(cluster);
            self.state.remove(cluster);
            self.metrics.endpoints.remove(&ClusterLabel {
                cluster: cluster.clone(),
            });
        }
        if !removed.is_empty() {
            self.sink.remove(removed);
        }

        for (cluster, plan) in wanted {
            // A plan changes with its target, or (with `*`) with the
            // namespaces its service is listed in.
            let changed = self.plans.get(&cluster).is_none_or(|known| *known != plan);
            if changed {
                self.plans.insert(cluster.clone(), plan);
                // A new cluster on an existing watch is served at once (and
                // one that now selects other instances, such as a stable
                // cluster whose canaries were split off).
                self.mark_dirty(cluster);
            }
        }

        let needed: BTreeSet<WatchKey> = self
            .plans
            .values()
            .flat_map(|plan| plan.watch_keys().cloned())
            .collect();
        for key in keys_to_drop(&self.watches, |key| needed.contains(key)) {
            tracing::info!(service = %key.service, dc = %key.datacenter_label(), "stopping watch");
            self.watches.remove(&key);
            self.metrics.degraded.remove(&service_label(&key));
            // A namespace that left a `*` listing takes its instances out of
            // what the gateway reads the service's tags from.
            self.report_instances(&key);
        }
        for key in needed {
            if !self.watches.contains_key(&key) {
                tracing::info!(service = %key.service, dc = %key.datacenter_label(), "starting watch");
                let (task, generation) = self.spawn_watch(key.clone());
                self.watches.insert(
                    key,
                    Watch {
                        task,
                        generation,
                        service: ServiceState::default(),
                    },
                );
            }
        }
        self.metrics.watches.set(self.watches.len() as i64);
    }

    /// The plans of the demanded clusters this server serves: names that do
    /// not follow the template, or select a service outside `--services`,
    /// are answered empty by the cache and never watched.
    fn plans_for(&self, clusters: &BTreeSet<String>) -> BTreeMap<String, ClusterPlan> {
        let mut wanted = BTreeMap::new();
        for cluster in clusters {
            let Some(target) = self.settings.naming.parse(cluster) else {
                tracing::debug!(%cluster, "cluster name does not follow the template; answered empty");
                continue;
            };
            if !self.settings.allowed_services.is_empty()
                && !self.settings.allowed_services.contains(&target.service)
            {
                tracing::debug!(%cluster, service = %target.service, "service not in --services; answered empty");
                continue;
            }
            let plan = ClusterPlan::new(target, &self.settings, &self.nomad_listing);
            if plan.watch_keys().next().is_none() {
                tracing::debug!(%cluster, "the cluster's registry is not read (--sources); answered empty");
                continue;
            }
            wanted.insert(cluster.clone(), plan);
        }
        // The gateway's clusters come from Consul's own tags, not from what
        // a client asks for: `--services` (which bounds what clients can
        // make the server watch) does not apply to them.
        for (cluster, target) in &self.gateway_targets {
            let plan = ClusterPlan::new(target.clone(), &self.settings, &self.nomad_listing);
            wanted.insert(cluster.clone(), plan);
        }
        wanted
    }

    fn spawn_watch(&mut self, key: WatchKey) -> (JoinHandle<()>, u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut stream = self.source.watch(&key);
        let events = self.events_tx.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if events.send((key.clone(), generation, event)).is_err() {
                    break;
                }
            }
        });
        (task, generation)
    }

    /// Replaces the service's watch with a new one, whose first answer is a
    /// fresh read (a blocking query on an unmoved index would say nothing
    /// of an ACL policy restored meanwhile). The state stays.
    fn restart_watch(&mut self, key: &WatchKey) {
        if !self.watches.contains_key(key) {
            return;
        }
        tracing::info!(service = %key.service, dc = %key.datacenter_label(), source = %key.origin.kind(), "reading the service afresh");
        let (task, generation) = self.spawn_watch(key.clone());
        if let Some(watch) = self.watches.get_mut(key) {
            watch.task.abort();
            watch.task = task;
            watch.generation = generation;
        }
    }

    fn on_source_event(&mut self, key: WatchKey, generation: u64, event: SourceEvent) {
        if self
            .watches
            .get(&key)
            .is_none_or(|watch| watch.generation != generation)
        {
            // A late event from a watch stopped or replaced a moment ago.
            return;
        }
        if let SourceEvent::Instances {
            instances,
            index,
            after_reset,
        } = &event
        {
            tracing::debug!(service = %key.service, instances = instances.len(), index, after_reset, "instances read");
        }
        self.apply(&key, Input::Source(event));
    }

    /// Degrades, at once, every watch in a namespace the `*` listing holds
    /// (it vanished, and a direct read of it fails): its last instances
    /// stay, and the service says why. The watch's own blocking query,
    /// admitted with the token's old rights, may answer only much later.
    fn degrade_held_namespaces(&mut self) {
        let held: Vec<(WatchKey, String)> = self
            .watches
            .iter()
            .filter(|(_, watch)| !matches!(watch.service.freshness(), Freshness::Degraded { .. }))
            .filter_map(|(key, _)| {
                let Origin::Nomad { namespace } = &key.origin else {
                    return None;
                };
                let reason = self.nomad_listing.held.get(namespace)?;
                let error = format!(
                    "Nomad namespace `{namespace}` vanished from the `*` listing and cannot be \
                     read: {reason}"
                );
                Some((key.clone(), error))
            })
            .collect();
        for (key, error) in held {
            self.apply(&key, Input::Source(SourceEvent::Failing { error }));
        }
    }

    /// Releases the holds whose grace deadline has passed.
    fn check_holds(&mut self) {
        let holding: Vec<WatchKey> = self
            .watches
            .iter()
            .filter(|(_, watch)| watch.service.hold_until().is_some())
            .map(|(key, _)| key.clone())
            .collect();
        for key in holding {
            self.apply(&key, Input::GraceCheck);
        }
    }

    /// Runs one input through the service's rule and acts on the change.
    fn apply(&mut self, key: &WatchKey, input: Input) {
        let grace = self.settings.reset_grace;
        let now = Now {
            instant: Instant::now().into_std(),
            unix_secs: unix_now(),
        };
        let Some(watch) = self.watches.get_mut(key) else {
            // A late event from a watch stopped a moment ago.
            return;
        };
        let change = watch.service.apply(input, now, grace);
        // The gauge follows the service's freshness, whatever degraded it.
        let label = service_label(key);
        if matches!(watch.service.freshness(), Freshness::Degraded { .. }) {
            self.metrics.degraded.get_or_create(&label).set(1);
        } else {
            self.metrics.degraded.remove(&label);
        }
        self.record(key, &change);
        if change == Change::Reread {
            self.restart_watch(key);
        }
        if change.touches_clusters() {
            for cluster in self.clusters_fed_by(key) {
                self.mark_dirty(cluster);
            }
            self.report_instances(key);
        }
    }

    /// Tells the gateway what a service's instances are now. Only the local
    /// datacenter's: routes are declared where the gateway runs. A service
    /// read from several registries (or Nomad namespaces) is reported with
    /// all of their instances: its routes are declared by all of them.
    fn report_instances(&self, key: &WatchKey) {
        let Some(tx) = &self.instances_tx else {
            return;
        };
        if key.datacenter.is_some() {
            return;
        }
        let mut read = self
            .watches
            .iter()
            .filter(|(other, _)| other.service == key.service && other.datacenter.is_none())
            .filter_map(|(_, watch)| watch.service.instances());
        let Some(first) = read.next() else {
            return;
        };
        let rest: Vec<&Arc<Vec<ServiceInstance>>> = read.collect();
        let instances = if rest.is_empty() {
            // One registry: its answer as it is, no copy.
            Arc::clone(first)
        } else {
            let mut all = first.as_ref().clone();
            for more in rest {
                all.extend(more.iter().cloned());
            }
            Arc::new(all)
        };
        let _ = tx.send(ServiceInstances {
            service: key.service.clone(),
            instances,
        });
    }

    /// What a change says to operators: logs and counters.
    fn record(&self, key: &WatchKey, change: &Change) {
        let grace = self.settings.reset_grace;
        match change {
            Change::Served | Change::StillHeld | Change::Nothing => {}
            Change::HoldStarted { .. } => {
                tracing::warn!(
                    service = %key.service,
                    "Consul answers no instances right after an index reset; \
                     keeping the last endpoints for {grace:?}"
                );
                self.metrics.empty_after_reset_held.inc();
            }
            Change::VanishedHeld { .. } => {
                tracing::warn!(
                    service = %key.service,
                    "Consul answers no instances for a service that had some (the token's ACLs \
                     may have been narrowed); keeping the last endpoints for {grace:?}, then \
                     reading it afresh"
                );
                self.metrics.vanished_held.inc();
            }
            Change::Filtered => {
                tracing::warn!(
                    service = %key.service,
                    "Consul filtered the answer by the token's ACLs; serving the last endpoints"
                );
                self.metrics.acl_filtered.inc();
            }
            Change::Reread => {
                tracing::warn!(service = %key.service, "no instances came back within {grace:?}; the next read is believed");
            }
            Change::Failing { error } => {
                tracing::warn!(service = %key.service, %error, "Consul reads failing; serving the last endpoints");
            }
            Change::Released => {
                tracing::warn!(service = %key.service, "no instances came back within {grace:?} of the reset; serving none");
            }
        }
    }

    fn clusters_fed_by(&self, key: &WatchKey) -> Vec<String> {
        self.plans
            .iter()
            .filter(|(_, plan)| plan.is_fed_by(key))
            .map(|(cluster, _)| cluster.clone())
            .collect()
    }

    fn mark_dirty(&mut self, cluster: String) {
        self.dirty.insert(cluster);
        if self.flush_at.is_none() {
            let now = Instant::now();
            // Leading edge: at once after a quiet window, else when the
            // window that the last push opened closes.
            let window_closes = self
                .last_flush
                .map_or(now, |last| last + self.settings.coalesce);
            self.flush_at = Some(window_closes.max(now));
        }
    }

    fn flush(&mut self) {
        self.flush_at = None;
        let dirty = std::mem::take(&mut self.dirty);
        tracing::debug!(clusters = dirty.len(), "flushing");
        let mut batch = Vec::new();
        for cluster in dirty {
            let Some(plan) = self.plans.get(&cluster) else {
                continue;
            };
            let watches = &self.watches;
            let Some(mut view) = plan.build(&cluster, &self.settings.policy, |key| {
                watches.get(key).map(|watch| &watch.service)
            }) else {
                continue;
            };
            self.metrics
                .endpoints
                .get_or_create(&ClusterLabel {
                    cluster: cluster.clone(),
                })
                .set(view.endpoints.len() as i64);
            match self.published.get(&cluster) {
                // Unchanged: the view shares what was published, and the
                // endpoints just built are dropped.
                Some(published) if **published == *view.endpoints => {
                    view.endpoints = Arc::clone(published);
                }
                _ => {
                    self.published
                        .insert(cluster.clone(), Arc::clone(&view.endpoints));
                    batch.push(ClusterEndpoints {
                        cluster,
                        endpoints: Arc::clone(&view.endpoints),
                    });
                }
            }
            self.state.upsert(view);
        }
        if !batch.is_empty() {
            // Only a push opens a window: a flush that found nothing to
            // send (a cluster demanded before its first read) does not.
            self.last_flush = Some(Instant::now());
            tracing::debug!(clusters = batch.len(), "pushing changed clusters");
            self.metrics.pushes.inc();
            self.metrics.cluster_updates.inc_by(batch.len() as u64);
            self.sink.publish(batch);
        }
        if !self.watches.is_empty()
            && self
                .watches
                .values()
                .all(|w| !matches!(w.service.freshness(), Freshness::Pending))
        {
            self.state.mark_first_sync_done();
        }
    }
}

/// Queued watch events taken in one turn of the loop before it looks at its
/// timers again: enough for a DC-wide answer's worth of services, bounded so
/// a flood never starves the flush and the grace checks.
const MAX_EVENTS_PER_TURN: usize = 4096;

/// The keys of `map` that `keep` refuses, collected so `map` can change.
fn keys_to_drop<'a, K: Clone + 'a, V: 'a>(
    map: impl IntoIterator<Item = (&'a K, &'a V)>,
    keep: impl Fn(&K) -> bool,
) -> Vec<K> {
    map.into_iter()
        .map(|(key, _)| key)
        .filter(|key| !keep(key))
        .cloned()
        .collect()
}

fn service_label(key: &WatchKey) -> ServiceLabel {
    ServiceLabel {
        service: key.service.clone(),
        datacenter: key.datacenter_label(),
        source: key.origin.kind().as_str().to_owned(),
        namespace: match &key.origin {
            Origin::Consul => String::new(),
            Origin::Nomad { namespace } => namespace.clone(),
        },
    }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

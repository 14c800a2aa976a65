//! The sync engine: which Consul services to watch, and what each cluster serves.
//!
//! Inputs: the set of cluster names Envoys subscribe to (demand) and, per
//! watched service, a stream of [`SourceEvent`]s. Output: batches of changed
//! [`ClusterEndpoints`] handed to an [`EndpointSink`] (the xDS cache).
//!
//! Rules it keeps:
//! - A service is watched exactly while some demanded cluster needs it; a
//!   watch whose last cluster goes away is stopped (no leaked watches).
//! - An error never changes what is served: a failing watch marks its
//!   clusters degraded and the last good endpoints stay.
//! - After a Consul index reset (a restored or restarted server), an empty
//!   answer replacing non-empty data is held for a grace period: agents
//!   re-register their services within seconds, and serving nothing in
//!   between would be an outage caused by Consul, not by the backends.
//! - Bursts are coalesced for a few milliseconds; the latest state always wins
//!   and every change is eventually pushed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
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
use crate::model::{ClusterEndpoints, Endpoint, ServiceInstance};
use crate::naming::{ClusterNaming, ClusterTarget};
use crate::state::{ClusterView, Excluded, Freshness, ServedState};

/// One watched Consul service in one datacenter (`None`: the local one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchKey {
    pub service: String,
    pub datacenter: Option<String>,
}

impl WatchKey {
    fn datacenter_label(&self) -> String {
        self.datacenter
            .clone()
            .unwrap_or_else(|| "local".to_owned())
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
    /// Datacenters tried, in order, as lower priorities.
    pub failover_dcs: Vec<String>,
    /// If not empty, only these services are ever watched.
    pub allowed_services: BTreeSet<String>,
    pub coalesce: Duration,
    pub reset_grace: Duration,
}

/// A demanded cluster: what it selects and from which watches.
#[derive(Debug, Clone)]
struct ClusterPlan {
    target: ClusterTarget,
    /// Watches feeding it, with the priority their endpoints get.
    sources: Vec<(WatchKey, u32)>,
}

#[derive(Debug)]
struct Watch {
    task: JoinHandle<()>,
    /// `None` until the first successful read.
    instances: Option<Arc<Vec<ServiceInstance>>>,
    freshness: Freshness,
    /// An empty answer after a reset, held back since this instant.
    held_empty: Option<(Instant, u64)>,
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
    events_tx: mpsc::UnboundedSender<(WatchKey, SourceEvent)>,
    events_rx: mpsc::UnboundedReceiver<(WatchKey, SourceEvent)>,
    dirty: BTreeSet<String>,
    flush_at: Option<Instant>,
    /// What the sink has per cluster, so unchanged clusters are not re-sent.
    /// The same allocation as the admin view's endpoints: one copy each.
    published: HashMap<String, Arc<[Endpoint]>>,
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
            dirty: BTreeSet::new(),
            flush_at: None,
            published: HashMap::new(),
        }
    }

    /// Runs until `shutdown`; every watch stops with it.
    pub async fn run(
        mut self,
        mut demand: watch::Receiver<BTreeSet<String>>,
        shutdown: CancellationToken,
    ) {
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
                Some((key, event)) = self.events_rx.recv() => self.apply(key, event),
                () = sleep_until_opt(flush_at), if flush_at.is_some() => self.flush(),
                _ = grace_tick.tick() => self.release_expired_holds(),
            }
        }
        self.watches.clear();
        self.metrics.watches.set(0);
    }

    /// Starts and stops watches so exactly the demanded clusters are fed.
    fn set_demand(&mut self, clusters: &BTreeSet<String>) {
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
            wanted.insert(cluster.clone(), self.plan(target));
        }

        let removed: Vec<String> = self
            .plans
            .keys()
            .filter(|cluster| !wanted.contains_key(*cluster))
            .cloned()
            .collect();
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
            if !self.plans.contains_key(&cluster) {
                self.plans.insert(cluster.clone(), plan);
                // A new cluster on an existing watch is served at once.
                self.mark_dirty(cluster);
            }
        }

        let needed: BTreeSet<WatchKey> = self
            .plans
            .values()
            .flat_map(|plan| plan.sources.iter().map(|(key, _)| key.clone()))
            .collect();
        let stale: Vec<WatchKey> = self
            .watches
            .keys()
            .filter(|key| !needed.contains(*key))
            .cloned()
            .collect();
        for key in stale {
            tracing::info!(service = %key.service, dc = %key.datacenter_label(), "stopping watch");
            self.watches.remove(&key);
            self.metrics.degraded.remove(&service_label(&key));
        }
        for key in needed {
            if !self.watches.contains_key(&key) {
                tracing::info!(service = %key.service, dc = %key.datacenter_label(), "starting watch");
                let task = self.spawn_watch(key.clone());
                self.watches.insert(
                    key,
                    Watch {
                        task,
                        instances: None,
                        freshness: Freshness::Pending,
                        held_empty: None,
                    },
                );
            }
        }
        self.metrics.watches.set(self.watches.len() as i64);
    }

    fn plan(&self, target: ClusterTarget) -> ClusterPlan {
        let primary = WatchKey {
            service: target.service.clone(),
            datacenter: target.datacenter.clone(),
        };
        let mut sources = vec![(primary, 0)];
        let mut priority = 1;
        for dc in &self.settings.failover_dcs {
            if target.datacenter.as_ref() == Some(dc) {
                continue;
            }
            sources.push((
                WatchKey {
                    service: target.service.clone(),
                    datacenter: Some(dc.clone()),
                },
                priority,
            ));
            priority += 1;
        }
        ClusterPlan { target, sources }
    }

    fn spawn_watch(&self, key: WatchKey) -> JoinHandle<()> {
        let mut stream = self.source.watch(&key);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if events.send((key.clone(), event)).is_err() {
                    break;
                }
            }
        })
    }

    fn apply(&mut self, key: WatchKey, event: SourceEvent) {
        let grace = self.settings.reset_grace;
        let Some(watch) = self.watches.get_mut(&key) else {
            // A late event from a watch stopped a moment ago.
            return;
        };
        match event {
            SourceEvent::Instances {
                instances,
                index,
                after_reset,
            } => {
                tracing::debug!(service = %key.service, instances = instances.len(), index, after_reset, "instances read");
                let had_endpoints = watch.instances.as_ref().is_some_and(|i| !i.is_empty());
                let holding = watch.held_empty.is_some();
                if instances.is_empty() && had_endpoints && (after_reset || holding) {
                    if !holding {
                        tracing::warn!(
                            service = %key.service,
                            "Consul answers no instances right after an index reset; \
                             keeping the last endpoints for {grace:?}"
                        );
                        self.metrics.empty_after_reset_held.inc();
                        watch.held_empty = Some((Instant::now(), index));
                    }
                    watch.freshness = Freshness::Synced { index };
                } else {
                    watch.held_empty = None;
                    watch.instances = Some(Arc::new(instances));
                    watch.freshness = Freshness::Synced { index };
                }
                self.metrics.degraded.remove(&service_label(&key));
            }
            SourceEvent::Failing { error } => {
                tracing::warn!(service = %key.service, %error, "Consul reads failing; serving the last endpoints");
                if !matches!(watch.freshness, Freshness::Degraded { .. }) {
                    watch.freshness = Freshness::Degraded {
                        error,
                        since_unix: unix_now(),
                    };
                }
                self.metrics
                    .degraded
                    .get_or_create(&service_label(&key))
                    .set(1);
            }
        }
        // Freshness shows on the admin API even when endpoints did not change.
        for cluster in self.clusters_fed_by(&key) {
            self.mark_dirty(cluster);
        }
    }

    fn release_expired_holds(&mut self) {
        let grace = self.settings.reset_grace;
        let mut released = Vec::new();
        for (key, watch) in &mut self.watches {
            if let Some((since, _)) = watch.held_empty
                && since.elapsed() >= grace
            {
                tracing::warn!(service = %key.service, "no instances came back within {grace:?} of the reset; serving none");
                watch.held_empty = None;
                watch.instances = Some(Arc::new(Vec::new()));
                released.push(key.clone());
            }
        }
        for key in released {
            for cluster in self.clusters_fed_by(&key) {
                self.mark_dirty(cluster);
            }
        }
    }

    fn clusters_fed_by(&self, key: &WatchKey) -> Vec<String> {
        self.plans
            .iter()
            .filter(|(_, plan)| plan.sources.iter().any(|(k, _)| k == key))
            .map(|(cluster, _)| cluster.clone())
            .collect()
    }

    fn mark_dirty(&mut self, cluster: String) {
        self.dirty.insert(cluster);
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.settings.coalesce);
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
            let Some(mut view) = self.build(&cluster, plan) else {
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
            tracing::debug!(clusters = batch.len(), "pushing changed clusters");
            self.metrics.pushes.inc();
            self.metrics.cluster_updates.inc_by(batch.len() as u64);
            self.sink.publish(batch);
        }
        if !self.watches.is_empty()
            && self
                .watches
                .values()
                .all(|w| !matches!(w.freshness, Freshness::Pending))
        {
            self.state.mark_first_sync_done();
        }
    }

    /// The endpoints of one cluster, or `None` while none of its watches has
    /// read anything yet (nothing is known, so nothing is pushed).
    fn build(&self, cluster: &str, plan: &ClusterPlan) -> Option<ClusterView> {
        let mut endpoints = Vec::new();
        let mut excluded = Vec::new();
        let mut freshness = Freshness::Pending;
        let mut any_data = false;
        for (key, priority) in &plan.sources {
            let Some(watch) = self.watches.get(key) else {
                continue;
            };
            // The cluster reports the primary watch's freshness, or a
            // failover's degradation if the primary is fine.
            if *priority == 0 || matches!(watch.freshness, Freshness::Degraded { .. }) {
                freshness = watch.freshness.clone();
            }
            let Some(instances) = &watch.instances else {
                continue;
            };
            any_data = true;
            for instance in instances.iter() {
                if let Some(tag) = &plan.target.tag
                    && !instance.tags.contains(tag)
                {
                    continue;
                }
                if instance.address.parse::<IpAddr>().is_err() {
                    excluded.push(Excluded {
                        instance_id: instance.id.to_string(),
                        reason: format!(
                            "address `{}` is not an IP address (EDS endpoints must be IPs)",
                            instance.address
                        ),
                    });
                    continue;
                }
                match self.settings.policy.endpoint(instance, *priority) {
                    Ok(endpoint) => endpoints.push(endpoint),
                    Err(reason) => excluded.push(Excluded {
                        instance_id: instance.id.to_string(),
                        reason: reason.to_owned(),
                    }),
                }
            }
        }
        if !any_data {
            return None;
        }
        Some(ClusterView {
            cluster: cluster.to_owned(),
            service: plan.target.service.clone(),
            freshness,
            endpoints: endpoints.into(),
            excluded,
        })
    }
}

fn service_label(key: &WatchKey) -> ServiceLabel {
    ServiceLabel {
        service: key.service.clone(),
        datacenter: key.datacenter_label(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::model::{CheckState, EndpointHealth, Weights};

    /// A source whose streams the test feeds by hand.
    #[derive(Default)]
    struct FakeSource {
        senders: Mutex<HashMap<WatchKey, mpsc::UnboundedSender<SourceEvent>>>,
        watch_calls: Mutex<Vec<WatchKey>>,
    }

    impl ServiceSource for FakeSource {
        fn watch(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
            let (tx, rx) = mpsc::unbounded_channel();
            self.senders.lock().expect("lock").insert(key.clone(), tx);
            self.watch_calls.lock().expect("lock").push(key.clone());
            UnboundedReceiverStream::new(rx).boxed()
        }
    }

    impl FakeSource {
        fn send(&self, service: &str, event: SourceEvent) {
            self.send_dc(service, None, event);
        }

        fn send_dc(&self, service: &str, dc: Option<&str>, event: SourceEvent) {
            let key = WatchKey {
                service: service.to_owned(),
                datacenter: dc.map(str::to_owned),
            };
            let senders = self.senders.lock().expect("lock");
            let sender = senders.get(&key).expect("service is watched");
            sender.send(event).expect("watch is running");
        }

        fn is_watching(&self, service: &str) -> bool {
            let key = WatchKey {
                service: service.to_owned(),
                datacenter: None,
            };
            self.senders
                .lock()
                .expect("lock")
                .get(&key)
                .is_some_and(|s| !s.is_closed())
        }

        fn watch_calls(&self) -> usize {
            self.watch_calls.lock().expect("lock").len()
        }
    }

    #[derive(Debug)]
    enum SinkCall {
        Publish(Vec<ClusterEndpoints>),
        Remove(Vec<String>),
    }

    struct ChannelSink(mpsc::UnboundedSender<SinkCall>);

    impl EndpointSink for ChannelSink {
        fn publish(&mut self, clusters: Vec<ClusterEndpoints>) {
            let _ = self.0.send(SinkCall::Publish(clusters));
        }
        fn remove(&mut self, clusters: Vec<String>) {
            let _ = self.0.send(SinkCall::Remove(clusters));
        }
    }

    struct Harness {
        source: Arc<FakeSource>,
        sink: mpsc::UnboundedReceiver<SinkCall>,
        demand: watch::Sender<BTreeSet<String>>,
        state: ServedState,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Harness {
        fn start(failover_dcs: &[&str]) -> Self {
            Self::start_allowing(failover_dcs, &[])
        }

        fn start_allowing(failover_dcs: &[&str], allowed: &[&str]) -> Self {
            let settings = EngineSettings {
                naming: ClusterNaming::new("{service}").expect("template"),
                policy: HealthPolicy::default(),
                failover_dcs: failover_dcs.iter().map(|s| (*s).to_owned()).collect(),
                allowed_services: allowed.iter().map(|s| (*s).to_owned()).collect(),
                coalesce: Duration::from_millis(5),
                reset_grace: Duration::from_secs(10),
            };
            let source = Arc::new(FakeSource::default());
            let (sink_tx, sink) = mpsc::unbounded_channel();
            let (demand, demand_rx) = watch::channel(BTreeSet::new());
            let state = ServedState::default();
            let shutdown = CancellationToken::new();
            let engine = Engine::new(
                settings,
                source.clone(),
                ChannelSink(sink_tx),
                state.clone(),
                EngineMetrics::default(),
            );
            let task = tokio::spawn(engine.run(demand_rx, shutdown.clone()));
            Self {
                source,
                sink,
                demand,
                state,
                shutdown,
                task,
            }
        }

        fn demand(&self, clusters: &[&str]) {
            self.demand
                .send(clusters.iter().map(|c| (*c).to_owned()).collect())
                .expect("engine listens");
        }

        async fn settle(&self) {
            // Let spawned watch tasks and the coalescing timer run.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        async fn next_publish(&mut self) -> Vec<ClusterEndpoints> {
            loop {
                match tokio::time::timeout(Duration::from_secs(60), self.sink.recv()).await {
                    Ok(Some(SinkCall::Publish(batch))) => return batch,
                    Ok(Some(SinkCall::Remove(_))) => continue,
                    other => panic!("no publish: {other:?}"),
                }
            }
        }

        fn no_more_calls(&mut self) -> bool {
            self.sink.try_recv().is_err()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.shutdown.cancel();
            self.task.abort();
        }
    }

    fn instance(id: &str, checks: CheckState, tags: &[&str]) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            node: "node".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            checks,
            maintenance: false,
            weights: Weights::default(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            locality: Arc::default(),
        }
    }

    fn instances(list: Vec<ServiceInstance>, index: u64) -> SourceEvent {
        SourceEvent::Instances {
            instances: list,
            index,
            after_reset: false,
        }
    }

    fn ids(cluster: &ClusterEndpoints) -> Vec<&str> {
        cluster.endpoints.iter().map(|e| &*e.instance_id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn watches_a_demanded_service_and_publishes_its_healthy_instances() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        assert!(h.source.is_watching("web"));
        h.source.send(
            "web",
            instances(
                vec![
                    instance("web-1", CheckState::Passing, &[]),
                    instance("web-2", CheckState::Critical, &[]),
                ],
                7,
            ),
        );
        let batch = h.next_publish().await;
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].cluster, "web");
        assert_eq!(ids(&batch[0]), vec!["web-1"]);
        let view = &h.state.clusters()[0];
        assert_eq!(view.excluded[0].reason, "check critical");
        assert_eq!(view.freshness, Freshness::Synced { index: 7 });
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_read_is_not_pushed_and_its_endpoints_are_kept_once() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        let read = || instances(vec![instance("web-1", CheckState::Passing, &[])], 3);
        h.source.send("web", read());
        let pushed = h.next_publish().await;
        let view = h.state.clusters().remove(0);
        assert!(
            Arc::ptr_eq(&view.endpoints, &pushed[0].endpoints),
            "the admin view shares what was published"
        );

        // The same instances again (a sweep, another service's change).
        h.source.send("web", read());
        h.settle().await;
        assert!(h.no_more_calls(), "nothing changed, nothing is pushed");
        let view = h.state.clusters().remove(0);
        assert!(
            Arc::ptr_eq(&view.endpoints, &pushed[0].endpoints),
            "the endpoints built again were dropped, not kept beside the published ones"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_watch_keeps_the_last_endpoints_and_reports_degraded() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        h.source.send(
            "web",
            instances(vec![instance("web-1", CheckState::Passing, &[])], 3),
        );
        h.next_publish().await;
        h.source.send(
            "web",
            SourceEvent::Failing {
                error: "connection refused".to_owned(),
            },
        );
        h.settle().await;
        assert!(h.no_more_calls(), "an error must not change what is served");
        assert!(matches!(
            h.state.readiness(),
            crate::state::Readiness::Degraded { .. }
        ));
        assert_eq!(h.state.clusters()[0].endpoints.len(), 1);

        h.source.send(
            "web",
            instances(vec![instance("web-2", CheckState::Passing, &[])], 4),
        );
        let batch = h.next_publish().await;
        assert_eq!(ids(&batch[0]), vec!["web-2"]);
        assert_eq!(h.state.readiness(), crate::state::Readiness::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_answer_after_an_index_reset_is_held_for_the_grace_period() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        h.source.send(
            "web",
            instances(vec![instance("web-1", CheckState::Passing, &[])], 50),
        );
        h.next_publish().await;
        h.source.send(
            "web",
            SourceEvent::Instances {
                instances: vec![],
                index: 2,
                after_reset: true,
            },
        );
        h.settle().await;
        assert!(h.no_more_calls(), "empty after reset is held");
        tokio::time::sleep(Duration::from_secs(11)).await;
        let batch = h.next_publish().await;
        assert!(
            batch[0].endpoints.is_empty(),
            "released after the grace period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn instances_coming_back_within_the_grace_period_end_the_hold() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        h.source.send(
            "web",
            instances(vec![instance("web-1", CheckState::Passing, &[])], 50),
        );
        h.next_publish().await;
        h.source.send(
            "web",
            SourceEvent::Instances {
                instances: vec![],
                index: 2,
                after_reset: true,
            },
        );
        h.settle().await;
        h.source.send(
            "web",
            instances(vec![instance("web-9", CheckState::Passing, &[])], 3),
        );
        let batch = h.next_publish().await;
        assert_eq!(ids(&batch[0]), vec!["web-9"]);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(h.no_more_calls(), "the hold ended; nothing empty follows");
    }

    #[tokio::test(start_paused = true)]
    async fn undemanded_services_stop_being_watched() {
        let mut h = Harness::start(&[]);
        h.demand(&["web", "api"]);
        h.settle().await;
        assert!(h.source.is_watching("web") && h.source.is_watching("api"));
        h.demand(&["web"]);
        h.settle().await;
        assert!(h.source.is_watching("web"));
        assert!(!h.source.is_watching("api"), "api's watch leaked");
        match h.sink.recv().await {
            Some(SinkCall::Remove(clusters)) => assert_eq!(clusters, vec!["api".to_owned()]),
            other => panic!("expected a removal, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tag_clusters_share_the_service_watch_and_filter_by_tag() {
        let mut h = Harness::start(&[]);
        h.demand(&["web", "web.canary"]);
        h.settle().await;
        assert_eq!(h.source.watch_calls(), 1, "one watch serves both clusters");
        h.source.send(
            "web",
            instances(
                vec![
                    instance("web-1", CheckState::Passing, &["stable"]),
                    instance("web-2", CheckState::Passing, &["canary"]),
                ],
                5,
            ),
        );
        let mut batch = h.next_publish().await;
        batch.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        assert_eq!(ids(&batch[0]), vec!["web-1", "web-2"]);
        assert_eq!(batch[1].cluster, "web.canary");
        assert_eq!(ids(&batch[1]), vec!["web-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_coalesced_into_one_push_of_the_latest_state() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        for index in 1..=20u64 {
            let list = (0..index)
                .map(|i| instance(&format!("web-{i}"), CheckState::Passing, &[]))
                .collect();
            h.source.send("web", instances(list, index));
        }
        let batch = h.next_publish().await;
        assert_eq!(batch[0].endpoints.len(), 20, "the latest state wins");
        h.settle().await;
        assert!(h.no_more_calls(), "one push for the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn failover_datacenters_become_lower_priorities() {
        let mut h = Harness::start(&["dc2"]);
        h.demand(&["web"]);
        h.settle().await;
        h.source.send(
            "web",
            instances(vec![instance("local-1", CheckState::Passing, &[])], 1),
        );
        h.source.send_dc(
            "web",
            Some("dc2"),
            instances(vec![instance("remote-1", CheckState::Passing, &[])], 1),
        );
        let mut endpoints = Vec::new();
        while endpoints.len() < 2 {
            let batch = h.next_publish().await;
            endpoints = batch[0].endpoints.to_vec();
        }
        let priorities: BTreeMap<&str, u32> = endpoints
            .iter()
            .map(|e| (&*e.instance_id, e.priority))
            .collect();
        assert_eq!(priorities["local-1"], 0);
        assert_eq!(priorities["remote-1"], 1);
        assert!(
            endpoints
                .iter()
                .all(|e| e.health == EndpointHealth::Healthy)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn services_outside_the_allow_list_are_never_watched() {
        let h = Harness::start_allowing(&[], &["web"]);
        h.demand(&["web", "admin-panel", "not.a.valid.name"]);
        h.settle().await;
        assert!(h.source.is_watching("web"));
        assert!(!h.source.is_watching("admin-panel"));
        assert_eq!(h.source.watch_calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hostnames_are_excluded_with_a_reason() {
        let mut h = Harness::start(&[]);
        h.demand(&["web"]);
        h.settle().await;
        let mut by_name = instance("web-1", CheckState::Passing, &[]);
        by_name.address = "web.internal".into();
        h.source.send(
            "web",
            instances(
                vec![by_name, instance("web-2", CheckState::Passing, &[])],
                1,
            ),
        );
        let batch = h.next_publish().await;
        assert_eq!(ids(&batch[0]), vec!["web-2"]);
        assert!(
            h.state.clusters()[0].excluded[0]
                .reason
                .contains("not an IP")
        );
    }
}

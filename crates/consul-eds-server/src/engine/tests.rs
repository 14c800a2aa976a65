//! The actor, driven through its inputs under paused time: demand, watch
//! events and timers in, sink calls and the admin view out. The per-service
//! transitions themselves are specified in `rules`.

use std::sync::Mutex;

use tokio_stream::wrappers::UnboundedReceiverStream;

use super::fixtures::{empty_after_reset, failing, instance, instances, passing};
use super::*;
use crate::model::{CheckState, EndpointHealth};
use crate::state::Readiness;

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
        let key = WatchKey::consul(service, dc);
        let senders = self.senders.lock().expect("lock");
        let sender = senders.get(&key).expect("service is watched");
        sender.send(event).expect("watch is running");
    }

    fn send_key(&self, key: &WatchKey, event: SourceEvent) {
        let senders = self.senders.lock().expect("lock");
        let sender = senders.get(key).expect("watched");
        sender.send(event).expect("watch is running");
    }

    fn is_watching_key(&self, key: &WatchKey) -> bool {
        self.senders
            .lock()
            .expect("lock")
            .get(key)
            .is_some_and(|s| !s.is_closed())
    }

    fn is_watching(&self, service: &str) -> bool {
        let key = WatchKey::consul(service, None);
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

/// A running engine (local datacenter, `{service}` names, a 5 ms coalescing
/// window, a 10 s reset grace) and handles on everything around it.
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
            sources: SourceSelection::default(),
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

    /// An engine with no failover, whose Envoys demand `clusters`, once
    /// their watches run.
    async fn demanding(clusters: &[&str]) -> Self {
        let h = Self::start(&[]);
        h.demand(clusters);
        h.settle().await;
        h
    }

    /// An engine serving `web` from one read of passing `web-1`, at `index`.
    async fn serving_web_1(index: u64) -> Self {
        let mut h = Self::demanding(&["web"]).await;
        h.source.send("web", passing(&["web-1"], index));
        h.next_publish().await;
        h
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

fn ids(cluster: &ClusterEndpoints) -> Vec<&str> {
    cluster.endpoints.iter().map(|e| &*e.instance_id).collect()
}

#[tokio::test(start_paused = true)]
async fn watches_a_demanded_service_and_publishes_its_healthy_instances() {
    let mut h = Harness::demanding(&["web"]).await;
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
    let mut h = Harness::demanding(&["web"]).await;
    h.source.send("web", passing(&["web-1"], 3));
    let pushed = h.next_publish().await;
    let view = h.state.clusters().remove(0);
    assert!(
        Arc::ptr_eq(&view.endpoints, &pushed[0].endpoints),
        "the admin view shares what was published"
    );

    // The same instances again (a sweep, another service's change).
    h.source.send("web", passing(&["web-1"], 3));
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
    let mut h = Harness::serving_web_1(3).await;
    h.source.send("web", failing("connection refused"));
    h.settle().await;
    assert!(h.no_more_calls(), "an error must not change what is served");
    assert!(matches!(h.state.readiness(), Readiness::Degraded { .. }));
    assert_eq!(h.state.clusters()[0].endpoints.len(), 1);

    h.source.send("web", passing(&["web-2"], 4));
    let batch = h.next_publish().await;
    assert_eq!(ids(&batch[0]), vec!["web-2"]);
    assert_eq!(h.state.readiness(), Readiness::Ready);
}

#[tokio::test(start_paused = true)]
async fn an_empty_answer_after_an_index_reset_is_held_for_the_grace_period() {
    let mut h = Harness::serving_web_1(50).await;
    h.source.send("web", empty_after_reset(2));
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
async fn vanished_instances_are_kept_degraded_then_the_service_is_read_afresh() {
    let mut h = Harness::serving_web_1(50).await;
    assert_eq!(h.source.watch_calls(), 1);
    let first_watch = {
        let senders = h.source.senders.lock().expect("lock");
        senders.values().next().expect("watched").clone()
    };
    // What Consul 1.8.7 answers once the token's policy lost service read.
    h.source.send("web", passing(&[], 51));
    h.settle().await;
    assert_eq!(h.state.clusters()[0].endpoints.len(), 1, "kept");
    assert!(
        matches!(h.state.readiness(), Readiness::Degraded { .. }),
        "degraded while held"
    );
    while let Ok(call) = h.sink.try_recv() {
        if let SinkCall::Publish(batch) = call {
            assert!(
                !batch[0].endpoints.is_empty(),
                "nothing empty is pushed: {batch:?}"
            );
        }
    }

    // The 10 s grace, checked on a 2.5 s tick.
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(h.source.watch_calls(), 2, "read afresh at the deadline");
    assert_eq!(
        h.state.clusters()[0].endpoints.len(),
        1,
        "kept until it answers"
    );
    // A late answer of the replaced watch is not the fresh read.
    let _ = first_watch.send(passing(&[], 52));
    h.settle().await;
    assert_eq!(h.state.clusters()[0].endpoints.len(), 1);
    // The fresh read (a policy restored meanwhile) is believed.
    h.source.send("web", passing(&["web-1"], 51));
    h.settle().await;
    assert_eq!(h.state.clusters()[0].endpoints.len(), 1);
    assert_eq!(h.state.readiness(), Readiness::Ready);
}

#[tokio::test(start_paused = true)]
async fn the_fresh_read_after_vanished_instances_is_believed_when_empty() {
    let mut h = Harness::serving_web_1(50).await;
    h.source.send("web", passing(&[], 51));
    h.settle().await;
    // The 10 s grace, checked on a 2.5 s tick.
    tokio::time::sleep(Duration::from_secs(13)).await;
    h.source.send("web", passing(&[], 51));
    let batch = h.next_publish().await;
    assert!(batch[0].endpoints.is_empty(), "believed after the grace");
    assert_eq!(h.state.readiness(), Readiness::Ready);
}

#[tokio::test(start_paused = true)]
async fn an_answer_filtered_by_acls_keeps_the_endpoints_and_degrades() {
    let mut h = Harness::serving_web_1(50).await;
    h.source.send("web", SourceEvent::Filtered);
    h.settle().await;
    assert!(h.no_more_calls(), "a filtered answer changes no endpoints");
    assert_eq!(h.state.clusters()[0].endpoints.len(), 1);
    assert!(matches!(h.state.readiness(), Readiness::Degraded { .. }));
}

#[tokio::test(start_paused = true)]
async fn instances_coming_back_within_the_grace_period_end_the_hold() {
    let mut h = Harness::serving_web_1(50).await;
    h.source.send("web", empty_after_reset(2));
    h.settle().await;
    h.source.send("web", passing(&["web-9"], 3));
    let batch = h.next_publish().await;
    assert_eq!(ids(&batch[0]), vec!["web-9"]);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(h.no_more_calls(), "the hold ended; nothing empty follows");
}

#[tokio::test(start_paused = true)]
async fn undemanded_services_stop_being_watched() {
    let mut h = Harness::demanding(&["web", "api"]).await;
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
    let mut h = Harness::demanding(&["web", "web.canary"]).await;
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
    let mut h = Harness::demanding(&["web"]).await;
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
    h.source.send("web", passing(&["local-1"], 1));
    h.source
        .send_dc("web", Some("dc2"), passing(&["remote-1"], 1));
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
    let mut h = Harness::demanding(&["web"]).await;
    let mut by_name = instance("web-1", CheckState::Passing, &[]);
    by_name.address = "web.internal".into();
    by_name.address_is_ip = false;
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

#[tokio::test(start_paused = true)]
async fn gateway_targets_are_fed_unasked_and_their_instances_reported() {
    let settings = EngineSettings {
        naming: ClusterNaming::new("{service}").expect("template"),
        policy: HealthPolicy::default(),
        failover_dcs: vec![],
        sources: SourceSelection::default(),
        // `--services` bounds what clients may ask for, not what Consul's
        // own tags route.
        allowed_services: BTreeSet::from(["other".to_owned()]),
        coalesce: Duration::from_millis(5),
        reset_grace: Duration::from_secs(10),
    };
    let source = Arc::new(FakeSource::default());
    let (sink_tx, mut sink) = mpsc::unbounded_channel();
    let (_demand, demand_rx) = watch::channel(BTreeSet::new());
    let stable = |without: Option<&str>| ClusterTarget {
        without_tag: without.map(str::to_owned),
        ..ClusterTarget::service("web")
    };
    let (targets, targets_rx) = watch::channel(BTreeMap::from([("web".to_owned(), stable(None))]));
    let (instances_tx, mut reported) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        settings,
        source.clone(),
        ChannelSink(sink_tx),
        ServedState::default(),
        EngineMetrics::default(),
    );
    let task = tokio::spawn(engine.run_gateway(
        demand_rx,
        GatewayLink {
            targets: targets_rx,
            instances: instances_tx,
        },
        shutdown.clone(),
    ));
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    // No Envoy asked for `web`, yet it is watched for the gateway.
    assert!(source.is_watching("web"));
    source.send(
        "web",
        instances(
            vec![
                instance("web-1", CheckState::Passing, &["edge.route=a.test/"]),
                instance("web-2", CheckState::Passing, &["edge.canary"]),
            ],
            3,
        ),
    );
    let report = reported.recv().await.expect("instances reported");
    assert_eq!(report.service, "web");
    assert_eq!(report.instances.len(), 2);
    let next_publish = |sink: &mut mpsc::UnboundedReceiver<SinkCall>| loop {
        match sink.try_recv() {
            Ok(SinkCall::Publish(batch)) => return Some(batch),
            Ok(SinkCall::Remove(_)) => continue,
            Err(_) => return None,
        }
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let batch = next_publish(&mut sink).expect("published");
    assert_eq!(ids(&batch[0]), ["web-1", "web-2"]);

    // The canary split: the stable cluster leaves the canaries out, and the
    // canary cluster (a name no template parses) holds them.
    targets
        .send(BTreeMap::from([
            ("web".to_owned(), stable(Some("edge.canary"))),
            (
                "web/canary".to_owned(),
                ClusterTarget {
                    tag: Some("edge.canary".to_owned()),
                    ..stable(None)
                },
            ),
        ]))
        .expect("engine listens");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut batch = next_publish(&mut sink).expect("published after the split");
    batch.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].cluster, "web");
    assert_eq!(ids(&batch[0]), ["web-1"]);
    assert_eq!(batch[1].cluster, "web/canary");
    assert_eq!(ids(&batch[1]), ["web-2"]);
    shutdown.cancel();
    task.await.expect("engine stops");
}

async fn publish_after(
    sink: &mut mpsc::UnboundedReceiver<SinkCall>,
) -> (Vec<ClusterEndpoints>, Duration) {
    let started = Instant::now();
    loop {
        match sink.recv().await {
            Some(SinkCall::Publish(batch)) => return (batch, started.elapsed()),
            Some(SinkCall::Remove(_)) => continue,
            None => panic!("engine gone"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_change_is_pushed_at_once_and_what_follows_waits_for_the_window() {
    let settings = EngineSettings {
        naming: ClusterNaming::new("{service}").expect("template"),
        policy: HealthPolicy::default(),
        failover_dcs: vec![],
        sources: SourceSelection::default(),
        allowed_services: BTreeSet::new(),
        coalesce: Duration::from_millis(100),
        reset_grace: Duration::from_secs(10),
    };
    let source = Arc::new(FakeSource::default());
    let (sink_tx, mut sink) = mpsc::unbounded_channel();
    let (demand, demand_rx) = watch::channel(BTreeSet::from(["web".to_owned()]));
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        settings,
        source.clone(),
        ChannelSink(sink_tx),
        ServedState::default(),
        EngineMetrics::default(),
    );
    let task = tokio::spawn(engine.run(demand_rx, shutdown.clone()));
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    // Quiet so far: the first read is pushed with no coalescing wait.
    source.send("web", passing(&["web-1"], 1));
    let (batch, waited) = publish_after(&mut sink).await;
    assert_eq!(ids(&batch[0]), ["web-1"]);
    assert!(waited < Duration::from_millis(1), "waited {waited:?}");
    // A change right after it is gathered until the window closes, with
    // the ones that follow it.
    source.send("web", passing(&["web-1", "web-2"], 2));
    tokio::time::sleep(Duration::from_millis(30)).await;
    source.send("web", passing(&["web-1", "web-2", "web-3"], 3));
    let (batch, waited) = publish_after(&mut sink).await;
    assert_eq!(
        ids(&batch[0]),
        ["web-1", "web-2", "web-3"],
        "the latest state"
    );
    assert!(waited >= Duration::from_millis(60), "waited {waited:?}");
    assert!(sink.try_recv().is_err(), "one push for the two changes");
    // After a quiet spell longer than the window: at once again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    source.send("web", passing(&["web-3"], 4));
    let (_, waited) = publish_after(&mut sink).await;
    assert!(waited < Duration::from_millis(1), "waited {waited:?}");
    drop(demand);
    shutdown.cancel();
    task.await.expect("engine stops");
}

fn listing(services: &[(&str, &[&str])], held: &[&str]) -> Arc<NomadListing> {
    Arc::new(NomadListing {
        namespaces: services
            .iter()
            .map(|(service, namespaces)| {
                let namespaces = namespaces.iter().map(|n| (*n).to_owned()).collect();
                ((*service).to_owned(), namespaces)
            })
            .collect(),
        held: held
            .iter()
            .map(|n| ((*n).to_owned(), "Permission denied".to_owned()))
            .collect(),
    })
}

/// `--nomad-namespace '*'`: the checked listing says where a service is;
/// a held namespace keeps its instances, degraded, and one the listing
/// drops (its direct read said empty) takes them away.
#[tokio::test(start_paused = true)]
async fn with_every_namespace_the_listing_plans_the_watches_and_a_held_one_keeps_its_instances() {
    let settings = EngineSettings {
        sources: SourceSelection {
            consul: false,
            nomad_namespaces: vec!["*".to_owned()],
        },
        ..super::fixtures::settings()
    };
    let source = Arc::new(FakeSource::default());
    let (sink_tx, mut sink) = mpsc::unbounded_channel();
    let (demand, demand_rx) = watch::channel(BTreeSet::from(["web".to_owned()]));
    let (listed, listing_rx) = watch::channel(Arc::new(NomadListing::default()));
    let state = ServedState::default();
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        settings,
        source.clone(),
        ChannelSink(sink_tx),
        state.clone(),
        EngineMetrics::default(),
    )
    .with_nomad_listing(listing_rx);
    let task = tokio::spawn(engine.run(demand_rx, shutdown.clone()));
    let settle = || async {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut next_publish = || {
        let next = sink.try_recv();
        match next {
            Ok(SinkCall::Publish(batch)) => Some(batch),
            _ => None,
        }
    };
    let (in_a, in_b) = (WatchKey::nomad("web", "a"), WatchKey::nomad("web", "b"));
    settle().await;
    assert_eq!(
        source.watch_calls(),
        0,
        "nothing listed yet: nothing to watch"
    );

    listed.send_replace(listing(&[("web", &["a", "b"])], &[]));
    settle().await;
    assert!(source.is_watching_key(&in_a) && source.is_watching_key(&in_b));
    source.send_key(&in_a, passing(&["web-a"], 5));
    source.send_key(&in_b, passing(&["web-b"], 5));
    settle().await;
    let mut served = Vec::new();
    while let Some(batch) = next_publish() {
        served = batch;
    }
    assert_eq!(ids(&served[0]), vec!["web-a", "web-b"]);

    // `a` vanished from the listing and its direct read is denied: held.
    listed.send_replace(listing(&[("web", &["a", "b"])], &["a"]));
    settle().await;
    assert!(next_publish().is_none(), "nothing is taken away");
    let view = &state.clusters()[0];
    assert_eq!(view.endpoints.len(), 2);
    match &view.freshness {
        Freshness::Degraded { error, .. } => {
            assert!(error.contains("namespace `a`"), "{error}");
        }
        other => panic!("expected degraded, got {other:?}"),
    }
    assert!(
        source.is_watching_key(&in_a),
        "the held namespace stays watched"
    );

    // `a` read directly and empty: its instances go.
    listed.send_replace(listing(&[("web", &["b"])], &[]));
    settle().await;
    let batch = next_publish().expect("a push");
    assert_eq!(ids(&batch[0]), vec!["web-b"]);
    assert!(!source.is_watching_key(&in_a));

    shutdown.cancel();
    let _ = task.await;
    drop(demand);
}

//! The DC-wide view: many services of one datacenter fed by two blocking
//! queries, and what those queries cost out of the connection budget.
//!
//! `/v1/health/state/any` (every check: tells which services' instances or
//! health changed) and `/v1/catalog/services` (names and tags) are each
//! watched in a task of their own, as consul-client asks, so a query is
//! always in flight. Each change is followed by targeted reads of the
//! services it concerns ([`super::reads`]). Instances without any check
//! leave no trace in the checks, so catalog changes that no check change
//! explains are caught by a sweep of all covered services, at most once per
//! `sweep` interval. The view's own task only decides: it never waits for a
//! read, so a sweep of thousands of services neither holds up a new
//! subscriber nor the two watches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use consul_client::watch::index::IndexCursor;
use consul_client::watch::{Continuity, Watch, WatchConfig, WatchEvent};
use consul_client::{Client, HealthFilter, HealthState, QueryOptions, QueryResponse, ServiceEntry};
use futures::StreamExt;
use futures::stream::BoxStream;
use service_support::time::sleep_until_opt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::digest::{ChecksDigest, differing, node_key};
use super::entries::EntryReader;
use super::reads::{Priority, TargetedReads};
use crate::engine::SourceEvent;

/// Blocking queries one DC-wide view holds open: the checks and the catalog.
const QUERIES_PER_VIEW: usize = 2;
/// Kept out of the per-service share for other reads.
const SPARE_QUERIES: usize = 1;

/// Services watched with a blocking query each, out of
/// `max_blocking_queries`: the views of `datacenters` datacenters come out
/// of the same budget, since a service beyond the per-service share starts
/// its datacenter's view.
pub fn per_service_watch_limit(max_blocking_queries: usize, datacenters: usize) -> usize {
    max_blocking_queries.saturating_sub(QUERIES_PER_VIEW * datacenters + SPARE_QUERIES)
}

/// The whole datacenter's checks are a large answer; reading it more than a
/// few times a second buys nothing and costs the agent. A watch reads at
/// most twice per interval: four times a second.
const MIN_VIEW_INTERVAL: Duration = Duration::from_millis(500);

type Subscription = (String, mpsc::UnboundedSender<SourceEvent>);
type Catalog = BTreeMap<String, Vec<String>>;
type Answer = Result<QueryResponse<Vec<ServiceEntry>>, consul_client::Error>;

/// A running DC-wide view; dropping it stops its tasks.
#[derive(Debug)]
pub struct DcWideView {
    subscribe: mpsc::UnboundedSender<Subscription>,
    _task: AbortOnDropHandle<()>,
}

impl DcWideView {
    pub(super) fn start(
        client: Client,
        reader: EntryReader,
        config: WatchConfig,
        sweep: Duration,
    ) -> Self {
        let (subscribe, subscriptions) = mpsc::unbounded_channel();
        let (answers, answered) = mpsc::unbounded_channel();
        let mut view_config = config.clone();
        view_config.min_interval = view_config.min_interval.max(MIN_VIEW_INTERVAL);
        // Each answer (every check of the datacenter: tens of MiB of JSON
        // with 100,000 checks) is folded into a digest per service and per
        // node as it arrives: neither its text nor a list of its checks is
        // ever held, and the watch keeps only the digest.
        let checks = client.watch_health_state_fold(
            HealthState::Any,
            view_config.clone(),
            ChecksDigest::default,
            ChecksDigest::add,
        );
        let catalog = client.watch_catalog_services(view_config);
        // Why the checks watch waits for the reads: each of its answers is
        // every check of the datacenter (tens of MiB to fold), and the reads
        // it leads to say more than its next answer would. Reading it again
        // while they run costs a core's quarter at 100 changes a second and
        // finds only what the reads are about to tell. The catalog watch
        // (small answers) and new subscribers never wait.
        let (reads_idle, reads_idle_rx) = watch::channel(true);
        let watches = [
            drive(
                checks,
                answers.clone(),
                WatchAnswer::Checks,
                Some(reads_idle_rx),
            ),
            drive(catalog, answers, WatchAnswer::Catalog, None),
        ];
        let options = QueryOptions {
            datacenter: config.datacenter,
            stale: config.stale,
            ..QueryOptions::default()
        };
        let reads = TargetedReads::new(move |service: Arc<str>| {
            let client = client.clone();
            let options = options.clone();
            async move {
                client
                    .health_service(&service, HealthFilter::All, &options)
                    .await
            }
        });
        let view = View::new(reader, sweep, reads, reads_idle);
        let task = tokio::spawn(view.run(subscriptions, answered, watches));
        Self {
            subscribe,
            _task: AbortOnDropHandle::new(task),
        }
    }

    pub(super) fn subscribe(&self, service: &str) -> BoxStream<'static, SourceEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.subscribe.send((service.to_owned(), tx)).is_err() {
            tracing::error!(
                service,
                "the DC-wide view has stopped; no updates for this service"
            );
        }
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}

/// An event of one of the view's two watches.
#[derive(Debug)]
enum WatchAnswer {
    Checks(WatchEvent<ChecksDigest>),
    Catalog(WatchEvent<Catalog>),
}

/// Drives `watch` in its own task, handing each event to the view; the task
/// stops when the view does. With `after_reads`, the next request waits
/// until the view's targeted reads are done (a watch sends its next request
/// only when polled).
fn drive<T: Send + Sync + 'static>(
    mut watch: Watch<T>,
    view: mpsc::UnboundedSender<WatchAnswer>,
    wrap: fn(WatchEvent<T>) -> WatchAnswer,
    mut after_reads: Option<watch::Receiver<bool>>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            if let Some(idle) = after_reads.as_mut()
                && idle.wait_for(|idle| *idle).await.is_err()
            {
                return;
            }
            let Some(event) = watch.next().await else {
                return;
            };
            if view.send(wrap(event)).is_err() {
                return;
            }
        }
    }))
}

/// What the view keeps of one covered service.
#[derive(Debug, Default)]
struct Covered {
    subscribers: Vec<mpsc::UnboundedSender<SourceEvent>>,
    /// Nodes it had instances on at its last read, as [`node_key`]s: 8
    /// bytes per instance instead of a copy of the name.
    nodes: Vec<u64>,
    /// The index rules applied to its reads, as a watch applies them.
    cursor: IndexCursor,
    /// Its last read failed, or a watch of the view did: its next answer
    /// counts as after a reset.
    failed: bool,
}

/// The view's state, owned by its one task.
struct View {
    reader: EntryReader,
    sweep: Duration,
    covered: HashMap<String, Covered>,
    /// The digest of the last checks answer, to spot changes.
    checks: Arc<ChecksDigest>,
    /// The last catalog answer, shared with its watch (never copied).
    catalog: Option<Arc<Catalog>>,
    reads: TargetedReads<Answer>,
    /// Whether `reads` has nothing queued or in flight, for the checks watch.
    reads_idle: watch::Sender<bool>,
    sweep_due: Option<Instant>,
    last_sweep: Instant,
}

impl View {
    fn new(
        reader: EntryReader,
        sweep: Duration,
        reads: TargetedReads<Answer>,
        reads_idle: watch::Sender<bool>,
    ) -> Self {
        Self {
            reader,
            sweep,
            covered: HashMap::new(),
            checks: Arc::default(),
            catalog: None,
            reads,
            reads_idle,
            sweep_due: None,
            last_sweep: Instant::now(),
        }
    }

    /// Until the view is dropped. `_watches` are the watch tasks, stopped
    /// with it.
    async fn run(
        mut self,
        mut subscriptions: mpsc::UnboundedReceiver<Subscription>,
        mut answers: mpsc::UnboundedReceiver<WatchAnswer>,
        _watches: [AbortOnDropHandle<()>; 2],
    ) {
        loop {
            let sweep_at = self.sweep_due;
            tokio::select! {
                subscription = subscriptions.recv() => {
                    let Some((service, subscriber)) = subscription else { return };
                    self.subscribe(service, subscriber);
                }
                Some(answer) = answers.recv() => self.on_watch(answer),
                (service, answer) = self.reads.next() => self.deliver(&service, answer),
                () = sleep_until_opt(sweep_at), if sweep_at.is_some() => self.start_sweep(),
            }
            let idle = self.reads.is_idle();
            self.reads_idle
                .send_if_modified(|was| std::mem::replace(was, idle) != idle);
        }
    }

    fn subscribe(&mut self, service: String, subscriber: mpsc::UnboundedSender<SourceEvent>) {
        // A new subscriber gets the current state at once.
        self.reads.ask(&service, Priority::Prompt);
        self.covered
            .entry(service)
            .or_default()
            .subscribers
            .push(subscriber);
    }

    fn on_watch(&mut self, answer: WatchAnswer) {
        match answer {
            // A recovered watch is no different here: its answer is diffed
            // against the last one like any other.
            WatchAnswer::Checks(WatchEvent::Value { value, .. }) => {
                for service in self.changed_by_checks(value) {
                    self.reads.ask(&service, Priority::Prompt);
                }
            }
            WatchAnswer::Catalog(WatchEvent::Value { value, .. }) => {
                for service in self.changed_by_catalog(value) {
                    self.reads.ask(&service, Priority::Prompt);
                }
                // Instances without checks leave no trace in the checks.
                let earliest = self.last_sweep + self.sweep;
                self.sweep_due.get_or_insert(earliest.max(Instant::now()));
            }
            WatchAnswer::Checks(WatchEvent::Degraded { error, .. })
            | WatchAnswer::Catalog(WatchEvent::Degraded { error, .. }) => {
                self.fail_all(&error.to_string());
            }
        }
    }

    /// Covered services whose checks (or whose nodes' checks) differ from
    /// the last answer's.
    fn changed_by_checks(&mut self, checks: Arc<ChecksDigest>) -> BTreeSet<String> {
        let previous = std::mem::replace(&mut self.checks, checks);
        let current = &self.checks;
        let mut changed: BTreeSet<String> = differing(&previous.services, &current.services)
            .filter(|service| self.covered.contains_key(*service))
            .map(str::to_owned)
            .collect();
        let nodes: HashSet<u64> = differing(&previous.nodes, &current.nodes)
            .map(node_key)
            .collect();
        if !nodes.is_empty() {
            for (service, covered) in &self.covered {
                if covered.nodes.iter().any(|node| nodes.contains(node)) {
                    changed.insert(service.clone());
                }
            }
        }
        changed
    }

    /// Covered services whose tags changed or that appeared or vanished.
    fn changed_by_catalog(&mut self, services: Arc<Catalog>) -> Vec<String> {
        let previous = self.catalog.replace(Arc::clone(&services));
        self.covered
            .keys()
            .filter(|service| {
                let before = previous.as_ref().and_then(|p| p.get(*service));
                before != services.get(*service)
            })
            .cloned()
            .collect()
    }

    fn start_sweep(&mut self) {
        self.sweep_due = None;
        self.last_sweep = Instant::now();
        self.forget_unsubscribed();
        for service in self.covered.keys() {
            self.reads.ask(service, Priority::Sweep);
        }
    }

    /// Hands a read's answer to the service's subscribers.
    fn deliver(&mut self, service: &str, answer: Answer) {
        let Some(covered) = self.covered.get_mut(service) else {
            // No subscriber left since the read was asked for.
            return;
        };
        let event = match answer {
            // Consul 1.11+ says when the token's ACLs hid part of the
            // answer: it is not the whole truth, so not believed.
            Ok(response) if response.meta.results_filtered_by_acls => SourceEvent::Filtered,
            Ok(response) => {
                let after_failures = std::mem::take(&mut covered.failed);
                let observed = covered.cursor.observe(response.meta.index);
                covered.nodes = response
                    .value
                    .iter()
                    .map(|e| node_key(&e.node.node))
                    .collect();
                SourceEvent::Instances {
                    instances: self.reader.instances(&response.value),
                    index: covered.cursor.last_seen().unwrap_or(1),
                    // A read is answered whether or not anything changed;
                    // one with nothing new continues what was seen.
                    after_reset: Continuity::of(observed, after_failures)
                        .is_some_and(Continuity::breaks_continuity),
                }
            }
            Err(error) => {
                covered.failed = true;
                SourceEvent::Failing {
                    error: error.to_string(),
                }
            }
        };
        covered
            .subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        if covered.subscribers.is_empty() {
            self.covered.remove(service);
        }
    }

    fn fail_all(&mut self, error: &str) {
        for covered in self.covered.values_mut() {
            covered.failed = true;
            covered.subscribers.retain(|subscriber| {
                subscriber
                    .send(SourceEvent::Failing {
                        error: error.to_owned(),
                    })
                    .is_ok()
            });
        }
        self.forget_unsubscribed();
    }

    fn forget_unsubscribed(&mut self) {
        self.covered.retain(|_, covered| {
            covered.subscribers.retain(|s| !s.is_closed());
            !covered.subscribers.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::digest::fixtures::{datacenter, digest};
    use super::*;
    use crate::config::AddressSource;
    use consul_client::CheckStatus;

    #[test]
    fn the_views_take_two_queries_per_datacenter_and_one_spare() {
        assert_eq!(per_service_watch_limit(64, 1), 61);
        assert_eq!(per_service_watch_limit(64, 3), 57);
        assert_eq!(per_service_watch_limit(3, 1), 0, "every service DC-wide");
        assert_eq!(per_service_watch_limit(2, 1), 0);
    }

    #[tokio::test]
    async fn a_checks_answer_marks_the_covered_services_it_changed() {
        // Never read: `changed_by_checks` only compares.
        let reads = TargetedReads::new(|_| std::future::pending::<Answer>());
        let mut view = View::new(
            EntryReader::new(AddressSource::Service, "zone".to_owned()),
            Duration::from_secs(10),
            reads,
            watch::channel(true).0,
        );
        // Covered: web (on n1 and n2) and api (on n2); db is not.
        let mut subscribers = Vec::new();
        for (service, nodes) in [("web", ["n1", "n2"].as_slice()), ("api", &["n2"])] {
            let (tx, rx) = mpsc::unbounded_channel();
            subscribers.push(rx);
            view.covered.insert(
                service.to_owned(),
                Covered {
                    subscribers: vec![tx],
                    nodes: nodes.iter().map(|n| node_key(n)).collect(),
                    ..Covered::default()
                },
            );
        }
        let first = view.changed_by_checks(Arc::new(digest(&datacenter())));
        assert_eq!(
            first,
            BTreeSet::from(["api".to_owned(), "web".to_owned()]),
            "the first answer concerns every covered service with checks"
        );
        assert!(
            view.changed_by_checks(Arc::new(digest(&datacenter())))
                .is_empty(),
            "the same checks again change nothing"
        );

        let mut db_down = datacenter();
        db_down[5].status = CheckStatus::Critical;
        assert!(
            view.changed_by_checks(Arc::new(digest(&db_down)))
                .is_empty(),
            "db is not covered"
        );

        let mut n2_down = db_down.clone();
        n2_down[1].status = CheckStatus::Critical;
        assert_eq!(
            view.changed_by_checks(Arc::new(digest(&n2_down))),
            BTreeSet::from(["api".to_owned(), "web".to_owned()]),
            "a node check change concerns every covered service on that node"
        );

        let mut web_1_down = n2_down.clone();
        web_1_down[2].status = CheckStatus::Critical;
        assert_eq!(
            view.changed_by_checks(Arc::new(digest(&web_1_down))),
            BTreeSet::from(["web".to_owned()])
        );
    }
}

//! The DC-wide view: many services of one datacenter fed by three blocking
//! queries, and what those queries cost out of the connection budget.
//!
//! Why these queries: a change must cost in proportion to the change, not
//! to the datacenter (docs/adr/0010-dc-wide-changes.md).
//!
//! - Health: the checks that are critical (`/v1/health/state/critical`)
//!   and those warning (`.../warning`). Their index is the whole checks
//!   table's, so they wake on every check change, yet where most checks
//!   pass their answers are small. A check failing joins one, one
//!   recovering leaves it: the difference from the previous answer names
//!   the services (and nodes) to re-read.
//! - Instances: `/v1/catalog/services`, whose index moves only when an
//!   instance registers, deregisters or changes (not on a check change).
//!   Each move is followed by one read of the services' summaries
//!   (`/v1/internal/ui/services`: instance count, nodes and tags per
//!   service), and the difference names the services to re-read.
//!
//! Each of the three watches runs in a task of its own, as consul-client
//! asks, so a query is always in flight. What neither difference explains
//! (an instance changing only its port, say) is caught by a sweep of all
//! covered services: at once (at most once per `sweep`) when a catalog
//! change is explained by nothing, else within [`CATCH_UP_SWEEPS`] times
//! `sweep`. The view's own task only decides: it never waits for a read,
//! so a sweep of thousands of services neither holds up a new subscriber
//! nor the watches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use consul_client::watch::index::IndexCursor;
use consul_client::watch::{Continuity, Watch, WatchConfig, WatchEvent};
use consul_client::{Client, HealthFilter, HealthState, QueryOptions, QueryResponse, ServiceEntry};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use service_support::time::sleep_until_opt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::digest::{ChecksDigest, SummariesDigest, differing, node_key};
use super::entries::EntryReader;
use super::reads::{Priority, TargetedReads};
use crate::engine::SourceEvent;

/// Blocking queries one DC-wide view holds open: the critical checks, the
/// warning ones, and the catalog.
const QUERIES_PER_VIEW: usize = 3;
/// Kept out of the per-service share for other reads.
const SPARE_QUERIES: usize = 1;

/// Services watched with a blocking query each, out of
/// `max_blocking_queries`: the views of `datacenters` datacenters come out
/// of the same budget, since a service beyond the per-service share starts
/// its datacenter's view.
pub fn per_service_watch_limit(max_blocking_queries: usize, datacenters: usize) -> usize {
    max_blocking_queries.saturating_sub(QUERIES_PER_VIEW * datacenters + SPARE_QUERIES)
}

/// A watch of the view reads at most twice per interval: twenty times a
/// second while its index keeps moving. Its answers are small, and a change
/// waits at most this long behind the one before it.
const MIN_VIEW_INTERVAL: Duration = Duration::from_millis(100);

/// After a catalog change the summaries explained, the longest (in `sweep`
/// intervals) before a sweep looks for what they could not show: an
/// instance that changed only its address, port or some of its tags in the
/// same moment.
const CATCH_UP_SWEEPS: u32 = 6;

type Subscription = (String, mpsc::UnboundedSender<SourceEvent>);
type Catalog = BTreeMap<String, Vec<String>>;
type Answer = Result<QueryResponse<Vec<ServiceEntry>>, consul_client::Error>;
type Summaries = Result<QueryResponse<SummariesDigest>, consul_client::Error>;
/// Reads the services' summaries (a function, so tests pass their own).
type SummariesRead = Box<dyn Fn() -> BoxFuture<'static, Summaries> + Send>;

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
        // Each answer is folded into a digest per service and per node as it
        // arrives: neither its text nor a list of its checks is ever held,
        // and the watch keeps only the digest (small, as the answer is,
        // while most checks pass; bounded even when a whole datacenter
        // fails).
        // Why two states and not one filtered query of every check: Consul
        // answers a state from its index of checks by status, at a cost
        // proportional to the answer, where `filter` evaluates every check
        // of the datacenter on every wake-up (measured: it starved the agent
        // at 100,000 checks).
        let checks = |state| {
            client.watch_health_state_fold(
                state,
                view_config.clone(),
                ChecksDigest::default,
                ChecksDigest::add,
            )
        };
        let critical = checks(HealthState::Critical);
        let warning = checks(HealthState::Warning);
        let catalog = client.watch_catalog_services(view_config.clone());
        // No watch waits for the reads it leads to: the answers are small,
        // and a health change must not wait behind a sweep.
        let watches = [
            drive(critical, answers.clone(), |e| {
                WatchAnswer::Checks(Severity::Critical, e)
            }),
            drive(warning, answers.clone(), |e| {
                WatchAnswer::Checks(Severity::Warning, e)
            }),
            drive(catalog, answers.clone(), WatchAnswer::Catalog),
        ];
        let options = QueryOptions {
            datacenter: config.datacenter,
            stale: config.stale,
            ..QueryOptions::default()
        };
        let summaries: SummariesRead = {
            let client = client.clone();
            let options = options.clone();
            Box::new(move || {
                let client = client.clone();
                let options = options.clone();
                Box::pin(async move {
                    client
                        .ui_services_fold(
                            &options,
                            SummariesDigest::default(),
                            SummariesDigest::add,
                        )
                        .await
                })
            })
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
        let view = View::new(reader, sweep, reads, summaries, answers);
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

/// An event of one of the view's three watches, or the answer of a read of
/// the summaries.
#[derive(Debug)]
enum WatchAnswer {
    Checks(Severity, WatchEvent<ChecksDigest>),
    Catalog(WatchEvent<Catalog>),
    Summaries(Summaries),
}

/// Which of the two checks watches an answer comes from.
#[derive(Debug, Clone, Copy)]
enum Severity {
    Critical = 0,
    Warning = 1,
}

/// Drives `watch` in its own task, handing each event to the view; the task
/// stops when the view does.
fn drive<T: Send + Sync + 'static>(
    mut watch: Watch<T>,
    view: mpsc::UnboundedSender<WatchAnswer>,
    wrap: fn(WatchEvent<T>) -> WatchAnswer,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
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
    /// The digest of the last answer of each checks watch (by
    /// [`Severity`]), to spot changes.
    checks: [Arc<ChecksDigest>; 2],
    /// The last catalog answer, shared with its watch (never copied).
    catalog: Option<Arc<Catalog>>,
    /// The digest of the last summaries answer; `None` before the first
    /// or while they cannot be read.
    summaries: Option<SummariesDigest>,
    read_summaries: SummariesRead,
    /// The read of the summaries in flight, and whether another catalog
    /// change came meanwhile (one more read follows it).
    summaries_in_flight: Option<AbortOnDropHandle<()>>,
    summaries_again: bool,
    /// When the read in flight started, for the debug log.
    summaries_started: Instant,
    /// Where a read of the summaries sends its answer: the watches' channel.
    answers: mpsc::UnboundedSender<WatchAnswer>,
    baseline: Baseline,
    reads: TargetedReads<Answer>,
    sweep_due: Option<Instant>,
    last_sweep: Instant,
}

/// Whether the first checks answer and the first summaries have arrived
/// (or failed). Why reads wait for both: a service read before them could
/// change between its read and the answer its later changes are compared
/// with, and that change would never show as a difference.
#[derive(Debug, Default)]
struct Baseline {
    /// Each checks watch's, by [`Severity`].
    checks: [bool; 2],
    summaries: bool,
    /// Services subscribed before it was complete: read once it is.
    waiting: Vec<String>,
}

impl Baseline {
    fn complete(&self) -> bool {
        self.checks.iter().all(|answered| *answered) && self.summaries
    }
}

impl View {
    fn new(
        reader: EntryReader,
        sweep: Duration,
        reads: TargetedReads<Answer>,
        read_summaries: SummariesRead,
        answers: mpsc::UnboundedSender<WatchAnswer>,
    ) -> Self {
        Self {
            reader,
            sweep,
            covered: HashMap::new(),
            checks: Default::default(),
            catalog: None,
            summaries: None,
            read_summaries,
            summaries_in_flight: None,
            summaries_again: false,
            summaries_started: Instant::now(),
            answers,
            baseline: Baseline::default(),
            reads,
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
        _watches: [AbortOnDropHandle<()>; 3],
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
        }
    }

    fn subscribe(&mut self, service: String, subscriber: mpsc::UnboundedSender<SourceEvent>) {
        // A new subscriber gets the current state at once, or as soon as
        // there is something to compare its later changes with.
        if self.baseline.complete() {
            self.reads.ask(&service, Priority::Prompt);
        } else {
            self.baseline.waiting.push(service.clone());
        }
        self.covered
            .entry(service)
            .or_default()
            .subscribers
            .push(subscriber);
    }

    /// Reads `services` now, or once the baseline is complete.
    fn ask_prompt(&mut self, services: impl IntoIterator<Item = String>) {
        if self.baseline.complete() {
            for service in services {
                self.reads.ask(&service, Priority::Prompt);
            }
        } else {
            self.baseline.waiting.extend(services);
        }
    }

    fn complete_baseline(&mut self, part: impl FnOnce(&mut Baseline) -> &mut bool) {
        *part(&mut self.baseline) = true;
        if self.baseline.complete() {
            let waiting = std::mem::take(&mut self.baseline.waiting);
            self.ask_prompt(waiting);
        }
    }

    fn on_watch(&mut self, answer: WatchAnswer) {
        match answer {
            // A recovered watch is no different here: its answer is diffed
            // against the last one like any other.
            WatchAnswer::Checks(severity, WatchEvent::Value { value, index, .. }) => {
                let changed = self.changed_by_checks(severity, value);
                tracing::debug!(?severity, index, changed = changed.len(), "checks answer");
                self.ask_prompt(changed);
                self.complete_baseline(|b| &mut b.checks[severity as usize]);
            }
            WatchAnswer::Catalog(WatchEvent::Value { value, index, .. }) => {
                let changed = self.changed_by_catalog(value);
                tracing::debug!(index, changed = changed.len(), "catalog answer");
                self.ask_prompt(changed);
                self.read_summaries();
            }
            WatchAnswer::Summaries(answer) => self.on_summaries(answer),
            WatchAnswer::Checks(severity, WatchEvent::Degraded { error, .. }) => {
                self.fail_all(&error.to_string());
                self.complete_baseline(|b| &mut b.checks[severity as usize]);
            }
            WatchAnswer::Catalog(WatchEvent::Degraded { error, .. }) => {
                self.fail_all(&error.to_string());
                self.complete_baseline(|b| &mut b.summaries);
            }
        }
    }

    /// Starts a read of the summaries, or one more after the one in flight.
    fn read_summaries(&mut self) {
        if self.summaries_in_flight.is_some() {
            self.summaries_again = true;
            return;
        }
        let read = (self.read_summaries)();
        self.summaries_started = Instant::now();
        let answers = self.answers.clone();
        self.summaries_in_flight = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = answers.send(WatchAnswer::Summaries(read.await));
        })));
    }

    fn on_summaries(&mut self, answer: Summaries) {
        self.summaries_in_flight = None;
        if std::mem::take(&mut self.summaries_again) {
            self.read_summaries();
        }
        let explained = match answer {
            Ok(response) => match self.summaries.replace(response.value) {
                // The first: what later ones are compared with.
                None => {
                    self.complete_baseline(|b| &mut b.summaries);
                    return;
                }
                Some(previous) => {
                    let current = self.summaries.as_ref().map(|s| &s.services);
                    let changed: Vec<&str> = current
                        .into_iter()
                        .flat_map(|current| differing(&previous.services, current))
                        .collect();
                    // Explained even when the services it names are not
                    // this view's (watched one query each, or by nobody).
                    let explained = !changed.is_empty();
                    let covered: Vec<String> = changed
                        .into_iter()
                        .filter(|service| self.covered.contains_key(*service))
                        .map(str::to_owned)
                        .collect();
                    tracing::debug!(
                        took_ms = self.summaries_started.elapsed().as_millis(),
                        explained,
                        read = covered.len(),
                        "summaries answer"
                    );
                    self.ask_prompt(covered);
                    explained
                }
            },
            Err(error) => {
                // Nothing learned: an older Consul without the endpoint, an
                // ACL the token lacks, or an outage. The sweep finds what
                // changed, as it would without the summaries; the last good
                // digest stays what the next answer is compared with.
                tracing::warn!(
                    %error,
                    "reading the services' summaries failed; sweeping the covered services instead"
                );
                false
            }
        };
        self.complete_baseline(|b| &mut b.summaries);
        // A change the summaries explained may hide another they cannot
        // show (an instance's port, in the same moment): a later sweep
        // bounds how long that stays unseen.
        let now = Instant::now();
        let earliest = if explained {
            now + self.sweep * CATCH_UP_SWEEPS
        } else {
            (self.last_sweep + self.sweep).max(now)
        };
        let due = self.sweep_due.map_or(earliest, |due| due.min(earliest));
        self.sweep_due = Some(due);
    }

    /// Covered services whose checks (or whose nodes' checks) differ from
    /// the last answer's.
    fn changed_by_checks(
        &mut self,
        severity: Severity,
        checks: Arc<ChecksDigest>,
    ) -> BTreeSet<String> {
        let previous = std::mem::replace(&mut self.checks[severity as usize], checks);
        let current = &self.checks[severity as usize];
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
        let Some(previous) = self.catalog.replace(Arc::clone(&services)) else {
            // The first: what later ones are compared with.
            return Vec::new();
        };
        self.covered
            .keys()
            .filter(|service| previous.get(*service) != services.get(*service))
            .cloned()
            .collect()
    }

    fn start_sweep(&mut self) {
        self.sweep_due = None;
        self.last_sweep = Instant::now();
        self.forget_unsubscribed();
        tracing::debug!(services = self.covered.len(), "sweep");
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
    fn the_views_take_three_queries_per_datacenter_and_one_spare() {
        assert_eq!(per_service_watch_limit(64, 1), 60);
        assert_eq!(per_service_watch_limit(64, 3), 54);
        assert_eq!(per_service_watch_limit(3, 1), 0, "every service DC-wide");
        assert_eq!(per_service_watch_limit(2, 1), 0);
    }

    /// A view whose reads never finish: its tests look at what it decides.
    fn idle_view() -> View {
        let reads = TargetedReads::new(|_| std::future::pending::<Answer>());
        View::new(
            EntryReader::new(AddressSource::Service, "zone".to_owned()),
            Duration::from_secs(10),
            reads,
            Box::new(|| Box::pin(std::future::pending::<Summaries>())),
            mpsc::unbounded_channel().0,
        )
    }

    fn summaries(list: &[(&str, u64)]) -> Summaries {
        let mut digest = SummariesDigest::default();
        for (name, instances) in list {
            digest.add(consul_client::ServiceSummary {
                name: (*name).into(),
                tags: Vec::new(),
                nodes: vec!["n1".into()],
                instance_count: *instances,
                checks_passing: 0,
                checks_warning: 0,
                checks_critical: 0,
            });
        }
        Ok(QueryResponse {
            value: digest,
            meta: consul_client::QueryMeta::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn reads_wait_for_the_baseline_then_follow_the_summaries_differences() {
        let mut view = idle_view();
        let mut subscribers = Vec::new();
        for service in ["web", "api"] {
            let (tx, rx) = mpsc::unbounded_channel();
            subscribers.push(rx);
            view.subscribe(service.to_owned(), tx);
        }
        assert!(view.reads.is_idle(), "nothing is read before the baseline");

        for severity in [Severity::Critical, Severity::Warning] {
            view.on_watch(WatchAnswer::Checks(
                severity,
                WatchEvent::Value {
                    value: Arc::new(ChecksDigest::default()),
                    index: 10,
                    continuity: Continuity::Initial,
                    meta: consul_client::QueryMeta::default(),
                },
            ));
        }
        assert!(view.reads.is_idle(), "the summaries are not in yet");
        view.on_summaries(summaries(&[("web", 2), ("api", 1), ("db", 1)]));
        assert!(
            !view.reads.is_idle(),
            "the baseline is complete: both are read"
        );
        assert_eq!(view.sweep_due, None, "the first summaries sweep nothing");

        // Another registration of api: read, and a catch-up sweep later.
        let mut reads = idle_view();
        std::mem::swap(&mut view.reads, &mut reads.reads);
        view.on_summaries(summaries(&[("web", 2), ("api", 2), ("db", 1)]));
        assert!(!view.reads.is_idle(), "api is read");
        let catch_up = view.sweep_due.expect("a catch-up sweep");
        assert!(catch_up >= Instant::now() + view.sweep * CATCH_UP_SWEEPS);

        // A change of a service this view does not cover explains the
        // catalog change too: no sweep sooner than the catch-up.
        view.sweep_due = None;
        std::mem::swap(&mut view.reads, &mut idle_view().reads);
        view.on_summaries(summaries(&[("web", 2), ("api", 2), ("db", 3)]));
        assert!(view.reads.is_idle(), "db is not covered");
        assert!(view.sweep_due.expect("catch-up") >= catch_up, "not sooner");

        // A catalog change the summaries do not show (a port, say), or a
        // failed read: a sweep as soon as the interval allows.
        view.sweep_due = None;
        view.on_summaries(summaries(&[("web", 2), ("api", 2), ("db", 3)]));
        assert_eq!(view.sweep_due, Some(view.last_sweep + view.sweep));
        view.sweep_due = None;
        view.on_summaries(Err(consul_client::Error::NotFound {
            endpoint: "ui_services".into(),
            message: "no such endpoint".into(),
        }));
        assert_eq!(view.sweep_due, Some(view.last_sweep + view.sweep));
    }

    #[tokio::test]
    async fn a_checks_answer_marks_the_covered_services_it_changed() {
        // Never read: `changed_by_checks` only compares.
        let mut view = idle_view();
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
        let first = view.changed_by_checks(Severity::Critical, Arc::new(digest(&datacenter())));
        assert_eq!(
            first,
            BTreeSet::from(["api".to_owned(), "web".to_owned()]),
            "the first answer concerns every covered service with checks"
        );
        assert!(
            view.changed_by_checks(Severity::Critical, Arc::new(digest(&datacenter())))
                .is_empty(),
            "the same checks again change nothing"
        );

        let mut db_down = datacenter();
        db_down[5].status = CheckStatus::Critical;
        assert!(
            view.changed_by_checks(Severity::Critical, Arc::new(digest(&db_down)))
                .is_empty(),
            "db is not covered"
        );

        let mut n2_down = db_down.clone();
        n2_down[1].status = CheckStatus::Critical;
        assert_eq!(
            view.changed_by_checks(Severity::Critical, Arc::new(digest(&n2_down))),
            BTreeSet::from(["api".to_owned(), "web".to_owned()]),
            "a node check change concerns every covered service on that node"
        );

        let mut web_1_down = n2_down.clone();
        web_1_down[2].status = CheckStatus::Critical;
        assert_eq!(
            view.changed_by_checks(Severity::Critical, Arc::new(digest(&web_1_down))),
            BTreeSet::from(["web".to_owned()])
        );
    }
}

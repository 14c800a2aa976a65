//! Every replica follows the registries' service lists (see [`sources`]:
//! one blocking query per registry, their union), keeps the routed hosts'
//! SDS secrets in step with them, and publishes the view the lock holder
//! orders from and the status page shows.
//!
//! The unrouted clock it keeps starts from the lock holder's record: read
//! once at start ([`RouteFollower::with_record_from`]), and taken again
//! from the holder of each new term ([`RecordSender`]), so this replica's
//! view, and the orders of a holder, continue the clock of the holder
//! before.
//!
//! It also forgets the hosts past their use (see [`forgettable`]), on
//! every change and when the first grace or certificate of an unrouted
//! host ends, so a host routed once for a day does not stay on the status
//! page, and in the holder's record, for good.
//!
//! [`sources`]: super::sources

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use route_tags::TagPrefix;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::RoutedView;
use super::catalog::{RoutedHosts, forgettable, past_use_from, tls_hosts};
use super::policy::{HostPlan, RoutedPolicy};
use super::sources::CatalogAnswer;
use crate::metrics::ServiceMetrics;
use crate::sds::SecretPublisher;
use crate::store::{CertificateStore, RoutedHostsRecord, SecretName};

/// Hands the follower a record of routed hosts to adopt (the lock holder's,
/// read at the start of its term).
pub type RecordSender = mpsc::UnboundedSender<RoutedHostsRecord>;

/// The longest the follower sleeps before looking for hosts past their
/// use again: the moment is computed from the wall clock, which may jump.
const FORGET_CHECK_LONGEST: Duration = Duration::from_secs(3600);
/// The shortest: a moment already past (a clock read a little apart) must
/// not make a busy loop.
const FORGET_CHECK_SHORTEST: Duration = Duration::from_secs(1);

/// Follows the registries' answers and feeds the publisher and the view.
pub struct RouteFollower {
    answers: BoxStream<'static, CatalogAnswer>,
    prefix: TagPrefix,
    policy: RoutedPolicy,
    publisher: Arc<SecretPublisher>,
    metrics: ServiceMetrics,
    unrouted_grace: Duration,
    hosts: RoutedHosts,
    view: watch::Sender<Arc<RoutedView>>,
    /// Read once before the first answer is taken.
    store: Option<Arc<dyn CertificateStore>>,
    records: mpsc::UnboundedReceiver<RoutedHostsRecord>,
    record_sender: RecordSender,
}

impl std::fmt::Debug for RouteFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteFollower")
            .field("prefix", &self.prefix)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl RouteFollower {
    /// `answers`: the registries read, e.g. [`union_of`] their catalogs.
    /// `unrouted_grace`: how long a host no longer routed is renewed (and
    /// so kept, at least).
    ///
    /// [`union_of`]: super::sources::union_of
    pub fn new(
        answers: BoxStream<'static, CatalogAnswer>,
        prefix: TagPrefix,
        policy: RoutedPolicy,
        publisher: Arc<SecretPublisher>,
        metrics: ServiceMetrics,
        unrouted_grace: Duration,
    ) -> Self {
        let (record_sender, records) = mpsc::unbounded_channel();
        Self {
            answers,
            prefix,
            policy,
            publisher,
            metrics,
            unrouted_grace,
            hosts: RoutedHosts::default(),
            view: watch::Sender::new(Arc::new(RoutedView::default())),
            store: None,
            records,
            record_sender,
        }
    }

    /// Adopts the record of routed hosts `store` holds before following
    /// the registries, so a restarted replica shows (and, holding the lock,
    /// orders by) the clock it had.
    #[must_use]
    pub fn with_record_from(mut self, store: Arc<dyn CertificateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where the lock holder hands its record to adopt.
    pub fn record_sender(&self) -> RecordSender {
        self.record_sender.clone()
    }

    /// The routed hosts as last read; changes with every answer that changes them.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutedView>> {
        self.view.subscribe()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some(store) = self.store.take() {
            let loaded = tokio::select! {
                () = shutdown.cancelled() => return,
                loaded = store.load_routed_hosts(OffsetDateTime::now_utc()) => loaded,
            };
            match loaded {
                Ok(loaded) => {
                    for problem in &loaded.problems {
                        error!(%problem, "stored record of routed hosts");
                    }
                    self.adopt(&loaded.hosts);
                }
                // The holder reads it again at the start of its term; a
                // replica that does not hold the lock only shows its own clock.
                Err(error) => {
                    error!(%error, "cannot read the stored record of routed hosts; the clock starts from this replica's answers");
                }
            }
        }
        loop {
            let now = OffsetDateTime::now_utc();
            let next_forget = self.next_forget_at().map_or(FORGET_CHECK_LONGEST, |at| {
                Duration::try_from(at - now)
                    .unwrap_or(Duration::ZERO)
                    .clamp(FORGET_CHECK_SHORTEST, FORGET_CHECK_LONGEST)
            });
            let answer = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(record) = self.records.recv() => {
                    self.adopt(&record);
                    continue;
                }
                () = tokio::time::sleep(next_forget) => {
                    if self.forget_past_use(OffsetDateTime::now_utc()) {
                        self.publish();
                    }
                    continue;
                }
                answer = self.answers.next() => answer,
            };
            match answer {
                None => return,
                Some(CatalogAnswer::Services {
                    services,
                    believable,
                }) => self.apply(&services, believable, OffsetDateTime::now_utc()),
                // Each registry's watch has told its failure already.
                Some(CatalogAnswer::Failed { reason }) => {
                    debug!(%reason, "a registry read failed; the routed hosts stay as they were");
                }
                Some(CatalogAnswer::Waiting { catalogs }) => {
                    info!(
                        ?catalogs,
                        "waiting for every registry's first answer before following routes"
                    );
                }
            }
        }
    }

    /// Takes one catalog answer.
    pub fn apply(
        &mut self,
        services: &std::collections::BTreeMap<String, Vec<String>>,
        believable: bool,
        now: OffsetDateTime,
    ) {
        let routed = tls_hosts(&self.prefix, services);
        let changed = self.hosts.on_answer(routed, believable, now);
        if self.forget_past_use(now) || changed {
            self.publish();
        }
    }

    /// Takes a stored record of routed hosts (see [`RoutedHosts::adopt`]).
    pub fn adopt(&mut self, record: &RoutedHostsRecord) {
        let adopted = self.hosts.adopt(record);
        if adopted {
            debug!(
                hosts = record.len(),
                "adopted the stored record of routed hosts"
            );
        }
        if self.forget_past_use(OffsetDateTime::now_utc()) || adopted {
            self.publish();
        }
    }

    /// When the first unrouted host will be past its use, as things are.
    fn next_forget_at(&self) -> Option<OffsetDateTime> {
        self.hosts
            .hosts()
            .iter()
            .filter(|(_, routing)| routing.unrouted_since.is_some())
            .filter_map(|(host, routing)| {
                past_use_from(
                    routing,
                    self.unrouted_grace,
                    own_certificate_until(&self.publisher, host),
                )
            })
            .min()
    }

    /// Forgets the hosts past their use at `now`: unrouted for the grace
    /// and with no certificate of their own served past `now` (the one
    /// stored under the host's name: a placeholder or a covering
    /// certificate is no reason to keep a host). Returns whether any was.
    fn forget_past_use(&mut self, now: OffsetDateTime) -> bool {
        let grace = self.unrouted_grace;
        let publisher = &self.publisher;
        let gone = self.hosts.forget(|host, routing| {
            // A routed host is never forgotten: no need to look it up.
            routing.unrouted_since.is_some()
                && forgettable(routing, now, grace, own_certificate_until(publisher, host))
        });
        if gone.is_empty() {
            return false;
        }
        info!(hosts = ?gone, grace = ?grace, "forgot the routed hosts unrouted past the grace whose own certificate, if any, has expired");
        true
    }

    /// Serves and shows the hosts as they now are.
    fn publish(&mut self) {
        let view = RoutedView::build(&self.hosts, &self.policy);
        let previous = self.view.borrow().clone();
        for (host, entry) in &view.hosts {
            if previous.hosts.get(host).map(|e| &e.plan) != Some(&entry.plan) {
                match &entry.plan {
                    HostPlan::Refused(refusal) => {
                        warn!(%host, reason = %refusal, services = ?entry.routing.services, "routed host refused; served a placeholder");
                    }
                    HostPlan::Covered { by } => {
                        info!(%host, certificate = %by, "routed host covered by a configured certificate");
                    }
                    HostPlan::Order { .. } => info!(%host, "routed host gets its own certificate"),
                }
            }
        }
        let (plans, reasons) = view.counts();
        self.metrics.set_routed_hosts(&plans, &reasons);
        if let Err(error) = self.publisher.set_routed(view.secrets()) {
            error!(%error, "cannot serve the routed hosts' secrets");
        }
        self.view.send_replace(Arc::new(view));
    }
}

/// When the certificate `publisher` serves under `host`'s own name expires.
fn own_certificate_until(publisher: &SecretPublisher, host: &str) -> Option<OffsetDateTime> {
    let name = SecretName::new(host.to_owned()).ok()?;
    Some(publisher.current(&name)?.metadata().not_after)
}

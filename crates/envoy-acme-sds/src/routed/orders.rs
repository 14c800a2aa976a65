//! The lock holder's half: one [`CertManager`] per routed host that gets
//! its own certificate, started when the host appears, stopped once it has
//! been unrouted for the grace. Each host's manager is its own task, so
//! one host's backoff or failure budget never delays another's; a host has
//! at most one manager, so its orders are never duplicated.
//!
//! Guard rails, all per host or shared as the CA keeps them: the
//! allow-list (in [`super::policy`]), the hourly cap shared by every routed
//! host ([`HourlyOrderCap`]), the account's budget shared with the
//! configured certificates, and each host's own order history (5 failed
//! orders an hour, as Let's Encrypt's failed-validation limit) with the
//! manager's backoff.
//!
//! The holder also keeps the record of routed hosts and their unrouted
//! clock in the store ([`RoutedOrdering::keep_record`]): read at the start
//! of each term and handed to the follower, written (fenced) whenever the
//! hosts change, so the next holder, or this one restarted, continues it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::RoutedView;
use super::catalog::next_record;
use super::follower::RecordSender;
use super::policy::HostPlan;
use crate::acme::AcmeClient;
use crate::challenge::ChallengeSolver;
use crate::keys::KeyType;
use crate::manager::{CertManager, CertificateSpec, RenewalObserver};
use crate::metrics::ServiceMetrics;
use crate::policy::{AccountOrders, HourlyOrderCap};
use crate::store::layout::ROUTED_HOSTS_ITEM;
use crate::store::{CertificateStore, RoutedHostsRecord, StoreError};

/// How long to wait before reading the record, or writing it, again after
/// the store failed.
const RECORD_RETRY: Duration = Duration::from_secs(2);

/// Gives the solver a routed host is proven with.
pub trait SolverSource: Send + Sync + std::fmt::Debug {
    /// The solver for a host under `zone` (its allowed suffix).
    fn solver_for(&self, zone: &str) -> Result<Arc<dyn ChallengeSolver>, String>;
}

/// What the lock holder needs to order for routed hosts.
#[derive(Debug, Clone)]
pub struct RoutedOrdering {
    pub view: watch::Receiver<Arc<RoutedView>>,
    pub solvers: Arc<dyn SolverSource>,
    pub orders_per_hour: u32,
    pub unrouted_grace: Duration,
    pub key_type: KeyType,
    pub profile: Option<String>,
    /// The follower's, to hand it the record read at a term's start.
    pub records: RecordSender,
    pub metrics: ServiceMetrics,
}

/// What the managers share with the rest of the renewer.
#[derive(Debug, Clone)]
pub struct Shared {
    pub acme: Arc<AcmeClient>,
    pub store: Arc<dyn CertificateStore>,
    pub account_orders: Arc<Mutex<AccountOrders>>,
    pub observer: Option<Arc<dyn RenewalObserver>>,
    pub wake: watch::Receiver<()>,
}

struct Running {
    stop: CancellationToken,
}

impl RoutedOrdering {
    /// Keeps the record of routed hosts in `store` for one lock term:
    /// reads it (again, until the store answers: a failing read is no
    /// reason to replace the record with this replica's own clock), hands
    /// it to the follower, then writes it whenever the hosts change. An
    /// unreadable record is reported and left as it is, never replaced:
    /// this term's clock is the replica's own, as without a record.
    pub async fn keep_record(&self, store: Arc<dyn CertificateStore>, until: CancellationToken) {
        let record = loop {
            let loaded = tokio::select! {
                () = until.cancelled() => return,
                loaded = store.load_routed_hosts(OffsetDateTime::now_utc()) => loaded,
            };
            match loaded {
                Ok(loaded) => {
                    for problem in &loaded.problems {
                        error!(%problem, "stored record of routed hosts");
                    }
                    break Some(loaded.hosts);
                }
                Err(error @ (StoreError::Corrupt { .. } | StoreError::Encryption { .. })) => {
                    error!(item = ROUTED_HOSTS_ITEM, %error, "the stored record of routed hosts is unusable and left as it is; the hosts this replica sees unrouted are unrouted from now, and the record is not written this term (remove it to start a new one)");
                    break None;
                }
                Err(error) => {
                    warn!(%error, retry_in = ?RECORD_RETRY, "cannot read the record of routed hosts; nothing is written until it is read");
                    tokio::select! {
                        () = until.cancelled() => return,
                        () = tokio::time::sleep(RECORD_RETRY) => {}
                    }
                }
            }
        };
        let Some(mut record) = record else {
            return;
        };
        info!(
            hosts = record.len(),
            unrouted = record
                .values()
                .filter(|h| h.unrouted_since.is_some())
                .count(),
            "read the record of routed hosts"
        );
        if self.records.send(record.clone()).is_err() {
            return;
        }
        let mut view = self.view.clone();
        loop {
            let hosts: RoutedHostsRecord = view
                .borrow_and_update()
                .hosts
                .iter()
                .map(|(host, entry)| (host.clone(), entry.routing.clone()))
                .collect();
            // The follower forgetting a host changes the view, so the
            // record shrinks with it here, with no clock of its own.
            let next = next_record(
                &record,
                &hosts,
                OffsetDateTime::now_utc(),
                self.unrouted_grace,
            );
            let mut failed = false;
            if next != record {
                match store.save_routed_hosts(&next).await {
                    Ok(()) => {
                        debug!(hosts = next.len(), "stored the record of routed hosts");
                        record = next;
                    }
                    Err(error) => {
                        warn!(%error, retry_in = ?RECORD_RETRY, "cannot store the record of routed hosts");
                        failed = true;
                    }
                }
            }
            tokio::select! {
                () = until.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RECORD_RETRY), if failed => {}
            }
        }
    }

    /// Keeps one manager per host to order until `until` (the end of the
    /// lock term): every manager stops with it.
    pub async fn run(&self, shared: Shared, until: CancellationToken) {
        // Per term: a new holder starts counting afresh, as the account's
        // budget does; the CA's own limits answer past that.
        let cap = Arc::new(Mutex::new(HourlyOrderCap::new(self.orders_per_hour)));
        let mut view = self.view.clone();
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        // Stops every manager here, and only them, when this loop ends.
        let managers = until.child_token();
        loop {
            let current = view.borrow_and_update().clone();
            let now = OffsetDateTime::now_utc();
            let (wanted, next_stop) = to_manage(&current, now, self.unrouted_grace);
            for (host, (spec, zone)) in &wanted {
                if running.contains_key(*host) {
                    continue;
                }
                let solver = match self.solvers.solver_for(zone) {
                    Ok(solver) => solver,
                    Err(error) => {
                        error!(%host, %zone, %error, "no challenge solver for the routed host");
                        continue;
                    }
                };
                let mut spec = (*spec).clone();
                spec.key_type = self.key_type;
                spec.profile.clone_from(&self.profile);
                let mut manager = CertManager::new(
                    spec,
                    Arc::clone(&shared.acme),
                    solver,
                    Arc::clone(&shared.store),
                )
                .with_wake(shared.wake.clone())
                .with_account_orders(Arc::clone(&shared.account_orders))
                .with_hourly_cap(Arc::clone(&cap));
                if let Some(observer) = &shared.observer {
                    manager = manager.with_observer(Arc::clone(observer));
                }
                let stop = managers.child_token();
                info!(%host, "managing the routed host's certificate");
                tasks.spawn(manager.run(stop.clone()));
                running.insert((*host).to_owned(), Running { stop });
            }
            running.retain(|host, run| {
                let keep = wanted.contains_key(host.as_str());
                if !keep {
                    // Its certificate stays stored and served until it
                    // expires; only renewal stops.
                    info!(%host, "routed host unrouted past the grace (or no longer ordered); renewal stops");
                    run.stop.cancel();
                }
                keep
            });
            self.metrics.set_routed_renewing(running.len());
            let until_next_stop = next_stop.map_or(Duration::from_secs(3600), |at| {
                Duration::try_from(at - now).unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                () = until.cancelled() => break,
                changed = view.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(until_next_stop.min(Duration::from_secs(3600))) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        managers.cancel();
        self.metrics.set_routed_renewing(0);
        while tasks.join_next().await.is_some() {}
    }
}

/// The hosts whose certificate the lock holder keeps at `now`, each with
/// its spec and zone: those to order, routed or unrouted for less than
/// `grace`; and when the next of them leaves the grace.
pub fn to_manage(
    view: &RoutedView,
    now: OffsetDateTime,
    grace: Duration,
) -> (
    BTreeMap<&str, (&CertificateSpec, &str)>,
    Option<OffsetDateTime>,
) {
    let mut wanted = BTreeMap::new();
    let mut next_stop: Option<OffsetDateTime> = None;
    for (host, entry) in &view.hosts {
        let HostPlan::Order { spec, zone } = &entry.plan else {
            continue;
        };
        if !entry.renews_at(now, grace) {
            continue;
        }
        if let Some(stop) = entry.renewal_stops_at(grace) {
            next_stop = Some(next_stop.map_or(stop, |s| s.min(stop)));
        }
        wanted.insert(host.as_str(), (spec, zone.as_str()));
    }
    (wanted, next_stop)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::routed::RoutedHost;
    use crate::routed::catalog::HostRouting;
    use crate::routed::policy::{AllowedSuffix, RoutedPolicy};

    #[test]
    fn renewal_stops_only_after_the_grace_and_only_ordered_hosts_are_managed() {
        let policy = RoutedPolicy {
            allowed: vec![AllowedSuffix::parse("demo.test").expect("suffix")],
            configured: Vec::new(),
            http01: true,
        };
        let start = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        let grace = Duration::from_secs(3600);
        let host = |name: &str, unrouted_since: Option<OffsetDateTime>| {
            (
                name.to_owned(),
                RoutedHost {
                    routing: HostRouting {
                        services: BTreeSet::from(["svc".to_owned()]),
                        unrouted_since,
                    },
                    plan: policy.plan(name),
                },
            )
        };
        let view = RoutedView {
            hosts: BTreeMap::from([
                host("routed.demo.test", None),
                host(
                    "recent.demo.test",
                    Some(start - time::Duration::minutes(10)),
                ),
                host("old.demo.test", Some(start - time::Duration::hours(2))),
                host("evil.other.test", None),
            ]),
            read: true,
        };
        let (wanted, next_stop) = to_manage(&view, start, grace);
        let names: Vec<&str> = wanted.keys().copied().collect();
        assert_eq!(names, vec!["recent.demo.test", "routed.demo.test"]);
        assert_eq!(wanted["routed.demo.test"].1, "demo.test");
        assert_eq!(
            next_stop,
            Some(start - time::Duration::minutes(10) + grace),
            "woken when the recent one leaves its grace"
        );
        let (wanted, next_stop) = to_manage(&view, start + time::Duration::hours(1), grace);
        let names: Vec<&str> = wanted.keys().copied().collect();
        assert_eq!(names, vec!["routed.demo.test"]);
        assert_eq!(next_stop, None);
    }
}

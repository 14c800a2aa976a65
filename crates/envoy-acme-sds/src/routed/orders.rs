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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::RoutedView;
use super::policy::HostPlan;
use crate::acme::AcmeClient;
use crate::challenge::ChallengeSolver;
use crate::keys::KeyType;
use crate::manager::{CertManager, CertificateSpec, RenewalObserver};
use crate::policy::{AccountOrders, HourlyOrderCap};
use crate::store::CertificateStore;

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

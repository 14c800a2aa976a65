//! Runs one [`CertManager`] per certificate while this replica may renew:
//! for good with disk storage, for the length of each [`Term`] with Consul.
//!
//! Only the lock holder runs managers, since anyone running them places
//! orders. When a term ends its token is cancelled and every manager stops
//! at once, mid-order if need be (an order left pending at the CA expires
//! there; its writes would be fenced anyway).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acme::{AcmeClient, AcmeConfig};
use crate::challenge::ChallengeSolver;
use crate::election::{Leadership, Term};
use crate::manager::{CertManager, CertificateSpec, RenewalObserver};
use crate::metrics::ServiceMetrics;
use crate::routed::orders::{RoutedOrdering, Shared};
use crate::store::consul::ConsulStore;
use crate::store::{CertificateStore, StoreError};

/// Delay between attempts to reach the CA for the account.
const ACCOUNT_RETRY: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
];

/// Pause before another resealing pass when one left stored secrets behind.
const RESEAL_RETRY: Duration = Duration::from_secs(30);

/// Pause before announcing writes without version entries again, when Consul failed.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(30);

/// A certificate to keep valid and how its names are proven.
#[derive(Debug, Clone)]
pub struct ManagedCertificate {
    pub spec: CertificateSpec,
    pub solver: Arc<dyn ChallengeSolver>,
}

/// How this replica's ACME account stands, for the status page: while it
/// cannot be reached nothing is ordered or renewed, which a person must see
/// without reading the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AccountStatus {
    /// Not asked for: this replica has not held the renewal lock yet.
    #[default]
    NotConnected,
    Ready {
        directory: String,
    },
    Unreachable {
        error: String,
        #[serde(with = "time::serde::rfc3339")]
        retry_at: OffsetDateTime,
    },
}

#[derive(Debug, Clone)]
pub struct Renewer {
    certificates: Vec<ManagedCertificate>,
    acme: AcmeConfig,
    wake: watch::Receiver<()>,
    account: Arc<watch::Sender<AccountStatus>>,
    observer: Option<Arc<dyn RenewalObserver>>,
    /// Orders for routed hosts too (`--follow-routes`).
    routed: Option<RoutedOrdering>,
}

impl Renewer {
    /// `wake` makes every manager reconcile at once (renewal requests, SIGHUP).
    pub fn new(
        certificates: Vec<ManagedCertificate>,
        acme: AcmeConfig,
        wake: watch::Receiver<()>,
    ) -> Self {
        Self {
            certificates,
            acme,
            wake,
            account: Arc::new(watch::Sender::new(AccountStatus::default())),
            observer: None,
            routed: None,
        }
    }

    /// How the ACME account stands, as it changes.
    pub fn account_status(&self) -> watch::Receiver<AccountStatus> {
        self.account.subscribe()
    }

    /// Also keeps a certificate for every routed host that gets its own.
    #[must_use]
    pub fn with_routed(mut self, routed: RoutedOrdering) -> Self {
        self.routed = Some(routed);
        self
    }

    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn RenewalObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Connects the ACME account through `store`, then runs the managers
    /// against it until `until` is cancelled. The renewer only stores what
    /// it obtains: putting it in front of Envoy is the storage mode's concern
    /// (see [`crate::storage_mode`]).
    pub async fn run(&self, store: Arc<dyn CertificateStore>, until: CancellationToken) {
        let mut tasks = JoinSet::new();
        // The record of routed hosts needs no CA: kept while the account
        // cannot be reached too.
        if let Some(routed) = self.routed.clone() {
            let (store, until) = (Arc::clone(&store), until.clone());
            tasks.spawn(async move { routed.keep_record(store, until).await });
        }
        let Some(acme) = self.connect(store.as_ref(), &until).await else {
            while tasks.join_next().await.is_some() {}
            return;
        };
        // One account, one budget of new orders for all its certificates.
        let account_orders = Arc::default();
        for certificate in &self.certificates {
            let mut manager = CertManager::new(
                certificate.spec.clone(),
                Arc::clone(&acme),
                Arc::clone(&certificate.solver),
                Arc::clone(&store),
            )
            .with_wake(self.wake.clone())
            .with_account_orders(Arc::clone(&account_orders));
            if let Some(observer) = &self.observer {
                manager = manager.with_observer(Arc::clone(observer));
            }
            tasks.spawn(manager.run(until.clone()));
        }
        if let Some(routed) = self.routed.clone() {
            let shared = Shared {
                acme: Arc::clone(&acme),
                store: Arc::clone(&store),
                account_orders: Arc::clone(&account_orders),
                observer: self.observer.clone(),
                wake: self.wake.clone(),
            };
            let until = until.clone();
            tasks.spawn(async move { routed.run(shared, until).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The ACME account, retried with backoff until `until`.
    async fn connect(
        &self,
        store: &dyn CertificateStore,
        until: &CancellationToken,
    ) -> Option<Arc<AcmeClient>> {
        let mut attempt = 0;
        loop {
            let connected = tokio::select! {
                () = until.cancelled() => return None,
                connected = AcmeClient::connect(self.acme.clone(), store) => connected,
            };
            match connected {
                Ok(client) => {
                    info!(
                        account = client.account_id(),
                        directory = client.directory_url(),
                        "ACME account ready"
                    );
                    self.account.send_replace(AccountStatus::Ready {
                        directory: client.directory_url().to_owned(),
                    });
                    return Some(Arc::new(client));
                }
                Err(error) => {
                    let delay = ACCOUNT_RETRY[attempt.min(ACCOUNT_RETRY.len() - 1)];
                    attempt += 1;
                    error!(%error, retry_in = ?delay, "cannot reach the ACME account; nothing is renewed meanwhile");
                    self.account.send_replace(AccountStatus::Unreachable {
                        error: error.to_string(),
                        retry_at: OffsetDateTime::now_utc() + delay,
                    });
                    tokio::select! {
                        () = until.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Runs the managers for each term this replica holds the lock in,
    /// against `store` fenced with the term's session, until `shutdown`.
    pub async fn run_while_leading(
        &self,
        store: ConsulStore,
        mut leadership: watch::Receiver<Leadership>,
        metrics: ServiceMetrics,
        shutdown: CancellationToken,
    ) {
        loop {
            let term: Term = loop {
                let current = leadership.borrow_and_update().clone();
                if let Leadership::Leader(term) = current
                    && !term.ended.is_cancelled()
                {
                    break term;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = leadership.changed() => if changed.is_err() { return },
                }
            };
            metrics.set_lock_holder(true);
            let fenced_store = store.fenced(term.session.clone());
            let fenced: Arc<dyn CertificateStore> = Arc::new(fenced_store.clone());
            let until = term.ended.clone();
            tokio::select! {
                ((), (), ()) = async {
                    tokio::join!(
                        self.run(fenced, until.clone()),
                        reseal_stored_keys(&fenced_store, &metrics, &until),
                        announce_unversioned_writes(&fenced_store, &until),
                    )
                } => {}
                () = shutdown.cancelled() => until.cancel(),
            }
            metrics.set_lock_holder(false);
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// Has the other replicas read what was stored without its version entry
/// (by a version that wrote none, or by hand): once per term, again every
/// [`ANNOUNCE_RETRY`] while Consul fails.
async fn announce_unversioned_writes(store: &ConsulStore, until: &CancellationToken) {
    loop {
        let pass = tokio::select! {
            () = until.cancelled() => return,
            pass = store.announce_unversioned_writes() => pass,
        };
        match pass {
            Ok(0) => return,
            Ok(announced) => {
                info!(
                    announced,
                    "stored items written without their version entry announced to the other replicas"
                );
                return;
            }
            // The lock is gone; the next holder announces them.
            Err(StoreError::Fenced { .. }) => return,
            Err(error) => {
                warn!(%error, retry_in = ?ANNOUNCE_RETRY, "cannot announce stored items written without their version entry");
            }
        }
        tokio::select! {
            () = until.cancelled() => return,
            () = tokio::time::sleep(ANNOUNCE_RETRY) => {}
        }
    }
}

/// Seals with the current key whatever stored secret is in plaintext or
/// sealed with the previous key: once per term (the lock holder's writes are
/// the fenced ones), again every [`RESEAL_RETRY`] while items are left.
async fn reseal_stored_keys(
    store: &ConsulStore,
    metrics: &ServiceMetrics,
    until: &CancellationToken,
) {
    if !store.codec().seals() {
        return;
    }
    loop {
        let pass = tokio::select! {
            () = until.cancelled() => return,
            pass = store.reseal_keys() => pass,
        };
        match pass {
            Ok(report) => {
                metrics.keys_resealed(report.resealed);
                info!(
                    resealed = report.resealed,
                    left = report.failed,
                    "stored private keys resealed with the current encryption key"
                );
                if report.failed == 0 {
                    return;
                }
            }
            // The lock is gone; the next holder reseals.
            Err(StoreError::Fenced { .. }) => return,
            Err(error) => {
                warn!(%error, retry_in = ?RESEAL_RETRY, "cannot reseal the stored private keys");
            }
        }
        tokio::select! {
            () = until.cancelled() => return,
            () = tokio::time::sleep(RESEAL_RETRY) => {}
        }
    }
}

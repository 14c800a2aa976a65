//! One certificate's life: load what is stored, decide, order, check, store,
//! publish. The SDS server subscribes to the published bundle.
//!
//! Invariants:
//! - a bundle is published only after it was checked (key matches, every
//!   configured name covered) and stored;
//! - a failure never touches what is stored or published: the last good
//!   certificate stays in service while retries back off;
//! - an order is recorded before it is placed, so the weekly budget holds
//!   across crashes and replicas.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acme::{AcmeClient, AcmeError, OrderRequest};
use crate::certificate::{CertificateBundle, CertificateError, CertificateMetadata, IssuanceFacts};
use crate::challenge::ChallengeSolver;
use crate::domain::NameSet;
use crate::keys::KeyType;
use crate::policy::{
    self, AccountOrders, AriWindow, HourlyOrderCap, OrderBudgetExhausted, OrderHistory,
    OrderOutcome, RenewReason, RenewalDecision, failure_delay, next_ari_check,
};
use crate::store::{CertificateStore, InvalidSecretName, SecretName, StoreError};
use crate::timings::{IssuanceStep, IssuanceTimings, Stopwatch};

/// After a failed ARI fetch, the lifetime rule applies and ARI is retried after this.
const ARI_RETRY: Duration = Duration::from_secs(3600);
/// The longest sleep between reconciliations, so clock jumps (suspend, NTP
/// steps) are noticed within the hour.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What one certificate should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// Stored and served (as the SDS secret) under this name.
    pub secret_name: SecretName,
    pub names: NameSet,
    pub key_type: KeyType,
    pub profile: Option<String>,
}

impl CertificateSpec {
    /// A spec for `names`, named after the first name, with an ECDSA P-256 key.
    pub fn new(names: NameSet) -> Result<Self, InvalidSecretName> {
        Ok(Self {
            secret_name: SecretName::new(names.primary().as_str())?,
            names,
            key_type: KeyType::default(),
            profile: None,
        })
    }

    /// Whether the stored certificate was ordered as this spec says. Metadata
    /// without a recorded key type (written by hand) is taken as matching.
    fn is_met_by(&self, metadata: &CertificateMetadata) -> bool {
        let mut wanted: Vec<_> = self.names.iter().cloned().collect();
        wanted.sort();
        wanted == metadata.names
            && metadata.key_type.is_none_or(|k| k == self.key_type)
            && metadata.profile == self.profile
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("stored certificate: {0}")]
    Load(#[source] StoreError),
    #[error(transparent)]
    Budget(#[from] OrderBudgetExhausted),
    #[error("ordering: {0}")]
    Acme(#[from] AcmeError),
    #[error("the CA's certificate is unusable: {0}")]
    Invalid(#[from] CertificateError),
    #[error("storing: {0}")]
    Store(#[source] StoreError),
}

/// What a reconciliation did, and when the next one is due.
#[derive(Debug)]
pub enum Outcome {
    /// A new certificate was stored and published.
    Issued {
        serial: String,
        next_check: OffsetDateTime,
        /// Where the issuance's time went.
        timings: IssuanceTimings,
    },
    /// The current certificate stays until `renew_at` (by the lifetime rule
    /// or the CA's ARI window); `next_check` may come sooner, to ask the CA
    /// for its window again.
    Unchanged {
        renew_at: OffsetDateTime,
        next_check: OffsetDateTime,
    },
    /// Nothing changed; retry at `retry_at`.
    Failed {
        error: ManagerError,
        consecutive_failures: u32,
        retry_at: OffsetDateTime,
    },
}

impl Outcome {
    pub fn next_attempt(&self) -> OffsetDateTime {
        match self {
            Self::Issued { next_check, .. } | Self::Unchanged { next_check, .. } => *next_check,
            Self::Failed { retry_at, .. } => *retry_at,
        }
    }
}

/// What is known about the CA's renewal window for the current certificate.
#[derive(Debug, Clone)]
enum AriState {
    /// Not asked yet for this certificate.
    Unknown,
    /// The CA has no ARI endpoint: the lifetime rule applies for good.
    Unsupported,
    Known {
        serial: String,
        window: Option<AriWindow>,
        renew_at: Option<OffsetDateTime>,
        next_check: OffsetDateTime,
    },
}

/// An order placed and recorded in the history, whose outcome is still to
/// be written there.
#[derive(Debug)]
struct Settlement {
    history: OrderHistory,
    names_key: String,
}

/// Told the outcome of every reconciliation [`CertManager::run`] makes
/// (metrics, status pages).
pub trait RenewalObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, name: &SecretName, outcome: &Outcome);
}

/// Keeps one certificate valid.
#[derive(Debug)]
pub struct CertManager {
    spec: CertificateSpec,
    acme: Arc<AcmeClient>,
    solver: Arc<dyn ChallengeSolver>,
    store: Arc<dyn CertificateStore>,
    published: watch::Sender<Option<Arc<CertificateBundle>>>,
    consecutive_failures: u32,
    ari: AriState,
    wake: Option<watch::Receiver<()>>,
    observer: Option<Arc<dyn RenewalObserver>>,
    /// New orders of the ACME account, shared with the other managers.
    account_orders: Arc<std::sync::Mutex<AccountOrders>>,
    /// `--orders-per-hour`, for routed hosts' managers only.
    hourly_cap: Option<Arc<std::sync::Mutex<HourlyOrderCap>>>,
}

impl CertManager {
    pub fn new(
        spec: CertificateSpec,
        acme: Arc<AcmeClient>,
        solver: Arc<dyn ChallengeSolver>,
        store: Arc<dyn CertificateStore>,
    ) -> Self {
        Self {
            spec,
            acme,
            solver,
            store,
            published: watch::Sender::new(None),
            consecutive_failures: 0,
            ari: AriState::Unknown,
            wake: None,
            observer: None,
            account_orders: Arc::default(),
            hourly_cap: None,
        }
    }

    /// Counts new orders against `cap` too (`--orders-per-hour`), shared by
    /// the managers of routed hosts.
    #[must_use]
    pub fn with_hourly_cap(mut self, cap: Arc<std::sync::Mutex<HourlyOrderCap>>) -> Self {
        self.hourly_cap = Some(cap);
        self
    }

    /// Counts new orders against `orders`, the account-wide budget shared
    /// by every manager ordering with the same ACME account.
    #[must_use]
    pub fn with_account_orders(mut self, orders: Arc<std::sync::Mutex<AccountOrders>>) -> Self {
        self.account_orders = orders;
        self
    }

    /// Reconcile at once, instead of sleeping on, whenever `wake` is
    /// marked changed: an operator's renewal request, a SIGHUP.
    #[must_use]
    pub fn with_wake(mut self, mut wake: watch::Receiver<()>) -> Self {
        wake.mark_unchanged();
        self.wake = Some(wake);
        self
    }

    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn RenewalObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn spec(&self) -> &CertificateSpec {
        &self.spec
    }

    /// The certificate in service: `None` until one was loaded or issued.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<CertificateBundle>>> {
        self.published.subscribe()
    }

    pub fn current(&self) -> Option<Arc<CertificateBundle>> {
        self.published.borrow().clone()
    }

    /// Reconciles until `shutdown`, sleeping between passes as the outcome says.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.reconcile(OffsetDateTime::now_utc()) => outcome,
            };
            if let Some(observer) = &self.observer {
                observer.observe(&self.spec.secret_name, &outcome);
            }
            let wait = duration_until(outcome.next_attempt(), OffsetDateTime::now_utc());
            let woken = async {
                match self.wake.as_mut() {
                    // A dropped sender wakes nobody ever again.
                    Some(wake) => {
                        if wake.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
                () = woken => {}
            }
        }
    }

    /// One pass: refresh from storage, ask ARI if due, renew if needed.
    pub async fn reconcile(&mut self, now: OffsetDateTime) -> Outcome {
        let name = self.spec.secret_name.clone();
        match self.store.load_certificate(&name).await {
            Ok(Some(bundle)) => self.publish(bundle),
            Ok(None) => {}
            // The operator must fix the key: ordering would overwrite the
            // item and lose the certificate it holds.
            Err(error @ StoreError::Encryption { .. }) => {
                return self.fail(now, ManagerError::Load(error), None);
            }
            // The read itself failed (Consul answered 500 or not at all, the
            // disk refused): what is stored is unknown, not absent. Deciding
            // "missing" here would order a replacement for a valid
            // certificate and spend the order budget, exactly when storage is
            // unwell; read again after the backoff instead.
            Err(
                error @ (StoreError::Consul { .. } | StoreError::Io { .. } | StoreError::Task(_)),
            ) => {
                return self.fail(now, ManagerError::Load(error), None);
            }
            Err(error) => {
                error!(secret = %name, %error, "stored certificate unusable; keeping the last good one");
            }
        }

        let current = self.current();
        if let Some(bundle) = &current {
            self.refresh_ari(bundle, now).await;
        }
        let ari_time = match &self.ari {
            AriState::Known { renew_at, .. } => *renew_at,
            _ => None,
        };
        let request = match self.store.load_renewal_request(&name).await {
            Ok(at) => at,
            Err(error) => {
                warn!(secret = %name, %error, "renewal request unreadable; ignoring it");
                None
            }
        };
        let decision = match current.as_deref() {
            Some(bundle) if policy::renewal_requested(bundle.metadata(), request.as_ref()) => {
                RenewalDecision::RenewNow(RenewReason::Requested)
            }
            _ => policy::decide(
                current.as_deref().map(CertificateBundle::metadata),
                current
                    .as_deref()
                    .is_some_and(|b| self.spec.is_met_by(b.metadata())),
                ari_time,
                now,
            ),
        };
        match decision {
            RenewalDecision::RenewAt(at) => {
                self.consecutive_failures = 0;
                Outcome::Unchanged {
                    renew_at: at,
                    next_check: self.with_ari_check(at, now),
                }
            }
            RenewalDecision::RenewNow(reason) => self.renew(reason, current, now).await,
        }
    }

    async fn renew(
        &mut self,
        reason: RenewReason,
        current: Option<Arc<CertificateBundle>>,
        now: OffsetDateTime,
    ) -> Outcome {
        info!(secret = %self.spec.secret_name, ?reason, "ordering a certificate");
        let mut watch = Stopwatch::start();
        match self.order(current.as_deref(), now, &mut watch).await {
            Ok((bundle, mut settlement)) => {
                let serial = bundle.metadata().serial.clone();
                let next_check = policy::default_renewal_time(bundle.metadata());
                info!(
                    secret = %self.spec.secret_name,
                    serial,
                    not_after = %bundle.metadata().not_after,
                    "certificate stored and published"
                );
                self.publish(bundle);
                watch.lap(IssuanceStep::Published);
                // After publishing: the certificate is in service whatever
                // this write does (left unwritten, the order counts as
                // issued, the safe side).
                self.settle_order(&mut settlement, OrderOutcome::Issued)
                    .await;
                watch.lap(IssuanceStep::HistorySettled);
                self.consecutive_failures = 0;
                if !matches!(self.ari, AriState::Unsupported) {
                    self.ari = AriState::Unknown;
                }
                let timings = watch.finish();
                info!(
                    secret = %self.spec.secret_name,
                    total_ms = timings.total().as_millis(),
                    steps = %timings,
                    "issuance timings"
                );
                Outcome::Issued {
                    serial,
                    next_check: self.with_ari_check(next_check, now),
                    timings,
                }
            }
            Err(error) => {
                let not_before = match &error {
                    ManagerError::Budget(budget) => Some(budget.next_allowed),
                    _ => None,
                };
                self.fail(now, error, not_before)
            }
        }
    }

    /// Orders, checks and stores a certificate; returns it with the order's
    /// history entry, to be settled once the certificate is published.
    async fn order(
        &mut self,
        current: Option<&CertificateBundle>,
        now: OffsetDateTime,
        watch: &mut Stopwatch,
    ) -> Result<(CertificateBundle, Settlement), ManagerError> {
        let name = &self.spec.secret_name;
        let names_key = self.spec.names.canonical_key();
        let mut history = self
            .store
            .load_order_history(name)
            .await
            .map_err(ManagerError::Store)?;
        history.check(&names_key, now)?;
        {
            // Checked and recorded under one lock: two managers cannot both
            // take the account's last slot.
            let mut account = self
                .account_orders
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            account.check(now)?;
            // The cap's lock is taken inside the account's, always in this
            // order, so no two managers can deadlock on them.
            let mut cap = self
                .hourly_cap
                .as_ref()
                .map(|cap| cap.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(cap) = cap.as_mut() {
                cap.check(now)?;
                cap.record(now);
            }
            account.record(now);
        }
        history.record(&names_key, now);
        self.store
            .save_order_history(name, &history)
            .await
            .map_err(ManagerError::Store)?;
        watch.lap(IssuanceStep::HistoryRecorded);
        let mut settlement = Settlement { history, names_key };

        let replaces = match self.ari {
            AriState::Known { .. } => current.and_then(CertificateBundle::ari_identifier),
            _ => None,
        };
        let request = OrderRequest {
            names: &self.spec.names,
            key_type: self.spec.key_type,
            profile: self.spec.profile.as_deref(),
            replaces,
        };
        let issued = match self.acme.issue(&request, &self.solver).await {
            Ok(issued) => issued,
            Err(error) => {
                // No certificate exists: this order counts against the
                // failure budget, not the duplicate-certificate one.
                self.settle_order(&mut settlement, OrderOutcome::Failed)
                    .await;
                return Err(error.into());
            }
        };
        watch.append(issued.timings);
        let bundle = CertificateBundle::from_issued(
            issued.chain_pem,
            issued.key_pem,
            OffsetDateTime::now_utc(),
            IssuanceFacts {
                key_type: Some(self.spec.key_type),
                profile: self.spec.profile.clone(),
            },
        )?;
        bundle.ensure_covers(&self.spec.names)?;
        watch.lap(IssuanceStep::Checked);
        self.store
            .save_certificate(name, &bundle)
            .await
            .map_err(ManagerError::Store)?;
        watch.lap(IssuanceStep::Stored);
        Ok((bundle, settlement))
    }

    /// Records how the order ended. Best effort: left unsettled, the order
    /// counts as issued, the safe side.
    async fn settle_order(&self, settlement: &mut Settlement, outcome: OrderOutcome) {
        let name = &self.spec.secret_name;
        settlement.history.settle(&settlement.names_key, outcome);
        if let Err(error) = self
            .store
            .save_order_history(name, &settlement.history)
            .await
        {
            warn!(secret = %name, %error, "cannot record the order's outcome");
        }
    }

    /// Fetches the CA's renewal window when due (twice a day) and picks the
    /// renewal time in it once per distinct window.
    async fn refresh_ari(&mut self, bundle: &CertificateBundle, now: OffsetDateTime) {
        let serial = &bundle.metadata().serial;
        let (previous_window, previous_pick) = match &self.ari {
            AriState::Unsupported => return,
            AriState::Known {
                serial: known,
                window,
                renew_at,
                next_check,
            } if known == serial => {
                if *next_check > now {
                    return;
                }
                (*window, *renew_at)
            }
            _ => (None, None),
        };
        let Some(identifier) = bundle.ari_identifier() else {
            return;
        };
        match self.acme.renewal_info(&identifier).await {
            Ok(Some(info)) => {
                let renew_at = if previous_window == Some(info.window) {
                    previous_pick
                } else {
                    Some(info.window.pick(rand::rng().random::<f64>()))
                };
                info!(
                    secret = %self.spec.secret_name,
                    window_start = %info.window.start,
                    window_end = %info.window.end,
                    renew_at = ?renew_at,
                    "ARI renewal window"
                );
                self.ari = AriState::Known {
                    serial: serial.clone(),
                    window: Some(info.window),
                    renew_at,
                    next_check: now + next_ari_check(Some(info.retry_after)),
                };
            }
            Ok(None) => self.ari = AriState::Unsupported,
            Err(error) => {
                warn!(secret = %self.spec.secret_name, %error, "ARI check failed; using the lifetime rule");
                self.ari = AriState::Known {
                    serial: serial.clone(),
                    window: previous_window,
                    renew_at: previous_pick,
                    next_check: now + ARI_RETRY,
                };
            }
        }
    }

    /// `at`, or the next ARI check if that comes first. A certificate whose
    /// window was not fetched yet is looked at within twice a day.
    fn with_ari_check(&self, at: OffsetDateTime, now: OffsetDateTime) -> OffsetDateTime {
        match &self.ari {
            AriState::Known { next_check, .. } => at.min(*next_check),
            AriState::Unknown => at.min(now + policy::ARI_CHECK_INTERVAL),
            AriState::Unsupported => at,
        }
    }

    fn fail(
        &mut self,
        now: OffsetDateTime,
        error: ManagerError,
        not_before: Option<OffsetDateTime>,
    ) -> Outcome {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        // Only the hint the CA gave with this failure: one given with another
        // certificate's call is that certificate's.
        let retry_after = match &error {
            ManagerError::Acme(acme_error) => acme_error.retry_after(),
            _ => None,
        };
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let delay = failure_delay(self.consecutive_failures, jitter, retry_after);
        let mut retry_at = now + delay;
        if let Some(not_before) = not_before {
            retry_at = retry_at.max(not_before);
        }
        error!(
            secret = %self.spec.secret_name,
            error = %error,
            consecutive_failures = self.consecutive_failures,
            retry_at = %retry_at,
            "certificate renewal failed; the current certificate stays in service"
        );
        Outcome::Failed {
            error,
            consecutive_failures: self.consecutive_failures,
            retry_at,
        }
    }

    fn publish(&self, bundle: CertificateBundle) {
        let changed = self
            .published
            .borrow()
            .as_ref()
            .is_none_or(|current| current.metadata() != bundle.metadata());
        if changed {
            self.published.send_replace(Some(Arc::new(bundle)));
        }
    }
}

fn duration_until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The binary spawns one manager per certificate on a multi-threaded
    /// runtime: its futures must be `Send`. Checked at compile time.
    #[allow(dead_code)]
    fn manager_futures_are_send(mut manager: CertManager) {
        assert_send(&manager.reconcile(OffsetDateTime::now_utc()));
        assert_send(&manager.run(CancellationToken::new()));
    }

    fn spec(names: &[&str]) -> CertificateSpec {
        CertificateSpec::new(NameSet::parse(names).expect("names")).expect("spec")
    }

    fn metadata(names: &[&str], key_type: Option<KeyType>) -> CertificateMetadata {
        let now = OffsetDateTime::now_utc();
        let mut names: Vec<_> = names
            .iter()
            .map(|n| crate::domain::DomainName::parse(n).expect("name"))
            .collect();
        names.sort();
        CertificateMetadata {
            names,
            not_before: now,
            not_after: now + time::Duration::days(90),
            serial: "01".to_owned(),
            issued_at: now,
            ari_cert_id: None,
            key_type,
            profile: None,
        }
    }

    #[test]
    fn secret_name_defaults_to_the_first_name() {
        let spec = spec(&["*.example.com", "example.com"]);
        assert_eq!(spec.secret_name.as_str(), "*.example.com");
        assert_eq!(spec.key_type, KeyType::EcdsaP256);
    }

    #[test]
    fn stored_certificate_must_match_names_key_type_and_profile() {
        let spec = spec(&["example.com", "*.example.com"]);
        let exact = metadata(&["*.example.com", "example.com"], Some(KeyType::EcdsaP256));
        assert!(spec.is_met_by(&exact));
        assert!(spec.is_met_by(&metadata(&["example.com", "*.example.com"], None)));
        assert!(!spec.is_met_by(&metadata(&["example.com"], Some(KeyType::EcdsaP256))));
        assert!(!spec.is_met_by(&metadata(
            &["*.example.com", "example.com", "www.example.com"],
            Some(KeyType::EcdsaP256)
        )));
        assert!(!spec.is_met_by(&metadata(
            &["*.example.com", "example.com"],
            Some(KeyType::Rsa2048)
        )));
        let mut with_profile = spec.clone();
        with_profile.profile = Some("shortlived".to_owned());
        assert!(!with_profile.is_met_by(&exact));
    }
}

//! Choosing the one replica that renews: a Consul session lock.
//!
//! Every replica creates a session (TTL, LockDelay, behaviour `release`) and
//! tries to acquire the lock key with it; the holder renews the session every
//! TTL/2. A holder's [`Term`] ends (its token is cancelled, which stops every
//! renewal task at once) as soon as:
//! - Consul says the session is gone: it expired, an operator destroyed it,
//!   or its node failed;
//! - the lock key names another session, or none;
//! - renewals have failed for a whole TTL: Consul may have expired the
//!   session already, and a replica that cannot show it holds the lock must
//!   stop placing orders. (Its writes are fenced anyway, see
//!   [`crate::store::consul`]; this keeps it from ordering in vain.)
//!
//! On shutdown the holder releases the lock before destroying its session:
//! a release, unlike an invalidation, starts no lock delay, so another
//! replica takes over at once instead of after the TTL.
//!
//! Followers watch the lock key with a blocking query and try to acquire it
//! when it is free (retrying while Consul's lock delay refuses them).

use std::time::Duration;

use consul_client::{
    Backoff, Client, QueryOptions, SessionBehavior, SessionId, SessionRequest, WatchConfig,
    WatchEvent,
};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Consul refuses session TTLs below this.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// Bound on the Consul calls made while shutting down.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// The KV key whose holder renews.
    pub lock_key: String,
    /// Written into the lock key and the session name, so operators see who holds it.
    pub holder: String,
    pub session_ttl: Duration,
    /// How long Consul keeps the lock from being re-acquired after the
    /// holder's session is invalidated (not after a release).
    pub lock_delay: Duration,
    /// How often a follower retries while the lock is free but refused
    /// (lock delay), and the pace of session-creation retries.
    pub retry_interval: Duration,
}

impl ElectionConfig {
    pub fn new(lock_key: impl Into<String>, holder: impl Into<String>) -> Self {
        Self {
            lock_key: lock_key.into(),
            holder: holder.into(),
            session_ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(15),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// One period of holding the lock.
#[derive(Debug, Clone)]
pub struct Term {
    pub session: SessionId,
    /// Cancelled when the term ends, whatever the reason.
    pub ended: CancellationToken,
}

/// What this replica currently is.
#[derive(Debug, Clone)]
pub enum Leadership {
    Follower,
    Leader(Term),
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader(_))
    }
}

/// Who holds the lock, as this replica last read the lock key: what the
/// status page shows a person looking at a replica that does not renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockHolder {
    /// Not read yet (no session, or Consul has not answered).
    Unknown,
    /// No session holds the key.
    Free,
    /// Held; `name` is what the holder wrote into the key (its
    /// `--instance-name`).
    Held { name: String },
}

impl LockHolder {
    fn of(pair: Option<&consul_client::KvPair>) -> Self {
        match pair {
            Some(pair) if pair.session.is_some() => Self::Held {
                name: pair
                    .value
                    .as_deref()
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(|| "(unnamed)".to_owned()),
            },
            _ => Self::Free,
        }
    }
}

/// Campaigns for the lock and reports this replica's [`Leadership`].
#[derive(Debug)]
pub struct Election {
    client: Client,
    config: ElectionConfig,
    state: watch::Sender<Leadership>,
    holder: watch::Sender<LockHolder>,
}

/// Why holding a session ended.
enum SessionEnd {
    Shutdown,
    Lost,
}

impl Election {
    pub fn new(client: Client, config: ElectionConfig) -> Self {
        Self {
            client,
            config,
            state: watch::Sender::new(Leadership::Follower),
            holder: watch::Sender::new(LockHolder::Unknown),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    /// Who holds the lock, as last read.
    pub fn holder(&self) -> watch::Receiver<LockHolder> {
        self.holder.subscribe()
    }

    /// Campaigns until `shutdown`, then resigns.
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = Backoff {
            base: self.config.retry_interval,
            max: self.config.session_ttl,
        };
        let mut failures = 0;
        loop {
            let created = tokio::select! {
                () = shutdown.cancelled() => break,
                created = self.create_session() => created,
            };
            match created {
                Ok(session) => {
                    failures = 0;
                    match self.hold(&session, &shutdown).await {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost => continue,
                    }
                }
                Err(error) => {
                    failures += 1;
                    let delay = backoff.delay(failures, rand::random());
                    warn!(%error, retry_in = ?delay, "cannot create the Consul session for the renewal lock");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.state.send_replace(Leadership::Follower);
    }

    async fn create_session(&self) -> Result<SessionId, consul_client::Error> {
        self.client
            .session_create(&SessionRequest {
                name: Some(format!(
                    "envoy-acme-sds renewal lock ({})",
                    self.config.holder
                )),
                ttl: Some(self.config.session_ttl),
                lock_delay: Some(self.config.lock_delay),
                behavior: SessionBehavior::Release,
                ..SessionRequest::default()
            })
            .await
    }

    /// Keeps `session` alive and campaigns with it until it is lost or shutdown.
    async fn hold(&self, session: &SessionId, shutdown: &CancellationToken) -> SessionEnd {
        let mut lock_watch = self.client.watch_kv(
            self.config.lock_key.clone(),
            WatchConfig {
                wait: Duration::from_secs(300),
                ..WatchConfig::default()
            },
        );
        let renew_every = self.config.session_ttl / 2;
        let mut next_renewal = Instant::now() + renew_every;
        let mut last_renewed = Instant::now();
        let mut term: Option<Term> = None;
        // Try at once; afterwards only when the lock is seen free.
        let mut acquire_at = Some(Instant::now());
        let mut lock_free = true;
        loop {
            let acquire_due = service_support::time::sleep_until_opt(acquire_at);
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.step_down(&mut term, "shutting down");
                    self.resign(session).await;
                    return SessionEnd::Shutdown;
                }
                () = tokio::time::sleep_until(next_renewal) => {
                    next_renewal = Instant::now() + renew_every;
                    // A renewal that hangs must not outlive the TTL: once it
                    // has run out, Consul may let another replica take the
                    // lock, and this one must have stopped by then. Nor may
                    // it hold up a SIGTERM.
                    let ttl_left = (last_renewed + self.config.session_ttl)
                        .saturating_duration_since(Instant::now());
                    let renewed = tokio::select! {
                        () = shutdown.cancelled() => {
                            self.step_down(&mut term, "shutting down");
                            self.resign(session).await;
                            return SessionEnd::Shutdown;
                        }
                        renewed = tokio::time::timeout(ttl_left, self.client.session_renew(session)) => renewed,
                    };
                    let Ok(renewed) = renewed else {
                        self.step_down(&mut term, "the session renewal got no answer within the TTL");
                        self.destroy(session).await;
                        return SessionEnd::Lost;
                    };
                    match renewed {
                        Ok(Some(_)) => last_renewed = Instant::now(),
                        Ok(None) => {
                            self.step_down(&mut term, "the session expired or was destroyed");
                            return SessionEnd::Lost;
                        }
                        Err(error) => {
                            warn!(%error, "renewing the lock session failed");
                            if last_renewed.elapsed() >= self.config.session_ttl {
                                self.step_down(&mut term, "the session could not be renewed for a whole TTL");
                                self.destroy(session).await;
                                return SessionEnd::Lost;
                            }
                            // Retry sooner than the regular pace: the TTL is running out.
                            next_renewal = Instant::now() + self.config.retry_interval;
                        }
                    }
                }
                () = acquire_due => {
                    acquire_at = None;
                    match self.client.kv_acquire(&self.config.lock_key, self.config.holder.clone(), session).await {
                        Ok(true) => {
                            if term.is_none() {
                                info!(lock = %self.config.lock_key, holder = %self.config.holder, "acquired the renewal lock; this replica renews");
                                let new_term = Term { session: session.clone(), ended: CancellationToken::new() };
                                self.state.send_replace(Leadership::Leader(new_term.clone()));
                                term = Some(new_term);
                            }
                        }
                        // Held by another, or free but within the lock delay.
                        Ok(false) => if lock_free {
                            acquire_at = Some(Instant::now() + self.config.retry_interval);
                        },
                        Err(error) => {
                            warn!(%error, "trying to acquire the renewal lock failed");
                            acquire_at = Some(Instant::now() + self.config.retry_interval);
                        }
                    }
                }
                event = lock_watch.next() => {
                    let Some(event) = event else { return SessionEnd::Lost };
                    let pair = match event {
                        WatchEvent::Value { value, .. } => value,
                        WatchEvent::Degraded { .. } => continue,
                    };
                    self.holder.send_replace(LockHolder::of(pair.as_ref().as_ref()));
                    let holder = pair.as_ref().as_ref().and_then(|p| p.session.clone());
                    lock_free = holder.is_none();
                    if term.is_some() {
                        if holder.as_ref() != Some(session) && !self.still_held(session).await {
                            self.step_down(&mut term, "the lock is no longer held by this replica's session");
                            acquire_at = Some(Instant::now());
                        }
                    } else if lock_free {
                        acquire_at = acquire_at.or(Some(Instant::now()));
                    }
                }
            }
        }
    }

    /// A fresh read of the lock: a watch answer may predate our acquisition.
    async fn still_held(&self, session: &SessionId) -> bool {
        match self
            .client
            .kv_get(&self.config.lock_key, &QueryOptions::default())
            .await
        {
            Ok(response) => response
                .value
                .and_then(|pair| pair.session)
                .is_some_and(|holder| holder == *session),
            // Unknown: keep the term; renewals decide (fenced writes protect meanwhile).
            Err(_) => true,
        }
    }

    fn step_down(&self, term: &mut Option<Term>, reason: &str) {
        if let Some(term) = term.take() {
            warn!(reason, "renewal lock lost; stopping renewals");
            term.ended.cancel();
            self.state.send_replace(Leadership::Follower);
        }
    }

    async fn resign(&self, session: &SessionId) {
        let release =
            self.client
                .kv_release(&self.config.lock_key, self.config.holder.clone(), session);
        match tokio::time::timeout(RESIGN_TIMEOUT, release).await {
            Ok(Ok(true)) => info!(lock = %self.config.lock_key, "renewal lock released"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => warn!(%error, "releasing the renewal lock failed"),
            Err(_) => warn!("releasing the renewal lock timed out"),
        }
        self.destroy(session).await;
    }

    async fn destroy(&self, session: &SessionId) {
        match tokio::time::timeout(RESIGN_TIMEOUT, self.client.session_destroy(session)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "destroying the lock session failed"),
            Err(_) => warn!("destroying the lock session timed out"),
        }
    }
}

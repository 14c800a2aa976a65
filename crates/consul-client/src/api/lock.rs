//! A mutual-exclusion lock on a KV key, held through a session (Consul's
//! leader-election recipe).
//!
//! The lock is only as alive as its session: when the session is
//! invalidated (TTL expiry, failed check, destroy) Consul releases the key,
//! and nobody can take it during the session's lock delay. A holder
//! therefore fences its writes with the session (see
//! [`TxnOp::KvCheckSession`](crate::TxnOp::KvCheckSession)) rather than
//! trusting that it still holds the lock.

use std::time::Duration;

use bytes::Bytes;

use crate::api::session::SessionId;
use crate::watch::index::IndexCursor;
use crate::{Client, Error, QueryOptions};

/// How long a wait for the holder to let go blocks in one request.
const HOLDER_WAIT: Duration = Duration::from_secs(60);
/// How often a free-but-refused lock (lock delay running) is retried.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A lock on `key` for `session`.
#[derive(Debug, Clone)]
pub struct Lock {
    client: Client,
    key: String,
    session: SessionId,
    value: Bytes,
    retry_interval: Duration,
}

impl Lock {
    /// `value` is written to the key on acquisition and on release (e.g. who
    /// holds it).
    pub fn new(
        client: Client,
        key: impl Into<String>,
        session: SessionId,
        value: impl Into<Bytes>,
    ) -> Self {
        Self {
            client,
            key: key.into(),
            session,
            value: value.into(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// How often to retry while the key is free but refused (lock delay).
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// One attempt; `Ok(false)` when another session holds the lock.
    pub async fn try_acquire(&self) -> Result<bool, Error> {
        self.client
            .kv_acquire(&self.key, self.value.clone(), &self.session)
            .await
    }

    /// Waits until the lock is ours. Cancel by dropping the future (wrap it
    /// in `tokio::time::timeout` for a deadline).
    pub async fn acquire(&self) -> Result<(), Error> {
        loop {
            if self.try_acquire().await? {
                return Ok(());
            }
            self.wait_for_release().await?;
        }
    }

    /// Gives the lock up; `Ok(false)` if this session did not hold it.
    pub async fn release(&self) -> Result<bool, Error> {
        self.client
            .kv_release(&self.key, self.value.clone(), &self.session)
            .await
    }

    /// Whether Consul says this session holds the lock right now.
    pub async fn is_held(&self) -> Result<bool, Error> {
        let current = self
            .client
            .kv_get(&self.key, &QueryOptions::default())
            .await?;
        Ok(current
            .value
            .and_then(|pair| pair.session)
            .is_some_and(|holder| holder == self.session))
    }

    /// Blocks on the key until no session holds it. If it is free already
    /// (the acquire was refused during a lock delay), waits the retry interval.
    async fn wait_for_release(&self) -> Result<(), Error> {
        let mut cursor = IndexCursor::new();
        let mut first = true;
        loop {
            let options = QueryOptions::default().blocking(cursor.request_index(), HOLDER_WAIT);
            let current = self.client.kv_get(&self.key, &options).await?;
            cursor.observe(current.meta.index);
            let held = current.value.is_some_and(|pair| pair.session.is_some());
            match (held, first) {
                (true, _) => {}
                (false, true) => {
                    tokio::time::sleep(self.retry_interval).await;
                    return Ok(());
                }
                (false, false) => return Ok(()),
            }
            first = false;
        }
    }
}

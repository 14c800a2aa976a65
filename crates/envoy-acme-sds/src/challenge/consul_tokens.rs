//! A [`TokenStore`] in Consul KV, for HTTP-01 with replicas behind one address.
//!
//! The CA may reach any replica, not the one that placed the order; with the
//! key authorizations under `<prefix>/http01/<token>`, every replica's
//! HTTP-01 listener answers. Key authorizations are not secret (the CA
//! publishes the token, and the response is served in clear), so these
//! writes are not fenced: a stale one is harmless, and the order's owner
//! removes its tokens after validation.
//!
//! Why answers come from memory: the challenge path is on the public port,
//! so anyone can send requests for made-up tokens. If each were a KV read,
//! a flood would queue in front of the session renewals that keep the
//! renewal lock, and the lock would be lost. So [`ConsulTokenStore::follow`]
//! keeps every replica's copy of `<prefix>/http01/` current with one
//! blocking query, and a request is answered from that copy. Only a token
//! not (yet) in the copy is read from Consul, and those reads are limited to
//! a few per second: enough for the CA's request that races the blocking
//! query's wake-up, too few to matter to Consul.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use consul_client::{Client, KvPair, QueryOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::http01::{Http01Error, TokenStore};

/// Reads of tokens missing from the copy: at most this many in a burst...
const MISS_READ_BURST: f64 = 4.0;
/// ...refilled at this rate per second.
const MISS_READS_PER_SECOND: f64 = 2.0;

/// HTTP-01 key authorizations under `<prefix>/http01/`.
#[derive(Debug, Clone)]
pub struct ConsulTokenStore {
    client: Client,
    /// `<prefix>/http01/`.
    dir: String,
    /// What this replica knows of `dir`: token -> key authorization.
    known: Arc<RwLock<HashMap<String, String>>>,
    miss_reads: Arc<Mutex<ReadAllowance>>,
    consul_reads: Arc<AtomicU64>,
}

impl ConsulTokenStore {
    /// `prefix` is the storage prefix (`consul:<prefix>`), shared with the certificates.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            dir: format!("{}/http01/", prefix.trim_matches('/')),
            known: Arc::default(),
            miss_reads: Arc::new(Mutex::new(ReadAllowance::new(
                MISS_READ_BURST,
                MISS_READS_PER_SECOND,
            ))),
            consul_reads: Arc::default(),
        }
    }

    /// Keeps the in-memory copy of the tokens current until `shutdown`.
    /// While Consul fails, the last copy stays.
    pub async fn follow(self, shutdown: CancellationToken) {
        let client = self.client.clone();
        crate::kv_watch::follow_prefix(&client, self.dir.clone(), shutdown, |event| {
            match (event.is_healthy(), event.value()) {
                (true, Some(pairs)) => self.replace_known(pairs),
                (true, None) => {}
                (false, _) => warn!(
                    dir = %self.dir,
                    "cannot read the HTTP-01 tokens from Consul; answering from the last copy"
                ),
            }
        })
        .await;
    }

    /// How many times a request was answered by reading Consul.
    pub fn consul_reads(&self) -> u64 {
        self.consul_reads.load(Ordering::Relaxed)
    }

    fn replace_known(&self, pairs: &[KvPair]) {
        let tokens = pairs
            .iter()
            .filter_map(|pair| {
                let token = pair.key.strip_prefix(&self.dir)?;
                let value = pair.value.as_ref()?;
                Some((
                    token.to_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ))
            })
            .collect();
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    fn known(&self, token: &str) -> Option<String> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    fn key(&self, token: &str) -> String {
        format!("{}{token}", self.dir)
    }
}

fn store_error(what: &str, error: &consul_client::Error) -> Http01Error {
    Http01Error::Store(format!("{what}: {error}"))
}

#[async_trait]
impl TokenStore for ConsulTokenStore {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), Http01Error> {
        self.client
            .kv_put(&self.key(token), key_authorization.to_owned())
            .await
            .map_err(|e| store_error("storing the HTTP-01 token", &e))?;
        // This replica answers at once, before its blocking query wakes.
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
        Ok(())
    }

    async fn get(&self, token: &str) -> Result<Option<String>, Http01Error> {
        if let Some(known) = self.known(token) {
            return Ok(Some(known));
        }
        let allowed = self
            .miss_reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now());
        if !allowed {
            return Ok(None);
        }
        self.consul_reads.fetch_add(1, Ordering::Relaxed);
        let response = self
            .client
            .kv_get(&self.key(token), &QueryOptions::default())
            .await
            .map_err(|e| store_error("reading the HTTP-01 token", &e))?;
        Ok(response
            .value
            .and_then(|pair| pair.value)
            .map(|value| String::from_utf8_lossy(&value).into_owned()))
    }

    async fn remove(&self, token: &str) -> Result<(), Http01Error> {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
        self.client
            .kv_delete(&self.key(token))
            .await
            .map_err(|e| store_error("removing the HTTP-01 token", &e))
    }
}

/// A token bucket: `burst` reads at once, refilled at `per_second`.
#[derive(Debug)]
struct ReadAllowance {
    available: f64,
    burst: f64,
    per_second: f64,
    refilled_at: Option<Instant>,
}

impl ReadAllowance {
    fn new(burst: f64, per_second: f64) -> Self {
        Self {
            available: burst,
            burst,
            per_second,
            refilled_at: None,
        }
    }

    /// Takes one read if one is available at `now`.
    fn take(&mut self, now: Instant) -> bool {
        if let Some(then) = self.refilled_at {
            let earned = now.saturating_duration_since(then).as_secs_f64() * self.per_second;
            self.available = (self.available + earned).min(self.burst);
        }
        self.refilled_at = Some(now);
        if self.available >= 1.0 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_allowance_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut allowance = ReadAllowance::new(4.0, 2.0);
        let burst = (0..100).filter(|_| allowance.take(start)).count();
        assert_eq!(burst, 4);
        let one_second_later = start + Duration::from_secs(1);
        let refilled = (0..100)
            .filter(|_| allowance.take(one_second_later))
            .count();
        assert_eq!(refilled, 2);
        let long_after = start + Duration::from_secs(3600);
        let capped = (0..100).filter(|_| allowance.take(long_after)).count();
        assert_eq!(capped, 4, "an idle hour refills only the burst");
    }
}

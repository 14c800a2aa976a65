//! Blocking-query watches as `Stream`s of [`WatchEvent`]s.
//!
//! ```no_run
//! # async fn example(client: consul_client::Client) {
//! use futures::StreamExt;
//! use consul_client::{HealthFilter, WatchConfig, WatchEvent};
//!
//! let mut watch = client.watch_health_service("web", HealthFilter::All, WatchConfig::default());
//! while let Some(event) = watch.next().await {
//!     match event {
//!         WatchEvent::Value { value, continuity, .. } => {
//!             // `continuity` says whether this follows on from the last
//!             // answer or replaces it (an index reset, an outage).
//!             println!("{} instances ({continuity:?})", value.len());
//!         }
//!         WatchEvent::Degraded { error, last_good, .. } => {
//!             // Keep serving `last_good`; the watch retries by itself.
//!             eprintln!("Consul unavailable ({error}); keeping {:?} instances",
//!                 last_good.map(|v| v.len()));
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! Layout: [`index`] holds the index rules (pure), [`backoff`] the retry
//! delays (pure), `machine` the state machine (pure), and this module the
//! driver that performs requests and sleeps.

pub mod backoff;
mod event;
pub mod index;
mod machine;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::time::Instant;

pub use backoff::Backoff;
pub use event::{Continuity, WatchEvent};

use self::machine::{State, Timing};
use crate::api::health::{CheckBrief, HealthCheck, HealthFilter, HealthState, ServiceEntry};
use crate::api::kv::KvPair;
use crate::query::DEFAULT_WAIT;
use crate::{Client, Error, QueryOptions, QueryResponse};

/// How a watch queries and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// `?wait=` of each blocking query (Consul caps it at 10 minutes).
    pub wait: Duration,
    /// The rate limit, so a fast-changing index cannot make the watch spin:
    /// no three requests start within one `min_interval`. A change is
    /// followed up at once unless the two requests before already started
    /// within the last `min_interval`; an index that keeps moving is read
    /// at most twice per interval.
    pub min_interval: Duration,
    /// Delays between attempts while requests fail; reset by a success.
    pub backoff: Backoff,
    /// `?dc=`; the client's datacenter when `None`.
    pub datacenter: Option<String>,
    /// `?stale`: any server answers; see [`crate::QueryMeta::last_contact`].
    pub stale: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            wait: DEFAULT_WAIT,
            min_interval: Duration::from_millis(50),
            backoff: Backoff::default(),
            datacenter: None,
            stale: false,
        }
    }
}

/// A running watch. Dropping it cancels the request in flight.
///
/// Like any `Stream` it only works while polled: the next blocking query
/// goes out when the consumer asks for the next event. Drive it
/// continuously (in its own task) so a query is always in flight.
///
/// An agent that restarts under an in-flight query fails it, and the retry
/// (a plain read) notices the lower index at once. An agent replaced in the
/// gap *between* two queries (or while the watch is not polled) receives a
/// blocking query on an index it has not reached; Consul holds such a query
/// for its whole `wait`, and the reset is seen when it answers.
pub struct Watch<T> {
    events: BoxStream<'static, WatchEvent<T>>,
}

impl<T> fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl<T> Stream for Watch<T> {
    type Item = WatchEvent<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
}

/// Watches whatever `fetch` reads: it is called with the options of each
/// request (index, wait, datacenter, stale) and must pass them to Consul.
/// The stream never ends by itself.
pub fn watch<T, F, Fut>(config: WatchConfig, fetch: F) -> Watch<T>
where
    T: Send + Sync + 'static,
    F: FnMut(QueryOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<QueryResponse<T>, Error>> + Send + 'static,
{
    let config = Arc::new(config);
    let events = futures::stream::unfold(
        (State::Initial, fetch, config),
        |(mut state, mut fetch, config)| async move {
            loop {
                let next = state.next_request();
                // A deadline already past (the usual case: the query blocked
                // longer than the interval) is not slept on: tokio rounds
                // deadlines up to its millisecond tick and may fire them only
                // on the timer driver's next turn.
                if let Some(at) = next.not_before.filter(|at| *at > Instant::now()) {
                    tokio::time::sleep_until(at).await;
                }
                let options = QueryOptions {
                    datacenter: config.datacenter.clone(),
                    stale: config.stale,
                    index: next.index,
                    wait: Some(config.wait),
                };
                let started = Instant::now();
                let outcome = fetch(options).await;
                let timing = Timing {
                    started,
                    finished: Instant::now(),
                };
                if let Err(error) = &outcome {
                    tracing::debug!(%error, "watch request failed");
                }
                let (next_state, event) = state.step(outcome, timing, &config, rand::random());
                state = next_state;
                if let Some(event) = event {
                    return Some((event, (state, fetch, config)));
                }
            }
        },
    );
    Watch {
        events: events.boxed(),
    }
}

impl Client {
    /// Watches `GET /v1/health/service/<service>`.
    pub fn watch_health_service(
        &self,
        service: impl Into<String>,
        filter: HealthFilter,
        config: WatchConfig,
    ) -> Watch<Vec<ServiceEntry>> {
        let client = self.clone();
        let service: Arc<str> = service.into().into();
        watch(config, move |options| {
            let client = client.clone();
            let service = Arc::clone(&service);
            async move { client.health_service(&service, filter, &options).await }
        })
    }

    /// Watches `GET /v1/health/checks/<service>`.
    pub fn watch_health_checks(
        &self,
        service: impl Into<String>,
        config: WatchConfig,
    ) -> Watch<Vec<HealthCheck>> {
        let client = self.clone();
        let service: Arc<str> = service.into().into();
        watch(config, move |options| {
            let client = client.clone();
            let service = Arc::clone(&service);
            async move { client.health_checks(&service, &options).await }
        })
    }

    /// Watches `GET /v1/health/state/<state>`: with [`HealthState::Any`],
    /// every check of the datacenter in one blocking query.
    pub fn watch_health_state(
        &self,
        state: HealthState,
        config: WatchConfig,
    ) -> Watch<Vec<HealthCheck>> {
        let client = self.clone();
        watch(config, move |options| {
            let client = client.clone();
            async move { client.health_state(state, &options).await }
        })
    }

    /// Watches `GET /v1/health/state/<state>`, each answer folded into a
    /// fresh `init()` by `fold` (see [`Client::health_state_fold`]): the
    /// light way to follow every check of a large datacenter, since the
    /// watch keeps only the folded value of the last answer.
    pub fn watch_health_state_fold<A, I, F>(
        &self,
        state: HealthState,
        config: WatchConfig,
        init: I,
        fold: F,
    ) -> Watch<A>
    where
        A: Send + Sync + 'static,
        I: Fn() -> A + Send + Sync + 'static,
        F: for<'a> Fn(&mut A, CheckBrief<'a>) + Send + Sync + 'static,
    {
        let client = self.clone();
        let reduce = Arc::new((init, fold));
        watch(config, move |options| {
            let client = client.clone();
            let reduce = Arc::clone(&reduce);
            async move {
                let (init, fold) = &*reduce;
                client
                    .health_state_fold(state, &options, init(), |value, check| fold(value, check))
                    .await
            }
        })
    }

    /// Watches `GET /v1/catalog/services`.
    pub fn watch_catalog_services(
        &self,
        config: WatchConfig,
    ) -> Watch<BTreeMap<String, Vec<String>>> {
        let client = self.clone();
        watch(config, move |options| {
            let client = client.clone();
            async move { client.catalog_services(&options).await }
        })
    }

    /// Watches one KV key; `None` while it does not exist.
    pub fn watch_kv(&self, key: impl Into<String>, config: WatchConfig) -> Watch<Option<KvPair>> {
        let client = self.clone();
        let key: Arc<str> = key.into().into();
        watch(config, move |options| {
            let client = client.clone();
            let key = Arc::clone(&key);
            async move { client.kv_get(&key, &options).await }
        })
    }

    /// Watches every key under `prefix`.
    pub fn watch_kv_prefix(
        &self,
        prefix: impl Into<String>,
        config: WatchConfig,
    ) -> Watch<Vec<KvPair>> {
        let client = self.clone();
        let prefix: Arc<str> = prefix.into().into();
        watch(config, move |options| {
            let client = client.clone();
            let prefix = Arc::clone(&prefix);
            async move { client.kv_list(&prefix, &options).await }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::future::BoxFuture;

    use crate::QueryMeta;

    type Answer = BoxFuture<'static, Result<QueryResponse<u64>, Error>>;

    /// The blocking-query semantics in memory: an index that a test moves,
    /// answered at once for a plain read or an index already passed, and
    /// otherwise when the index moves (or after `wait`).
    fn fake_consul(
        index: &tokio::sync::watch::Sender<u64>,
    ) -> impl FnMut(QueryOptions) -> Answer + Send + 'static {
        let index = index.clone();
        move |options| {
            let mut current = index.subscribe();
            async move {
                let wait = options.wait.unwrap_or(DEFAULT_WAIT);
                if options.index > 0 {
                    let moved = current.wait_for(|now| *now > options.index);
                    let _ = tokio::time::timeout(wait, moved).await;
                }
                let now = *current.borrow();
                Ok(QueryResponse {
                    value: now,
                    meta: QueryMeta {
                        index: Some(now),
                        ..QueryMeta::default()
                    },
                })
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_shortly_after_the_last_one_seen_is_read_at_once() {
        // The convergence bench's loop: a change, then the next one about
        // 30 ms after the watch reported it (less than `min_interval`). The
        // watch runs in its own task, as consul-eds-server drives it, so its
        // next blocking query is in flight whenever the rate limit allows.
        let (index, _) = tokio::sync::watch::channel(1u64);
        let config = WatchConfig {
            min_interval: Duration::from_millis(50),
            ..WatchConfig::default()
        };
        let mut changes = watch(config, fake_consul(&index));
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(event) = changes.next().await {
                if let WatchEvent::Value { index, .. } = event {
                    let _ = seen_tx.send((index, Instant::now()));
                }
            }
        });
        let (first, _) = seen.recv().await.expect("the initial read");
        assert_eq!(first, 1);

        let mut late = Vec::new();
        for n in 2..=12u64 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let changed = Instant::now();
            index.send_replace(n);
            let (seen_index, at) = seen.recv().await.expect("the watch keeps running");
            assert_eq!(seen_index, n, "every change is reported, in order");
            late.push(at - changed);
        }
        driver.abort();
        assert!(
            late.iter().all(|d| d.is_zero()),
            "each change must be read as it happens, not after the rate limit's \
             wait; delays: {late:?}"
        );
    }
}

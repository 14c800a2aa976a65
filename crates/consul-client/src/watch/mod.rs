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
//!         WatchEvent::Changed { value, .. } | WatchEvent::Recovered { value, .. } => {
//!             println!("{} instances", value.len());
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
pub use event::WatchEvent;

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
    /// Least time between the starts of two requests, so a fast-changing
    /// index cannot make the watch spin. It never delays the first change
    /// after a quiet period (that query started long before).
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
                if let Some(at) = next.not_before {
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

    /// Watches `GET /v1/health/state/<state>` decoded into [`CheckBrief`]s:
    /// the light way to follow every check of a large datacenter.
    pub fn watch_health_state_brief(
        &self,
        state: HealthState,
        config: WatchConfig,
    ) -> Watch<Vec<CheckBrief>> {
        let client = self.clone();
        watch(config, move |options| {
            let client = client.clone();
            async move { client.health_state_brief(state, &options).await }
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

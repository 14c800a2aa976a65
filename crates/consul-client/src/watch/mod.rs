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
//! The index rules, state machine, backoff and driver are
//! `blocking-query`'s, shared with `nomad-client`; this module turns each of
//! its requests into Consul's [`QueryOptions`] and names the endpoints that
//! can be watched.

pub use blocking_query::watch::{Backoff, Continuity, QueryIndex, backoff, index};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::api::health::{CheckBrief, HealthCheck, HealthFilter, HealthState, ServiceEntry};
use crate::api::kv::KvPair;
use crate::query::{DEFAULT_WAIT, QueryMeta};
use crate::{Client, Error, QueryOptions, QueryResponse};

/// A running watch of Consul values of type `T`; see
/// [`blocking_query::Watch`].
pub type Watch<T> = blocking_query::Watch<T, Error, QueryMeta>;

/// What a Consul watch yields; see [`blocking_query::WatchEvent`].
pub type WatchEvent<T> = blocking_query::WatchEvent<T, Error, QueryMeta>;

/// How a watch queries and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// `?wait=` of each blocking query (Consul caps it at 10 minutes).
    pub wait: Duration,
    /// The rate limit: see [`blocking_query::WatchConfig::min_interval`].
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
        let shared = blocking_query::WatchConfig::default();
        Self {
            wait: DEFAULT_WAIT,
            min_interval: shared.min_interval,
            backoff: shared.backoff,
            datacenter: None,
            stale: false,
        }
    }
}

impl WatchConfig {
    /// The part of this configuration the shared watch discipline uses.
    fn discipline(&self) -> blocking_query::WatchConfig {
        blocking_query::WatchConfig {
            wait: self.wait,
            min_interval: self.min_interval,
            backoff: self.backoff,
        }
    }
}

/// Watches whatever `fetch` reads: it is called with the options of each
/// request (index, wait, datacenter, stale) and must pass them to Consul.
/// The stream never ends by itself.
pub fn watch<T, F, Fut>(config: WatchConfig, mut fetch: F) -> Watch<T>
where
    T: Send + Sync + 'static,
    F: FnMut(QueryOptions) -> Fut + Send + 'static,
    Fut: Future<Output = Result<QueryResponse<T>, Error>> + Send + 'static,
{
    let discipline = config.discipline();
    let WatchConfig {
        datacenter, stale, ..
    } = config;
    blocking_query::watch(discipline, move |request: QueryIndex| {
        let answer = fetch(QueryOptions {
            datacenter: datacenter.clone(),
            stale,
            index: request.index,
            wait: Some(request.wait),
        });
        async move {
            let response = answer.await?;
            Ok(blocking_query::Answer {
                index: response.meta.index,
                value: response.value,
                meta: response.meta,
            })
        }
    })
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

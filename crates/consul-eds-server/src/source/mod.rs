//! Consul -> the engine's [`SourceEvent`]s: the only module of this service
//! that reads Consul's types ([`nomad`] is the same for Nomad's).
//!
//! - [`entries`]: Consul's health entries -> [`crate::model::ServiceInstance`]s.
//! - this module: [`ConsulSource`], which picks for each watched service a
//!   blocking query of its own or the DC-wide view.
//! - [`dc_wide`]: the DC-wide view, fed by three queries per datacenter, and
//!   the budget arithmetic that decides when it is needed; [`digest`] and
//!   `reads` are its parts (telling which services changed, and reading
//!   them).

pub mod dc_wide;
mod digest;
pub mod entries;
pub mod nomad;
mod reads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consul_client::watch::{WatchConfig, WatchEvent};
use consul_client::{Client, HealthFilter};
use futures::StreamExt;
use futures::stream::BoxStream;

pub use self::dc_wide::{DcWideView, per_service_watch_limit};
pub use self::entries::EntryReader;
use crate::engine::{ServiceSource, SourceEvent, WatchKey};

/// Requests other than blocking queries this service has in flight to its
/// agent at once: the DC-wide view's targeted reads, its summaries read,
/// and a few to spare for the first (non-blocking) read of each watch and
/// the readiness probe. With `--max-blocking-queries`, the most connections
/// it opens to the agent.
pub const OTHER_REQUESTS: usize = reads::READS_IN_FLIGHT + 4;

/// Instance data from Consul, one blocking query per watched service while
/// they fit in the connection budget, and a shared DC-wide view beyond it.
///
/// Why two modes: every in-flight blocking query holds one HTTP connection,
/// and a Consul agent allows 200 per client IP by default. Per-service
/// queries give the fastest, most precise updates, so the first
/// `per_service_limit` services get them; further services are fed by
/// [`DcWideView`], which needs three blocking queries per datacenter however
/// many services it covers (see docs/adr/0005-eds-watch-modes.md).
#[derive(Debug)]
pub struct ConsulSource {
    client: Client,
    reader: EntryReader,
    config: WatchConfig,
    per_service_limit: usize,
    per_service_active: Arc<AtomicUsize>,
    dc_wide: Arc<Mutex<DcWideViews>>,
    dc_wide_sweep: Duration,
}

/// The running DC-wide views by datacenter, each with its subscriber count:
/// a view runs while some service needs it, since its three blocking queries
/// cost the agent even when
/// nobody listens.
type DcWideViews = HashMap<Option<String>, (DcWideView, usize)>;

impl ConsulSource {
    pub fn new(
        client: Client,
        reader: EntryReader,
        config: WatchConfig,
        per_service_limit: usize,
        dc_wide_sweep: Duration,
    ) -> Self {
        Self {
            client,
            reader,
            config,
            per_service_limit,
            per_service_active: Arc::new(AtomicUsize::new(0)),
            dc_wide: Arc::default(),
            dc_wide_sweep,
        }
    }

    fn per_service(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        let mut config = self.config.clone();
        config.datacenter = key.datacenter.clone();
        let reader = self.reader.clone();
        let slot = SlotGuard::take(self.per_service_active.clone());
        self.client
            .watch_health_service(key.service.clone(), HealthFilter::All, config)
            .map(move |event| {
                // The guard lives as long as the stream: dropping the watch
                // frees its per-service slot.
                let _slot = &slot;
                match event {
                    // Consul 1.11+ says when the token's ACLs hid part of
                    // the answer: it is not the whole truth, so not believed.
                    WatchEvent::Value { meta, .. } if meta.results_filtered_by_acls => {
                        SourceEvent::Filtered
                    }
                    WatchEvent::Value {
                        value,
                        index,
                        continuity,
                        ..
                    } => SourceEvent::Instances {
                        instances: reader.instances(&value),
                        index,
                        // The first answer after an outage may come from a
                        // replaced, still empty server even when its index
                        // did not go backwards: it counts like a reset.
                        after_reset: continuity.breaks_continuity(),
                    },
                    WatchEvent::Degraded { error, .. } => SourceEvent::Failing {
                        error: error.to_string(),
                    },
                }
            })
            .boxed()
    }

    fn dc_wide(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        let mut views = self.dc_wide.lock().unwrap_or_else(|e| e.into_inner());
        let (view, subscribers) = views.entry(key.datacenter.clone()).or_insert_with(|| {
            tracing::info!(
                dc = key.datacenter.as_deref().unwrap_or("local"),
                limit = self.per_service_limit,
                "per-service watch budget used up; starting the DC-wide view"
            );
            let mut config = self.config.clone();
            config.datacenter = key.datacenter.clone();
            let view = DcWideView::start(
                self.client.clone(),
                self.reader.clone(),
                config,
                self.dc_wide_sweep,
            );
            (view, 0)
        });
        *subscribers += 1;
        let guard = ViewSubscription {
            views: Arc::clone(&self.dc_wide),
            datacenter: key.datacenter.clone(),
        };
        view.subscribe(&key.service)
            .map(move |event| {
                // Lives as long as the stream: the last one dropped stops
                // the view.
                let _guard = &guard;
                event
            })
            .boxed()
    }
}

impl ServiceSource for ConsulSource {
    fn watch(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        if self.per_service_active.load(Ordering::SeqCst) < self.per_service_limit {
            self.per_service(key)
        } else {
            self.dc_wide(key)
        }
    }
}

/// Counts a subscriber of a DC-wide view while it lives; the last one to go
/// stops the view.
#[derive(Debug)]
struct ViewSubscription {
    views: Arc<Mutex<DcWideViews>>,
    datacenter: Option<String>,
}

impl Drop for ViewSubscription {
    fn drop(&mut self) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, subscribers)) = views.get_mut(&self.datacenter) {
            *subscribers -= 1;
            if *subscribers == 0 {
                tracing::info!(
                    dc = self.datacenter.as_deref().unwrap_or("local"),
                    "no service needs the DC-wide view any more; stopping it"
                );
                views.remove(&self.datacenter);
            }
        }
    }
}

/// Counts a per-service watch while it lives.
#[derive(Debug)]
struct SlotGuard(Arc<AtomicUsize>);

impl SlotGuard {
    fn take(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

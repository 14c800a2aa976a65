//! Every replica follows the catalog with one blocking query, keeps the
//! routed hosts' SDS secrets in step with it, and publishes the view the
//! lock holder orders from and the status page shows.

use std::sync::Arc;
use std::time::Duration;

use consul_client::{Client, Continuity, WatchConfig, WatchEvent};
use futures::StreamExt;
use route_tags::TagPrefix;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::RoutedView;
use super::catalog::{RoutedHosts, tls_hosts};
use super::policy::{HostPlan, RoutedPolicy};
use crate::metrics::ServiceMetrics;
use crate::sds::SecretPublisher;

/// Why a 5-minute wait: tags change rarely, and every replica holds one
/// such query open; Consul answers at once on any change anyway.
const CATALOG_WAIT: Duration = Duration::from_secs(300);

/// Follows `/v1/catalog/services` and feeds the publisher and the view.
#[derive(Debug)]
pub struct RouteFollower {
    client: Client,
    prefix: TagPrefix,
    policy: RoutedPolicy,
    publisher: Arc<SecretPublisher>,
    metrics: ServiceMetrics,
    hosts: RoutedHosts,
    view: watch::Sender<Arc<RoutedView>>,
}

impl RouteFollower {
    pub fn new(
        client: Client,
        prefix: TagPrefix,
        policy: RoutedPolicy,
        publisher: Arc<SecretPublisher>,
        metrics: ServiceMetrics,
    ) -> Self {
        Self {
            client,
            prefix,
            policy,
            publisher,
            metrics,
            hosts: RoutedHosts::default(),
            view: watch::Sender::new(Arc::new(RoutedView::default())),
        }
    }

    /// The routed hosts as last read; changes with every answer that changes them.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutedView>> {
        self.view.subscribe()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut watch = self.client.watch_catalog_services(WatchConfig {
            wait: CATALOG_WAIT,
            ..WatchConfig::default()
        });
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = watch.next() => event,
            };
            let Some(event) = event else { return };
            match event {
                WatchEvent::Value {
                    value, continuity, ..
                } => {
                    if matches!(continuity, Continuity::Recovered { .. }) {
                        info!("Consul answers again; following the routed hosts");
                    }
                    // The first answer after failures or an index reset
                    // may not follow on from what was seen: it never
                    // makes a host unrouted.
                    let believable = !continuity.breaks_continuity();
                    self.apply(&value, believable, OffsetDateTime::now_utc());
                }
                WatchEvent::Degraded {
                    error,
                    failures,
                    retry_in,
                    ..
                } => {
                    if failures == 1 {
                        warn!(%error, ?retry_in, "cannot read the catalog; the routed hosts stay as they were");
                    }
                }
            }
        }
    }

    /// Takes one catalog answer.
    pub fn apply(
        &mut self,
        services: &std::collections::BTreeMap<String, Vec<String>>,
        believable: bool,
        now: OffsetDateTime,
    ) {
        let routed = tls_hosts(&self.prefix, services);
        if !self.hosts.on_answer(routed, believable, now) {
            return;
        }
        let view = RoutedView::build(&self.hosts, &self.policy);
        let previous = self.view.borrow().clone();
        for (host, entry) in &view.hosts {
            if previous.hosts.get(host).map(|e| &e.plan) != Some(&entry.plan) {
                match &entry.plan {
                    HostPlan::Refused(refusal) => {
                        warn!(%host, reason = %refusal, services = ?entry.routing.services, "routed host refused; served a placeholder");
                    }
                    HostPlan::Covered { by } => {
                        info!(%host, certificate = %by, "routed host covered by a configured certificate");
                    }
                    HostPlan::Order { .. } => info!(%host, "routed host gets its own certificate"),
                }
            }
        }
        let (plans, reasons) = view.counts();
        self.metrics.set_routed_hosts(&plans, &reasons);
        if let Err(error) = self.publisher.set_routed(view.secrets()) {
            error!(%error, "cannot serve the routed hosts' secrets");
        }
        self.view.send_replace(Arc::new(view));
    }
}

//! The gateway actor: catalog answers and instances in, route table and
//! Envoy resources out.
//!
//! Inputs: the catalog's service list (which services may route), and from
//! the engine each watched service's last good instances (whose tags are
//! the routes). Outputs: the clusters the engine must feed, the resources
//! written make-before-break (`publish`), and the status shown (`view`).
//!
//! Rules it keeps:
//! - Nothing is published before the catalog answered and every candidate's
//!   instances were read (or a bound passed): a gateway that starts while
//!   Consul is slow serves its first table whole, not a growing one.
//! - Consul trouble never empties the gateway: a failing or filtered catalog
//!   read changes nothing, vanished candidates are held (`candidates`), and
//!   a service whose instances read empty keeps its last declaration while
//!   the catalog still lists it (its cluster then has no endpoints: 503,
//!   not 404, because the service still exists).
//! - Bursts are coalesced; the latest state always wins. A lone change
//!   (after a quiet window) is rebuilt at once: the window only gathers
//!   what follows a rebuild ([`rebuild_due`]).
//! - A catalog answer that only adds services schedules no rebuild: their
//!   routes exist once their instances are read, and that read schedules
//!   it, so the leading edge is not spent on a rebuild that changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use route_tags::{
    InstanceTags, ListenerSpec, OutlierDetection, Problem, RouteTable, ServiceDecl, ServiceInput,
    TagPrefix, service_decl,
};
use service_support::time::sleep_until_opt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::candidates::Candidates;
use super::cluster_name;
use super::clusters::EncodedClusters;
use super::publish::Publisher;
use super::translate::{self, TranslateSettings};
use super::view::{
    GatewayMetrics, GatewayStatus, GatewayView, ServiceStatus, StepLabel, TypeLabel,
};
use crate::engine::ServiceInstances;
use crate::model::{ServiceInstance, SourceKind};
use crate::naming::ClusterTarget;

/// What a catalog read says.
#[derive(Debug, Clone)]
pub enum CatalogEvent {
    Services {
        services: Arc<BTreeMap<String, Vec<String>>>,
        /// The answer does not follow on from the previous one.
        after_reset: bool,
    },
    /// The read failed, or Consul said its ACLs filtered it: not believed.
    Unbelieved { reason: String },
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub prefix: TagPrefix,
    pub listeners: Vec<ListenerSpec>,
    pub translate: TranslateSettings,
    pub coalesce: Duration,
    pub reset_grace: Duration,
    /// How long the first publication waits for every candidate's first read.
    pub first_read_bound: Duration,
    /// How long each make-before-break step waits for Envoy's acknowledgement.
    pub ack_timeout: Duration,
}

pub struct Gateway {
    settings: GatewaySettings,
    canary_tag: String,
    candidates: Candidates,
    instances: BTreeMap<String, Arc<Vec<ServiceInstance>>>,
    decls: BTreeMap<String, ServiceDecl>,
    /// Shared with the view: at thousands of routes a copy per publication
    /// would be megabytes.
    table: Arc<RouteTable>,
    /// The encoded clusters of `table`, reused by the next rebuild.
    clusters: EncodedClusters,
    targets: watch::Sender<BTreeMap<String, ClusterTarget>>,
    publisher: Publisher,
    view: GatewayView,
    metrics: GatewayMetrics,
    catalog_read: bool,
    published: bool,
    started: Instant,
    rebuild_at: Option<Instant>,
    /// When the last rebuild ended: the coalescing window runs from there.
    last_rebuild: Option<Instant>,
    /// What the last rebuild found, shown again when the status changes
    /// without one.
    listeners_without_hosts: Vec<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("services", &self.decls.len())
            .field("routes", &self.table.route_count())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        settings: GatewaySettings,
        targets: watch::Sender<BTreeMap<String, ClusterTarget>>,
        publisher: Publisher,
        view: GatewayView,
        metrics: GatewayMetrics,
    ) -> Self {
        let canary_tag = format!("{}.canary", settings.prefix);
        let candidates = Candidates::new(settings.prefix.clone(), settings.reset_grace);
        Self {
            settings,
            canary_tag,
            candidates,
            instances: BTreeMap::new(),
            decls: BTreeMap::new(),
            table: Arc::default(),
            clusters: EncodedClusters::default(),
            targets,
            publisher,
            view,
            metrics,
            catalog_read: false,
            published: false,
            started: Instant::now(),
            rebuild_at: None,
            last_rebuild: None,
            listeners_without_hosts: Vec::new(),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(
        mut self,
        mut catalog: BoxStream<'static, CatalogEvent>,
        mut instances: mpsc::UnboundedReceiver<ServiceInstances>,
        shutdown: CancellationToken,
    ) {
        self.started = Instant::now();
        self.show();
        let mut hold_tick =
            tokio::time::interval(self.settings.reset_grace.max(Duration::from_millis(100)) / 4);
        hold_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let rebuild_at = self.rebuild_at;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(event) = catalog.next() => self.on_catalog(event),
                Some(read) = instances.recv() => self.on_instances(read),
                () = sleep_until_opt(rebuild_at), if rebuild_at.is_some() => {
                    self.rebuild_at = None;
                    self.rebuild().await;
                }
                _ = hold_tick.tick() => {
                    let expired = self.candidates.expire(Instant::now().into_std());
                    if !expired.is_empty() {
                        tracing::warn!(services = ?expired, "held services did not come back to the catalog; their routes are removed");
                        self.forget(&expired);
                    }
                }
            }
        }
    }

    fn on_catalog(&mut self, event: CatalogEvent) {
        match event {
            CatalogEvent::Unbelieved { reason } => {
                tracing::warn!(%reason, "catalog read not believed; the gateway keeps what it serves");
            }
            CatalogEvent::Services {
                services,
                after_reset,
            } => {
                self.catalog_read = true;
                let change =
                    self.candidates
                        .on_catalog(&services, after_reset, Instant::now().into_std());
                if !change.held.is_empty() {
                    tracing::warn!(
                        services = ?change.held,
                        grace = ?self.settings.reset_grace,
                        "services vanished from a catalog answer that may not be the whole truth; their routes are kept for the grace"
                    );
                }
                if !change.added.is_empty() {
                    tracing::info!(services = ?change.added, "services with route tags appeared");
                }
                self.forget(&change.removed);
                self.send_targets();
                if self.published {
                    // Removals were marked by `forget`; what was added or
                    // held changes no route until its instances are read.
                    self.show_with(self.listeners_without_hosts.clone());
                } else {
                    self.mark_dirty();
                }
            }
        }
    }

    fn on_instances(&mut self, read: ServiceInstances) {
        if !self.candidates.contains(&read.service) {
            return;
        }
        if !read.instances.is_empty() {
            let tags: Vec<InstanceTags<'_>> = read
                .instances
                .iter()
                .map(|instance| InstanceTags {
                    id: &instance.id,
                    tags: &instance.tags,
                })
                .collect();
            let mut decl = service_decl(&self.settings.prefix, &tags);
            with_nomad_defaults(&mut decl, &read.instances);
            // Most reads change no tag (a health flip, a periodic sweep of
            // the DC-wide view re-reading every service): the table would
            // be rebuilt identical, at a cost that grows with the catalog.
            let unchanged = self.decls.get(&read.service) == Some(&decl);
            self.instances.insert(read.service.clone(), read.instances);
            if unchanged {
                return;
            }
            self.decls.insert(read.service, decl);
        } else {
            self.instances.insert(read.service, read.instances);
        }
        self.mark_dirty();
    }

    fn forget(&mut self, services: &[String]) {
        if services.is_empty() {
            return;
        }
        tracing::info!(?services, "services no longer route");
        for service in services {
            self.instances.remove(service);
            self.decls.remove(service);
        }
        self.send_targets();
        self.mark_dirty();
    }

    fn mark_dirty(&mut self) {
        if self.rebuild_at.is_none() {
            self.rebuild_at = Some(rebuild_due(
                Instant::now(),
                self.last_rebuild,
                self.settings.coalesce,
            ));
        }
    }

    /// Every candidate's stable cluster (whose tags must be read), and the
    /// canary clusters of the routes that split traffic.
    fn send_targets(&self) {
        let split: Vec<&str> = self
            .table
            .clusters
            .iter()
            .filter(|cluster| cluster.canary && self.candidates.contains(&cluster.service))
            .map(|cluster| cluster.service.as_str())
            .collect();
        let targets = cluster_targets(self.candidates.names(), &split, &self.canary_tag);
        self.targets.send_if_modified(|current| {
            if *current == targets {
                false
            } else {
                *current = targets;
                true
            }
        });
    }

    /// Whether the first table may go out: the catalog answered and every
    /// candidate was read, or the bound passed.
    fn ready_for_first(&self) -> bool {
        if !self.catalog_read {
            return false;
        }
        let all_read = self
            .candidates
            .names()
            .all(|service| self.instances.contains_key(service));
        all_read || self.started.elapsed() >= self.settings.first_read_bound
    }

    async fn rebuild(&mut self) {
        if !self.published && !self.ready_for_first() {
            // Look again soon; the bound ends the wait.
            self.rebuild_at = Some(Instant::now() + Duration::from_millis(100));
            return;
        }
        let started = Instant::now();
        let inputs: Vec<ServiceInput<'_>> = self
            .decls
            .iter()
            .filter(|(service, _)| self.candidates.contains(service))
            .map(|(service, decl)| ServiceInput { service, decl })
            .collect();
        let table = Arc::new(RouteTable::build(
            &self.settings.listeners,
            &inputs,
            &self.table,
        ));
        self.report_new_problems(&table);
        let encoded = self.clusters.rebuild(&table).and_then(|clusters| {
            let resources = translate::resources(&table, &self.settings.translate)?;
            Ok((clusters, resources))
        });
        let (clusters, resources) = match encoded {
            Ok(encoded) => encoded,
            Err(error) => {
                // Only a programming error gets here (a resource with no
                // name); what Envoy has stays as it is.
                tracing::error!(%error, "encoding the gateway's resources failed; Envoy keeps the previous configuration");
                return;
            }
        };
        self.metrics
            .rebuild_seconds
            .observe(started.elapsed().as_secs_f64());
        let previous = std::mem::replace(&mut self.table, table);
        // The engine starts feeding a new canary cluster before a route
        // names it; the publisher waits for its endpoints.
        self.send_targets();
        // Translation is per options, not per state: whatever the outcome
        // below, these encodings are right for the next rebuild to reuse.
        self.clusters = clusters;
        match self.publisher.publish(&self.clusters, &resources).await {
            Ok(report) => {
                for (step, took) in &report.steps {
                    self.metrics
                        .publish_step_seconds
                        .get_or_create(&StepLabel {
                            step: step.as_str(),
                        })
                        .observe(took.as_secs_f64());
                }
                for (resource_type, written) in &report.changed {
                    if *written > 0 {
                        self.metrics
                            .pushes
                            .get_or_create(&TypeLabel {
                                r#type: resource_type,
                            })
                            .inc();
                    }
                }
                if !report.timed_out_waits.is_empty() {
                    self.metrics
                        .ack_timeouts
                        .inc_by(report.timed_out_waits.len() as u64);
                    tracing::warn!(
                        waits = ?report.timed_out_waits,
                        "Envoy did not acknowledge within the bound; published anyway"
                    );
                }
                if !self.published {
                    tracing::info!(
                        routes = self.table.route_count(),
                        clusters = self.table.clusters.len(),
                        "gateway published its first route table"
                    );
                }
                self.published = true;
            }
            Err(error) => {
                // Only a programming error gets here (a resource that does
                // not encode); what Envoy has stays as it is.
                tracing::error!(%error, "publishing the gateway failed; Envoy keeps the previous configuration");
                self.table = previous;
            }
        }
        self.metrics.observe(&self.table, self.decls.len());
        self.listeners_without_hosts = resources.listeners_without_hosts;
        self.show_with(self.listeners_without_hosts.clone());
        self.last_rebuild = Some(Instant::now());
    }

    fn report_new_problems(&self, table: &RouteTable) {
        for problem in &table.problems {
            if !self.table.problems.contains(problem) {
                let Problem {
                    service,
                    tag,
                    kind,
                    reason,
                } = problem;
                tracing::warn!(%service, %tag, ?kind, %reason, "route tag not served as written");
            }
        }
    }

    fn show(&self) {
        self.show_with(Vec::new());
    }

    fn show_with(&self, listeners_without_hosts: Vec<String>) {
        let services = self
            .candidates
            .names()
            .map(|service| {
                let status = ServiceStatus {
                    instances: self.instances.get(service).map_or(0, |list| list.len()),
                    disagreement: self
                        .decls
                        .get(service)
                        .and_then(|decl| decl.disagreement.clone()),
                    held: self.candidates.is_held(service),
                };
                (service.to_owned(), status)
            })
            .collect();
        self.view.set(GatewayStatus {
            published: self.published,
            listeners: self.settings.listeners.clone(),
            table: Arc::clone(&self.table),
            services,
            listeners_without_hosts,
        });
    }
}

/// When a change marked at `now` is rebuilt: at once after a quiet window,
/// else when the window after the last rebuild's end closes. Counted from
/// the end (make before break waits for Envoy), what arrives during a
/// rebuild is gathered for one window, as before there was a leading
/// edge: changes closer together than the window take the same rebuilds;
/// a burst after quiet takes at most one more, its first change alone.
fn rebuild_due(now: Instant, last_rebuild: Option<Instant>, coalesce: Duration) -> Instant {
    last_rebuild.map_or(now, |last| (last + coalesce).max(now))
}

/// Nomad's native services have no health checks that can be read at
/// scale (their results live on each allocation's client, see
/// `source::nomad`), so a cluster with instances from Nomad gets Envoy's
/// outlier detection unless its tags set their own: a dead instance is
/// ejected after a few failed requests even when no check reports it.
fn with_nomad_defaults(decl: &mut ServiceDecl, instances: &[ServiceInstance]) {
    let from_nomad = instances
        .iter()
        .any(|instance| instance.source == SourceKind::Nomad);
    if from_nomad && decl.cluster.outlier_detection.is_none() {
        decl.cluster.outlier_detection = Some(OutlierDetection::ENVOY_DEFAULTS);
    }
}

/// The clusters the engine feeds: each service's stable cluster, and a
/// canary cluster for each service in `split` (a route says `canary=`).
///
/// A stable cluster never holds the instances tagged `canary_tag`, split
/// or not: running a canary instance must not by itself divert users, so
/// without `canary=` the canaries get no traffic at all. The gateway still
/// reads their tags, from the service's instances rather than a cluster.
fn cluster_targets<'a>(
    services: impl Iterator<Item = &'a str>,
    split: &[&str],
    canary_tag: &str,
) -> BTreeMap<String, ClusterTarget> {
    let mut targets = BTreeMap::new();
    for service in services {
        targets.insert(
            cluster_name(service, false),
            ClusterTarget {
                without_tag: Some(canary_tag.to_owned()),
                ..ClusterTarget::service(service)
            },
        );
        if split.contains(&service) {
            targets.insert(
                cluster_name(service, true),
                ClusterTarget {
                    tag: Some(canary_tag.to_owned()),
                    ..ClusterTarget::service(service)
                },
            );
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_with_nomad_instances_get_outlier_detection_unless_their_tags_set_it() {
        let instance = |source: SourceKind| ServiceInstance {
            id: "web-1".into(),
            node: "node".into(),
            address: "10.0.0.1".into(),
            address_is_ip: true,
            port: 8080,
            checks: crate::model::CheckState::Passing,
            maintenance: false,
            weights: crate::model::Weights::default(),
            tags: vec![],
            locality: Arc::default(),
            source,
        };
        let mut from_consul = ServiceDecl::default();
        with_nomad_defaults(&mut from_consul, &[instance(SourceKind::Consul)]);
        assert_eq!(from_consul.cluster.outlier_detection, None);

        let mut merged = ServiceDecl::default();
        with_nomad_defaults(
            &mut merged,
            &[instance(SourceKind::Consul), instance(SourceKind::Nomad)],
        );
        assert_eq!(
            merged.cluster.outlier_detection,
            Some(OutlierDetection::ENVOY_DEFAULTS)
        );

        let own = OutlierDetection {
            consecutive_5xx: 2,
            ..OutlierDetection::ENVOY_DEFAULTS
        };
        let mut tagged = ServiceDecl::default();
        tagged.cluster.outlier_detection = Some(own);
        with_nomad_defaults(&mut tagged, &[instance(SourceKind::Nomad)]);
        assert_eq!(tagged.cluster.outlier_detection, Some(own));
    }

    #[test]
    fn a_lone_change_is_rebuilt_at_once_and_one_after_a_rebuild_waits_for_its_window() {
        let coalesce = Duration::from_millis(20);
        let start = Instant::now();
        assert_eq!(rebuild_due(start, None, coalesce), start, "first change");
        let ended = start + Duration::from_millis(100);
        let soon = ended + Duration::from_millis(5);
        assert_eq!(
            rebuild_due(soon, Some(ended), coalesce),
            ended + coalesce,
            "gathered for the window after the rebuild"
        );
        let quiet = ended + Duration::from_millis(50);
        assert_eq!(
            rebuild_due(quiet, Some(ended), coalesce),
            quiet,
            "after quiet"
        );
    }

    #[test]
    fn stable_clusters_leave_canaries_out_whether_or_not_a_route_splits() {
        let targets = cluster_targets(["api", "shop"].into_iter(), &["shop"], "edge.canary");
        let names: Vec<&str> = targets.keys().map(String::as_str).collect();
        assert_eq!(names, vec!["api", "shop", "shop/canary"]);
        // `api` has no canary= route: its canaries must get nothing, so
        // its one cluster leaves them out too.
        for stable in ["api", "shop"] {
            assert_eq!(
                targets[stable].without_tag.as_deref(),
                Some("edge.canary"),
                "{stable}"
            );
            assert_eq!(targets[stable].tag, None, "{stable}");
        }
        assert_eq!(targets["shop/canary"].tag.as_deref(), Some("edge.canary"));
        assert_eq!(targets["shop/canary"].without_tag, None);
    }
}

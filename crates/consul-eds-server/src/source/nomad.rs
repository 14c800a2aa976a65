//! Nomad's own service registry -> the engine's [`SourceEvent`]s: the only
//! module of this service that reads Nomad's types.
//!
//! One blocking query per watched (service, namespace), through
//! `nomad-client`, which compares content before yielding (Nomad's index is
//! the whole registrations table's, so it moves for every service).
//!
//! Health: Nomad removes a registration when its allocation stops, which is
//! what takes most dead instances away. Check results of native services
//! exist only on the client agent running each allocation
//! (`/v1/client/allocation/:id/checks`, not blocking), so they are polled:
//! each watched allocation at most once per `check_interval`, through the
//! client's budget for quick requests, and a change of a result makes a new
//! answer. An allocation whose checks cannot be read (no checks, an agent
//! before Nomad 1.4, a token without `read-job`) is served as passing and
//! said so once in the log; the gateway gives Nomad clusters outlier
//! detection for that reason.
//!
//! `--nomad-namespace '*'` ([`all_namespaces`]): `/v1/service/:name` has no
//! wildcard, so one checked `*` listing of `/v1/services` (nomad-client's
//! `watch_all_namespaces`: a namespace that vanishes from it is read
//! directly, and kept while that read fails) says which namespaces hold
//! each service; the engine watches the service in each of them, by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use nomad_client::{
    CheckMode, CheckResult, CheckStatus, CheckedListing, Error as NomadError, NomadClient,
    ServiceRegistration, WatchConfig, WatchEvent, tags_by_service,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::{NomadListing, Origin, ServiceSource, SourceEvent, WatchKey};
use crate::gateway::actor::CatalogEvent;
use crate::model::{CheckState, Locality, ServiceInstance, SourceKind, Weights};

/// How the Nomad source reads.
#[derive(Debug, Clone)]
pub struct NomadSettings {
    pub watch: WatchConfig,
    /// How often each allocation's check results are read again; `None`:
    /// never (every registration is served as passing).
    pub check_interval: Option<Duration>,
}

/// Instance data from Nomad, one blocking query per watched service and
/// namespace.
#[derive(Debug, Clone)]
pub struct NomadSource {
    client: NomadClient,
    settings: NomadSettings,
}

impl NomadSource {
    pub fn new(client: NomadClient, settings: NomadSettings) -> Self {
        Self { client, settings }
    }
}

impl ServiceSource for NomadSource {
    fn watch(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        let Origin::Nomad { namespace } = &key.origin else {
            let error = format!("{} is not a Nomad watch", key.service);
            return futures::stream::once(async move { SourceEvent::Failing { error } })
                .chain(futures::stream::pending())
                .boxed();
        };
        let registrations = self.client.watch_service(
            key.service.clone(),
            namespace.clone(),
            self.settings.watch.clone(),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(follow(
            self.client.clone(),
            self.settings.check_interval,
            registrations,
            tx,
        ));
        let guard = AbortOnDrop(task);
        UnboundedReceiverStream::new(rx)
            .map(move |event| {
                // The task lives as long as the stream.
                let _guard = &guard;
                event
            })
            .boxed()
    }
}

/// One namespace's service list as the gateway reads it (`/v1/services`):
/// a failed read is not believed, and an answer that does not follow on
/// from the last says so.
pub fn catalog_events(
    client: &NomadClient,
    namespace: &str,
    config: WatchConfig,
) -> BoxStream<'static, CatalogEvent> {
    client
        .watch_services(namespace.to_owned(), config)
        .map(|event| match event {
            WatchEvent::Value {
                value, continuity, ..
            } => CatalogEvent::Services {
                services: Arc::new(tags_by_service(&value)),
                after_reset: continuity.breaks_continuity(),
            },
            WatchEvent::Degraded { error, .. } => CatalogEvent::Unbelieved {
                reason: describe(&error),
            },
        })
        .boxed()
}

/// `--nomad-namespace '*'`: one checked `*` listing, read by one task, as
/// the engine's [`NomadListing`] (which namespaces hold each service) and
/// as the gateway's catalog (named `nomad/*` by the caller), so both follow
/// the same answers with one blocking query.
///
/// A failed listing changes neither (the last listing stays; the catalog
/// read is not believed). A namespace held by the listing stays in both,
/// at its last services, and the engine degrades its watches.
pub fn all_namespaces(
    client: &NomadClient,
    config: WatchConfig,
) -> (
    watch::Receiver<Arc<NomadListing>>,
    BoxStream<'static, CatalogEvent>,
) {
    let (listing_tx, listing_rx) = watch::channel(Arc::new(NomadListing::default()));
    let (catalog_tx, catalog_rx) = mpsc::unbounded_channel();
    let mut listings = client.watch_all_namespaces(config);
    tokio::spawn(async move {
        while let Some(event) = listings.next().await {
            let catalog = match event {
                WatchEvent::Value {
                    value, continuity, ..
                } => {
                    let listing = listing_of(&value);
                    listing_tx.send_if_modified(|known| {
                        let changed = **known != listing;
                        if changed {
                            *known = Arc::new(listing);
                        }
                        changed
                    });
                    CatalogEvent::Services {
                        services: Arc::new(tags_by_service(&value.namespaces)),
                        after_reset: continuity.breaks_continuity(),
                    }
                }
                WatchEvent::Degraded { error, .. } => CatalogEvent::Unbelieved {
                    reason: describe(&error),
                },
            };
            // Outside gateway mode nobody reads the catalog.
            let _ = catalog_tx.send(catalog);
            if listing_tx.is_closed() && catalog_tx.is_closed() {
                return;
            }
        }
    });
    (listing_rx, UnboundedReceiverStream::new(catalog_rx).boxed())
}

/// Which namespaces list each service, and which are held.
fn listing_of(checked: &CheckedListing) -> NomadListing {
    let mut namespaces: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in &checked.namespaces {
        for service in &entry.services {
            namespaces
                .entry(service.service_name.clone())
                .or_default()
                .insert(entry.namespace.clone());
        }
    }
    NomadListing {
        namespaces,
        held: checked
            .held
            .iter()
            .map(|(namespace, error)| (namespace.clone(), error.to_string()))
            .collect(),
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The registrations last read, and each allocation's check results.
#[derive(Debug, Default)]
struct Followed {
    registrations: Option<Arc<Vec<ServiceRegistration>>>,
    index: u64,
    checks: HashMap<String, CheckState>,
    /// Allocations whose checks could not be read, told once each.
    unreadable: HashMap<String, String>,
}

/// Forwards the watch's answers, with check results merged in, until the
/// receiver goes.
async fn follow(
    client: NomadClient,
    check_interval: Option<Duration>,
    mut registrations: nomad_client::Watch<Vec<ServiceRegistration>>,
    tx: mpsc::UnboundedSender<SourceEvent>,
) {
    let mut followed = Followed::default();
    let mut poll = check_interval.map(|every| {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let event = tokio::select! {
            event = registrations.next() => match event {
                Some(event) => event,
                None => return,
            },
            _ = tick(&mut poll), if poll.is_some() => {
                if followed.registrations.is_some() && read_checks(&client, &mut followed).await {
                    let _ = tx.send(instances_event(&followed, false));
                }
                continue;
            }
        };
        let out = match event {
            WatchEvent::Value {
                value,
                index,
                continuity,
                ..
            } => {
                followed.registrations = Some(value);
                followed.index = index;
                if check_interval.is_some() {
                    read_checks(&client, &mut followed).await;
                }
                instances_event(&followed, continuity.breaks_continuity())
            }
            WatchEvent::Degraded { error, .. } => SourceEvent::Failing {
                error: describe(&error),
            },
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => futures::future::pending().await,
    }
}

fn describe(error: &NomadError) -> String {
    format!("Nomad: {error}")
}

/// Reads the check results of every allocation registered; whether any
/// allocation's state changed.
async fn read_checks(client: &NomadClient, followed: &mut Followed) -> bool {
    let Some(registrations) = followed.registrations.clone() else {
        return false;
    };
    let mut allocations: Vec<&str> = registrations.iter().map(|r| r.alloc_id.as_str()).collect();
    allocations.sort_unstable();
    allocations.dedup();
    let mut changed = false;
    let mut seen = HashMap::new();
    for alloc in allocations {
        let state = match client.allocation_checks(alloc).await {
            Ok(results) => {
                followed.unreadable.remove(alloc);
                worst(&results)
            }
            Err(error) => {
                let reason = error.to_string();
                if followed.unreadable.get(alloc) != Some(&reason) {
                    tracing::info!(allocation = alloc, %reason, "check results not readable; its instances are served as passing");
                    followed.unreadable.insert(alloc.to_owned(), reason);
                }
                // What was read before stays: a failing read of the checks
                // is no news about them.
                followed
                    .checks
                    .get(alloc)
                    .copied()
                    .unwrap_or(CheckState::Passing)
            }
        };
        if followed.checks.get(alloc) != Some(&state) {
            changed = true;
        }
        seen.insert(alloc.to_owned(), state);
    }
    followed.checks = seen;
    changed
}

/// The worst of an allocation's results, as Consul aggregates checks: a
/// failing check of either mode takes the instance out (a readiness check
/// failing says "send no traffic"), a check with no result yet is a warning.
fn worst(results: &BTreeMap<String, CheckResult>) -> CheckState {
    results
        .values()
        .map(|result| match (result.status, result.mode) {
            (CheckStatus::Success, _) => CheckState::Passing,
            (CheckStatus::Pending, _) => CheckState::Warning,
            (CheckStatus::Failure, CheckMode::Healthiness | CheckMode::Readiness) => {
                CheckState::Critical
            }
        })
        .max()
        .unwrap_or(CheckState::Passing)
}

fn instances_event(followed: &Followed, after_reset: bool) -> SourceEvent {
    let registrations = followed
        .registrations
        .as_deref()
        .map_or(&[][..], Vec::as_slice);
    SourceEvent::Instances {
        instances: registrations
            .iter()
            .map(|registration| {
                let checks = followed
                    .checks
                    .get(&registration.alloc_id)
                    .copied()
                    .unwrap_or(CheckState::Passing);
                instance(registration, checks)
            })
            .collect(),
        index: followed.index,
        after_reset,
    }
}

/// One registration as an instance: Nomad has no weights and no
/// maintenance mode; its datacenter is the locality's region.
fn instance(registration: &ServiceRegistration, checks: CheckState) -> ServiceInstance {
    ServiceInstance {
        id: registration.id.as_str().into(),
        node: registration.node_id.as_str().into(),
        address: registration.address.as_str().into(),
        address_is_ip: registration.address.parse::<IpAddr>().is_ok(),
        port: registration.port,
        checks,
        maintenance: false,
        weights: Weights::default(),
        tags: registration.tags.clone(),
        locality: Arc::new(Locality {
            region: registration.datacenter.clone(),
            ..Locality::default()
        }),
        source: SourceKind::Nomad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: CheckStatus, mode: CheckMode) -> CheckResult {
        CheckResult {
            id: format!("{status:?}-{mode:?}"),
            mode,
            status,
            status_code: 0,
            output: String::new(),
            timestamp: 0,
            group: "app".to_owned(),
            task: String::new(),
            service: "web".to_owned(),
            check: "alive".to_owned(),
        }
    }

    #[test]
    fn the_checked_listing_says_which_namespaces_hold_each_service_and_which_are_held() {
        let entry = |namespace: &str, services: &[&str]| nomad_client::NamespaceServices {
            namespace: namespace.to_owned(),
            services: services
                .iter()
                .map(|service| nomad_client::ServiceSummary {
                    service_name: (*service).to_owned(),
                    tags: Vec::new(),
                })
                .collect(),
        };
        let checked = CheckedListing {
            namespaces: vec![entry("a", &["web"]), entry("b", &["api", "web"])],
            held: [(
                "a".to_owned(),
                NomadError::PermissionDenied {
                    endpoint: "GET /v1/services".to_owned(),
                    message: "Permission denied".to_owned(),
                },
            )]
            .into(),
        };
        let listing = listing_of(&checked);
        let of = |service: &str| -> Vec<&str> {
            listing.namespaces[service]
                .iter()
                .map(String::as_str)
                .collect()
        };
        assert_eq!(of("web"), ["a", "b"]);
        assert_eq!(of("api"), ["b"]);
        assert_eq!(listing.held.keys().collect::<Vec<_>>(), ["a"]);
        assert!(
            listing.held["a"].contains("permission denied"),
            "{:?}",
            listing.held
        );
    }

    #[test]
    fn the_worst_check_result_decides_as_in_consul() {
        let of =
            |list: Vec<CheckResult>| worst(&list.into_iter().map(|r| (r.id.clone(), r)).collect());
        assert_eq!(of(vec![]), CheckState::Passing);
        assert_eq!(
            of(vec![result(CheckStatus::Success, CheckMode::Healthiness)]),
            CheckState::Passing
        );
        assert_eq!(
            of(vec![
                result(CheckStatus::Success, CheckMode::Healthiness),
                result(CheckStatus::Pending, CheckMode::Readiness),
            ]),
            CheckState::Warning
        );
        assert_eq!(
            of(vec![
                result(CheckStatus::Pending, CheckMode::Healthiness),
                result(CheckStatus::Failure, CheckMode::Readiness),
            ]),
            CheckState::Critical
        );
    }
}

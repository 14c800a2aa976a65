//! Consul's health entries -> the domain's [`ServiceInstance`].
//!
//! Consul -> the engine's [`SourceEvent`]s: the only module of this service
//! that reads Consul's types.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consul_client::watch::{WatchConfig, WatchEvent};
use consul_client::{
    CheckBrief, CheckStatus, Client, HealthFilter, HealthState, QueryOptions, QueryResponse,
    ServiceEntry,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::config::AddressSource;
use crate::engine::{ServiceSource, SourceEvent, WatchKey};
use crate::model::{CheckState, Locality, ServiceInstance, Weights};

/// How entries are read: which address, and where the zone comes from.
#[derive(Debug, Clone)]
pub struct EntryReader {
    pub address: AddressSource,
    pub zone_meta_key: String,
}

impl EntryReader {
    pub fn instance(&self, entry: &ServiceEntry) -> ServiceInstance {
        let node = &entry.node;
        let address = match self.address {
            AddressSource::Service => entry.address().to_owned(),
            AddressSource::Node => node.address.clone(),
            AddressSource::Lan | AddressSource::Wan => {
                let tag = if self.address == AddressSource::Lan {
                    "lan"
                } else {
                    "wan"
                };
                // A service's own tagged address wins over its node's
                // (`lan_ipv4`, `wan_ipv6`... are Consul's service-level keys).
                entry
                    .service
                    .tagged_addresses
                    .get(tag)
                    .map(|a| a.address.clone())
                    .or_else(|| node.tagged_addresses.get(tag).cloned())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| entry.address().to_owned())
            }
        };
        ServiceInstance {
            id: entry.service.id.clone(),
            node: node.node.clone(),
            address,
            port: entry.service.port,
            checks: match entry.status() {
                CheckStatus::Passing => CheckState::Passing,
                CheckStatus::Warning => CheckState::Warning,
                CheckStatus::Critical => CheckState::Critical,
            },
            maintenance: entry.in_maintenance(),
            weights: Weights {
                passing: entry.service.weights.passing,
                warning: entry.service.weights.warning,
            },
            tags: entry.service.tags.clone(),
            locality: Locality {
                region: node.datacenter.clone(),
                zone: node
                    .meta
                    .get(&self.zone_meta_key)
                    .cloned()
                    .unwrap_or_default(),
                sub_zone: String::new(),
            },
        }
    }
}

/// Instance data from Consul, one blocking query per watched service while
/// they fit in the connection budget, and a shared DC-wide view beyond it.
///
/// Why two modes: every in-flight blocking query holds one HTTP connection,
/// and a Consul agent allows 200 per client IP by default. Per-service
/// queries give the fastest, most precise updates, so the first
/// `per_service_limit` services get them; further services are fed by
/// [`DcWideView`], which needs two blocking queries per datacenter however
/// many services it covers (see docs/adr/0005-eds-watch-modes.md).
#[derive(Debug)]
pub struct ConsulSource {
    client: Client,
    reader: EntryReader,
    config: WatchConfig,
    per_service_limit: usize,
    per_service_active: Arc<AtomicUsize>,
    dc_wide: Mutex<HashMap<Option<String>, DcWideView>>,
    dc_wide_sweep: Duration,
}

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
            dc_wide: Mutex::new(HashMap::new()),
            dc_wide_sweep,
        }
    }

    fn per_service(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        let mut config = self.config.clone();
        config.datacenter = key.datacenter.clone();
        let reader = self.reader.clone();
        let slot = SlotGuard::take(self.per_service_active.clone());
        let mut last_index: Option<u64> = None;
        self.client
            .watch_health_service(key.service.clone(), HealthFilter::All, config)
            .map(move |event| {
                // The guard lives as long as the stream: dropping the watch
                // frees its per-service slot.
                let _slot = &slot;
                let recovered = matches!(event, WatchEvent::Recovered { .. });
                match event {
                    WatchEvent::Changed { value, index, .. }
                    | WatchEvent::Recovered { value, index, .. } => {
                        // The first answer after an outage may come from a
                        // replaced, still empty server even when its index
                        // did not go backwards: treat it like a reset.
                        let after_reset = recovered || last_index.is_some_and(|last| index < last);
                        last_index = Some(index);
                        SourceEvent::Instances {
                            instances: value.iter().map(|e| reader.instance(e)).collect(),
                            index,
                            after_reset,
                        }
                    }
                    WatchEvent::Degraded { error, .. } => SourceEvent::Failing {
                        error: error.to_string(),
                    },
                }
            })
            .boxed()
    }
}

impl ServiceSource for ConsulSource {
    fn watch(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        if self.per_service_active.load(Ordering::SeqCst) < self.per_service_limit {
            return self.per_service(key);
        }
        let mut views = self.dc_wide.lock().unwrap_or_else(|e| e.into_inner());
        let view = views.entry(key.datacenter.clone()).or_insert_with(|| {
            tracing::info!(
                dc = key.datacenter.as_deref().unwrap_or("local"),
                limit = self.per_service_limit,
                "per-service watch budget used up; starting the DC-wide view"
            );
            let mut config = self.config.clone();
            config.datacenter = key.datacenter.clone();
            DcWideView::start(
                self.client.clone(),
                self.reader.clone(),
                config,
                self.dc_wide_sweep,
            )
        });
        view.subscribe(&key.service)
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

/// Many services of one datacenter fed by two blocking queries:
/// `/v1/health/state/any` (every check: tells which services' instances or
/// health changed) and `/v1/catalog/services` (names and tags), each change
/// followed by targeted reads of the services it concerns. Instances without
/// any check leave no trace in the checks, so catalog changes that no check
/// change explains are caught by a sweep of all covered services, at most
/// once per `sweep` interval.
#[derive(Debug)]
pub struct DcWideView {
    subscribe: mpsc::UnboundedSender<(String, mpsc::UnboundedSender<SourceEvent>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DcWideView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DcWideView {
    fn start(client: Client, reader: EntryReader, config: WatchConfig, sweep: Duration) -> Self {
        let (subscribe, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            DcWideTask {
                client,
                reader,
                config,
                sweep,
                subscribers: HashMap::new(),
                check_fingerprints: HashMap::new(),
                node_fingerprints: HashMap::new(),
                nodes_of: HashMap::new(),
                catalog: None,
                last_index: HashMap::new(),
                failed: BTreeSet::new(),
            }
            .run(requests),
        );
        Self { subscribe, task }
    }

    fn subscribe(&self, service: &str) -> BoxStream<'static, SourceEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.subscribe.send((service.to_owned(), tx)).is_err() {
            tracing::error!(
                service,
                "the DC-wide view has stopped; no updates for this service"
            );
        }
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}

struct DcWideTask {
    client: Client,
    reader: EntryReader,
    config: WatchConfig,
    sweep: Duration,
    subscribers: HashMap<String, Vec<mpsc::UnboundedSender<SourceEvent>>>,
    /// Per service: a hash of its checks (node, id, status), to spot changes.
    check_fingerprints: HashMap<String, u64>,
    /// Per node: a hash of its node-level checks.
    node_fingerprints: HashMap<String, u64>,
    /// Nodes each covered service had instances on at its last read.
    nodes_of: HashMap<String, BTreeSet<String>>,
    catalog: Option<BTreeMap<String, Vec<String>>>,
    last_index: HashMap<String, u64>,
    /// Services whose last read failed: their next answer counts as after a reset.
    failed: BTreeSet<String>,
}

impl DcWideTask {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<(String, mpsc::UnboundedSender<SourceEvent>)>,
    ) {
        let mut state_config = self.config.clone();
        // The whole datacenter's checks are a large answer; reading it more
        // than a few times a second buys nothing and costs the agent. The
        // watch reads at most twice per interval: four times a second.
        state_config.min_interval = state_config.min_interval.max(Duration::from_millis(500));
        let mut checks = self
            .client
            .watch_health_state_brief(HealthState::Any, state_config.clone());
        let mut catalog = self.client.watch_catalog_services(state_config);
        let mut sweep_due: Option<tokio::time::Instant> = None;
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            let sweep_at = sweep_due;
            tokio::select! {
                request = requests.recv() => {
                    let Some((service, sender)) = request else { return };
                    self.subscribers.entry(service.clone()).or_default().push(sender);
                    // A new subscriber gets the current state at once.
                    self.read([service]).await;
                }
                Some(event) = checks.next() => match event {
                    WatchEvent::Changed { value, .. } | WatchEvent::Recovered { value, .. } => {
                        let changed = self.changed_by_checks(&value);
                        self.read(changed).await;
                    }
                    WatchEvent::Degraded { error, .. } => self.fail_all(&error.to_string()),
                },
                Some(event) = catalog.next() => match event {
                    WatchEvent::Changed { value, .. } | WatchEvent::Recovered { value, .. } => {
                        let retagged = self.changed_by_catalog(&value);
                        self.read(retagged).await;
                        // Instances without checks leave no trace above.
                        let earliest = last_sweep + self.sweep;
                        sweep_due.get_or_insert(earliest.max(tokio::time::Instant::now()));
                    }
                    WatchEvent::Degraded { error, .. } => self.fail_all(&error.to_string()),
                },
                () = sleep_until_opt(sweep_at), if sweep_at.is_some() => {
                    sweep_due = None;
                    last_sweep = tokio::time::Instant::now();
                    let services: Vec<String> = self.subscribers.keys().cloned().collect();
                    self.read(services).await;
                }
            }
            self.subscribers.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
        }
    }

    /// Services whose checks (or whose nodes' checks) differ from last time.
    fn changed_by_checks(&mut self, checks: &[CheckBrief]) -> BTreeSet<String> {
        let mut by_service: HashMap<&str, Vec<(&str, &str, CheckStatus)>> = HashMap::new();
        let mut by_node: HashMap<&str, Vec<(&str, CheckStatus)>> = HashMap::new();
        for check in checks {
            if check.service_name.is_empty() {
                by_node
                    .entry(check.node.as_str())
                    .or_default()
                    .push((check.check_id.as_str(), check.status));
            } else {
                by_service
                    .entry(check.service_name.as_str())
                    .or_default()
                    .push((check.node.as_str(), check.check_id.as_str(), check.status));
            }
        }
        let mut changed = BTreeSet::new();
        let services: BTreeSet<String> = by_service
            .keys()
            .map(|s| (*s).to_owned())
            .chain(self.check_fingerprints.keys().cloned())
            .collect();
        for service in services {
            let print = by_service
                .get_mut(service.as_str())
                .map(|list| fingerprint(list))
                .unwrap_or(0);
            if self.check_fingerprints.get(&service).copied().unwrap_or(0) != print {
                changed.insert(service.clone());
            }
            if print == 0 {
                self.check_fingerprints.remove(&service);
            } else {
                self.check_fingerprints.insert(service, print);
            }
        }
        let nodes: BTreeSet<String> = by_node
            .keys()
            .map(|n| (*n).to_owned())
            .chain(self.node_fingerprints.keys().cloned())
            .collect();
        for node in nodes {
            let print = by_node
                .get_mut(node.as_str())
                .map(|list| fingerprint(list))
                .unwrap_or(0);
            if self.node_fingerprints.get(&node).copied().unwrap_or(0) != print {
                for (service, nodes) in &self.nodes_of {
                    if nodes.contains(&node) {
                        changed.insert(service.clone());
                    }
                }
            }
            if print == 0 {
                self.node_fingerprints.remove(&node);
            } else {
                self.node_fingerprints.insert(node, print);
            }
        }
        changed.retain(|service| self.subscribers.contains_key(service));
        changed
    }

    /// Covered services whose tags changed or that appeared or vanished.
    fn changed_by_catalog(&mut self, services: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        let previous = self.catalog.replace(services.clone()).unwrap_or_default();
        self.subscribers
            .keys()
            .filter(|service| previous.get(*service) != services.get(*service))
            .cloned()
            .collect()
    }

    /// Targeted reads of `services`, a few at a time, each result sent to
    /// that service's subscribers.
    async fn read(&mut self, services: impl IntoIterator<Item = String>) {
        let options = QueryOptions {
            datacenter: self.config.datacenter.clone(),
            stale: self.config.stale,
            ..QueryOptions::default()
        };
        let client = self.client.clone();
        let mut answers = futures::stream::iter(services)
            .map(|service| {
                let client = client.clone();
                let options = options.clone();
                async move {
                    let result = client
                        .health_service(&service, HealthFilter::All, &options)
                        .await;
                    (service, result)
                }
            })
            .buffer_unordered(TARGETED_READS_IN_FLIGHT);
        // Each answer is handed on as it arrives: a sweep of thousands of
        // services never holds more than the reads in flight.
        while let Some((service, result)) = answers.next().await {
            self.deliver(&service, result);
        }
    }

    fn deliver(
        &mut self,
        service: &str,
        result: Result<QueryResponse<Vec<ServiceEntry>>, consul_client::Error>,
    ) {
        let event = match result {
            Ok(response) => {
                let index = response.meta.index.unwrap_or(1).max(1);
                let previous = self.last_index.insert(service.to_owned(), index);
                let recovered = self.failed.remove(service);
                self.nodes_of.insert(
                    service.to_owned(),
                    response.value.iter().map(|e| e.node.node.clone()).collect(),
                );
                SourceEvent::Instances {
                    instances: response
                        .value
                        .iter()
                        .map(|e| self.reader.instance(e))
                        .collect(),
                    index,
                    after_reset: recovered || previous.is_some_and(|p| index < p),
                }
            }
            Err(error) => {
                self.failed.insert(service.to_owned());
                SourceEvent::Failing {
                    error: error.to_string(),
                }
            }
        };
        if let Some(senders) = self.subscribers.get(service) {
            for sender in senders {
                let _ = sender.send(event.clone());
            }
        }
    }

    fn fail_all(&mut self, error: &str) {
        self.failed.extend(self.subscribers.keys().cloned());
        for senders in self.subscribers.values() {
            for sender in senders {
                let _ = sender.send(SourceEvent::Failing {
                    error: error.to_owned(),
                });
            }
        }
    }
}

/// Targeted reads in flight at once: enough to sweep thousands of services
/// in about a second, few enough to leave the agent's budget to others.
const TARGETED_READS_IN_FLIGHT: usize = 16;

fn fingerprint<T: Hash + Ord>(items: &mut [T]) -> u64 {
    items.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    items.hash(&mut hasher);
    // 0 means "no checks"; a real fingerprint is never 0.
    hasher.finish().max(1)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Consul 1.8 answer: node with lan/wan tagged addresses and a zone,
    /// service without its own address, tagged as canary, weighted.
    const ENTRY: &str = r#"{
        "Node": {"ID": "a1", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                 "TaggedAddresses": {"lan": "10.0.0.1", "wan": "2001:db8::1"},
                 "Meta": {"zone": "eu-1a"}, "CreateIndex": 5, "ModifyIndex": 6},
        "Service": {"ID": "web-1", "Service": "web", "Tags": ["canary"], "Address": "",
                    "TaggedAddresses": null, "Meta": null, "Port": 8080,
                    "Weights": {"Passing": 10, "Warning": 1}, "EnableTagOverride": false,
                    "CreateIndex": 7, "ModifyIndex": 7},
        "Checks": [{"Node": "n1", "CheckID": "serfHealth", "Name": "Serf", "Status": "warning",
                    "Notes": "", "Output": "", "ServiceID": "", "ServiceName": "",
                    "ServiceTags": [], "Type": "", "CreateIndex": 5, "ModifyIndex": 5}]
    }"#;

    fn reader(address: AddressSource) -> EntryReader {
        EntryReader {
            address,
            zone_meta_key: "zone".to_owned(),
        }
    }

    #[test]
    fn an_entry_becomes_an_instance_with_health_weights_tags_and_locality() {
        let entry: ServiceEntry = serde_json::from_str(ENTRY).expect("entry");
        let instance = reader(AddressSource::Service).instance(&entry);
        assert_eq!(instance.id, "web-1");
        assert_eq!(
            instance.address, "10.0.0.1",
            "no service address: the node's"
        );
        assert_eq!(instance.port, 8080);
        assert_eq!(instance.checks, CheckState::Warning, "node checks count");
        assert_eq!(
            instance.weights,
            Weights {
                passing: 10,
                warning: 1
            }
        );
        assert_eq!(instance.tags, vec!["canary".to_owned()]);
        assert_eq!(instance.locality.region, "dc1");
        assert_eq!(instance.locality.zone, "eu-1a");
        assert!(!instance.maintenance);
    }

    #[test]
    fn tagged_addresses_can_be_chosen_and_ipv6_passes_through() {
        let entry: ServiceEntry = serde_json::from_str(ENTRY).expect("entry");
        assert_eq!(
            reader(AddressSource::Wan).instance(&entry).address,
            "2001:db8::1"
        );
        assert_eq!(
            reader(AddressSource::Lan).instance(&entry).address,
            "10.0.0.1"
        );
        let mut own = entry.clone();
        own.service.address = "10.9.9.9".to_owned();
        assert_eq!(
            reader(AddressSource::Service).instance(&own).address,
            "10.9.9.9"
        );
        assert_eq!(
            reader(AddressSource::Node).instance(&own).address,
            "10.0.0.1"
        );
    }
}

//! Consul's health entries -> the domain's [`ServiceInstance`].
//!
//! Consul -> the engine's [`SourceEvent`]s: the only module of this service
//! that reads Consul's types.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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

use service_support::time::sleep_until_opt;

use crate::config::AddressSource;
use crate::engine::{ServiceSource, SourceEvent, WatchKey};
use crate::model::{CheckState, Locality, ServiceInstance, Weights};

/// How entries are read: which address, and where the zone comes from.
#[derive(Debug, Clone)]
pub struct EntryReader {
    pub address: AddressSource,
    pub zone_meta_key: String,
    /// Shared by every watch's reader (clones share it).
    interner: Arc<Mutex<Interner>>,
}

impl EntryReader {
    pub fn new(address: AddressSource, zone_meta_key: String) -> Self {
        Self {
            address,
            zone_meta_key,
            interner: Arc::default(),
        }
    }

    /// The instances of one answer.
    pub fn instances(&self, entries: &[ServiceEntry]) -> Vec<ServiceInstance> {
        let mut interner = self.interner.lock().unwrap_or_else(|e| e.into_inner());
        let instances = entries
            .iter()
            .map(|entry| self.read(entry, &mut interner))
            .collect();
        interner.sweep_if_grown();
        instances
    }

    pub fn instance(&self, entry: &ServiceEntry) -> ServiceInstance {
        self.instances(std::slice::from_ref(entry))
            .pop()
            .expect("one instance per entry")
    }

    fn read(&self, entry: &ServiceEntry, interner: &mut Interner) -> ServiceInstance {
        let node = &entry.node;
        let address = match self.address {
            AddressSource::Service => entry.address(),
            AddressSource::Node => node.address.as_str(),
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
                    .map(|a| a.address.as_str())
                    .or_else(|| node.tagged_addresses.get(tag).map(String::as_str))
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| entry.address())
            }
        };
        let zone = node
            .meta
            .get(&self.zone_meta_key)
            .map(String::as_str)
            .unwrap_or_default();
        ServiceInstance {
            id: entry.service.id.as_str().into(),
            node: interner.text(&node.node),
            address: interner.text(address),
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
            locality: interner.locality(&node.datacenter, zone),
        }
    }
}

/// One shared copy of each node name, address and locality in use.
///
/// Every instance on a node repeats its node's name and (usually) address,
/// and every instance of a datacenter and zone its locality: 100,000
/// instances on 500 nodes would otherwise hold 100,000 copies of each,
/// twice over once endpoints are made of them. Entries nothing else
/// refers to any more are dropped whenever the table has doubled since the
/// last sweep, so it follows the cluster as nodes come and go.
#[derive(Debug, Default)]
struct Interner {
    texts: HashSet<Arc<str>>,
    localities: HashSet<Arc<Locality>>,
    /// Entries after the last sweep.
    swept_at: usize,
}

impl Interner {
    /// Below this many entries a sweep is not worth its time.
    const SWEEP_FLOOR: usize = 1024;

    fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.texts.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = text.into();
        self.texts.insert(Arc::clone(&shared));
        shared
    }

    fn locality(&mut self, region: &str, zone: &str) -> Arc<Locality> {
        let locality = Locality {
            region: region.to_owned(),
            zone: zone.to_owned(),
            sub_zone: String::new(),
        };
        if let Some(shared) = self.localities.get(&locality) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(locality);
        self.localities.insert(Arc::clone(&shared));
        shared
    }

    fn len(&self) -> usize {
        self.texts.len() + self.localities.len()
    }

    fn sweep_if_grown(&mut self) {
        if self.len() < Self::SWEEP_FLOOR.max(2 * self.swept_at) {
            return;
        }
        // Only the table holds it: no instance uses it any more.
        self.texts.retain(|text| Arc::strong_count(text) > 1);
        self.localities
            .retain(|locality| Arc::strong_count(locality) > 1);
        self.swept_at = self.len();
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
                            instances: reader.instances(&value),
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
                checks: Arc::default(),
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
    /// The digest of the last checks answer, to spot changes.
    checks: Arc<ChecksDigest>,
    /// Nodes each covered service had instances on at its last read, as
    /// [`node_key`]s: 8 bytes per instance instead of a copy of the name.
    nodes_of: HashMap<String, Vec<u64>>,
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
        // Each answer (every check of the datacenter: tens of MiB of JSON
        // with 100,000 checks) is folded into a digest per service and per
        // node as it arrives: neither its text nor a list of its checks is
        // ever held, and the watch keeps only the digest.
        let mut checks = self.client.watch_health_state_fold(
            HealthState::Any,
            state_config.clone(),
            ChecksDigest::default,
            ChecksDigest::add,
        );
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
                        let changed = self.changed_by_checks(value);
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

    /// Covered services whose checks (or whose nodes' checks) differ from
    /// the last answer's.
    fn changed_by_checks(&mut self, checks: Arc<ChecksDigest>) -> BTreeSet<String> {
        let previous = std::mem::replace(&mut self.checks, checks);
        let current = &self.checks;
        let mut changed: BTreeSet<String> = differing(&previous.services, &current.services)
            .filter(|service| self.subscribers.contains_key(*service))
            .map(str::to_owned)
            .collect();
        let nodes: HashSet<u64> = differing(&previous.nodes, &current.nodes)
            .map(node_key)
            .collect();
        if !nodes.is_empty() {
            for (service, on) in &self.nodes_of {
                if on.iter().any(|node| nodes.contains(node))
                    && self.subscribers.contains_key(service)
                {
                    changed.insert(service.clone());
                }
            }
        }
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
                    response
                        .value
                        .iter()
                        .map(|e| node_key(&e.node.node))
                        .collect(),
                );
                SourceEvent::Instances {
                    instances: self.reader.instances(&response.value),
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

/// What the DC-wide view keeps of a `/v1/health/state/any` answer: per
/// service, and per node for node-level checks, a digest of the identity
/// and status of its checks. About 5,000 small entries where the answer
/// holds 100,000 checks.
#[derive(Debug, Default, PartialEq, Eq)]
struct ChecksDigest {
    services: HashMap<String, Digest>,
    nodes: HashMap<String, Digest>,
}

/// Checks folded in any order: how many, and the wrapping sum of each
/// one's hash. Consul's order does not matter, and any check added,
/// removed or changing status changes the sum (two changes cancelling out
/// would need two 64-bit hashes to sum to the same value).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digest {
    checks: u32,
    sum: u64,
}

impl ChecksDigest {
    fn add(&mut self, check: CheckBrief<'_>) {
        // A service check counts for its service; a node check (no service)
        // for its node, whose services it affects.
        let (map, key, hash) = if check.service_name.is_empty() {
            let hash = hash_of(&(&*check.check_id, check.status));
            (&mut self.nodes, check.node, hash)
        } else {
            let hash = hash_of(&(&*check.node, &*check.check_id, check.status));
            (&mut self.services, check.service_name, hash)
        };
        // The name is copied only the first time it is seen.
        let digest = match map.get_mut(&*key) {
            Some(digest) => digest,
            None => map.entry(key.into_owned()).or_default(),
        };
        digest.checks += 1;
        digest.sum = digest.sum.wrapping_add(hash);
    }
}

/// Names whose digest differs between `a` and `b`, or that only one has.
fn differing<'a>(
    a: &'a HashMap<String, Digest>,
    b: &'a HashMap<String, Digest>,
) -> impl Iterator<Item = &'a str> {
    let changed_or_gone = a
        .iter()
        .filter(|(name, digest)| b.get(*name) != Some(*digest))
        .map(|(name, _)| name.as_str());
    let added = b
        .keys()
        .filter(|name| !a.contains_key(*name))
        .map(String::as_str);
    changed_or_gone.chain(added)
}

/// A node name as the DC-wide view remembers it. Two names sharing a key
/// would only make a node check change trigger a read too many.
fn node_key(node: &str) -> u64 {
    hash_of(node)
}

/// A hash that is the same for the same value throughout the process
/// (std's SipHash with fixed keys).
fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
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
        EntryReader::new(address, "zone".to_owned())
    }

    #[test]
    fn an_entry_becomes_an_instance_with_health_weights_tags_and_locality() {
        let entry: ServiceEntry = serde_json::from_str(ENTRY).expect("entry");
        let instance = reader(AddressSource::Service).instance(&entry);
        assert_eq!(&*instance.id, "web-1");
        assert_eq!(
            &*instance.address, "10.0.0.1",
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
            &*reader(AddressSource::Wan).instance(&entry).address,
            "2001:db8::1"
        );
        assert_eq!(
            &*reader(AddressSource::Lan).instance(&entry).address,
            "10.0.0.1"
        );
        let mut own = entry.clone();
        own.service.address = "10.9.9.9".to_owned();
        assert_eq!(
            &*reader(AddressSource::Service).instance(&own).address,
            "10.9.9.9"
        );
        assert_eq!(
            &*reader(AddressSource::Node).instance(&own).address,
            "10.0.0.1"
        );
    }

    #[test]
    fn instances_on_one_node_share_its_name_address_and_locality() {
        let first: ServiceEntry = serde_json::from_str(ENTRY).expect("entry");
        let mut second = first.clone();
        second.service.id = "web-2".to_owned();
        let reader = reader(AddressSource::Node);
        let instances = reader.instances(&[first, second]);
        let (a, b) = (&instances[0], &instances[1]);
        assert_ne!(a.id, b.id);
        assert!(Arc::ptr_eq(&a.node, &b.node), "one copy of the node name");
        assert!(
            Arc::ptr_eq(&a.address, &b.address),
            "one copy of the address"
        );
        assert!(
            Arc::ptr_eq(&a.locality, &b.locality),
            "one copy of the locality"
        );
        // Clones of the reader (one per watch) share the same table.
        let later = reader
            .clone()
            .instance(&serde_json::from_str(ENTRY).expect("entry"));
        assert!(Arc::ptr_eq(&a.node, &later.node));
    }

    #[test]
    fn the_interner_forgets_what_no_instance_uses_once_it_has_doubled() {
        let mut interner = Interner::default();
        let kept: Vec<Arc<str>> = (0..10)
            .map(|n| interner.text(&format!("kept-{n}")))
            .collect();
        for n in 0..Interner::SWEEP_FLOOR {
            drop(interner.text(&format!("gone-{n}")));
        }
        interner.sweep_if_grown();
        assert_eq!(
            interner.texts.len(),
            kept.len(),
            "only the names still in use stay"
        );
        assert!(Arc::ptr_eq(&interner.text("kept-3"), &kept[3]));
        // Until the table has grown past the floor again, nothing is swept.
        drop(interner.text("gone-again"));
        interner.sweep_if_grown();
        assert_eq!(interner.texts.len(), kept.len() + 1);
    }

    fn check(node: &str, id: &str, status: CheckStatus, service: &str) -> CheckBrief<'static> {
        CheckBrief {
            node: node.to_owned().into(),
            check_id: id.to_owned().into(),
            status,
            service_id: service.to_owned().into(),
            service_name: service.to_owned().into(),
        }
    }

    fn digest(checks: &[CheckBrief<'static>]) -> ChecksDigest {
        let mut digest = ChecksDigest::default();
        for check in checks {
            digest.add(check.clone());
        }
        digest
    }

    fn datacenter() -> Vec<CheckBrief<'static>> {
        vec![
            check("n1", "serfHealth", CheckStatus::Passing, ""),
            check("n2", "serfHealth", CheckStatus::Passing, ""),
            check("n1", "web-1", CheckStatus::Passing, "web"),
            check("n2", "web-2", CheckStatus::Critical, "web"),
            check("n2", "api-1", CheckStatus::Passing, "api"),
            check("n3", "db-1", CheckStatus::Passing, "db"),
        ]
    }

    fn changed(a: &ChecksDigest, b: &ChecksDigest) -> BTreeSet<String> {
        differing(&a.services, &b.services)
            .chain(differing(&a.nodes, &b.nodes))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_checks_digest_ignores_order_and_sees_each_status_change() {
        let before = digest(&datacenter());
        let mut reordered = datacenter();
        reordered.reverse();
        assert_eq!(digest(&reordered), before, "Consul's order does not matter");

        let mut swapped = datacenter();
        // Two checks of one service trading statuses still change it.
        swapped[2].status = CheckStatus::Critical;
        swapped[3].status = CheckStatus::Passing;
        assert_eq!(
            changed(&before, &digest(&swapped)),
            BTreeSet::from(["web".to_owned()])
        );

        let mut node_down = datacenter();
        node_down[1].status = CheckStatus::Critical;
        assert_eq!(
            changed(&before, &digest(&node_down)),
            BTreeSet::from(["n2".to_owned()]),
            "a node check counts for its node, not a service"
        );

        let mut fewer = datacenter();
        fewer.retain(|c| c.service_name != "db");
        fewer.push(check("n3", "cache-1", CheckStatus::Passing, "cache"));
        assert_eq!(
            changed(&before, &digest(&fewer)),
            BTreeSet::from(["cache".to_owned(), "db".to_owned()]),
            "services that lost or gained all their checks"
        );
    }

    #[tokio::test]
    async fn a_checks_answer_marks_the_covered_services_it_changed() {
        // Never used to send: `changed_by_checks` only compares.
        let client = Client::new(consul_client::ClientConfig::default()).expect("client");
        let mut task = DcWideTask {
            client,
            reader: reader(AddressSource::Service),
            config: WatchConfig::default(),
            sweep: Duration::from_secs(10),
            subscribers: HashMap::new(),
            checks: Arc::default(),
            nodes_of: HashMap::new(),
            catalog: None,
            last_index: HashMap::new(),
            failed: BTreeSet::new(),
        };
        // Covered: web (on n1 and n2) and api (on n2); db is not.
        for (service, nodes) in [("web", ["n1", "n2"].as_slice()), ("api", &["n2"])] {
            let (tx, _rx) = mpsc::unbounded_channel();
            task.subscribers.insert(service.to_owned(), vec![tx]);
            task.nodes_of.insert(
                service.to_owned(),
                nodes.iter().map(|n| node_key(n)).collect(),
            );
        }
        let first = task.changed_by_checks(Arc::new(digest(&datacenter())));
        assert_eq!(
            first,
            BTreeSet::from(["api".to_owned(), "web".to_owned()]),
            "the first answer concerns every covered service with checks"
        );
        assert!(
            task.changed_by_checks(Arc::new(digest(&datacenter())))
                .is_empty(),
            "the same checks again change nothing"
        );

        let mut db_down = datacenter();
        db_down[5].status = CheckStatus::Critical;
        assert!(
            task.changed_by_checks(Arc::new(digest(&db_down)))
                .is_empty(),
            "db is not covered"
        );

        let mut n2_down = db_down.clone();
        n2_down[1].status = CheckStatus::Critical;
        assert_eq!(
            task.changed_by_checks(Arc::new(digest(&n2_down))),
            BTreeSet::from(["api".to_owned(), "web".to_owned()]),
            "a node check change concerns every covered service on that node"
        );

        let mut web_1_down = n2_down.clone();
        web_1_down[2].status = CheckStatus::Critical;
        assert_eq!(
            task.changed_by_checks(Arc::new(digest(&web_1_down))),
            BTreeSet::from(["web".to_owned()])
        );
    }
}

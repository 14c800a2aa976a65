//! Consul's health entries -> the domain's [`ServiceInstance`]: which
//! address Envoy is given (`--address`), where the zone comes from, and one
//! shared copy of the names and localities that instances repeat.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use consul_client::{CheckStatus, ServiceEntry};

use crate::config::AddressSource;
use crate::model::{CheckState, Locality, ServiceInstance, SourceKind, Weights};

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
            address_is_ip: address.parse::<IpAddr>().is_ok(),
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
            source: SourceKind::Consul,
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
    fn an_address_is_classed_as_ip_or_hostname_when_read() {
        let entry: ServiceEntry = serde_json::from_str(ENTRY).expect("entry");
        assert!(
            reader(AddressSource::Service)
                .instance(&entry)
                .address_is_ip
        );
        assert!(
            reader(AddressSource::Wan).instance(&entry).address_is_ip,
            "IPv6"
        );
        let mut by_name = entry.clone();
        by_name.service.address = "web.internal".to_owned();
        let instance = reader(AddressSource::Service).instance(&by_name);
        assert_eq!(&*instance.address, "web.internal");
        assert!(!instance.address_is_ip, "EDS endpoints must be IPs");
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
}

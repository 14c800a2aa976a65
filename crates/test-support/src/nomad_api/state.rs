//! The registrations table and its index, as Nomad's state store keeps them
//! (`nomad/state/state_store_service_registration.go`).
//!
//! One index covers the whole table: every write that changes a
//! registration moves it, whichever service it touched, and a write that
//! changes nothing leaves it alone. What a blocked query waits for is
//! narrower (see [`Watch`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use super::{AllocCheck, Registration};

/// What a blocked query is woken by: the part of the table its read
/// covered, as go-memdb's watch channels cover it. A query on one service
/// is not woken by another service's change, even though both share the
/// table index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Watch {
    /// One service name in one namespace (`/v1/service/:name`).
    Service { namespace: String, name: String },
    /// Every registration in one namespace (`/v1/services?namespace=ns`).
    Namespace(String),
    /// The whole table (`/v1/services?namespace=*`).
    All,
    /// Nothing but a state restore (a `*` listing the token may read none of).
    Nothing,
}

/// What a read returned: the body, the index it carries, what wakes it.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub index: u64,
    pub body: Value,
    pub watch: Watch,
}

#[derive(Debug, Clone)]
struct Stored {
    registration: Registration,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Default)]
pub(super) struct Table {
    /// The registrations table's index; 0 until the first write.
    index: u64,
    /// By (namespace, ID), Nomad's primary key.
    registrations: BTreeMap<(String, String), Stored>,
    /// Check results per allocation, and the namespace each allocation is in.
    checks: HashMap<String, Vec<AllocCheck>>,
    alloc_namespaces: HashMap<String, String>,
    /// Counts writes and restores, unlike the index never going back, so a
    /// blocked query can tell whether its part of the table changed.
    sequence: u64,
    last_write_by_service: HashMap<(String, String), u64>,
    last_write_by_namespace: HashMap<String, u64>,
    last_write: u64,
    last_restore: u64,
}

impl Table {
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Inserts or replaces by (namespace, ID); an identical registration is
    /// no write. Returns the table index after it.
    pub fn upsert(&mut self, registration: Registration) -> u64 {
        let key = (registration.namespace.clone(), registration.id.clone());
        let existing = self.registrations.get(&key).cloned();
        if existing
            .as_ref()
            .is_some_and(|stored| stored.registration == registration)
        {
            return self.index;
        }
        // A renamed service is a change to both names.
        let index = self.write(
            [&registration]
                .into_iter()
                .chain(existing.as_ref().map(|stored| &stored.registration))
                .map(service_key),
        );
        let create_index = existing.map_or(index, |stored| stored.create_index);
        self.alloc_namespaces.insert(
            registration.alloc_id.clone(),
            registration.namespace.clone(),
        );
        self.registrations.insert(
            key,
            Stored {
                registration,
                create_index,
                modify_index: index,
            },
        );
        index
    }

    /// Removes one registration; removing an unknown one is no write.
    pub fn delete(&mut self, namespace: &str, id: &str) -> u64 {
        let key = (namespace.to_owned(), id.to_owned());
        match self.registrations.remove(&key) {
            Some(stored) => self.write([service_key(&stored.registration)]),
            None => self.index,
        }
    }

    /// Removes every registration of an allocation in one write, and its
    /// check results, as a stopped allocation's go.
    pub fn stop_allocation(&mut self, alloc_id: &str) -> u64 {
        self.checks.remove(alloc_id);
        self.alloc_namespaces.remove(alloc_id);
        let (gone, kept): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.registrations)
                .into_iter()
                .partition(|(_, stored)| stored.registration.alloc_id == alloc_id);
        self.registrations = kept;
        if gone.is_empty() {
            return self.index;
        }
        let touched: Vec<_> = gone
            .values()
            .map(|stored| service_key(&stored.registration))
            .collect();
        self.write(touched)
    }

    /// A snapshot restore: the index moves to `to` (backwards, usually) and
    /// every blocked query re-reads, as an abandoned state store makes them.
    pub fn restore_index(&mut self, to: u64) {
        self.index = to;
        for stored in self.registrations.values_mut() {
            stored.create_index = stored.create_index.min(to);
            stored.modify_index = stored.modify_index.min(to);
        }
        self.sequence += 1;
        self.last_restore = self.sequence;
    }

    pub fn set_checks(&mut self, alloc_id: &str, checks: Vec<AllocCheck>) {
        self.alloc_namespaces
            .entry(alloc_id.to_owned())
            .or_insert_with(|| "default".to_owned());
        self.checks.insert(alloc_id.to_owned(), checks);
    }

    /// Changes only grow this; a blocked query re-reads once the value for
    /// its watch differs from what it saw.
    pub fn watch_sequence(&self, watch: &Watch) -> u64 {
        let written = match watch {
            Watch::Service { namespace, name } => self
                .last_write_by_service
                .get(&(namespace.clone(), name.clone()))
                .copied(),
            Watch::Namespace(namespace) => self.last_write_by_namespace.get(namespace).copied(),
            Watch::All => Some(self.last_write),
            Watch::Nothing => None,
        };
        written.unwrap_or(0).max(self.last_restore)
    }

    /// The namespaces that exist: `default` and those holding registrations.
    pub fn namespaces(&self) -> BTreeSet<String> {
        std::iter::once("default".to_owned())
            .chain(
                self.registrations
                    .keys()
                    .map(|(namespace, _)| namespace.clone()),
            )
            .collect()
    }

    /// `GET /v1/service/:name`: every registration of `name` in `namespace`,
    /// by ID. A namespace of `*` is taken literally, as Nomad's state lookup
    /// takes it, so it matches nothing.
    pub fn service(&self, namespace: &str, name: &str) -> Answer {
        let body = self
            .registrations
            .values()
            .filter(|stored| {
                stored.registration.namespace == namespace
                    && stored.registration.service_name == name
            })
            .map(registration_json)
            .collect();
        Answer {
            index: self.reply_index(),
            body: Value::Array(body),
            watch: Watch::Service {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        }
    }

    /// `GET /v1/services?namespace=ns`: `[]` when the namespace has no
    /// registrations, else one entry for it.
    pub fn services_in(&self, namespace: &str) -> Answer {
        Answer {
            index: self.reply_index(),
            body: self.listing(|candidate| candidate == namespace),
            watch: Watch::Namespace(namespace.to_owned()),
        }
    }

    /// `GET /v1/services?namespace=*`: one entry per namespace in `allowed`
    /// (all when `None`) holding registrations; the others are dropped
    /// without a word.
    pub fn services_across(&self, allowed: Option<&BTreeSet<String>>) -> Answer {
        Answer {
            index: self.reply_index(),
            body: self
                .listing(|namespace| allowed.is_none_or(|allowed| allowed.contains(namespace))),
            watch: Watch::All,
        }
    }

    /// The namespace an allocation runs in, if the table knows it.
    pub fn alloc_namespace(&self, alloc_id: &str) -> Option<&str> {
        self.alloc_namespaces.get(alloc_id).map(String::as_str)
    }

    /// `GET /v1/client/allocation/:id/checks`: check ID -> result.
    pub fn checks_json(&self, alloc_id: &str) -> Value {
        let results = self
            .checks
            .get(alloc_id)
            .into_iter()
            .flatten()
            .map(|check| (check.id.clone(), check.to_json()))
            .collect();
        Value::Object(results)
    }

    /// Nomad floors the index it answers with at 1 (`setReplyQueryMeta`).
    fn reply_index(&self) -> u64 {
        self.index.max(1)
    }

    /// Service names with the union of their tags, per namespace.
    /// Nomad builds both from Go maps, so its order is unspecified; sorted
    /// here so tests compare whole bodies.
    fn listing(&self, include: impl Fn(&str) -> bool) -> Value {
        let mut by_namespace: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
        for stored in self.registrations.values() {
            let registration = &stored.registration;
            if !include(&registration.namespace) {
                continue;
            }
            by_namespace
                .entry(&registration.namespace)
                .or_default()
                .entry(&registration.service_name)
                .or_default()
                .extend(registration.tags.iter().map(String::as_str));
        }
        let entries = by_namespace
            .into_iter()
            .map(|(namespace, services)| {
                let services: Vec<Value> = services
                    .into_iter()
                    .map(|(name, tags)| json!({ "ServiceName": name, "Tags": tags }))
                    .collect();
                json!({ "Namespace": namespace, "Services": services })
            })
            .collect();
        Value::Array(entries)
    }

    /// One write touching `services`: the index and the sequence move.
    fn write<'a>(&mut self, services: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
        self.index += 1;
        self.sequence += 1;
        for (namespace, name) in services {
            self.last_write_by_service
                .insert((namespace.to_owned(), name.to_owned()), self.sequence);
            self.last_write_by_namespace
                .insert(namespace.to_owned(), self.sequence);
        }
        self.last_write = self.sequence;
        self.index
    }
}

fn service_key(registration: &Registration) -> (&str, &str) {
    (&registration.namespace, &registration.service_name)
}

fn registration_json(stored: &Stored) -> Value {
    let registration = &stored.registration;
    json!({
        "ID": registration.id,
        "ServiceName": registration.service_name,
        "Namespace": registration.namespace,
        "NodeID": registration.node_id,
        "Datacenter": registration.datacenter,
        "JobID": registration.job_id,
        "AllocID": registration.alloc_id,
        "Tags": registration.tags,
        "Address": registration.address,
        "Port": registration.port,
        "CreateIndex": stored.create_index,
        "ModifyIndex": stored.modify_index,
    })
}

//! The routed TLS hosts, read from the registries' service tags (see
//! `sources`) with the gateway's own parser (the `route-tags` crate), and
//! how long each has been unrouted.
//!
//! A registry's service list gives each service the union of its
//! instances' tags, which is what a certificate needs (a host some
//! instance routes is a host some request may arrive for, including the
//! new tags of a rolling deploy).
//!
//! Rule kept here: only an answer that can be believed makes a host
//! unrouted. An answer after a failure or an index reset, or one with no
//! TLS host at all while some were routed (Consul 1.8 answers a read whose
//! ACL was narrowed with 200 and an empty list), leaves every host as it
//! was; a failed read changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use route_tags::{HostPattern, InstanceTags, TagPrefix, service_decl};
use serde::Serialize;
use time::OffsetDateTime;

/// The TLS hosts the tags route, each with the services routing it.
///
/// A host is TLS when any route of it, of any service, says `tls=true`
/// (the route table's rule 4), so every service routing a TLS host is
/// listed, `tls=true` or not.
pub fn tls_hosts(
    prefix: &TagPrefix,
    services: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut routing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut tls: BTreeSet<String> = BTreeSet::new();
    for (service, tags) in services {
        if !route_tags::mentions_prefix(prefix, tags) {
            continue;
        }
        let decl = service_decl(prefix, &[InstanceTags { id: service, tags }]);
        for route in &decl.routes {
            let host = match &route.host {
                HostPattern::Exact(name) | HostPattern::Wildcard(name) => name,
                HostPattern::Any => continue,
            };
            routing
                .entry(host.clone())
                .or_default()
                .insert(service.clone());
            if route.options.tls {
                tls.insert(host.clone());
            }
        }
    }
    routing.retain(|host, _| tls.contains(host));
    routing
}

/// One host as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRouting {
    /// The services routing it (the last ones, once unrouted).
    pub services: BTreeSet<String>,
    /// Since when no believable answer routes it; `None` while routed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub unrouted_since: Option<OffsetDateTime>,
}

/// Every TLS host routed since the start, routed or not now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutedHosts {
    hosts: BTreeMap<String, HostRouting>,
    /// Whether the catalog answered at least once.
    read: bool,
}

impl RoutedHosts {
    pub fn hosts(&self) -> &BTreeMap<String, HostRouting> {
        &self.hosts
    }

    /// Whether the catalog has answered since the start.
    pub fn is_read(&self) -> bool {
        self.read
    }

    /// Takes one catalog answer at `now`. `believable`: the answer follows
    /// on from the previous one (not the first after failures or an index
    /// reset). Returns whether anything changed.
    pub fn on_answer(
        &mut self,
        routed: BTreeMap<String, BTreeSet<String>>,
        believable: bool,
        now: OffsetDateTime,
    ) -> bool {
        let before = self.clone();
        self.read = true;
        let some_routed = self.hosts.values().any(|h| h.unrouted_since.is_none());
        // An empty answer while hosts were routed is indistinguishable from
        // an ACL-filtered one: nothing becomes unrouted on it.
        let may_unroute = believable && !(routed.is_empty() && some_routed);
        for (host, routing) in &mut self.hosts {
            if !routed.contains_key(host) && may_unroute && routing.unrouted_since.is_none() {
                routing.unrouted_since = Some(now);
            }
        }
        for (host, services) in routed {
            self.hosts.insert(
                host,
                HostRouting {
                    services,
                    unrouted_since: None,
                },
            );
        }
        *self != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(service, tags)| {
                (
                    (*service).to_owned(),
                    tags.iter().map(|t| (*t).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn prefix() -> TagPrefix {
        TagPrefix::new("edge").expect("prefix")
    }

    #[test]
    fn tls_hosts_are_read_with_the_gateways_parser() {
        let services = catalog(&[
            ("new", &["edge.route=New.Demo.Test/ tls=true", "v2"]),
            // Same host, no tls=true itself: still a TLS host (rule 4).
            ("api", &["edge.route=new.demo.test/api"]),
            ("plain", &["edge.route=plain.demo.test/"]),
            (
                "long",
                &[
                    "edge.http.routes.web.host=long.demo.test",
                    "edge.http.routes.web.tls=true",
                ],
            ),
            ("wild", &["edge.route=*.apps.demo.test/ tls=true"]),
            // The ACME responder's empty-host route: no certificate.
            (
                "acme",
                &["edge.route=/.well-known/acme-challenge/ tls=true"],
            ),
            ("other", &["web.route=other.demo.test/ tls=true"]),
            ("broken", &["edge.route=broken.demo.test/ tls=maybe"]),
        ]);
        let hosts = tls_hosts(&prefix(), &services);
        let names: Vec<&str> = hosts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec!["*.apps.demo.test", "long.demo.test", "new.demo.test"]
        );
        let services: Vec<&str> = hosts["new.demo.test"].iter().map(String::as_str).collect();
        assert_eq!(services, vec!["api", "new"]);
    }

    fn routed(hosts: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        hosts
            .iter()
            .map(|h| ((*h).to_owned(), BTreeSet::from(["svc".to_owned()])))
            .collect()
    }

    #[test]
    fn only_a_believable_answer_starts_the_unrouted_clock() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let later = start + time::Duration::minutes(1);
        let mut hosts = RoutedHosts::default();
        assert!(hosts.on_answer(routed(&["a.test", "b.test"]), true, start));
        assert!(hosts.is_read());

        // Empty (ACL-filtered or all gone): nothing becomes unrouted.
        assert!(!hosts.on_answer(routed(&[]), true, later));
        // After a failure or a reset: not believed either.
        assert!(!hosts.on_answer(routed(&["a.test"]), false, later));
        assert!(hosts.hosts().values().all(|h| h.unrouted_since.is_none()));

        // A believable answer without b: its clock starts, once.
        assert!(hosts.on_answer(routed(&["a.test"]), true, later));
        assert_eq!(hosts.hosts()["b.test"].unrouted_since, Some(later));
        assert!(!hosts.on_answer(routed(&["a.test"]), true, later + time::Duration::hours(1)));
        assert_eq!(hosts.hosts()["b.test"].unrouted_since, Some(later));

        // Routed again: the clock stops.
        assert!(hosts.on_answer(routed(&["a.test", "b.test"]), true, later));
        assert_eq!(hosts.hosts()["b.test"].unrouted_since, None);
    }
}

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
//!
//! The clock outlives the process and the lock term: the lock holder keeps
//! a record of every host it knows (see [`next_record`]), which a replica
//! adopts at start and when it becomes the holder ([`RoutedHosts::adopt`]),
//! so a restart or a new holder continues a host's clock instead of
//! restarting it, or forgetting a host no longer routed.
//!
//! Neither the hosts nor the record grow for ever: a host is forgotten
//! once it is past its use ([`forgettable`]): unrouted for the grace, so
//! nothing renews it any more, and no certificate of its own still served
//! under its name, so the status page never loses a certificate Envoy may
//! still present. A host routed again after that is a new host.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostRouting {
    /// The services routing it (the last ones, once unrouted).
    pub services: BTreeSet<String>,
    /// Since when no believable answer routes it; `None` while routed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub unrouted_since: Option<OffsetDateTime>,
}

/// From when `routing` is past its use: once unrouted for `grace` (its
/// renewal has stopped) and `served_until`, when the certificate served
/// under the host's own name expires, has passed. `None` while routed.
pub fn past_use_from(
    routing: &HostRouting,
    grace: Duration,
    served_until: Option<OffsetDateTime>,
) -> Option<OffsetDateTime> {
    let grace_ends = routing.unrouted_since? + grace;
    Some(served_until.map_or(grace_ends, |until| grace_ends.max(until)))
}

/// Whether `routing` is past its use at `now` (see [`past_use_from`]).
pub fn forgettable(
    routing: &HostRouting,
    now: OffsetDateTime,
    grace: Duration,
    served_until: Option<OffsetDateTime>,
) -> bool {
    past_use_from(routing, grace, served_until).is_some_and(|from| from <= now)
}

/// Every TLS host routed and not yet forgotten, routed or not now.
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

    /// Takes the lock holder's stored record (see [`next_record`]): a host
    /// this replica does not know yet is taken as recorded; a host it knows
    /// unrouted takes the recorded clock, which started first (on the
    /// holder that saw it). A host routed here stays routed: an answer
    /// routing it is the newest news. Returns whether anything changed.
    pub fn adopt(&mut self, record: &BTreeMap<String, HostRouting>) -> bool {
        let mut changed = false;
        for (host, recorded) in record {
            match self.hosts.get_mut(host) {
                None => {
                    self.hosts.insert(host.clone(), recorded.clone());
                    changed = true;
                }
                Some(known) => {
                    if let (Some(_), Some(since)) = (known.unrouted_since, recorded.unrouted_since)
                        && known.unrouted_since != Some(since)
                    {
                        known.unrouted_since = Some(since);
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Forgets the hosts `forget` names past their use (see
    /// [`forgettable`]). Returns the hosts forgotten.
    pub fn forget(&mut self, forget: impl Fn(&str, &HostRouting) -> bool) -> Vec<String> {
        let gone: Vec<String> = self
            .hosts
            .iter()
            .filter(|(host, routing)| forget(host, routing))
            .map(|(host, _)| host.clone())
            .collect();
        for host in &gone {
            self.hosts.remove(host);
        }
        gone
    }
}

/// The record the lock holder stores after `record` once its replica knows
/// `hosts`: every host known, routed ones cleared (`None`); a host unrouted
/// keeps the clock recorded for it, or takes the replica's; a host the
/// replica does not know yet (a record adopted late) stays as recorded,
/// unless it has been unrouted for `grace` by `now`: the replica forgot it
/// (see [`forgettable`]), or will once it adopts it, or, if a certificate
/// of its own is still served there, lists it again in `hosts`.
pub fn next_record(
    record: &BTreeMap<String, HostRouting>,
    hosts: &BTreeMap<String, HostRouting>,
    now: OffsetDateTime,
    grace: Duration,
) -> BTreeMap<String, HostRouting> {
    let mut next: BTreeMap<String, HostRouting> = record
        .iter()
        .filter(|(host, recorded)| {
            hosts.contains_key(*host) || !forgettable(recorded, now, grace, None)
        })
        .map(|(host, recorded)| (host.clone(), recorded.clone()))
        .collect();
    for (host, routing) in hosts {
        let unrouted_since = routing.unrouted_since.map(|since| {
            record
                .get(host)
                .and_then(|recorded| recorded.unrouted_since)
                .unwrap_or(since)
        });
        next.insert(
            host.clone(),
            HostRouting {
                services: routing.services.clone(),
                unrouted_since,
            },
        );
    }
    next
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

    fn routing(since: Option<OffsetDateTime>) -> HostRouting {
        HostRouting {
            services: BTreeSet::from(["svc".to_owned()]),
            unrouted_since: since,
        }
    }

    #[test]
    fn a_replica_continues_the_recorded_clock_and_learns_hosts_it_never_saw() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let recorded = start + time::Duration::minutes(1);
        let seen_here = start + time::Duration::minutes(2);
        // This replica saw b unrouted a minute after the holder did, and
        // never knew c (started after it was unrouted) nor d.
        let mut hosts = RoutedHosts::default();
        hosts.on_answer(routed(&["a.test", "b.test"]), true, start);
        hosts.on_answer(routed(&["a.test"]), true, seen_here);
        let record = BTreeMap::from([
            ("a.test".to_owned(), routing(Some(recorded))),
            ("b.test".to_owned(), routing(Some(recorded))),
            ("c.test".to_owned(), routing(Some(recorded))),
            ("d.test".to_owned(), routing(None)),
        ]);
        assert!(hosts.adopt(&record));
        // Routed here: an answer routing it is newer than any record.
        assert_eq!(hosts.hosts()["a.test"].unrouted_since, None);
        assert_eq!(hosts.hosts()["b.test"].unrouted_since, Some(recorded));
        assert_eq!(hosts.hosts()["c.test"].unrouted_since, Some(recorded));
        assert_eq!(hosts.hosts()["d.test"].unrouted_since, None);
        assert!(!hosts.adopt(&record), "adopting twice changes nothing");

        // d was routed when the record was written: gone from a believable
        // answer, its clock starts then (not never).
        let later = start + time::Duration::minutes(3);
        hosts.on_answer(routed(&["a.test"]), true, later);
        assert_eq!(hosts.hosts()["d.test"].unrouted_since, Some(later));
        // An empty answer (ACL-filtered) still starts no clock.
        let mut fresh = RoutedHosts::default();
        fresh.adopt(&record);
        fresh.on_answer(routed(&[]), true, later);
        assert_eq!(fresh.hosts()["d.test"].unrouted_since, None);
    }

    #[test]
    fn the_record_keeps_the_first_clock_and_clears_a_host_routed_again() {
        let first = OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(1);
        let here = first + time::Duration::minutes(1);
        let record = BTreeMap::from([
            ("b.test".to_owned(), routing(Some(first))),
            ("c.test".to_owned(), routing(Some(first))),
            ("e.test".to_owned(), routing(Some(first))),
        ]);
        let hosts = BTreeMap::from([
            ("a.test".to_owned(), routing(None)),
            ("b.test".to_owned(), routing(Some(here))),
            ("c.test".to_owned(), routing(None)),
            ("f.test".to_owned(), routing(Some(here))),
        ]);
        let grace = Duration::from_secs(3600);
        let next = next_record(&record, &hosts, here, grace);
        assert_eq!(
            next["a.test"].unrouted_since, None,
            "new host recorded routed"
        );
        assert_eq!(
            next["b.test"].unrouted_since,
            Some(first),
            "first clock kept"
        );
        assert_eq!(next["c.test"].unrouted_since, None, "routed again: cleared");
        assert_eq!(
            next["e.test"].unrouted_since,
            Some(first),
            "not known yet: kept"
        );
        assert_eq!(
            next["f.test"].unrouted_since,
            Some(here),
            "the replica's clock"
        );
        assert_eq!(next_record(&next, &hosts, here, grace), next, "stable");

        // An hour on, e's grace (from its recorded clock) is over and the
        // replica does not list it: it leaves the record. b and f, which the
        // replica still lists (their certificates still served), stay.
        let later = first + time::Duration::hours(1);
        let pruned = next_record(&next, &hosts, later, grace);
        assert!(!pruned.contains_key("e.test"), "forgotten");
        assert_eq!(pruned.len(), next.len() - 1);
        assert_eq!(pruned["b.test"].unrouted_since, Some(first));
    }

    #[test]
    fn a_host_is_forgotten_once_unrouted_for_the_grace_and_its_certificate_expired() {
        let start = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        let grace = Duration::from_secs(3600);
        let after_grace = start + time::Duration::hours(1);
        let routed_host = routing(None);
        let unrouted = routing(Some(start));
        assert!(
            !forgettable(&routed_host, after_grace, grace, None),
            "routed"
        );
        assert!(
            !forgettable(
                &unrouted,
                after_grace - time::Duration::seconds(1),
                grace,
                None
            ),
            "still in its grace"
        );
        assert!(
            forgettable(&unrouted, after_grace, grace, None),
            "no certificate"
        );
        let expires = after_grace + time::Duration::days(30);
        assert!(
            !forgettable(&unrouted, after_grace, grace, Some(expires)),
            "its certificate is still served"
        );
        assert!(
            forgettable(&unrouted, expires, grace, Some(expires)),
            "expired"
        );

        let mut hosts = RoutedHosts::default();
        hosts.on_answer(routed(&["a.test", "b.test", "c.test"]), true, start);
        hosts.on_answer(routed(&["a.test"]), true, start);
        let gone = hosts.forget(|host, routing| {
            let served_until = (host == "c.test").then_some(expires);
            forgettable(routing, after_grace, grace, served_until)
        });
        assert_eq!(gone, vec!["b.test".to_owned()]);
        let left: Vec<&str> = hosts.hosts().keys().map(String::as_str).collect();
        assert_eq!(left, vec!["a.test", "c.test"]);
        // Routed again later: a new host, routed.
        hosts.on_answer(routed(&["a.test", "b.test"]), true, expires);
        assert_eq!(hosts.hosts()["b.test"].unrouted_since, None);
    }
}

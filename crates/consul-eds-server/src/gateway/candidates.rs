//! Which Consul services may declare routes: those whose catalog tags
//! mention the prefix.
//!
//! `/v1/catalog/services` is one blocking query for the whole catalog, and
//! the union of each service's instance tags is enough to tell a service
//! that may route from one that cannot. The route itself is read from each
//! instance's own tags (the union hides instances that disagree), so a
//! candidate is then watched like any cluster.
//!
//! Rule kept here: a candidate is never dropped on an answer that cannot be
//! believed. After Consul's index went backwards (a restored or replaced
//! server, whose agents have not re-registered yet), or when every candidate
//! vanishes in one answer (Consul 1.8 answers a read whose ACLs were narrowed
//! with 200 and nothing, indistinguishable from "all gone"), the vanished
//! candidates are held for the reset grace; one that comes back meanwhile is
//! simply kept.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use route_tags::{TagPrefix, mentions_prefix};

/// What changed in the candidate set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CandidateChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Vanished in this answer but held.
    pub held: Vec<String>,
}

impl CandidateChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug)]
pub struct Candidates {
    prefix: TagPrefix,
    grace: Duration,
    /// Each candidate, with the time it is dropped if it is being held.
    known: BTreeMap<String, Option<Instant>>,
}

impl Candidates {
    pub fn new(prefix: TagPrefix, grace: Duration) -> Self {
        Self {
            prefix,
            grace,
            known: BTreeMap::new(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.known.keys().map(String::as_str)
    }

    pub fn contains(&self, service: &str) -> bool {
        self.known.contains_key(service)
    }

    /// Whether the service is held although the catalog no longer lists it.
    pub fn is_held(&self, service: &str) -> bool {
        self.known.get(service).is_some_and(Option::is_some)
    }

    /// Services held although the catalog no longer lists them.
    pub fn held(&self) -> usize {
        self.known.values().filter(|hold| hold.is_some()).count()
    }

    /// Takes one catalog answer. `after_reset`: the answer does not follow
    /// on from the previous one (index reset, first answer after failures).
    pub fn on_catalog(
        &mut self,
        services: &BTreeMap<String, Vec<String>>,
        after_reset: bool,
        now: Instant,
    ) -> CandidateChange {
        let listed: BTreeSet<&str> = services
            .iter()
            .filter(|(_, tags)| mentions_prefix(&self.prefix, tags))
            .map(|(name, _)| name.as_str())
            .collect();
        let mut change = CandidateChange::default();
        for name in &listed {
            match self.known.get_mut(*name) {
                Some(hold) => *hold = None,
                None => {
                    self.known.insert((*name).to_owned(), None);
                    change.added.push((*name).to_owned());
                }
            }
        }
        let vanished: Vec<String> = self
            .known
            .keys()
            .filter(|name| !listed.contains(name.as_str()))
            .cloned()
            .collect();
        let everything_vanished = listed.is_empty() && !vanished.is_empty();
        for name in vanished {
            let hold = self.known.get_mut(&name).expect("known");
            match hold {
                // Held already: the deadline stands.
                Some(_) => {}
                None if after_reset || everything_vanished => {
                    *hold = Some(now + self.grace);
                    change.held.push(name);
                }
                None => {
                    self.known.remove(&name);
                    change.removed.push(name);
                }
            }
        }
        change
    }

    /// Drops the held candidates whose grace is over.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .known
            .iter()
            .filter(|(_, hold)| hold.is_some_and(|until| until <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            self.known.remove(name);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(name, tags)| {
                (
                    (*name).to_owned(),
                    tags.iter().map(|t| (*t).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn candidates() -> Candidates {
        Candidates::new(
            TagPrefix::new("edge").expect("prefix"),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn only_services_mentioning_the_prefix_are_candidates() {
        let mut c = candidates();
        let change = c.on_catalog(
            &catalog(&[
                ("web", &["edge.route=a.test/"]),
                ("db", &["primary"]),
                ("edgy", &["edgeroute=x"]),
                ("api", &["v2", "edge.http.routes.r.host=b.test"]),
            ]),
            false,
            Instant::now(),
        );
        assert_eq!(change.added, ["api", "web"]);
        assert_eq!(c.names().collect::<Vec<_>>(), ["api", "web"]);
    }

    #[test]
    fn a_service_gone_from_an_ordinary_answer_is_removed_at_once() {
        let mut c = candidates();
        let now = Instant::now();
        c.on_catalog(
            &catalog(&[("web", &["edge.route=a/"]), ("api", &["edge.route=b/"])]),
            false,
            now,
        );
        let change = c.on_catalog(&catalog(&[("api", &["edge.route=b/"])]), false, now);
        assert_eq!(change.removed, ["web"]);
        assert!(!c.contains("web"));
    }

    #[test]
    fn after_a_reset_vanished_services_are_held_for_the_grace() {
        let mut c = candidates();
        let now = Instant::now();
        c.on_catalog(
            &catalog(&[("web", &["edge.route=a/"]), ("api", &["edge.route=b/"])]),
            false,
            now,
        );
        let change = c.on_catalog(&catalog(&[("api", &["edge.route=b/"])]), true, now);
        assert_eq!(change.held, ["web"]);
        assert!(change.is_empty());
        assert!(c.contains("web"));
        // A later ordinary answer still without it does not shorten the hold.
        c.on_catalog(&catalog(&[("api", &["edge.route=b/"])]), false, now);
        assert!(c.expire(now + Duration::from_secs(29)).is_empty());
        assert_eq!(c.expire(now + Duration::from_secs(30)), ["web"]);
        assert!(!c.contains("web"));
    }

    #[test]
    fn every_candidate_vanishing_at_once_is_held_then_believed() {
        let mut c = candidates();
        let now = Instant::now();
        c.on_catalog(&catalog(&[("web", &["edge.route=a/"])]), false, now);
        let change = c.on_catalog(&catalog(&[("db", &[])]), false, now);
        assert_eq!(change.held, ["web"]);
        assert_eq!(c.held(), 1);
        // Coming back ends the hold.
        c.on_catalog(&catalog(&[("web", &["edge.route=a/"])]), false, now);
        assert_eq!(c.held(), 0);
        assert!(c.expire(now + Duration::from_secs(60)).is_empty());
    }
}

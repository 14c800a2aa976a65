//! The union of several catalogs' service lists (Consul's, one per Nomad
//! namespace, ...), as both the gateway and the certificate service read
//! their route tags from it.
//!
//! Rules kept here, the same for every reader:
//! - each catalog is named, and keeps its last good list: a catalog whose
//!   read fails keeps its services in the union, so the others' changes
//!   still go through and a failing registry never takes routes away;
//! - a service known to several catalogs is listed once, with the union of
//!   its tags (first seen first, no tag twice);
//! - nothing is believed until every catalog has answered once: a first
//!   union made without one registry's services (that registry down as the
//!   reader starts) would look as if its routes were gone.
//!
//! A pure struct: the readers feed it answers and decide what a failure
//! means; it knows no registry, stream or clock.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Service name -> its tags, as one catalog read lists them.
pub type ServiceList = Arc<BTreeMap<String, Vec<String>>>;

/// A catalog answer the union was not built for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not one of the catalogs of this union ({known})")]
pub struct UnknownCatalog {
    pub name: String,
    pub known: String,
}

/// What the union says after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Union {
    /// Every catalog has answered: the services of all of them.
    Complete(ServiceList),
    /// These catalogs have not answered yet: nothing is believed.
    Waiting(Vec<String>),
}

/// The last good service list of each named catalog, and their union.
#[derive(Debug, Clone, Default)]
pub struct CatalogUnion {
    last_good: BTreeMap<String, Option<ServiceList>>,
}

impl CatalogUnion {
    /// A union of the catalogs named, none of which has answered yet.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            last_good: names.into_iter().map(|name| (name.into(), None)).collect(),
        }
    }

    /// The catalogs of the union, by name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.last_good.keys().map(String::as_str)
    }

    /// Takes a good answer of catalog `name`, which replaces its previous one.
    pub fn on_services(
        &mut self,
        name: &str,
        services: ServiceList,
    ) -> Result<Union, UnknownCatalog> {
        let Some(slot) = self.last_good.get_mut(name) else {
            return Err(UnknownCatalog {
                name: name.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            });
        };
        *slot = Some(services);
        Ok(self.union())
    }

    /// The union as it stands: what every catalog last answered well.
    pub fn union(&self) -> Union {
        let waiting: Vec<String> = self
            .last_good
            .iter()
            .filter(|(_, services)| services.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        if !waiting.is_empty() {
            return Union::Waiting(waiting);
        }
        // One catalog: its own list, not a copy of it.
        if let [Some(only)] = self.last_good.values().collect::<Vec<_>>()[..] {
            return Union::Complete(Arc::clone(only));
        }
        let mut union: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for services in self.last_good.values().flatten() {
            for (service, tags) in services.iter() {
                let merged = union.entry(service.clone()).or_default();
                for tag in tags {
                    if !merged.contains(tag) {
                        merged.push(tag.clone());
                    }
                }
            }
        }
        Union::Complete(Arc::new(union))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(services: &[(&str, &[&str])]) -> ServiceList {
        Arc::new(
            services
                .iter()
                .map(|(name, tags)| {
                    (
                        (*name).to_owned(),
                        tags.iter().map(|t| (*t).to_owned()).collect(),
                    )
                })
                .collect(),
        )
    }

    fn complete(union: Union) -> Vec<(String, Vec<String>)> {
        match union {
            Union::Complete(services) => services
                .iter()
                .map(|(name, tags)| (name.clone(), tags.clone()))
                .collect(),
            Union::Waiting(names) => panic!("still waiting for {names:?}"),
        }
    }

    #[test]
    fn nothing_is_believed_until_every_catalog_has_answered() {
        let mut union = CatalogUnion::new(["consul", "nomad/default"]);
        assert_eq!(
            union.on_services("consul", list(&[("web", &["edge.a"])])),
            Ok(Union::Waiting(vec!["nomad/default".to_owned()]))
        );
        let both = union
            .on_services(
                "nomad/default",
                list(&[("web", &["edge.b", "edge.a"]), ("api", &[])]),
            )
            .expect("a catalog of the union");
        assert_eq!(
            complete(both),
            vec![
                ("api".to_owned(), vec![]),
                (
                    "web".to_owned(),
                    vec!["edge.a".to_owned(), "edge.b".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn a_catalog_keeps_its_last_good_list_while_another_changes() {
        let mut union = CatalogUnion::new(["consul", "nomad/default"]);
        union
            .on_services("consul", list(&[("web", &[])]))
            .expect("known");
        union
            .on_services("nomad/default", list(&[("api", &[])]))
            .expect("known");
        // Nomad fails from here on: its readers simply feed nothing.
        let next = union
            .on_services("consul", list(&[("web", &[]), ("shop", &[])]))
            .expect("known");
        let names: Vec<String> = complete(next).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["api", "shop", "web"]);
    }

    #[test]
    fn a_new_answer_replaces_the_catalogs_previous_one() {
        let mut union = CatalogUnion::new(["nomad/a", "nomad/b"]);
        union
            .on_services("nomad/a", list(&[("web", &["edge.old"])]))
            .expect("known");
        union.on_services("nomad/b", list(&[])).expect("known");
        let next = union
            .on_services("nomad/a", list(&[("web", &["edge.new"])]))
            .expect("known");
        assert_eq!(
            complete(next),
            vec![("web".to_owned(), vec!["edge.new".to_owned()])]
        );
    }

    #[test]
    fn a_single_catalog_is_handed_on_as_it_answered() {
        let mut union = CatalogUnion::new(["consul"]);
        let services = list(&[("web", &["edge.b", "edge.a"])]);
        match union.on_services("consul", Arc::clone(&services)) {
            Ok(Union::Complete(listed)) => assert!(Arc::ptr_eq(&listed, &services)),
            other => panic!("expected the list itself, got {other:?}"),
        }
    }

    #[test]
    fn an_answer_of_a_catalog_not_in_the_union_is_refused_naming_both() {
        let mut union = CatalogUnion::new(["consul"]);
        let error = union
            .on_services("nomad/default", list(&[]))
            .expect_err("not a catalog of the union");
        assert_eq!(
            error.to_string(),
            "`nomad/default` is not one of the catalogs of this union (consul)"
        );
        assert_eq!(union.union(), Union::Waiting(vec!["consul".to_owned()]));
    }
}

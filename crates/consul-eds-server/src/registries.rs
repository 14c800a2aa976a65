//! The registries together: Consul's catalog and Nomad's own service
//! registry, as one [`ServiceSource`] for the engine and one catalog for the
//! gateway.
//!
//! How a service name known to both is served is a choice, made here and in
//! `engine::plan`: by default a cluster named after a service gets the
//! instances of both registries (merged by name, as the seed's
//! `-enable-nomad` did), each registry's watch keeping its own last good
//! answer, so a failing Nomad never takes Consul's instances away, nor the
//! other way round. A cluster name template with `{source}` tells them apart
//! instead (see `naming`).

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use route_tags::catalog::{CatalogUnion, Union};

use crate::engine::{ServiceSource, SourceEvent, WatchKey};
use crate::gateway::actor::CatalogEvent;
use crate::model::SourceKind;

/// One [`ServiceSource`] per registry read; a watch goes to the registry its
/// key names.
#[derive(Default)]
pub struct SourceSet {
    consul: Option<Arc<dyn ServiceSource>>,
    nomad: Option<Arc<dyn ServiceSource>>,
}

impl std::fmt::Debug for SourceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSet")
            .field("consul", &self.consul.is_some())
            .field("nomad", &self.nomad.is_some())
            .finish()
    }
}

impl SourceSet {
    #[must_use]
    pub fn with(mut self, kind: SourceKind, source: Arc<dyn ServiceSource>) -> Self {
        match kind {
            SourceKind::Consul => self.consul = Some(source),
            SourceKind::Nomad => self.nomad = Some(source),
        }
        self
    }

    fn get(&self, kind: SourceKind) -> Option<&Arc<dyn ServiceSource>> {
        match kind {
            SourceKind::Consul => self.consul.as_ref(),
            SourceKind::Nomad => self.nomad.as_ref(),
        }
    }
}

impl ServiceSource for SourceSet {
    fn watch(&self, key: &WatchKey) -> BoxStream<'static, SourceEvent> {
        let kind = key.origin.kind();
        match self.get(kind) {
            Some(source) => source.watch(key),
            // The engine's plans only name registries that are read; should
            // one slip through, it is a failing read, never an empty one.
            None => stream::once(async move {
                SourceEvent::Failing {
                    error: format!("the {kind} registry is not read (--sources)"),
                }
            })
            .chain(stream::pending())
            .boxed(),
        }
    }
}

/// The gateway's catalog, from every registry read: the services of all of
/// them, each with the union of its tags.
///
/// Why nothing is believed until every registry has answered once: the
/// gateway's first publication replaces whatever an Envoy holds, and one
/// made without Nomad's services (Nomad down as the server starts) would
/// take their routes away. After that, a registry that fails keeps its last
/// good service list in the union, so the other registry's changes still
/// go through; its failure is reported to the gateway as a read not
/// believed, which changes nothing there.
///
/// Each catalog is named (`consul`, `nomad/<namespace>`) for the reasons
/// given when one is not believed.
pub fn merge_catalogs(
    catalogs: Vec<(String, BoxStream<'static, CatalogEvent>)>,
) -> BoxStream<'static, CatalogEvent> {
    if catalogs.len() == 1 {
        return catalogs
            .into_iter()
            .next()
            .map(|(_, catalog)| catalog)
            .unwrap_or_else(|| stream::empty().boxed());
    }
    let names: Vec<String> = catalogs.iter().map(|(name, _)| name.clone()).collect();
    let tagged = stream::select_all(
        catalogs
            .into_iter()
            .map(|(name, catalog)| catalog.map(move |event| (name.clone(), event)).boxed()),
    );
    let mut merger = CatalogMerger::new(names);
    tagged
        .map(move |(name, event)| merger.on_event(&name, event))
        .boxed()
}

/// The gateway's side of the union: a failed read is passed on as not
/// believed (naming the registry), a good one updates the union, which
/// is believed only once every registry has answered.
#[derive(Debug)]
struct CatalogMerger {
    union: CatalogUnion,
}

impl CatalogMerger {
    fn new(names: Vec<String>) -> Self {
        Self {
            union: CatalogUnion::new(names),
        }
    }

    fn on_event(&mut self, name: &str, event: CatalogEvent) -> CatalogEvent {
        let (services, after_reset) = match event {
            CatalogEvent::Unbelieved { reason } => {
                return CatalogEvent::Unbelieved {
                    reason: format!("{name}: {reason}"),
                };
            }
            CatalogEvent::Services {
                services,
                after_reset,
            } => (services, after_reset),
        };
        match self.union.on_services(name, services) {
            Ok(Union::Complete(services)) => CatalogEvent::Services {
                services,
                after_reset,
            },
            Ok(Union::Waiting(waiting)) => CatalogEvent::Unbelieved {
                reason: format!(
                    "waiting for the first answer of {}; routes are published once every registry has answered",
                    waiting.join(", ")
                ),
            },
            // `merge_catalogs` names every stream it tags; kept as a read
            // not believed rather than a panic should that ever change.
            Err(unknown) => CatalogEvent::Unbelieved {
                reason: unknown.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(list: &[(&str, &[&str])]) -> CatalogEvent {
        CatalogEvent::Services {
            services: Arc::new(
                list.iter()
                    .map(|(name, tags)| {
                        (
                            (*name).to_owned(),
                            tags.iter().map(|t| (*t).to_owned()).collect(),
                        )
                    })
                    .collect(),
            ),
            after_reset: false,
        }
    }

    fn names(event: &CatalogEvent) -> Option<Vec<(String, Vec<String>)>> {
        match event {
            CatalogEvent::Services { services, .. } => Some(
                services
                    .iter()
                    .map(|(name, tags)| (name.clone(), tags.clone()))
                    .collect(),
            ),
            CatalogEvent::Unbelieved { .. } => None,
        }
    }

    #[test]
    fn nothing_is_believed_until_every_registry_has_answered() {
        let mut merger = CatalogMerger::new(vec!["consul".to_owned(), "nomad/default".to_owned()]);
        let first = merger.on_event("consul", services(&[("web", &["edge.a"])]));
        match &first {
            CatalogEvent::Unbelieved { reason } => {
                assert!(reason.contains("nomad"), "{reason}");
            }
            other => panic!("believed before Nomad answered: {other:?}"),
        }
        let both = merger.on_event(
            "nomad/default",
            services(&[("web", &["edge.b", "edge.a"]), ("api", &[])]),
        );
        assert_eq!(
            names(&both),
            Some(vec![
                ("api".to_owned(), vec![]),
                (
                    "web".to_owned(),
                    vec!["edge.a".to_owned(), "edge.b".to_owned()]
                ),
            ])
        );
    }

    #[test]
    fn a_failing_registry_keeps_its_services_while_the_other_changes() {
        let mut merger = CatalogMerger::new(vec!["consul".to_owned(), "nomad/default".to_owned()]);
        merger.on_event("consul", services(&[("web", &[])]));
        merger.on_event("nomad/default", services(&[("api", &[])]));
        let failed = merger.on_event(
            "nomad/default",
            CatalogEvent::Unbelieved {
                reason: "500".to_owned(),
            },
        );
        match failed {
            CatalogEvent::Unbelieved { reason } => assert_eq!(reason, "nomad/default: 500"),
            other => panic!("a failed read was believed: {other:?}"),
        }
        let next = merger.on_event("consul", services(&[("web", &[]), ("shop", &[])]));
        let listed: Vec<String> = names(&next)
            .expect("believed")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(listed, ["api", "shop", "web"]);
    }

    #[tokio::test]
    async fn a_watch_of_a_registry_not_read_fails_instead_of_answering_empty() {
        let set = SourceSet::default();
        let mut watch = set.watch(&WatchKey::nomad("web", "default"));
        match watch.next().await {
            Some(SourceEvent::Failing { error }) => assert!(error.contains("nomad"), "{error}"),
            other => panic!("expected a failing read, got {other:?}"),
        }
    }
}

//! The registries routed hosts are read from (`--sources`): Consul's
//! catalog and Nomad's service registry (one watch per namespace, or one
//! for `*`), each a stream of [`CatalogAnswer`]s, and their union as one
//! such stream.
//!
//! Each registry is read with one blocking query on its whole service list
//! (`/v1/catalog/services`, `/v1/services?namespace=`), which lists each
//! service with the union of its instances' tags: what a certificate needs,
//! with one query open however many hosts are routed.
//!
//! `*` is read through nomad-client's checked listing
//! (`watch_all_namespaces`): Nomad silently leaves out of a `*` listing the
//! namespaces the token cannot read, so a namespace that vanishes from it
//! is read directly, and while that read fails (403: the token lost it) its
//! last services stay in the list, so its hosts stay routed and no
//! unrouted clock starts; a direct read answering that it is empty is
//! believed.
//!
//! The union is `route_tags::catalog::CatalogUnion`, the gateway's own
//! rules: a registry that fails keeps its last good list, and nothing is
//! believed until every registry has answered once, so a Nomad down as
//! the service starts does not look like its hosts being unrouted.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use blocking_query::{Continuity, WatchConfig, WatchEvent};
use consul_client::Client;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use nomad_client::{
    ALL_NAMESPACES, CheckedListing, NamespaceServices, NomadClient, tags_by_service,
};
use route_tags::catalog::{CatalogUnion, ServiceList, Union};
use tracing::{info, warn};

/// Why a 5-minute wait: tags change rarely, and every replica holds one
/// such query open per registry; both registries answer at once on any
/// change anyway.
const CATALOG_WAIT: Duration = Duration::from_secs(300);

/// What a read of the registries says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogAnswer {
    /// Every service with its tags. `believable`: the answer follows on
    /// from the previous one (not the first after failures or an index
    /// reset), so it may make a host unrouted.
    Services {
        services: ServiceList,
        believable: bool,
    },
    /// The read failed: changes nothing.
    Failed { reason: String },
    /// Some registries have not answered yet: changes nothing.
    Waiting { catalogs: Vec<String> },
}

/// Consul's catalog, named `consul`.
pub fn consul_catalog(client: &Client) -> (String, BoxStream<'static, CatalogAnswer>) {
    let watch = client.watch_catalog_services(consul_client::WatchConfig {
        wait: CATALOG_WAIT,
        ..consul_client::WatchConfig::default()
    });
    let name = "consul".to_owned();
    let answers = answers(name.clone(), watch, Arc::clone).boxed();
    (name, answers)
}

/// The services Nomad registers in `namespace` (`*`: every namespace the
/// token can read, checked), named `nomad/<namespace>`.
pub fn nomad_catalog(
    client: &NomadClient,
    namespace: &str,
) -> (String, BoxStream<'static, CatalogAnswer>) {
    let config = WatchConfig {
        wait: CATALOG_WAIT,
        ..WatchConfig::default()
    };
    let name = format!("nomad/{namespace}");
    if namespace == ALL_NAMESPACES {
        let watch = client.watch_all_namespaces(config);
        let answers = answers(name.clone(), watch, |listed: &Arc<CheckedListing>| {
            Arc::new(tags_by_service(&listed.namespaces))
        })
        .boxed();
        return (name, answers);
    }
    let watch = client.watch_services(namespace.to_owned(), config);
    let answers = answers(
        name.clone(),
        watch,
        |listed: &Arc<Vec<NamespaceServices>>| Arc::new(tags_by_service(listed)),
    )
    .boxed();
    (name, answers)
}

/// One registry's watch as answers; its failures and recoveries logged
/// once each, naming the registry.
fn answers<T, E, M>(
    name: String,
    watch: impl Stream<Item = WatchEvent<T, E, M>> + Send + 'static,
    services: impl Fn(&Arc<T>) -> ServiceList + Send + 'static,
) -> impl Stream<Item = CatalogAnswer> + Send + 'static
where
    T: Send + Sync + 'static,
    E: Display,
{
    watch.map(move |event| match event {
        WatchEvent::Value {
            value, continuity, ..
        } => {
            if matches!(continuity, Continuity::Recovered { .. }) {
                info!(catalog = %name, "the registry answers again; following the routed hosts");
            }
            CatalogAnswer::Services {
                services: services(&value),
                believable: !continuity.breaks_continuity(),
            }
        }
        WatchEvent::Degraded {
            error,
            failures,
            retry_in,
            ..
        } => {
            if failures == 1 {
                warn!(catalog = %name, %error, ?retry_in, "cannot read the registry; the routed hosts stay as they were");
            }
            CatalogAnswer::Failed {
                reason: format!("{name}: {error}"),
            }
        }
    })
}

/// The registries read as one stream of answers. A single registry's
/// answers are passed on as they are.
pub fn union_of(
    catalogs: Vec<(String, BoxStream<'static, CatalogAnswer>)>,
) -> BoxStream<'static, CatalogAnswer> {
    if catalogs.len() == 1 {
        return catalogs
            .into_iter()
            .map(|(_, answers)| answers)
            .next()
            .unwrap_or_else(|| stream::empty().boxed());
    }
    let mut union = CatalogUnion::new(catalogs.iter().map(|(name, _)| name.clone()));
    stream::select_all(
        catalogs
            .into_iter()
            .map(|(name, answers)| answers.map(move |answer| (name.clone(), answer)).boxed()),
    )
    .map(move |(name, answer)| united(&mut union, &name, answer))
    .boxed()
}

/// One registry's answer, as the union of all of them. The union is as
/// believable as the answer that changed it: an answer after a reset of
/// one registry makes no host unrouted, whichever registry routed it.
fn united(union: &mut CatalogUnion, name: &str, answer: CatalogAnswer) -> CatalogAnswer {
    let CatalogAnswer::Services {
        services,
        believable,
    } = answer
    else {
        return answer;
    };
    match union.on_services(name, services) {
        Ok(Union::Complete(services)) => CatalogAnswer::Services {
            services,
            believable,
        },
        Ok(Union::Waiting(catalogs)) => CatalogAnswer::Waiting { catalogs },
        // `union_of` names the union after the very streams it tags.
        Err(unknown) => CatalogAnswer::Failed {
            reason: unknown.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(list: &[(&str, &[&str])], believable: bool) -> CatalogAnswer {
        CatalogAnswer::Services {
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
            believable,
        }
    }

    fn listed(answer: &CatalogAnswer) -> Vec<String> {
        match answer {
            CatalogAnswer::Services { services, .. } => services.keys().cloned().collect(),
            other => panic!("expected services, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_union_waits_for_every_registry_then_keeps_a_failing_ones_services() {
        let (consul_tx, consul_rx) = futures::channel::mpsc::unbounded();
        let (nomad_tx, nomad_rx) = futures::channel::mpsc::unbounded();
        let mut union = union_of(vec![
            ("consul".to_owned(), consul_rx.boxed()),
            ("nomad/default".to_owned(), nomad_rx.boxed()),
        ]);
        consul_tx
            .unbounded_send(services(&[("web", &[])], true))
            .expect("open");
        assert_eq!(
            union.next().await,
            Some(CatalogAnswer::Waiting {
                catalogs: vec!["nomad/default".to_owned()]
            })
        );
        nomad_tx
            .unbounded_send(services(&[("api", &[])], true))
            .expect("open");
        assert_eq!(
            listed(&union.next().await.expect("an answer")),
            ["api", "web"]
        );
        let failure = CatalogAnswer::Failed {
            reason: "nomad/default: 500".to_owned(),
        };
        nomad_tx.unbounded_send(failure.clone()).expect("open");
        assert_eq!(union.next().await, Some(failure));
        consul_tx
            .unbounded_send(services(&[("web", &[]), ("shop", &[])], true))
            .expect("open");
        assert_eq!(
            listed(&union.next().await.expect("an answer")),
            ["api", "shop", "web"]
        );
    }

    #[tokio::test]
    async fn an_answer_after_a_reset_makes_the_union_unbelievable() {
        let (consul_tx, consul_rx) = futures::channel::mpsc::unbounded();
        let (nomad_tx, nomad_rx) = futures::channel::mpsc::unbounded();
        let mut union = union_of(vec![
            ("consul".to_owned(), consul_rx.boxed()),
            ("nomad/default".to_owned(), nomad_rx.boxed()),
        ]);
        consul_tx
            .unbounded_send(services(&[("web", &[])], true))
            .expect("open");
        let _waiting = union.next().await;
        nomad_tx.unbounded_send(services(&[], false)).expect("open");
        match union.next().await {
            Some(CatalogAnswer::Services { believable, .. }) => assert!(!believable),
            other => panic!("expected services, got {other:?}"),
        }
    }
}

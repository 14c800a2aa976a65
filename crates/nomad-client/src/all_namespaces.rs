//! `*` listings of `/v1/services` checked for the trap: a namespace that
//! vanishes from one is read directly before it is believed gone.
//!
//! Nomad leaves out of a `*` listing every namespace the token cannot read,
//! without a word (`listAllServiceRegistrations` in
//! `nomad/service_registration_endpoint.go` skips them). A namespace that
//! had services and is missing from the next listing is therefore either
//! empty now (its last allocation stopped, or it was deleted) or no longer
//! readable (the token's policy was narrowed): the listing cannot tell.
//! A direct read of that namespace can: `/v1/services?namespace=THAT`
//! answers 403 when the token lost it and `200 []` when it is empty.
//!
//! The rule ([`check`]):
//! - a namespace the listing shows is taken as listed;
//! - a namespace that had services and is not listed any more is read
//!   directly: a successful read is believed (usually `[]`: the namespace
//!   really is empty, and goes), and a failed one (403, or any failure:
//!   nothing proves the services gone) keeps the namespace's last good
//!   services, reported in [`CheckedListing::held`];
//! - a held namespace is read again with every new listing, until it is
//!   listed again or a read says it is empty.
//!
//! What this cannot see: a namespace the token could never read is never
//! listed, so nothing misses it; [`crate::NomadClient::namespace_access`]
//! checks the namespaces an operator expects.

use std::collections::BTreeMap;
use std::sync::Arc;

use blocking_query::WatchConfig;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::api::NamespaceServices;
use crate::client::{ALL_NAMESPACES, NomadClient};
use crate::error::Error;
use crate::watch::WatchEvent;

/// A `*` listing as believed after [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedListing {
    /// Every namespace believed to hold services, sorted by name: as
    /// listed, and the held ones at their last good services.
    pub namespaces: Vec<NamespaceServices>,
    /// Namespaces that vanished from the listing and whose direct read
    /// failed (403: the token lost them), with that failure. Their last
    /// good services are in [`namespaces`](Self::namespaces).
    pub held: BTreeMap<String, Error>,
}

/// The namespaces of `believed` with services that `listed` does not show
/// with any: those to read directly before believing `listed`.
pub fn vanished(believed: &CheckedListing, listed: &[NamespaceServices]) -> Vec<String> {
    believed
        .namespaces
        .iter()
        .filter(|entry| !entry.services.is_empty())
        .filter(|entry| {
            !listed
                .iter()
                .any(|l| l.namespace == entry.namespace && !l.services.is_empty())
        })
        .map(|entry| entry.namespace.clone())
        .collect()
}

/// What is believed from a new listing, given `believed` before it and
/// the direct reads of the namespaces [`vanished`] named (a namespace it
/// named without a read here counts as a failed read). Pure: the watch
/// does the reads.
pub fn check(
    believed: &CheckedListing,
    listed: &[NamespaceServices],
    reads: &BTreeMap<String, Result<Vec<NamespaceServices>, Error>>,
) -> CheckedListing {
    let mut checked = CheckedListing {
        namespaces: listed
            .iter()
            .filter(|entry| !entry.services.is_empty())
            .cloned()
            .collect(),
        held: BTreeMap::new(),
    };
    for namespace in vanished(believed, listed) {
        match reads.get(&namespace) {
            // Believed: only what it lists of that namespace (normally
            // nothing).
            Some(Ok(read)) => checked.namespaces.extend(
                read.iter()
                    .filter(|entry| entry.namespace == namespace && !entry.services.is_empty())
                    .cloned(),
            ),
            failed => {
                let error = match failed {
                    Some(Err(error)) => error.clone(),
                    _ => Error::InvalidRequest {
                        endpoint: "GET /v1/services".to_owned(),
                        reason: format!("namespace `{namespace}` was not read"),
                    },
                };
                checked.namespaces.extend(
                    believed
                        .namespaces
                        .iter()
                        .filter(|entry| entry.namespace == namespace)
                        .cloned(),
                );
                checked.held.insert(namespace, error);
            }
        }
    }
    checked
        .namespaces
        .sort_unstable_by(|a, b| a.namespace.cmp(&b.namespace));
    checked
}

impl NomadClient {
    /// Watches `GET /v1/services?namespace=*` with the trap checked (see
    /// the module documentation of `all_namespaces`): every answer is a
    /// [`CheckedListing`], in which a namespace that vanished is kept
    /// while a direct read of it fails. A failed listing is `Degraded`
    /// with the last checked listing, as every watch here; a token that
    /// may read no namespace at all is one ([`Error::PermissionDenied`]).
    ///
    /// The direct reads are plain requests, from the budget for quick
    /// ones. Held namespaces are logged when they start and stop being
    /// held.
    pub fn watch_all_namespaces(
        &self,
        config: WatchConfig,
    ) -> BoxStream<'static, WatchEvent<CheckedListing>> {
        let listings = self.watch_services(ALL_NAMESPACES, config);
        let state = (listings, self.clone(), None::<Arc<CheckedListing>>);
        futures::stream::unfold(state, |(mut listings, client, believed)| async move {
            let event = match listings.next().await? {
                WatchEvent::Value {
                    value,
                    index,
                    meta,
                    continuity,
                } => {
                    let before = believed.as_deref().cloned().unwrap_or_default();
                    let checked = Arc::new(client.checked(&before, &value).await);
                    return Some((
                        WatchEvent::Value {
                            value: Arc::clone(&checked),
                            index,
                            meta,
                            continuity,
                        },
                        (listings, client, Some(checked)),
                    ));
                }
                WatchEvent::Degraded {
                    error,
                    failures,
                    retry_in,
                    ..
                } => WatchEvent::Degraded {
                    last_good: believed.clone(),
                    error,
                    failures,
                    retry_in,
                },
            };
            Some((event, (listings, client, believed)))
        })
        .boxed()
    }

    /// Reads each vanished namespace directly, then applies [`check`].
    async fn checked(
        &self,
        believed: &CheckedListing,
        listed: &[NamespaceServices],
    ) -> CheckedListing {
        let mut reads = BTreeMap::new();
        for namespace in vanished(believed, listed) {
            let read = self.services(&namespace).await.map(|answer| answer.value);
            reads.insert(namespace, read);
        }
        let checked = check(believed, listed, &reads);
        for (namespace, error) in &checked.held {
            if !believed.held.contains_key(namespace) {
                tracing::warn!(
                    %namespace,
                    %error,
                    "a Nomad namespace vanished from the `*` listing and cannot be read \
                     directly (a 403: the token lost it); keeping its last services"
                );
            }
        }
        for (namespace, read) in &reads {
            if read.is_ok() {
                tracing::info!(%namespace, "a Nomad namespace left the `*` listing and a direct read says it is empty; its services are gone");
            }
        }
        for namespace in believed.held.keys() {
            if !checked.held.contains_key(namespace)
                && listed.iter().any(|l| &l.namespace == namespace)
            {
                tracing::info!(%namespace, "a held Nomad namespace is listed again");
            }
        }
        checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceSummary;

    fn namespace(name: &str, services: &[&str]) -> NamespaceServices {
        NamespaceServices {
            namespace: name.to_owned(),
            services: services
                .iter()
                .map(|service| ServiceSummary {
                    service_name: (*service).to_owned(),
                    tags: Vec::new(),
                })
                .collect(),
        }
    }

    fn denied() -> Error {
        Error::PermissionDenied {
            endpoint: "GET /v1/services".to_owned(),
            message: "Permission denied".to_owned(),
        }
    }

    fn believed(namespaces: Vec<NamespaceServices>) -> CheckedListing {
        CheckedListing {
            namespaces,
            held: BTreeMap::new(),
        }
    }

    fn names(listing: &CheckedListing) -> Vec<&str> {
        listing
            .namespaces
            .iter()
            .map(|n| n.namespace.as_str())
            .collect()
    }

    #[test]
    fn only_namespaces_that_had_services_and_are_not_listed_any_more_are_read() {
        let before = believed(vec![
            namespace("a", &["web"]),
            namespace("b", &["api"]),
            namespace("c", &[]),
        ]);
        let listed = [namespace("b", &["api", "db"]), namespace("d", &["new"])];
        assert_eq!(vanished(&before, &listed), ["a"]);
        // Listed with no services counts as gone from the listing.
        assert_eq!(
            vanished(&before, &[namespace("a", &[]), namespace("b", &["api"])]),
            ["a"]
        );
        assert!(vanished(&CheckedListing::default(), &listed).is_empty());
    }

    #[test]
    fn a_vanished_namespace_whose_direct_read_is_denied_keeps_its_services() {
        let before = believed(vec![namespace("a", &["web"]), namespace("b", &["api"])]);
        let listed = [namespace("b", &["api", "db"])];
        let reads = BTreeMap::from([("a".to_owned(), Err(denied()))]);
        let checked = check(&before, &listed, &reads);
        assert_eq!(names(&checked), ["a", "b"]);
        assert_eq!(checked.namespaces[0], namespace("a", &["web"]));
        assert_eq!(checked.namespaces[1], namespace("b", &["api", "db"]));
        assert_eq!(checked.held.keys().collect::<Vec<_>>(), ["a"]);

        // Still missing next time, still denied: still held, at the same
        // services.
        let again = check(&checked, &listed, &reads);
        assert_eq!(again, checked);

        // Any failure of the direct read holds too, and so does a read
        // that did not happen: nothing proved the services gone.
        let timeout = Error::Timeout {
            endpoint: "GET /v1/services".to_owned(),
            after: std::time::Duration::from_secs(5),
        };
        let reads = BTreeMap::from([("a".to_owned(), Err(timeout))]);
        assert_eq!(names(&check(&before, &listed, &reads)), ["a", "b"]);
        assert_eq!(
            names(&check(&before, &listed, &BTreeMap::new())),
            ["a", "b"]
        );
    }

    #[test]
    fn a_vanished_namespace_whose_direct_read_answers_empty_is_gone() {
        let before = believed(vec![namespace("a", &["web"]), namespace("b", &["api"])]);
        let listed = [namespace("b", &["api"])];
        let reads = BTreeMap::from([("a".to_owned(), Ok(Vec::new()))]);
        let checked = check(&before, &listed, &reads);
        assert_eq!(names(&checked), ["b"]);
        assert!(checked.held.is_empty());

        // A read racing a new registration: what it lists is believed.
        let reads = BTreeMap::from([("a".to_owned(), Ok(vec![namespace("a", &["new"])]))]);
        let checked = check(&before, &listed, &reads);
        assert_eq!(checked.namespaces[0], namespace("a", &["new"]));
    }

    #[test]
    fn a_held_namespace_listed_again_is_taken_as_listed() {
        let before = believed(vec![namespace("a", &["web"])]);
        let reads = BTreeMap::from([("a".to_owned(), Err(denied()))]);
        let held = check(&before, &[], &reads);
        assert_eq!(held.held.len(), 1);
        let back = check(&held, &[namespace("a", &["web", "api"])], &BTreeMap::new());
        assert!(back.held.is_empty());
        assert_eq!(back.namespaces, [namespace("a", &["web", "api"])]);
    }
}

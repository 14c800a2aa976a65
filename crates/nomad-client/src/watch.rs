//! Blocking-query watches of Nomad's service endpoints, as `Stream`s of the
//! same [`WatchEvent`]s `consul-client` yields (the discipline is
//! `blocking-query`'s).
//!
//! Nomad's index for both endpoints is the whole registrations table's, so
//! it moves when *any* service changes: a blocking query on `web` whose
//! index another service's change has passed returns at once, with `web`'s
//! registrations as they were. Every watch here therefore compares content
//! ([`blocking_query::Watch::skip_unchanged`]) and yields nothing for such
//! an answer. A reset (the index going backwards) or a recovery after
//! failures is always yielded, whatever the content.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use blocking_query::{Answer, QueryIndex, WatchConfig};
use futures::stream::{SelectAll, Stream, StreamExt};

use crate::api::{NamespaceServices, ServiceRegistration};
use crate::client::NomadClient;
use crate::error::Error;
use crate::query::{NomadResponse, QueryMeta};

/// A running watch of Nomad values of type `T`; see
/// [`blocking_query::Watch`]. Dropping it cancels the request in flight.
pub type Watch<T> = blocking_query::Watch<T, Error, QueryMeta>;

/// What a Nomad watch yields; see [`blocking_query::WatchEvent`]. A
/// `Degraded` event carries the last good value: a Nomad error never
/// empties what the consumer serves.
pub type WatchEvent<T> = blocking_query::WatchEvent<T, Error, QueryMeta>;

/// One namespace's event of [`NomadClient::watch_service_in`].
#[derive(Debug)]
pub struct NamespacedEvent {
    pub namespace: Arc<str>,
    pub event: WatchEvent<Vec<ServiceRegistration>>,
}

/// The merged watches of one service in several namespaces, one blocking
/// query each: see [`NomadClient::watch_service_in`].
pub struct NamespacedWatch {
    watches: SelectAll<Pin<Box<dyn Stream<Item = NamespacedEvent> + Send>>>,
}

impl std::fmt::Debug for NamespacedWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespacedWatch")
            .field("namespaces", &self.watches.len())
            .finish()
    }
}

impl Stream for NamespacedWatch {
    type Item = NamespacedEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.watches.poll_next_unpin(cx)
    }
}

fn answer<T>(response: NomadResponse<T>) -> Answer<T, QueryMeta> {
    Answer {
        index: response.meta.index,
        value: response.value,
        meta: response.meta,
    }
}

impl NomadClient {
    /// Watches `GET /v1/services?namespace=…` (`*` allowed, with the trap
    /// [`NomadClient::services`] describes).
    pub fn watch_services(
        &self,
        namespace: impl Into<String>,
        config: WatchConfig,
    ) -> Watch<Vec<NamespaceServices>> {
        let client = self.clone();
        let namespace: Arc<str> = namespace.into().into();
        blocking_query::watch(config, move |query: QueryIndex| {
            let client = client.clone();
            let namespace = Arc::clone(&namespace);
            async move {
                client
                    .services_blocking(&namespace, query)
                    .await
                    .map(answer)
            }
        })
        .skip_unchanged()
    }

    /// Watches `GET /v1/service/:name?namespace=…` in one namespace (not
    /// `*`: every request would fail with [`Error::InvalidRequest`]).
    pub fn watch_service(
        &self,
        name: impl Into<String>,
        namespace: impl Into<String>,
        config: WatchConfig,
    ) -> Watch<Vec<ServiceRegistration>> {
        let client = self.clone();
        let name: Arc<str> = name.into().into();
        let namespace: Arc<str> = namespace.into().into();
        blocking_query::watch(config, move |query: QueryIndex| {
            let client = client.clone();
            let name = Arc::clone(&name);
            let namespace = Arc::clone(&namespace);
            async move {
                client
                    .service_blocking(&name, &namespace, query)
                    .await
                    .map(answer)
            }
        })
        .skip_unchanged()
    }

    /// Watches one service in each of `namespaces` (duplicates dropped),
    /// one blocking query per namespace since `/v1/service/:name` has no
    /// wildcard, merged into one stream of [`NamespacedEvent`]s.
    ///
    /// Each namespace keeps its own last good value and its own failures: a
    /// token that cannot read one namespace makes that namespace's watch
    /// `Degraded` (403) while the others go on. Each query takes a slot of
    /// the client's blocking budget. An empty list yields a stream that
    /// ends at once.
    pub fn watch_service_in<I, S>(
        &self,
        name: impl Into<String>,
        namespaces: I,
        config: WatchConfig,
    ) -> NamespacedWatch
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let name: String = name.into();
        let namespaces: BTreeSet<String> = namespaces.into_iter().map(Into::into).collect();
        let mut watches = SelectAll::new();
        for namespace in namespaces {
            let label: Arc<str> = namespace.as_str().into();
            let events = self
                .watch_service(name.clone(), namespace, config.clone())
                .map(move |event| NamespacedEvent {
                    namespace: Arc::clone(&label),
                    event,
                });
            let events: Pin<Box<dyn Stream<Item = NamespacedEvent> + Send>> = Box::pin(events);
            watches.push(events);
        }
        NamespacedWatch { watches }
    }
}

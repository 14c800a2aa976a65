//! Every replica follows the Consul prefix with one blocking query and
//! serves what it holds; the store, not the renewing replica, is the source
//! of truth, so leader and followers push a renewed certificate the same way.
//!
//! Each certificate is decoded once per change of its items' modify indexes.
//! A certificate that cannot be used (corrupt, partial, written half by hand,
//! sealed with another key) is reported once and skipped: the last good
//! certificate stays served.
//! New renewal requests (`renewals/<name>`) wake the renewing replica's
//! managers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use consul_client::{Client, Continuity, KvPair, WatchConfig, WatchEvent};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::sds::SecretPublisher;
use crate::store::SecretName;
use crate::store::codec::{CertificatePart, KeysAtRest};
use crate::store::consul::ConsulStore;

/// Follows `<prefix>/` and feeds the [`SecretPublisher`].
#[derive(Debug)]
pub struct KvFollower {
    store: ConsulStore,
    publisher: Arc<SecretPublisher>,
    wake: watch::Sender<()>,
    /// The items of each certificate as last looked at.
    certificates_seen: HashMap<SecretName, ItemsSignature>,
    renewals_seen: HashMap<SecretName, u64>,
    keys_at_rest: Option<watch::Sender<Option<KeysAtRest>>>,
}

impl KvFollower {
    /// `wake` is marked changed when a new renewal request appears.
    pub fn new(
        store: ConsulStore,
        publisher: Arc<SecretPublisher>,
        wake: watch::Sender<()>,
    ) -> Self {
        Self {
            store,
            publisher,
            wake,
            certificates_seen: HashMap::new(),
            renewals_seen: HashMap::new(),
            keys_at_rest: None,
        }
    }

    /// Also tells `keys_at_rest` how the stored secrets lie at rest, after
    /// every listing.
    #[must_use]
    pub fn with_keys_at_rest(mut self, keys_at_rest: watch::Sender<Option<KeysAtRest>>) -> Self {
        self.keys_at_rest = Some(keys_at_rest);
        self
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let prefix = format!("{}/", self.store.prefix());
        let client = self.store.client().clone();
        follow_prefix(&client, prefix.clone(), shutdown, |event| {
            self.on_event(&prefix, event);
        })
        .await;
    }

    /// What one event of the watch means here: the only place that looks
    /// at the event's variants.
    fn on_event(&mut self, prefix: &str, event: WatchEvent<Vec<KvPair>>) {
        match event {
            WatchEvent::Value {
                value, continuity, ..
            } => {
                if matches!(continuity, Continuity::Recovered { .. }) {
                    info!(%prefix, "Consul answers again; following the certificates");
                }
                self.apply(&value);
            }
            WatchEvent::Degraded {
                error,
                failures,
                retry_in,
                ..
            } => {
                if failures == 1 {
                    warn!(%prefix, %error, ?retry_in, "cannot read Consul; the certificates in service stay");
                }
            }
        }
    }

    /// Takes in one listing of the prefix.
    pub fn apply(&mut self, pairs: &[KvPair]) {
        if let Some(keys_at_rest) = &self.keys_at_rest {
            keys_at_rest.send_replace(Some(self.store.keys_at_rest(pairs)));
        }
        for (name, entries) in self.store.certificate_entries(pairs) {
            let signature = ItemsSignature::of(&entries);
            if self.certificates_seen.get(&name) == Some(&signature) {
                continue;
            }
            match self.store.decode_certificate_entries(&name, &entries) {
                Ok(bundle) => {
                    if let Err(error) = self.publisher.offer(&name, Arc::new(bundle)) {
                        error!(secret = %name, %error, "cannot serve the stored certificate");
                    }
                }
                Err(error) => error!(
                    secret = %name,
                    %error,
                    "stored certificate unusable; the last good one stays in service"
                ),
            }
            self.certificates_seen.insert(name, signature);
        }

        let mut new_request = false;
        for (name, index) in self.store.renewal_requests_in(pairs) {
            if self.renewals_seen.insert(name, index) != Some(index) {
                new_request = true;
            }
        }
        if new_request {
            self.wake.send_replace(());
        }
    }
}

/// Which items of a certificate exist and at which modify index: equal
/// signatures mean nothing changed since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ItemsSignature(Vec<(CertificatePart, u64)>);

impl ItemsSignature {
    fn of(entries: &[(CertificatePart, &KvPair)]) -> Self {
        let mut items: Vec<_> = entries
            .iter()
            .map(|(part, pair)| (*part, pair.modify_index))
            .collect();
        items.sort_by_key(|(part, index)| (part.file_name(), *index));
        Self(items)
    }
}

/// Follows every key under `prefix` with one long blocking query, handing
/// each event of the watch to `on_event`, until `shutdown`.
///
/// Why a 5-minute wait: these keys change rarely, and every replica holds
/// one such query open; a longer wait means fewer idle round trips.
pub async fn follow_prefix(
    client: &Client,
    prefix: String,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(WatchEvent<Vec<KvPair>>),
) {
    let mut watch = client.watch_kv_prefix(
        prefix,
        WatchConfig {
            wait: Duration::from_secs(300),
            ..WatchConfig::default()
        },
    );
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = watch.next() => event,
        };
        let Some(event) = event else { return };
        on_event(event);
    }
}

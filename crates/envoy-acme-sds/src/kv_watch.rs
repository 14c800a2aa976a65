//! Every replica follows the Consul prefix and serves what it holds; the
//! store, not the renewing replica, is the source of truth, so leader and
//! followers push a renewed certificate the same way.
//!
//! Why not one blocking query over the prefix: an answer to a blocking
//! query is the whole listing, so following `<prefix>/` made every change
//! cost every replica all certificates, keys, order histories and accounts
//! (megabytes with a thousand hosts). Instead [`KvFollower`] blocks on
//! `last-write` (one small record naming what the last write set, and the
//! record before it: see [`crate::store::versions`]) and on `renewals/`,
//! and reads the items of the certificates the record names. When records
//! do not follow on from the one taken in last (two writes between two
//! answers, a hand edit), it lists the small `versions/` entries and reads
//! what moved there. Everything is read once in full at start, and again
//! after Consul's data was replaced (an index reset) or unreachable, since
//! nothing seen before says anything about such an answer; that full read
//! is also what finds certificates stored without an entry (ADR 0009).
//!
//! Each certificate is decoded once per change of its items' modify indexes.
//! A certificate that cannot be used (corrupt, partial, written half by hand,
//! sealed with another key) is reported once and skipped: the last good
//! certificate stays served. Nothing is withdrawn: a read that fails keeps
//! what is served and is tried again, and a certificate deleted from the
//! store stays served (as the publisher never removes a secret).
//! New renewal requests (`renewals/<name>`) wake the renewing replica's
//! managers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use consul_client::{Client, Continuity, KvPair, WatchConfig, WatchEvent};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::sds::SecretPublisher;
use crate::store::codec::{
    ACCOUNTS_DIR, CERTIFICATES_DIR, CertificatePart, KeyAtRest, KeysAtRest, certificate_item,
};
use crate::store::consul::{ConsulStore, RENEWALS_DIR};
use crate::store::versions::{LAST_WRITE_ITEM, LastWrite, VERSIONS_DIR, Versioned};
use crate::store::{SecretName, StoreError};

/// Why 5 minutes: these keys change rarely, and every replica holds such
/// queries open; a longer wait means fewer idle round trips.
const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// A read that failed is tried again after this...
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// ...doubling up to this, while it keeps failing.
const LONGEST_RETRY: Duration = Duration::from_secs(60);

/// Follows `<prefix>/last-write` and `<prefix>/renewals/` and feeds the
/// [`SecretPublisher`].
#[derive(Debug)]
pub struct KvFollower {
    store: ConsulStore,
    publisher: Arc<SecretPublisher>,
    wake: watch::Sender<()>,
    /// The `ModifyIndex` of the last `last-write` record taken in (0: none
    /// stored); `None` before the first answer.
    taken_in: Option<u64>,
    /// The version entry each thing's items were last read at.
    read: BTreeMap<Versioned, u64>,
    /// What is to be read, with the entry it is read for (`None`: the entry
    /// is gone).
    unread: BTreeMap<Versioned, Option<u64>>,
    /// Whether everything must be read in full: at start, after an index
    /// reset or an outage.
    full_read_due: bool,
    /// Whether `versions/` must be compared with `read`: records did not
    /// follow on.
    comparison_due: bool,
    /// Passes in a row that left something unread.
    failed_passes: u32,
    /// When to try again what is left unread.
    retry_at: Option<Instant>,
    /// The items of each certificate as last looked at.
    certificates_seen: HashMap<SecretName, ItemsSignature>,
    /// How each stored secret lies at rest, by item.
    secrets_at_rest: BTreeMap<String, KeyAtRest>,
    renewals_seen: HashMap<SecretName, u64>,
    keys_at_rest: Option<watch::Sender<Option<KeysAtRest>>>,
}

/// One answer of either blocking query.
#[derive(Debug)]
enum Followed {
    LastWrite(WatchEvent<Option<KvPair>>),
    Renewals(WatchEvent<Vec<KvPair>>),
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
            taken_in: None,
            read: BTreeMap::new(),
            unread: BTreeMap::new(),
            full_read_due: true,
            comparison_due: false,
            failed_passes: 0,
            retry_at: None,
            certificates_seen: HashMap::new(),
            secrets_at_rest: BTreeMap::new(),
            renewals_seen: HashMap::new(),
            keys_at_rest: None,
        }
    }

    /// Also tells `keys_at_rest` how the stored secrets lie at rest, after
    /// every pass that read something.
    #[must_use]
    pub fn with_keys_at_rest(mut self, keys_at_rest: watch::Sender<Option<KeysAtRest>>) -> Self {
        self.keys_at_rest = Some(keys_at_rest);
        self
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let client = self.store.client().clone();
        let config = WatchConfig {
            wait: BLOCKING_WAIT,
            ..WatchConfig::default()
        };
        let last_write = client
            .watch_kv(self.store.key(LAST_WRITE_ITEM), config.clone())
            .map(Followed::LastWrite);
        let renewals = client
            .watch_kv_prefix(self.store.key(RENEWALS_DIR), config)
            .map(Followed::Renewals);
        let mut events = futures::stream::select(last_write, renewals);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => {
                    let Some(event) = event else { return };
                    self.on_event(event).await;
                }
                () = sleep_until(retry_at), if retry_at.is_some() => self.catch_up().await,
            }
        }
    }

    /// What one event of either watch means here: the only place that
    /// looks at the events' variants.
    async fn on_event(&mut self, event: Followed) {
        match event {
            Followed::LastWrite(WatchEvent::Value {
                value, continuity, ..
            }) => {
                let at = value.as_ref().as_ref().map_or(0, |pair| pair.modify_index);
                match continuity {
                    Continuity::Advanced if self.taken_in == Some(at) => return,
                    Continuity::Advanced => {
                        let record = value.as_ref().as_ref().and_then(|pair| {
                            LastWrite::decode(pair.value.as_deref().unwrap_or_default())
                        });
                        match record {
                            Some(record) if Some(record.follows) == self.taken_in => {
                                self.unread
                                    .extend(record.set.into_iter().map(|what| (what, Some(at))));
                            }
                            _ => self.comparison_due = true,
                        }
                    }
                    Continuity::Initial => self.full_read_due = true,
                    Continuity::Reset => {
                        // Another store's modify indexes may equal the ones seen.
                        self.certificates_seen.clear();
                        self.full_read_due = true;
                    }
                    Continuity::Recovered { .. } => {
                        info!(prefix = %self.store.prefix(), "Consul answers again; following the certificates");
                        self.full_read_due = true;
                    }
                }
                self.taken_in = Some(at);
                self.catch_up().await;
            }
            Followed::Renewals(WatchEvent::Value { value, .. }) => self.take_in_renewals(&value),
            Followed::LastWrite(WatchEvent::Degraded {
                error,
                failures,
                retry_in,
                ..
            })
            | Followed::Renewals(WatchEvent::Degraded {
                error,
                failures,
                retry_in,
                ..
            }) => {
                if failures == 1 {
                    warn!(prefix = %self.store.prefix(), %error, ?retry_in, "cannot read Consul; the certificates in service stay");
                }
            }
        }
    }

    /// Reads whatever changed since it was last read: everything when a
    /// full read is due, what moved in `versions/` when a comparison is,
    /// then what the records named. What cannot be read is tried again.
    async fn catch_up(&mut self) {
        if self.taken_in.is_none() {
            return;
        }
        let mut unread = 0;
        if self.full_read_due {
            match self.read_everything().await {
                Ok(()) => {
                    self.full_read_due = false;
                    self.comparison_due = false;
                }
                Err(error) => {
                    self.note_unread(&error);
                    unread += 1;
                }
            }
        } else if self.comparison_due {
            match self.store.list(VERSIONS_DIR).await {
                Ok(pairs) => {
                    let listed = self.store.versions_in(&pairs);
                    for what in listed.keys().chain(self.read.keys()) {
                        if listed.get(what) != self.read.get(what) {
                            self.unread.insert(what.clone(), listed.get(what).copied());
                        }
                    }
                    self.comparison_due = false;
                }
                Err(error) => {
                    self.note_unread(&error);
                    unread += 1;
                }
            }
        }
        for (what, entry) in std::mem::take(&mut self.unread) {
            match self.store.read_versioned(&what).await {
                Ok(pairs) => {
                    self.take_in(&what, &pairs);
                    match entry {
                        Some(index) => self.read.insert(what, index),
                        None => self.read.remove(&what),
                    };
                }
                Err(error) => {
                    self.note_unread(&error);
                    self.unread.insert(what, entry);
                    unread += 1;
                }
            }
        }
        self.report_keys_at_rest();
        if unread == 0 {
            self.failed_passes = 0;
            self.retry_at = None;
        } else {
            self.failed_passes += 1;
            let delay = FIRST_RETRY
                .saturating_mul(1 << self.failed_passes.min(16).saturating_sub(1))
                .min(LONGEST_RETRY);
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    fn note_unread(&self, error: &StoreError) {
        if self.failed_passes == 0 {
            warn!(%error, "cannot read the stored certificates; the ones in service stay, retrying");
        }
    }

    /// Every version entry, certificate and account, in one recursive read
    /// each: what the store holds, entries or not. The entries are read
    /// first, so the items read after are at least as new.
    async fn read_everything(&mut self) -> Result<(), StoreError> {
        let versions = self.store.list(VERSIONS_DIR).await?;
        let certificates = self.store.list(CERTIFICATES_DIR).await?;
        let accounts = self.store.list(ACCOUNTS_DIR).await?;
        let stored = self.store.certificate_entries(&certificates);
        for (name, entries) in &stored {
            self.take_in_certificate(name, entries);
        }
        self.certificates_seen
            .retain(|name, _| stored.contains_key(name));
        self.secrets_at_rest = self
            .store
            .secrets_at_rest(&certificates)
            .into_iter()
            .chain(self.store.secrets_at_rest(&accounts))
            .collect();
        self.read = self.store.versions_in(&versions);
        self.unread.clear();
        Ok(())
    }

    /// Takes in the items of `what`, as just read.
    fn take_in(&mut self, what: &Versioned, pairs: &[KvPair]) {
        let secret_item = match what {
            Versioned::Certificate(name) => certificate_item(name, CertificatePart::Key),
            Versioned::Account(_) => what.subject(),
        };
        self.secrets_at_rest.remove(&secret_item);
        self.secrets_at_rest
            .extend(self.store.secrets_at_rest(pairs));
        let Versioned::Certificate(name) = what else {
            return;
        };
        match self.store.certificate_entries(pairs).remove(name) {
            Some(entries) => self.take_in_certificate(name, &entries),
            None => {
                if self.certificates_seen.remove(name).is_some() {
                    info!(secret = %name, "stored certificate removed; the one in service stays");
                }
            }
        }
    }

    /// Decodes and serves one certificate's items, unless they are the
    /// ones looked at last.
    fn take_in_certificate(&mut self, name: &SecretName, entries: &[(CertificatePart, &KvPair)]) {
        let signature = ItemsSignature::of(entries);
        if self.certificates_seen.get(name) == Some(&signature) {
            return;
        }
        match self.store.decode_certificate_entries(name, entries) {
            Ok(bundle) => {
                if let Err(error) = self.publisher.offer(name, Arc::new(bundle)) {
                    error!(secret = %name, %error, "cannot serve the stored certificate");
                }
            }
            Err(error) => error!(
                secret = %name,
                %error,
                "stored certificate unusable; the last good one stays in service"
            ),
        }
        self.certificates_seen.insert(name.clone(), signature);
    }

    fn report_keys_at_rest(&self) {
        let Some(keys_at_rest) = &self.keys_at_rest else {
            return;
        };
        let mut keys = KeysAtRest::default();
        for state in self.secrets_at_rest.values() {
            keys.count(*state);
        }
        keys_at_rest.send_replace(Some(keys));
    }

    /// Takes in one listing of `renewals/`.
    fn take_in_renewals(&mut self, pairs: &[KvPair]) {
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

/// Sleeps until `at`; never wakes without one (the caller guards that).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
pub async fn follow_prefix(
    client: &Client,
    prefix: String,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(WatchEvent<Vec<KvPair>>),
) {
    let mut watch = client.watch_kv_prefix(
        prefix,
        WatchConfig {
            wait: BLOCKING_WAIT,
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

//! The Consul KV backend (`--storage consul:<prefix>`), shared by replicas.
//!
//! Layout, one KV entry per item (named as in [`super::layout`]; the item
//! names are bound into the encryption of private keys, so they are the same
//! as on disk):
//!
//! ```text
//! <prefix>/leader                               the renewal lock; its session is the holder's
//! <prefix>/certificates/<name>/certificate      the leaf, PEM
//! <prefix>/certificates/<name>/chain            intermediates, PEM
//! <prefix>/certificates/<name>/key              private key, PEM or sealed
//! <prefix>/certificates/<name>/metadata         names, validity, serial, digests (JSON)
//! <prefix>/orders/<name>                        order history of that certificate
//! <prefix>/accounts/<directory>                 ACME account credentials
//! <prefix>/renewals/<name>                      an operator's renewal request
//! <prefix>/http01/<token>                       HTTP-01 key authorizations (see `challenge::consul_tokens`)
//! <prefix>/versions/certificates/<name>         digest of that certificate's last write (see `super::versions`)
//! <prefix>/versions/accounts/<directory>        digest of that account's last write
//! <prefix>/last-write                           which entries the last write set, and the record before
//! ```
//!
//! Each value is a few kilobytes at most, far under Consul's 512 KB limit,
//! and no value grows with the number of certificates. A certificate's four
//! items are written by one `/v1/txn` and read by one recursive query, so a
//! reader sees the old set or the new one, never a chain with another
//! certificate's key.
//!
//! The same transaction sets the certificate's version entry and replaces
//! `last-write` (see [`super::versions`]): replicas block on `last-write`
//! and read the items of what it names, so a renewal costs each of them one
//! small record and one certificate's items, not the whole prefix (ADR 0009).
//! Items written without their entry (by a version before entries, or by
//! hand) are announced by the next lock holder at the start of its term
//! ([`ConsulStore::announce_unversioned_writes`]).
//!
//! # Fencing
//!
//! A backend built with a [`Fence`] prefixes every write of the renewer with
//! a `check-session` of the lock key in the same transaction. Once the
//! session has lost the lock (expired, destroyed, taken over after a
//! partition), Consul rolls the whole transaction back and the write
//! becomes [`StoreError::Fenced`]: a replica that lost its lock cannot
//! overwrite what the new holder wrote. A backend without a fence refuses
//! every write but an operator's renewal requests. A version entry is set in
//! the transaction of the write it announces, so it is fenced with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use consul_client::{Client, KvPair, QueryOptions, SessionId, TxnOp, TxnOutcome};
use tracing::warn;
use zeroize::Zeroizing;

use super::backend::{ItemBackend, Writer};
use super::codec::{Codec, EncodedCertificate, KeyAtRest, StoredCertificate};
use super::encryption::KeyEncryption;
use super::layout::{
    ACCOUNTS_DIR, CERTIFICATES_DIR, CertificatePart, certificate_dir, certificate_item,
    parse_certificate_item,
};
use super::typed::Store;
use super::versions::{EntryValue, LAST_WRITE_ITEM, LastWrite, VERSIONS_DIR, Versioned};
use super::{SecretName, StoreError};
use crate::certificate::CertificateBundle;

/// The key (relative to the prefix) of the renewal lock.
pub const LOCK_ITEM: &str = "leader";
/// Where renewal requests live, relative to the prefix.
pub const RENEWALS_DIR: &str = "renewals/";

/// Consul 1.8 refuses a transaction of more operations.
const MAX_TXN_OPS: usize = 64;

/// Attempts at a write whose `last-write` record another write of the same
/// holder replaced first (its managers write concurrently).
const LAST_WRITE_ATTEMPTS: usize = 32;

/// What entitles a replica to write: its session holds `lock_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock_key: String,
    pub session: SessionId,
}

impl Fence {
    /// The first operation of every fenced transaction: the lock key must
    /// still be held by this session, or Consul rolls the whole transaction
    /// back.
    fn check(&self) -> TxnOp {
        TxnOp::KvCheckSession {
            key: self.lock_key.clone(),
            session: self.session.clone(),
        }
    }
}

/// Certificates, order histories and accounts under one Consul KV prefix.
pub type ConsulStore = Store<ConsulKv>;

/// What one pass of [`ConsulStore::reseal_keys`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Items rewritten sealed with the current key.
    pub resealed: usize,
    /// Items that still need it: changed meanwhile, unreadable, or Consul failed.
    pub failed: usize,
}

impl ConsulStore {
    /// A store that reads `prefix` and refuses certificate writes until
    /// [`fenced`](Self::fenced) with the lock holder's session.
    pub fn new(
        client: Client,
        prefix: &str,
        encryption: Option<Arc<KeyEncryption>>,
    ) -> Result<Self, StoreError> {
        Ok(Store::over(
            ConsulKv::new(client, prefix)?,
            Codec::new(encryption),
        ))
    }

    /// The same store, writing only while `session` holds the lock.
    #[must_use]
    pub fn fenced(&self, session: SessionId) -> Self {
        self.with_backend(self.backend().fenced(session))
    }

    pub fn prefix(&self) -> &str {
        &self.backend().prefix
    }

    pub fn client(&self) -> &Client {
        &self.backend().client
    }

    /// The full KV key of an item.
    pub fn key(&self, item: &str) -> String {
        self.backend().key(item)
    }

    /// The KV key of the renewal lock.
    pub fn lock_key(&self) -> String {
        self.key(LOCK_ITEM)
    }

    /// Decodes one certificate from its items in a listing of the prefix
    /// (as [`certificate_entries`](Self::certificate_entries) groups them).
    pub fn decode_certificate_entries(
        &self,
        name: &SecretName,
        entries: &[(CertificatePart, &KvPair)],
    ) -> Result<CertificateBundle, StoreError> {
        self.codec()
            .decode_certificate(name, &stored_from(entries))?
            .ok_or_else(|| StoreError::Corrupt {
                item: certificate_dir(name),
                reason: "no items".to_owned(),
            })
    }

    /// The certificate items in a listing of the prefix, by certificate.
    pub fn certificate_entries<'a>(
        &self,
        pairs: &'a [KvPair],
    ) -> BTreeMap<SecretName, Vec<(CertificatePart, &'a KvPair)>> {
        self.backend().certificate_entries(pairs)
    }

    /// How each stored secret (a certificate's key, an account) in `pairs`
    /// lies at rest, by item name.
    pub fn secrets_at_rest(&self, pairs: &[KvPair]) -> Vec<(String, KeyAtRest)> {
        self.backend()
            .items(pairs)
            .filter_map(|(item, pair)| {
                let state = self
                    .codec()
                    .key_at_rest(item, pair.value.as_deref().unwrap_or_default())?;
                Some((item.to_owned(), state))
            })
            .collect()
    }

    /// Every key under `<prefix>/<dir>`, with values: one recursive read.
    pub async fn list(&self, dir: &str) -> Result<Vec<KvPair>, StoreError> {
        self.backend().list(dir).await
    }

    /// The stored items of `what`: a certificate's (up to four), or the
    /// account item; empty when nothing is stored.
    pub async fn read_versioned(&self, what: &Versioned) -> Result<Vec<KvPair>, StoreError> {
        match what {
            // The trailing slash keeps `a.example.com` from listing `a.example.com.other`.
            Versioned::Certificate(_) => self.list(&format!("{}/", what.subject())).await,
            Versioned::Account(_) => {
                let key = self.key(&what.subject());
                let response = self
                    .client()
                    .kv_get(&key, &QueryOptions::default())
                    .await
                    .map_err(|source| StoreError::Consul {
                        operation: "reading",
                        key,
                        source,
                    })?;
                Ok(response.value.into_iter().collect())
            }
        }
    }

    /// The version entries in a listing of `versions/`, with the
    /// `ModifyIndex` each is at.
    pub fn versions_in(&self, pairs: &[KvPair]) -> BTreeMap<Versioned, u64> {
        self.backend()
            .items(pairs)
            .filter_map(|(item, pair)| Some((Versioned::from_entry(item)?, pair.modify_index)))
            .collect()
    }

    /// Sets the version entry of every certificate and account whose items
    /// were written after it, or that has none: stored by a version that
    /// wrote no entries, or edited by hand. Followers read each of those
    /// once. The lock holder runs this at the start of its term; it reads
    /// the certificates, accounts and entries once each, and returns how
    /// many entries it set.
    ///
    /// Why comparing indexes tells: a fenced write sets the entry in the
    /// items' transaction, so both carry the same `ModifyIndex`; only a
    /// write that skipped the entry leaves an item ahead of it.
    pub async fn announce_unversioned_writes(&self) -> Result<usize, StoreError> {
        // What each thing's items are as stored, and the newest of their indexes.
        let mut stored: BTreeMap<Versioned, (EntryValue, u64)> = BTreeMap::new();
        for dir in [CERTIFICATES_DIR, ACCOUNTS_DIR] {
            let pairs = self.list(dir).await?;
            for (item, pair) in self.backend().items(&pairs) {
                if let Some(what) = Versioned::of_item(item) {
                    let (value, newest) = stored.entry(what).or_default();
                    value.item(item, pair.value.as_deref().unwrap_or_default());
                    value.stored_at(pair.modify_index);
                    *newest = (*newest).max(pair.modify_index);
                }
            }
        }
        let announced = self.versions_in(&self.list(VERSIONS_DIR).await?);
        let unannounced: Vec<(Versioned, String)> = stored
            .into_iter()
            .filter(|(what, (_, newest))| announced.get(what).is_none_or(|entry| entry < newest))
            .map(|(what, (value, _))| (what, value.finish()))
            .collect();
        // Two operations of each transaction are the lock check and `last-write`.
        for entries in unannounced.chunks(MAX_TXN_OPS - 2) {
            self.backend().announce(entries).await?;
        }
        Ok(unannounced.len())
    }

    /// Rewrites every stored secret that is in plaintext or sealed with the
    /// previous key, sealed with the current key. Each item is its own
    /// transaction: the lock check, then a CAS on the `ModifyIndex` it was
    /// read at, so a certificate renewed meanwhile is never overwritten with
    /// the older key. Nothing is deleted. An item that fails is counted and
    /// left as it is, for a later pass; losing the lock ends the pass with
    /// [`StoreError::Fenced`].
    pub async fn reseal_keys(&self) -> Result<ResealReport, StoreError> {
        let mut report = ResealReport::default();
        if !self.codec().seals() {
            return Ok(report);
        }
        let pairs = self.list("").await?;
        for (item, pair) in self.backend().items(&pairs) {
            let bytes = pair.value.as_deref().unwrap_or_default();
            let resealed = match self.codec().reseal(item, bytes) {
                Ok(Some(resealed)) => resealed,
                Ok(None) => continue,
                Err(error) => {
                    warn!(item, %error, "cannot reseal the stored secret; it stays as it is");
                    report.failed += 1;
                    continue;
                }
            };
            match self
                .backend()
                .write_if_unchanged(item, &resealed, pair)
                .await
            {
                Ok(()) => report.resealed += 1,
                Err(error @ StoreError::Fenced { .. }) => return Err(error),
                Err(error) => {
                    warn!(item, %error, "resealing the stored secret failed; retried later");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// The secret names with a renewal request in a listing of the prefix.
    pub fn renewal_requests_in(&self, pairs: &[KvPair]) -> Vec<(SecretName, u64)> {
        let renewals = self.key(RENEWALS_DIR);
        pairs
            .iter()
            .filter_map(|pair| {
                let segment = pair.key.strip_prefix(&renewals)?;
                let name = SecretName::from_path_segment(segment).ok()?;
                Some((name, pair.modify_index))
            })
            .collect()
    }
}

/// The keys under one Consul KV prefix, as an [`ItemBackend`].
#[derive(Debug, Clone)]
pub struct ConsulKv {
    client: Client,
    /// Without a trailing slash.
    prefix: String,
    fence: Option<Fence>,
}

impl ConsulKv {
    /// Reads `prefix`; refuses the renewer's writes until [`fenced`](Self::fenced).
    pub fn new(client: Client, prefix: &str) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(StoreError::EmptyPrefix);
        }
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            fence: None,
        })
    }

    /// The same prefix, the renewer's writes fenced by `session` holding the lock.
    #[must_use]
    pub fn fenced(&self, session: SessionId) -> Self {
        Self {
            fence: Some(Fence {
                lock_key: self.key(LOCK_ITEM),
                session,
            }),
            ..self.clone()
        }
    }

    fn key(&self, item: &str) -> String {
        format!("{}/{item}", self.prefix)
    }

    fn certificate_entries<'a>(
        &self,
        pairs: &'a [KvPair],
    ) -> BTreeMap<SecretName, Vec<(CertificatePart, &'a KvPair)>> {
        let root = format!("{}/", self.prefix);
        let mut certificates: BTreeMap<SecretName, Vec<_>> = BTreeMap::new();
        for pair in pairs {
            let Some(item) = pair.key.strip_prefix(&root) else {
                continue;
            };
            if let Some((name, part)) = parse_certificate_item(item) {
                certificates.entry(name).or_default().push((part, pair));
            }
        }
        certificates
    }

    /// The items of a listing of the prefix, by item name.
    fn items<'a>(&self, pairs: &'a [KvPair]) -> impl Iterator<Item = (&'a str, &'a KvPair)> {
        let root = format!("{}/", self.prefix);
        pairs
            .iter()
            .filter_map(move |pair| Some((pair.key.strip_prefix(&root)?, pair)))
    }

    /// One fenced transaction replacing `item` with `bytes` only if it is
    /// still as `read` (same `ModifyIndex`).
    async fn write_if_unchanged(
        &self,
        item: &str,
        bytes: &[u8],
        read: &KvPair,
    ) -> Result<(), StoreError> {
        let fence = self.fence(item)?;
        let mut ops = vec![
            fence.check(),
            TxnOp::KvCas {
                key: read.key.clone(),
                value: Bytes::copy_from_slice(bytes),
                flags: read.flags,
                index: read.modify_index,
            },
        ];
        let (entries, set) = self.version_entries_of(&[(item, bytes)]);
        ops.extend(entries);
        self.commit_recorded(item, fence, ops, set).await
    }

    /// One fenced transaction setting each entry of `entries` to its value,
    /// with its `last-write` record.
    async fn announce(&self, entries: &[(Versioned, String)]) -> Result<(), StoreError> {
        let fence = self.fence(VERSIONS_DIR)?;
        let mut ops = vec![fence.check()];
        ops.extend(entries.iter().map(|(what, value)| TxnOp::KvSet {
            key: self.key(&what.entry()),
            value: Bytes::from(value.clone()),
            flags: 0,
        }));
        let set = entries.iter().map(|(what, _)| what.clone()).collect();
        self.commit_recorded(VERSIONS_DIR, fence, ops, set).await
    }

    /// The operations setting the version entries of what `items` belong
    /// to, and what those are.
    fn version_entries_of(&self, items: &[(&str, &[u8])]) -> (Vec<TxnOp>, Vec<Versioned>) {
        let mut values: BTreeMap<Versioned, EntryValue> = BTreeMap::new();
        for (item, bytes) in items {
            if let Some(what) = Versioned::of_item(item) {
                values.entry(what).or_default().item(item, bytes);
            }
        }
        values
            .into_iter()
            .map(|(what, value)| {
                let op = TxnOp::KvSet {
                    key: self.key(&what.entry()),
                    value: Bytes::from(value.finish()),
                    flags: 0,
                };
                (op, what)
            })
            .unzip()
    }

    /// Runs `ops` (the lock check first) with the `last-write` record of
    /// `set` appended as a CAS on the record it replaces; when another write
    /// replaced that record first, reads it again and retries. Without
    /// entries set, `ops` run as they are.
    async fn commit_recorded(
        &self,
        what: &str,
        fence: &Fence,
        ops: Vec<TxnOp>,
        set: Vec<Versioned>,
    ) -> Result<(), StoreError> {
        if set.is_empty() {
            return self.commit(what, fence, &ops).await;
        }
        let key = self.key(LAST_WRITE_ITEM);
        for _ in 0..LAST_WRITE_ATTEMPTS {
            let follows = self
                .client
                .kv_get(&key, &QueryOptions::default())
                .await
                .map_err(|source| StoreError::Consul {
                    operation: "reading",
                    key: key.clone(),
                    source,
                })?
                .value
                .map_or(0, |pair| pair.modify_index);
            let record = LastWrite {
                follows,
                set: set.clone(),
            };
            let mut attempt = ops.clone();
            attempt.push(TxnOp::KvCas {
                key: key.clone(),
                value: Bytes::from(record.encode()),
                flags: 0,
                index: follows,
            });
            let last = attempt.len() - 1;
            match self.transact(what, &attempt).await? {
                TxnOutcome::RolledBack(errors)
                    if !errors.is_empty() && errors.iter().all(|error| error.op_index == last) =>
                {
                    continue;
                }
                outcome => return settle(what, fence, outcome),
            }
        }
        Err(StoreError::RolledBack {
            item: what.to_owned(),
            reasons: format!(
                "{key} was replaced by other writes {LAST_WRITE_ATTEMPTS} times in a row"
            ),
        })
    }

    /// The fence the renewer's writes go under; without one, `item` cannot
    /// be written at all.
    fn fence(&self, item: &str) -> Result<&Fence, StoreError> {
        self.fence.as_ref().ok_or_else(|| StoreError::Fenced {
            item: item.to_owned(),
            reason: "this replica does not hold the renewal lock".to_owned(),
        })
    }

    /// One transaction: the lock check, the items, and the version entries
    /// of what they belong to. Either all apply or none does. `what` names
    /// the items in errors.
    async fn write_fenced(&self, what: &str, items: &[(String, &[u8])]) -> Result<(), StoreError> {
        let fence = self.fence(what)?;
        let mut ops = vec![fence.check()];
        ops.extend(items.iter().map(|(item, bytes)| TxnOp::KvSet {
            key: self.key(item),
            value: Bytes::copy_from_slice(bytes),
            flags: 0,
        }));
        let written: Vec<(&str, &[u8])> = items
            .iter()
            .map(|(item, bytes)| (item.as_str(), *bytes))
            .collect();
        let (entries, set) = self.version_entries_of(&written);
        ops.extend(entries);
        self.commit_recorded(what, fence, ops, set).await
    }

    /// Runs `ops`, whose first is `fence`'s lock check; a rollback caused by
    /// that check is [`StoreError::Fenced`].
    async fn commit(&self, what: &str, fence: &Fence, ops: &[TxnOp]) -> Result<(), StoreError> {
        let outcome = self.transact(what, ops).await?;
        settle(what, fence, outcome)
    }

    async fn transact(&self, what: &str, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
        self.client
            .txn(ops, &QueryOptions::default())
            .await
            .map_err(|source| StoreError::Consul {
                operation: "writing",
                key: self.key(what),
                source,
            })
    }

    /// Every key under `<prefix>/<dir>`, with values.
    async fn list(&self, dir: &str) -> Result<Vec<KvPair>, StoreError> {
        let dir = self.key(dir);
        let response = self
            .client
            .kv_list(&dir, &QueryOptions::default())
            .await
            .map_err(|source| StoreError::Consul {
                operation: "listing",
                key: dir,
                source,
            })?;
        Ok(response.value)
    }

    /// One recursive read of a certificate's items.
    async fn list_certificate(&self, name: &SecretName) -> Result<StoredCertificate, StoreError> {
        let pairs = self.list(&format!("{}/", certificate_dir(name))).await?;
        let entries = self
            .certificate_entries(&pairs)
            .remove(name)
            .unwrap_or_default();
        Ok(stored_from(&entries))
    }

    /// Whether one item of the certificate is stored, read on its own.
    ///
    /// Consul (1.8) answers a recursive read that the token may not see with
    /// 404, exactly as for an absent directory, whereas the read of one key it
    /// may not see is a 403: only this read tells "hidden" from "absent".
    async fn certificate_item_exists(&self, name: &SecretName) -> Result<bool, StoreError> {
        let key = self.key(&certificate_item(name, CertificatePart::Metadata));
        let response = self
            .client
            .kv_get(&key, &QueryOptions::default())
            .await
            .map_err(|source| StoreError::Consul {
                operation: "reading",
                key,
                source,
            })?;
        Ok(response.value.is_some())
    }
}

#[async_trait]
impl ItemBackend for ConsulKv {
    async fn read_item(&self, item: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let key = self.key(item);
        let response = self
            .client
            .kv_get(&key, &QueryOptions::default())
            .await
            .map_err(|source| StoreError::Consul {
                operation: "reading",
                key,
                source,
            })?;
        Ok(response
            .value
            .map(|pair| Zeroizing::new(pair.value.map(|v| v.to_vec()).unwrap_or_default())))
    }

    async fn write_item(
        &self,
        item: &str,
        bytes: Zeroizing<Vec<u8>>,
        writer: Writer,
    ) -> Result<(), StoreError> {
        match writer {
            Writer::Renewer => self.write_fenced(item, &[(item.to_owned(), &bytes)]).await,
            Writer::Operator => {
                let key = self.key(item);
                self.client
                    .kv_put(&key, Bytes::copy_from_slice(&bytes))
                    .await
                    .map_err(|source| StoreError::Consul {
                        operation: "writing",
                        key,
                        source,
                    })
            }
        }
    }

    async fn read_certificate(&self, name: &SecretName) -> Result<StoredCertificate, StoreError> {
        // One recursive read: the items of one write, never a mix of two.
        let stored = self.list_certificate(name).await?;
        if stored.present().next().is_some() {
            return Ok(stored);
        }
        // Empty may mean hidden by the token's ACL: taken for "no
        // certificate", it would have a valid certificate replaced. A denied
        // item read fails here instead (the caller backs off and reads again).
        if self.certificate_item_exists(name).await? {
            // Written between the two reads: the new listing has all of it.
            return self.list_certificate(name).await;
        }
        Ok(stored)
    }

    async fn write_certificate(
        &self,
        name: &SecretName,
        encoded: EncodedCertificate,
    ) -> Result<(), StoreError> {
        let items: Vec<(String, &[u8])> = encoded
            .parts()
            .into_iter()
            .map(|(part, bytes)| (certificate_item(name, part), bytes))
            .collect();
        self.write_fenced(&certificate_dir(name), &items).await
    }
}

/// What became of a transaction whose first operation is `fence`'s lock
/// check: a rollback caused by that check is [`StoreError::Fenced`].
fn settle(what: &str, fence: &Fence, outcome: TxnOutcome) -> Result<(), StoreError> {
    match outcome {
        TxnOutcome::Committed(_) => Ok(()),
        // Consul names the operation that failed; the first is the lock check.
        TxnOutcome::RolledBack(errors)
            if errors.is_empty() || errors.iter().any(|error| error.op_index == 0) =>
        {
            Err(StoreError::Fenced {
                item: what.to_owned(),
                reason: format!(
                    "session {} no longer holds {}",
                    fence.session, fence.lock_key
                ),
            })
        }
        TxnOutcome::RolledBack(errors) => {
            let reasons: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
            Err(StoreError::RolledBack {
                item: what.to_owned(),
                reasons: reasons.join("; "),
            })
        }
    }
}

/// The stored items of one certificate, from its KV entries.
fn stored_from(entries: &[(CertificatePart, &KvPair)]) -> StoredCertificate {
    let mut stored = StoredCertificate::default();
    for (part, pair) in entries {
        stored.set(*part, pair.value.as_deref().unwrap_or_default());
    }
    stored
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use consul_client::{Address, ClientConfig};

    use super::*;

    /// A stand-in for Consul's KV answers to a token: recursive reads get
    /// `list_status`, single-key reads `get_status` (403 with Consul's body).
    /// One thread a connection, each answer closing it.
    fn kv_answering(list_status: u16, get_status: u16) -> Client {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut request_line = String::new();
                    let _ = reader.read_line(&mut request_line);
                    let mut header = String::new();
                    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                        header.clear();
                    }
                    let status = if request_line.contains("recurse") {
                        list_status
                    } else {
                        get_status
                    };
                    let body = if status == 403 {
                        "Permission denied"
                    } else {
                        ""
                    };
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 {status} X\r\nX-Consul-Index: 7\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Client::new(ClientConfig::new(
            address.parse::<Address>().expect("address"),
        ))
        .expect("client")
    }

    #[tokio::test]
    async fn an_empty_listing_of_a_certificate_the_token_may_not_read_is_an_error() {
        let kv = ConsulKv::new(kv_answering(404, 403), "acme").expect("backend");
        let name = SecretName::new("example.com").expect("name");
        let read = kv.read_certificate(&name).await;
        assert!(
            matches!(read, Err(StoreError::Consul { .. })),
            "hidden taken for absent: {read:?}"
        );
    }

    #[tokio::test]
    async fn an_empty_listing_confirmed_by_a_missing_item_is_no_certificate() {
        let kv = ConsulKv::new(kv_answering(404, 404), "acme").expect("backend");
        let name = SecretName::new("example.com").expect("name");
        let stored = kv
            .read_certificate(&name)
            .await
            .expect("absent, not failed");
        assert_eq!(stored.present().count(), 0);
    }
}

//! The Consul KV [`CertificateStore`] (`--storage consul:<prefix>`), shared
//! by replicas.
//!
//! Layout, one KV entry per item (see [`super::codec`]; the item names are
//! bound into the encryption of private keys, so they are the same as on disk):
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
//! ```
//!
//! Each value is a few kilobytes at most, far under Consul's 512 KB limit,
//! and no value grows with the number of certificates. A certificate's four
//! items are written by one `/v1/txn` and read by one recursive query, so a
//! reader sees the old set or the new one, never a chain with another
//! certificate's key.
//!
//! # Fencing
//!
//! A store built with a [`Fence`] prefixes every write with a
//! `check-session` of the lock key in the same transaction. Once the
//! session has lost the lock (expired, destroyed, taken over after a
//! partition), Consul rolls the whole transaction back and the write
//! becomes [`StoreError::Fenced`]: a replica that lost its lock cannot
//! overwrite what the new holder wrote. A store without a fence refuses
//! every write but renewal requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use consul_client::{Client, KvPair, QueryOptions, SessionId, TxnOp, TxnOutcome};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::codec::{
    CertificatePart, Codec, StoredCertificate, account_item, certificate_dir, certificate_item,
    order_history_item, parse_certificate_item, renewal_request_item,
};
use super::encryption::KeyEncryption;
use super::{AccountId, CertificateStore, SecretName, StoreError, StoredAccount};
use crate::certificate::CertificateBundle;
use crate::policy::OrderHistory;

/// The key (relative to the prefix) of the renewal lock.
pub const LOCK_ITEM: &str = "leader";
/// Where renewal requests live, relative to the prefix.
pub const RENEWALS_DIR: &str = "renewals/";

/// What entitles a replica to write: its session holds `lock_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock_key: String,
    pub session: SessionId,
}

/// Certificates, order histories and accounts under one Consul KV prefix.
#[derive(Debug, Clone)]
pub struct ConsulStore {
    client: Client,
    /// Without a trailing slash.
    prefix: String,
    codec: Codec,
    fence: Option<Fence>,
}

impl ConsulStore {
    /// A store that reads `prefix` and refuses certificate writes until
    /// [`fenced`](Self::fenced) with the lock holder's session.
    pub fn new(
        client: Client,
        prefix: &str,
        encryption: Option<Arc<KeyEncryption>>,
    ) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(StoreError::Backend(
                "the Consul KV prefix is empty: give one, e.g. consul:envoy-acme-sds".to_owned(),
            ));
        }
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            codec: Codec::new(encryption),
            fence: None,
        })
    }

    /// The same store, writing only while `session` holds the lock.
    #[must_use]
    pub fn fenced(&self, session: SessionId) -> Self {
        Self {
            fence: Some(Fence {
                lock_key: self.lock_key(),
                session,
            }),
            ..self.clone()
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The full KV key of an item.
    pub fn key(&self, item: &str) -> String {
        format!("{}/{item}", self.prefix)
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
        self.codec
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

    async fn read(&self, item: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let key = self.key(item);
        let response = self
            .client
            .kv_get(&key, &QueryOptions::default())
            .await
            .map_err(|e| StoreError::Backend(format!("reading {key}: {e}")))?;
        Ok(response
            .value
            .map(|pair| Zeroizing::new(pair.value.map(|v| v.to_vec()).unwrap_or_default())))
    }

    /// One transaction: the lock check, then the items. Either all apply or
    /// none does. `what` names the items in errors.
    async fn write_fenced(&self, what: &str, items: &[(String, &[u8])]) -> Result<(), StoreError> {
        let Some(fence) = &self.fence else {
            return Err(StoreError::Fenced {
                item: what.to_owned(),
                reason: "this replica does not hold the renewal lock".to_owned(),
            });
        };
        let mut ops = vec![TxnOp::KvCheckSession {
            key: fence.lock_key.clone(),
            session: fence.session.clone(),
        }];
        ops.extend(items.iter().map(|(item, bytes)| TxnOp::KvSet {
            key: self.key(item),
            value: Bytes::copy_from_slice(bytes),
            flags: 0,
        }));
        match self.client.txn(&ops, &QueryOptions::default()).await {
            Ok(TxnOutcome::Committed(_)) => Ok(()),
            Ok(TxnOutcome::RolledBack(errors)) => {
                // Consul names the operation that failed; the first is the lock check.
                if errors.iter().any(|error| error.op_index == 0) || errors.is_empty() {
                    Err(StoreError::Fenced {
                        item: what.to_owned(),
                        reason: format!(
                            "session {} no longer holds {}",
                            fence.session, fence.lock_key
                        ),
                    })
                } else {
                    let reasons: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
                    Err(StoreError::Backend(format!(
                        "Consul rolled back the write of {what}: {}",
                        reasons.join("; ")
                    )))
                }
            }
            Err(error) => Err(StoreError::Backend(format!("writing {what}: {error}"))),
        }
    }

    async fn write_one_fenced(&self, item: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_fenced(item, &[(item.to_owned(), bytes)]).await
    }
}

#[async_trait]
impl CertificateStore for ConsulStore {
    async fn load_certificate(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateBundle>, StoreError> {
        // One recursive read: the items of one write, never a mix of two.
        let dir = self.key(&format!("{}/", certificate_dir(name)));
        let response = self
            .client
            .kv_list(&dir, &QueryOptions::default())
            .await
            .map_err(|e| StoreError::Backend(format!("reading {dir}: {e}")))?;
        let pairs = response.value;
        let entries = self
            .certificate_entries(&pairs)
            .remove(name)
            .unwrap_or_default();
        self.codec.decode_certificate(name, &stored_from(&entries))
    }

    async fn save_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<(), StoreError> {
        let encoded = self.codec.encode_certificate(name, bundle)?;
        let items: Vec<(String, &[u8])> = encoded
            .parts()
            .into_iter()
            .map(|(part, bytes)| (certificate_item(name, part), bytes))
            .collect();
        self.write_fenced(&certificate_dir(name), &items).await
    }

    async fn load_order_history(&self, name: &SecretName) -> Result<OrderHistory, StoreError> {
        match self.read(&order_history_item(name)).await? {
            Some(bytes) => self.codec.decode_order_history(name, &bytes),
            None => Ok(OrderHistory::default()),
        }
    }

    async fn save_order_history(
        &self,
        name: &SecretName,
        history: &OrderHistory,
    ) -> Result<(), StoreError> {
        let bytes = self.codec.encode_order_history(name, history)?;
        self.write_one_fenced(&order_history_item(name), &bytes)
            .await
    }

    async fn load_account(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        match self.read(&account_item(id)).await? {
            Some(bytes) => self.codec.decode_account(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn save_account(
        &self,
        id: &AccountId,
        account: &StoredAccount,
    ) -> Result<(), StoreError> {
        let bytes = self.codec.encode_account(id, account)?;
        self.write_one_fenced(&account_item(id), &bytes).await
    }

    async fn load_renewal_request(
        &self,
        name: &SecretName,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        match self.read(&renewal_request_item(name)).await? {
            Some(bytes) => self.codec.decode_renewal_request(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn request_renewal(
        &self,
        name: &SecretName,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let item = renewal_request_item(name);
        let bytes = self.codec.encode_renewal_request(name, at)?;
        self.client
            .kv_put(&self.key(&item), Bytes::copy_from_slice(&bytes))
            .await
            .map_err(|e| StoreError::Backend(format!("writing {item}: {e}")))
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

//! Persistence of certificates, order history and ACME accounts.
//!
//! [`CertificateStore`] is the seam between the certificate logic and where
//! things live. There is one implementation, [`typed::Store`], which encodes
//! values into items ([`codec`], named by [`layout`]) and keeps them in an
//! [`backend::ItemBackend`]: files under a directory ([`disk::DiskFiles`]) for
//! one instance, keys under a Consul KV prefix ([`consul::ConsulKv`]) for
//! replicas. A backend only moves bytes, so a certificate can move between
//! backends and a decode error reads the same everywhere.
//!
//! Each item is one key (one file, one KV entry). A certificate is four
//! items (certificate, chain, key, metadata) that each backend replaces in
//! one atomic step, so a reader sees either the old or the new certificate
//! with its key, never a mix (ADR 0006).
//!
//! # Fenced writes
//!
//! With replicas, only the holder of the leader lock may write. A backend that
//! is shared between replicas is constructed with whatever proves leadership
//! (a Consul session, a lock index) and conditions every write on it; when the
//! condition fails it returns [`StoreError::Fenced`] and writes nothing. The
//! certificate manager treats that like any failed write: the new certificate
//! is neither stored nor published, and the old one stays.

pub mod backend;
pub mod codec;
pub mod consul;
pub mod disk;
pub mod encryption;
pub mod layout;
pub mod typed;
pub mod versions;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use time::OffsetDateTime;

use crate::certificate::{CertificateBundle, CertificateMetadata};
use crate::policy::OrderHistory;
use crate::routed::catalog::HostRouting;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The item exists but cannot be used; the message names what is wrong.
    #[error("stored {item} is unusable: {reason}")]
    Corrupt { item: String, reason: String },
    #[error("stored {item}: {source}")]
    Encryption {
        item: String,
        #[source]
        source: encryption::EncryptionError,
    },
    #[error("{operation} {item}: {source}")]
    Io {
        operation: &'static str,
        item: String,
        #[source]
        source: std::io::Error,
    },
    /// The write was refused because this process no longer holds the lock
    /// that entitles it to write.
    #[error("write of {item} refused: {reason}")]
    Fenced { item: String, reason: String },
    /// Consul did not answer, or refused the request.
    #[error("{operation} {key} in Consul: {source}")]
    Consul {
        operation: &'static str,
        key: String,
        #[source]
        source: consul_client::Error,
    },
    /// Consul rolled a write back for a reason other than the fence.
    #[error("Consul rolled back the write of {item}: {reasons}")]
    RolledBack { item: String, reasons: String },
    #[error("the Consul KV prefix is empty: give one, e.g. consul:envoy-acme-sds")]
    EmptyPrefix,
    /// A blocking file operation panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a name cannot be used to key a stored certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret name `{0}`: 1 to 253 characters from a-z, A-Z, 0-9, `.`, `-`, `_`, `*`")]
pub struct InvalidSecretName(String);

/// The name a certificate is stored and served (as an SDS secret) under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretName(String);

impl SecretName {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidSecretName> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'));
        if valid {
            Ok(Self(name))
        } else {
            Err(InvalidSecretName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A spelling safe as a file name or KV path segment: `*` becomes `%2A`
    /// (`%` cannot occur in a secret name, so this is reversible and unique).
    pub fn path_segment(&self) -> String {
        self.0.replace('*', "%2A")
    }

    /// The inverse of [`path_segment`](Self::path_segment).
    pub fn from_path_segment(segment: &str) -> Result<Self, InvalidSecretName> {
        Self::new(segment.replace("%2A", "*"))
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SecretName {
    type Error = InvalidSecretName;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SecretName> for String {
    fn from(name: SecretName) -> Self {
        name.0
    }
}

/// Identifies the ACME account of one directory: switching from staging to
/// production uses (and creates) another account rather than sending staging
/// credentials to production.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub fn for_directory(directory_url: &str) -> Self {
        let without_scheme = directory_url
            .split_once("://")
            .map_or(directory_url, |(_, rest)| rest);
        let id: String = without_scheme
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self(id.trim_matches('_').to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ACME account credentials as stored: shared by replicas, so they all act
/// as one account.
#[derive(Debug, Clone)]
pub struct StoredAccount {
    pub directory_url: String,
    pub contact: Vec<String>,
    /// The ACME client's serialized credentials (account URL and private key).
    pub credentials_json: Secret<String>,
}

/// An operator's request to renew one certificate (`envoy-acme-sds renew`).
///
/// It names the certificate it wants replaced, so whether it is answered is
/// decided without comparing the clock of the machine that asked with the
/// renewing replica's: a clock ahead would otherwise make a request look
/// open after every renewal, and the replica would order until its budget
/// is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalRequest {
    /// When it was made, by the asking machine's clock: shown, and compared
    /// only for a request that names no serial (written by older versions).
    pub requested_at: OffsetDateTime,
    /// Serial of the certificate stored when it was asked; the request is
    /// answered once another certificate is stored.
    pub replaces_serial: Option<String>,
}

impl RenewalRequest {
    /// A request to replace the certificate described by `stored`.
    pub fn replacing(stored: &CertificateMetadata, requested_at: OffsetDateTime) -> Self {
        Self {
            requested_at,
            replaces_serial: Some(stored.serial.clone()),
        }
    }
}

/// The routed hosts the lock holder last knew (`--follow-routes`), each with
/// since when no believable answer routes it (`None`: routed).
pub type RoutedHostsRecord = BTreeMap<String, HostRouting>;

/// The record of routed hosts as read: what could be used, and what could
/// not (each problem names the item, the host and the fault).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedRoutedHosts {
    pub hosts: RoutedHostsRecord,
    pub problems: Vec<String>,
}

/// Loads and saves certificates, their order history and ACME accounts.
///
/// `load_*` return `Ok(None)` for an absent item and [`StoreError::Corrupt`]
/// (or `Encryption`) for one that exists but cannot be used, naming the item
/// and the fault; callers keep serving what they have in that case.
#[async_trait]
pub trait CertificateStore: Send + Sync + fmt::Debug {
    async fn load_certificate(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateBundle>, StoreError>;

    async fn save_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<(), StoreError>;

    /// What is recorded of the stored certificate (names, validity, serial),
    /// read without opening its private key: `renew` names the certificate
    /// to replace without needing the encryption key.
    async fn load_certificate_metadata(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateMetadata>, StoreError> {
        Ok(self
            .load_certificate(name)
            .await?
            .map(|bundle| bundle.metadata().clone()))
    }

    /// Orders placed for the certificate; empty when none were recorded.
    async fn load_order_history(&self, name: &SecretName) -> Result<OrderHistory, StoreError>;

    async fn save_order_history(
        &self,
        name: &SecretName,
        history: &OrderHistory,
    ) -> Result<(), StoreError>;

    async fn load_account(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError>;

    async fn save_account(&self, id: &AccountId, account: &StoredAccount)
    -> Result<(), StoreError>;

    /// The operator's last request to renew the certificate
    /// (`envoy-acme-sds renew`); `None` if never.
    async fn load_renewal_request(
        &self,
        name: &SecretName,
    ) -> Result<Option<RenewalRequest>, StoreError>;

    /// Records an operator's renewal request. Not fenced: it is input for
    /// whichever replica holds the lock, written from outside any replica.
    async fn request_renewal(
        &self,
        name: &SecretName,
        request: &RenewalRequest,
    ) -> Result<(), StoreError>;

    /// The lock holder's record of the routed hosts and their unrouted
    /// clock; empty when none is stored. `now` stands in for a clock that
    /// cannot be read (see [`codec::Codec::decode_routed_hosts`]).
    async fn load_routed_hosts(&self, now: OffsetDateTime)
    -> Result<LoadedRoutedHosts, StoreError>;

    /// Replaces the record of routed hosts; written by the renewing replica
    /// only, fenced as its other writes.
    async fn save_routed_hosts(&self, hosts: &RoutedHostsRecord) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_restricted_and_map_to_safe_segments() {
        let wildcard = SecretName::new("*.example.com").expect("valid");
        assert_eq!(wildcard.path_segment(), "%2A.example.com");
        for bad in ["", ".", "..", "a/b", "a b", "100%"] {
            assert!(SecretName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_segments_map_back_to_the_name() {
        let wildcard = SecretName::new("*.example.com").expect("valid");
        assert_eq!(
            SecretName::from_path_segment(&wildcard.path_segment()).expect("valid"),
            wildcard
        );
        assert!(SecretName::from_path_segment("a%2Fb").is_err());
    }

    #[test]
    fn account_ids_differ_per_directory_and_are_path_safe() {
        let staging =
            AccountId::for_directory("https://acme-staging-v02.api.letsencrypt.org/directory");
        let production = AccountId::for_directory("https://acme-v02.api.letsencrypt.org/directory");
        assert_ne!(staging, production);
        assert_eq!(
            staging.as_str(),
            "acme-staging-v02.api.letsencrypt.org_directory"
        );
        let local = AccountId::for_directory("https://localhost:14000/dir");
        assert_eq!(local.as_str(), "localhost_14000_dir");
    }
}

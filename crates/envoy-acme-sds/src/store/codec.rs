//! How each stored item is encoded: certificates as PEM, everything else as
//! versioned JSON, private keys optionally sealed (see [`super::encryption`]).
//! Shared by every backend, so items can be copied between them and decode
//! errors read the same everywhere.
//!
//! A certificate is four items under `certificates/<secret name>/`:
//!
//! ```text
//! certificate   the leaf, PEM
//! chain         the issuer chain (intermediates), PEM; may be empty
//! key           the private key: PEM, or a sealed JSON envelope when encrypted
//! metadata      JSON: names, validity, serial, ARI id, and the SHA-256 of
//!               `certificate` and `chain`, which ties the four together
//! ```
//!
//! Backends write the four in one atomic step (a Consul transaction, a
//! directory swap on disk). Decoding still checks that they belong together,
//! since a hand edit or a partial copy can break that: a missing item, a chain
//! from another write, a key of another certificate are each reported with
//! the item and the fault named, when loading, not when Envoy rejects them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;
use zeroize::Zeroizing;

use super::encryption::{EncryptionError, KeyEncryption, Sealed};
// Item names are re-exported here, where callers found them before the layout
// had its own module.
use super::layout::ROUTED_HOSTS_ITEM;
pub use super::layout::{
    ACCOUNTS_DIR, CERTIFICATES_DIR, CertificatePart, account_item, certificate_dir,
    certificate_item, order_history_item, parse_certificate_item, renewal_request_item,
};
use super::{
    AccountId, LoadedRoutedHosts, RenewalRequest, RoutedHostsRecord, SecretName, StoreError,
    StoredAccount,
};
use time::OffsetDateTime;

use crate::certificate::{CertificateBundle, CertificateMetadata};
use crate::pem::{encode_certificate_pem, parse_certificate_chain};
use crate::policy::OrderHistory;
use crate::routed::catalog::HostRouting;
use crate::secret::Secret;

const FORMAT_VERSION: u32 = 1;

/// An operator's request to renew a certificate now.
#[derive(Serialize, Deserialize)]
struct RenewalRequestDocument {
    #[serde(with = "time::serde::rfc3339")]
    requested_at: OffsetDateTime,
    /// Absent in requests written before requests named a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaces_serial: Option<String>,
}

/// The `routed-hosts` item. Entries are read one by one (`E` is a raw JSON
/// value then), so one unreadable entry spoils only itself.
#[derive(Serialize, Deserialize)]
struct RoutedHostsDocument<E> {
    version: u32,
    hosts: BTreeMap<String, E>,
}

/// One host of the `routed-hosts` item.
#[derive(Serialize, Deserialize)]
struct RoutedHostEntry {
    #[serde(default)]
    services: BTreeSet<String>,
    /// Absent or null while routed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    unrouted_since: Option<OffsetDateTime>,
}

/// The `metadata` item of a certificate.
#[derive(Serialize, Deserialize)]
struct MetadataDocument {
    version: u32,
    metadata: CertificateMetadata,
    /// Lowercase hex SHA-256 of the `certificate` item's bytes.
    certificate_sha256: String,
    /// Lowercase hex SHA-256 of the `chain` item's bytes.
    chain_sha256: String,
}

/// A certificate encoded as its items, ready to be written together.
pub struct EncodedCertificate {
    pub certificate: Vec<u8>,
    pub chain: Vec<u8>,
    pub key: Zeroizing<Vec<u8>>,
    pub metadata: Vec<u8>,
}

impl EncodedCertificate {
    /// The items with their part, in the order they are best written.
    pub fn parts(&self) -> [(CertificatePart, &[u8]); 4] {
        [
            (CertificatePart::Certificate, &self.certificate),
            (CertificatePart::Chain, &self.chain),
            (CertificatePart::Key, &self.key),
            (CertificatePart::Metadata, &self.metadata),
        ]
    }
}

impl std::fmt::Debug for EncodedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedCertificate")
            .field("certificate_len", &self.certificate.len())
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("metadata_len", &self.metadata.len())
            .finish()
    }
}

/// The items found in storage for one certificate; any may be missing.
#[derive(Default)]
pub struct StoredCertificate {
    certificate: Option<Vec<u8>>,
    chain: Option<Vec<u8>>,
    key: Option<Zeroizing<Vec<u8>>>,
    metadata: Option<Vec<u8>>,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("present", &self.present().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl StoredCertificate {
    pub fn set(&mut self, part: CertificatePart, bytes: &[u8]) {
        match part {
            CertificatePart::Certificate => self.certificate = Some(bytes.to_vec()),
            CertificatePart::Chain => self.chain = Some(bytes.to_vec()),
            CertificatePart::Key => self.key = Some(Zeroizing::new(bytes.to_vec())),
            CertificatePart::Metadata => self.metadata = Some(bytes.to_vec()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.present().next().is_none()
    }

    /// The parts found, in [`CertificatePart::ALL`] order.
    pub fn present(&self) -> impl Iterator<Item = CertificatePart> + '_ {
        CertificatePart::ALL.into_iter().filter(|part| match part {
            CertificatePart::Certificate => self.certificate.is_some(),
            CertificatePart::Chain => self.chain.is_some(),
            CertificatePart::Key => self.key.is_some(),
            CertificatePart::Metadata => self.metadata.is_some(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct AccountDocument {
    version: u32,
    directory_url: String,
    #[serde(default)]
    contact: Vec<String>,
    credentials: SecretField,
}

/// A secret either in clear or sealed: `{"plain": "..."}` / `{"sealed": {...}}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SecretField {
    Plain(String),
    Sealed(Sealed),
}

/// How one stored secret (a certificate's private key, an account's
/// credentials) lies at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAtRest {
    /// In clear: readable by anyone who can read the item.
    Plaintext,
    /// Sealed with the configured key.
    SealedCurrent,
    /// Sealed with `--previous-encryption-key-file`'s key: readable, due for resealing.
    SealedPrevious,
    /// Sealed with a key this process does not have (or not decodable at all).
    SealedOther,
}

impl KeyAtRest {
    /// Whether resealing with the configured key would change the item.
    pub fn needs_resealing(self) -> bool {
        matches!(self, Self::Plaintext | Self::SealedPrevious)
    }
}

/// How every stored secret lies at rest, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeysAtRest {
    pub total: usize,
    /// Sealed with the configured key.
    pub sealed: usize,
    pub plaintext: usize,
    pub sealed_with_previous_key: usize,
    pub sealed_with_other_key: usize,
}

impl KeysAtRest {
    pub fn count(&mut self, state: KeyAtRest) {
        self.total += 1;
        match state {
            KeyAtRest::Plaintext => self.plaintext += 1,
            KeyAtRest::SealedCurrent => self.sealed += 1,
            KeyAtRest::SealedPrevious => self.sealed_with_previous_key += 1,
            KeyAtRest::SealedOther => self.sealed_with_other_key += 1,
        }
    }

    /// Whether every stored secret is sealed with the configured key.
    pub fn all_sealed(&self) -> bool {
        self.sealed == self.total
    }

    /// One line for people: `all 3 sealed`, `2 of 3 in plaintext`, ...
    pub fn summary(&self) -> String {
        let total = self.total;
        if total == 0 {
            return "none stored yet".to_owned();
        }
        if self.all_sealed() {
            return format!("all {total} sealed");
        }
        let mut parts = Vec::new();
        for (count, what) in [
            (self.plaintext, "in plaintext"),
            (
                self.sealed_with_previous_key,
                "sealed with the previous key",
            ),
            (self.sealed_with_other_key, "sealed with an unknown key"),
        ] {
            if count > 0 {
                parts.push(format!("{count} of {total} {what}"));
            }
        }
        parts.join(", ")
    }
}

/// Encodes and decodes items, sealing secrets when a key is configured.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    encryption: Option<Arc<KeyEncryption>>,
    /// The key sealed items may still carry during a rotation: read, never written.
    previous: Option<Arc<KeyEncryption>>,
}

impl Codec {
    pub fn new(encryption: Option<Arc<KeyEncryption>>) -> Self {
        Self {
            encryption,
            previous: None,
        }
    }

    /// Also opens items sealed with `previous` (the key before a rotation).
    #[must_use]
    pub fn with_previous(mut self, previous: Option<Arc<KeyEncryption>>) -> Self {
        // The same key as the current one is no previous key: nothing to reseal.
        self.previous = previous.filter(|previous| {
            self.encryption
                .as_ref()
                .is_none_or(|current| current.key_id() != previous.key_id())
        });
        self
    }

    /// Whether a key to seal with is configured.
    pub fn seals(&self) -> bool {
        self.encryption.is_some()
    }

    /// How the secret in a stored secret item lies at rest: a certificate's
    /// `key` item or an account item; `None` for any other item.
    pub fn key_at_rest(&self, item: &str, bytes: &[u8]) -> Option<KeyAtRest> {
        let field = self.secret_field_of(item, bytes)?;
        Some(match field {
            Ok(SecretField::Plain(_)) => KeyAtRest::Plaintext,
            Ok(SecretField::Sealed(sealed)) => self.sealed_state(&sealed),
            // Unreadable items are not counted as sealed: nobody can tell.
            Err(()) => KeyAtRest::SealedOther,
        })
    }

    /// The item re-encoded with its secret sealed with the configured key,
    /// when it is in plaintext or sealed with the previous key; `Ok(None)`
    /// when there is nothing to do (already sealed, no key configured, not
    /// a secret item).
    pub fn reseal(
        &self,
        item: &str,
        bytes: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        if self.encryption.is_none() {
            return Ok(None);
        }
        let Some(state) = self.key_at_rest(item, bytes) else {
            return Ok(None);
        };
        if !state.needs_resealing() {
            return Ok(None);
        }
        if is_certificate_key_item(item) {
            let secret = self.open_key(item, bytes)?;
            let Some(encryption) = &self.encryption else {
                return Ok(None);
            };
            let sealed = encryption
                .seal(item, secret.expose().as_bytes())
                .map_err(|source| StoreError::Encryption {
                    item: item.to_owned(),
                    source,
                })?;
            return to_json(item, &sealed).map(Some);
        }
        let mut document: AccountDocument = from_json(item, bytes)?;
        check_version(item, document.version)?;
        let secret = self.open(item, document.credentials)?;
        document.credentials = self.seal(item, secret.expose())?;
        to_json(item, &document).map(Some)
    }

    /// The secret field of a secret item, undecoded; `None` for other items.
    fn secret_field_of(&self, item: &str, bytes: &[u8]) -> Option<Result<SecretField, ()>> {
        if is_certificate_key_item(item) {
            let text = bytes.trim_ascii_start();
            return Some(if text.starts_with(b"-----BEGIN") {
                Ok(SecretField::Plain(String::new()))
            } else {
                serde_json::from_slice::<Sealed>(bytes)
                    .map(SecretField::Sealed)
                    .map_err(|_| ())
            });
        }
        if item.starts_with(ACCOUNTS_DIR) {
            return Some(
                serde_json::from_slice::<AccountDocument>(bytes)
                    .map(|document| document.credentials)
                    .map_err(|_| ()),
            );
        }
        None
    }

    fn sealed_state(&self, sealed: &Sealed) -> KeyAtRest {
        let matches = |key: &Option<Arc<KeyEncryption>>| {
            key.as_ref()
                .is_some_and(|key| key.key_id() == sealed.key_id)
        };
        if matches(&self.encryption) {
            KeyAtRest::SealedCurrent
        } else if matches(&self.previous) {
            KeyAtRest::SealedPrevious
        } else {
            KeyAtRest::SealedOther
        }
    }

    /// Splits `bundle` into its items, sealing the key if configured.
    pub fn encode_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<EncodedCertificate, StoreError> {
        let metadata_item = certificate_item(name, CertificatePart::Metadata);
        let chain =
            parse_certificate_chain(bundle.chain_pem()).map_err(|e| StoreError::Corrupt {
                item: certificate_item(name, CertificatePart::Certificate),
                reason: format!("cannot encode: {e}"),
            })?;
        let (leaf, issuers) = chain.split_first().ok_or_else(|| StoreError::Corrupt {
            item: certificate_item(name, CertificatePart::Certificate),
            reason: "cannot encode: the chain is empty".to_owned(),
        })?;
        let certificate = encode_certificate_pem(leaf.as_ref()).into_bytes();
        let chain: Vec<u8> = issuers
            .iter()
            .flat_map(|der| encode_certificate_pem(der.as_ref()).into_bytes())
            .collect();
        let key_item = certificate_item(name, CertificatePart::Key);
        let key = match &self.encryption {
            Some(encryption) => {
                let sealed = encryption
                    .seal(&key_item, bundle.key_pem().expose().as_bytes())
                    .map_err(|source| StoreError::Encryption {
                        item: key_item.clone(),
                        source,
                    })?;
                to_json(&key_item, &sealed)?
            }
            None => Zeroizing::new(bundle.key_pem().expose().as_bytes().to_vec()),
        };
        let metadata = to_json(
            &metadata_item,
            &MetadataDocument {
                version: FORMAT_VERSION,
                metadata: bundle.metadata().clone(),
                certificate_sha256: sha256_hex(&certificate),
                chain_sha256: sha256_hex(&chain),
            },
        )?;
        Ok(EncodedCertificate {
            certificate,
            chain,
            key,
            metadata: metadata.to_vec(),
        })
    }

    /// Puts a certificate back together from its items: `Ok(None)` when none
    /// is stored, an error naming the item when they are partial, do not
    /// belong together, or cannot be opened.
    pub fn decode_certificate(
        &self,
        name: &SecretName,
        stored: &StoredCertificate,
    ) -> Result<Option<CertificateBundle>, StoreError> {
        let item = |part| certificate_item(name, part);
        let (Some(certificate), Some(chain), Some(key), Some(metadata)) = (
            &stored.certificate,
            &stored.chain,
            &stored.key,
            &stored.metadata,
        ) else {
            if stored.is_empty() {
                return Ok(None);
            }
            let present: Vec<&str> = stored.present().map(CertificatePart::file_name).collect();
            let missing: Vec<&str> = CertificatePart::ALL
                .into_iter()
                .map(CertificatePart::file_name)
                .filter(|part| !present.contains(part))
                .collect();
            return Err(StoreError::Corrupt {
                item: certificate_dir(name),
                reason: format!(
                    "partial: {} missing ({} present); a certificate is stored as certificate, \
                     chain, key and metadata together",
                    missing.join(", "),
                    present.join(", ")
                ),
            });
        };

        let document: MetadataDocument = from_json(&item(CertificatePart::Metadata), metadata)?;
        check_version(&item(CertificatePart::Metadata), document.version)?;
        for (part, bytes, recorded) in [
            (
                CertificatePart::Certificate,
                certificate,
                &document.certificate_sha256,
            ),
            (CertificatePart::Chain, chain, &document.chain_sha256),
        ] {
            if sha256_hex(bytes) != *recorded {
                return Err(StoreError::Corrupt {
                    item: item(part),
                    reason: "its SHA-256 differs from the one in metadata: the items come from \
                             different writes or were edited"
                        .to_owned(),
                });
            }
        }
        let pem_text = |part, bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt {
                item: item(part),
                reason: "not PEM text (invalid UTF-8)".to_owned(),
            })
        };
        let mut chain_pem = pem_text(CertificatePart::Certificate, certificate)?;
        chain_pem.push_str(&pem_text(CertificatePart::Chain, chain)?);
        let key_pem = self.open_key(&item(CertificatePart::Key), key)?;
        CertificateBundle::from_stored(chain_pem, key_pem, document.metadata)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                item: certificate_dir(name),
                reason: e.to_string(),
            })
    }

    /// The `metadata` item of a stored certificate alone (no private key
    /// is opened); `Ok(None)` when none is stored.
    pub fn decode_metadata(
        &self,
        name: &SecretName,
        stored: &StoredCertificate,
    ) -> Result<Option<CertificateMetadata>, StoreError> {
        let item = certificate_item(name, CertificatePart::Metadata);
        let Some(bytes) = &stored.metadata else {
            return Ok(None);
        };
        let document: MetadataDocument = from_json(&item, bytes)?;
        check_version(&item, document.version)?;
        Ok(Some(document.metadata))
    }

    /// A private key item: PEM in clear, or a sealed JSON envelope.
    fn open_key(&self, item: &str, bytes: &[u8]) -> Result<Secret<String>, StoreError> {
        let text = bytes.trim_ascii_start();
        let field = if text.starts_with(b"-----BEGIN") {
            let pem = String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt {
                item: item.to_owned(),
                reason: "not PEM text (invalid UTF-8)".to_owned(),
            })?;
            SecretField::Plain(pem)
        } else if text.starts_with(b"{") {
            SecretField::Sealed(from_secret_json(item, bytes)?)
        } else {
            return Err(StoreError::Corrupt {
                item: item.to_owned(),
                reason: "neither a PEM private key nor a sealed one".to_owned(),
            });
        };
        self.open(item, field)
    }

    pub fn encode_order_history(
        &self,
        name: &SecretName,
        history: &OrderHistory,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        to_json(&order_history_item(name), history)
    }

    pub fn decode_order_history(
        &self,
        name: &SecretName,
        bytes: &[u8],
    ) -> Result<OrderHistory, StoreError> {
        from_json(&order_history_item(name), bytes)
    }

    pub fn encode_account(
        &self,
        id: &AccountId,
        account: &StoredAccount,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let item = account_item(id);
        let document = AccountDocument {
            version: FORMAT_VERSION,
            directory_url: account.directory_url.clone(),
            contact: account.contact.clone(),
            credentials: self.seal(&item, account.credentials_json.expose())?,
        };
        to_json(&item, &document)
    }

    pub fn decode_account(
        &self,
        id: &AccountId,
        bytes: &[u8],
    ) -> Result<StoredAccount, StoreError> {
        let item = account_item(id);
        let document: AccountDocument = from_json(&item, bytes)?;
        check_version(&item, document.version)?;
        Ok(StoredAccount {
            directory_url: document.directory_url,
            contact: document.contact,
            credentials_json: self.open(&item, document.credentials)?,
        })
    }

    pub fn encode_renewal_request(
        &self,
        name: &SecretName,
        request: &RenewalRequest,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        to_json(
            &renewal_request_item(name),
            &RenewalRequestDocument {
                requested_at: request.requested_at,
                replaces_serial: request.replaces_serial.clone(),
            },
        )
    }

    pub fn decode_renewal_request(
        &self,
        name: &SecretName,
        bytes: &[u8],
    ) -> Result<RenewalRequest, StoreError> {
        from_json::<RenewalRequestDocument>(&renewal_request_item(name), bytes).map(|document| {
            RenewalRequest {
                requested_at: document.requested_at,
                replaces_serial: document.replaces_serial,
            }
        })
    }

    pub fn encode_routed_hosts(
        &self,
        hosts: &RoutedHostsRecord,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let document = RoutedHostsDocument {
            version: FORMAT_VERSION,
            hosts: hosts
                .iter()
                .map(|(host, routing)| {
                    let entry = RoutedHostEntry {
                        services: routing.services.clone(),
                        unrouted_since: routing.unrouted_since,
                    };
                    (host.clone(), entry)
                })
                .collect(),
        };
        to_json(ROUTED_HOSTS_ITEM, &document)
    }

    /// The record of routed hosts. A document that cannot be read at all is
    /// an error; an entry that cannot be read, or whose clock is later than
    /// `now`, is taken as unrouted since `now` (renewed for the whole grace
    /// again: the safe side) and named in `problems`.
    pub fn decode_routed_hosts(
        &self,
        bytes: &[u8],
        now: OffsetDateTime,
    ) -> Result<LoadedRoutedHosts, StoreError> {
        let item = ROUTED_HOSTS_ITEM;
        let document: RoutedHostsDocument<serde_json::Value> = from_json(item, bytes)?;
        check_version(item, document.version)?;
        let mut loaded = LoadedRoutedHosts::default();
        for (host, value) in document.hosts {
            if SecretName::new(host.as_str()).is_err() {
                loaded
                    .problems
                    .push(format!("{item}: `{host}` is not a host name; left out"));
                continue;
            }
            let routing = match serde_json::from_value::<RoutedHostEntry>(value) {
                Ok(entry) => {
                    let unrouted_since = match entry.unrouted_since {
                        Some(since) if since > now => {
                            loaded.problems.push(format!(
                                "{item}: {host} unrouted since {since}, later than now; taken as unrouted now"
                            ));
                            Some(now)
                        }
                        since => since,
                    };
                    HostRouting {
                        services: entry.services,
                        unrouted_since,
                    }
                }
                Err(error) => {
                    loaded.problems.push(format!(
                        "{item}: entry of {host} invalid ({error}); taken as unrouted now"
                    ));
                    HostRouting {
                        services: BTreeSet::new(),
                        unrouted_since: Some(now),
                    }
                }
            };
            loaded.hosts.insert(host, routing);
        }
        Ok(loaded)
    }

    fn seal(&self, item: &str, secret: &str) -> Result<SecretField, StoreError> {
        match &self.encryption {
            Some(encryption) => encryption
                .seal(item, secret.as_bytes())
                .map(SecretField::Sealed)
                .map_err(|source| StoreError::Encryption {
                    item: item.to_owned(),
                    source,
                }),
            None => Ok(SecretField::Plain(secret.to_owned())),
        }
    }

    fn open(&self, item: &str, field: SecretField) -> Result<Secret<String>, StoreError> {
        let encryption_error = |source| StoreError::Encryption {
            item: item.to_owned(),
            source,
        };
        match (field, &self.encryption) {
            (SecretField::Plain(secret), encryption) => {
                if encryption.is_some() {
                    // Written before encryption was turned on; sealed at the next write.
                    warn!(
                        item,
                        "private key stored unencrypted although encryption is configured"
                    );
                }
                Ok(Secret::new(secret))
            }
            (SecretField::Sealed(_), None) => Err(encryption_error(EncryptionError::KeyRequired)),
            (SecretField::Sealed(sealed), Some(encryption)) => {
                // During a rotation an item may still be sealed with the
                // previous key; anything else is named against the current one.
                let key = match &self.previous {
                    Some(previous) if previous.key_id() == sealed.key_id => previous,
                    _ => encryption,
                };
                let bytes = key.open(item, &sealed).map_err(encryption_error)?;
                String::from_utf8(bytes.expose().clone())
                    .map(Secret::new)
                    .map_err(|_| StoreError::Corrupt {
                        item: item.to_owned(),
                        reason: "decrypted secret is not UTF-8".to_owned(),
                    })
            }
        }
    }
}

/// Whether `item` is a certificate's private key.
fn is_certificate_key_item(item: &str) -> bool {
    parse_certificate_item(item).is_some_and(|(_, part)| part == CertificatePart::Key)
}

fn to_json<T: Serialize>(item: &str, value: &T) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    serde_json::to_vec_pretty(value)
        .map(Zeroizing::new)
        .map_err(|e| StoreError::Corrupt {
            item: item.to_owned(),
            reason: format!("cannot encode: {e}"),
        })
}

fn from_json<T: for<'de> Deserialize<'de>>(item: &str, bytes: &[u8]) -> Result<T, StoreError> {
    // serde's messages may quote the offending value; under a secret field
    // that value could be key material, so only the place is named there.
    decode_json(item, bytes, |path| {
        path.starts_with("private_key") || path.starts_with("credentials")
    })
}

/// [`from_json`] for an item that is secret as a whole (a sealed key).
fn from_secret_json<T: for<'de> Deserialize<'de>>(
    item: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_json(item, bytes, |_| true)
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    item: &str,
    bytes: &[u8],
    is_secret: impl Fn(&str) -> bool,
) -> Result<T, StoreError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let detail = if is_secret(&path) {
            format!("{:?} error", inner.classify())
        } else {
            inner.to_string()
        };
        StoreError::Corrupt {
            item: item.to_owned(),
            reason: format!("JSON invalid at `{path}`: {detail}"),
        }
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_version(item: &str, version: u32) -> Result<(), StoreError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            item: item.to_owned(),
            reason: format!(
                "format version {version} is not supported (expected {FORMAT_VERSION})"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::IssuanceFacts;
    use crate::certificate::tests::issue_test_certificate;

    fn bundle() -> CertificateBundle {
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("now");
        let (chain, key) = issue_test_certificate(&["example.com"], now, time::Duration::days(90));
        CertificateBundle::from_issued(chain, key, now, IssuanceFacts::default()).expect("bundle")
    }

    fn name() -> SecretName {
        SecretName::new("example.com").expect("name")
    }

    /// What a backend would read back after writing `encoded`.
    fn stored(encoded: &EncodedCertificate) -> StoredCertificate {
        let mut stored = StoredCertificate::default();
        for (part, bytes) in encoded.parts() {
            stored.set(part, bytes);
        }
        stored
    }

    #[test]
    fn plain_round_trip_as_four_items() {
        let bundle = bundle();
        let codec = Codec::default();
        let encoded = codec.encode_certificate(&name(), &bundle).expect("encode");
        let pem_count = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .matches("-----BEGIN CERTIFICATE-----")
                .count()
        };
        assert_eq!(pem_count(&encoded.certificate), 1, "the leaf alone");
        assert_eq!(pem_count(&encoded.chain), 1, "the issuer");
        assert!(encoded.key.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        let metadata = String::from_utf8_lossy(&encoded.metadata);
        assert!(metadata.contains("\"chain_sha256\""), "{metadata}");
        assert!(!metadata.contains("PRIVATE KEY"), "{metadata}");

        let back = codec
            .decode_certificate(&name(), &stored(&encoded))
            .expect("decode")
            .expect("present");
        assert_eq!(back.metadata(), bundle.metadata());
        assert_eq!(back.key_pem(), bundle.key_pem());
        assert_eq!(back.chain_pem(), bundle.chain_pem());
    }

    #[test]
    fn nothing_stored_is_none() {
        let decoded = Codec::default()
            .decode_certificate(&name(), &StoredCertificate::default())
            .expect("decode");
        assert!(decoded.is_none());
    }

    #[test]
    fn sealed_round_trip_and_wrong_key() {
        let bundle = bundle();
        let codec = Codec::new(Some(Arc::new(
            KeyEncryption::from_bytes(&[1; 32]).expect("key"),
        )));
        let encoded = codec.encode_certificate(&name(), &bundle).expect("encode");
        for (part, bytes) in encoded.parts() {
            assert!(
                !String::from_utf8_lossy(bytes).contains("PRIVATE KEY"),
                "key in clear in {part:?}"
            );
        }
        let back = codec
            .decode_certificate(&name(), &stored(&encoded))
            .expect("decode")
            .expect("present");
        assert_eq!(back.key_pem(), bundle.key_pem());

        let wrong = Codec::new(Some(Arc::new(
            KeyEncryption::from_bytes(&[2; 32]).expect("key"),
        )));
        let err = wrong
            .decode_certificate(&name(), &stored(&encoded))
            .expect_err("wrong key");
        assert!(err.to_string().contains("wrong encryption key"), "{err}");
        assert!(
            err.to_string().contains("certificates/example.com/key"),
            "{err}"
        );
        let none = Codec::default();
        let err = none
            .decode_certificate(&name(), &stored(&encoded))
            .expect_err("no key");
        assert!(
            err.to_string().contains("no encryption key is configured"),
            "{err}"
        );

        // The item name is bound into the seal: a key moved to another
        // certificate's items does not open there.
        let other = SecretName::new("other.example.com").expect("name");
        let err = codec
            .decode_certificate(&other, &stored(&encoded))
            .expect_err("moved key");
        assert!(
            err.to_string()
                .contains("altered or belongs to another item"),
            "{err}"
        );
    }

    #[test]
    fn partial_sets_name_what_is_missing() {
        let codec = Codec::default();
        let encoded = codec
            .encode_certificate(&name(), &bundle())
            .expect("encode");
        let mut partial = StoredCertificate::default();
        partial.set(CertificatePart::Certificate, &encoded.certificate);
        partial.set(CertificatePart::Metadata, &encoded.metadata);
        let err = codec
            .decode_certificate(&name(), &partial)
            .expect_err("partial");
        let text = err.to_string();
        assert!(text.contains("certificates/example.com"), "{text}");
        assert!(text.contains("chain, key missing"), "{text}");
    }

    #[test]
    fn items_from_different_writes_are_refused() {
        let codec = Codec::default();
        let first = codec
            .encode_certificate(&name(), &bundle())
            .expect("encode");
        let second = codec
            .encode_certificate(&name(), &bundle())
            .expect("encode");

        let mut mixed = stored(&first);
        mixed.set(CertificatePart::Chain, &second.chain);
        let err = codec
            .decode_certificate(&name(), &mixed)
            .expect_err("chain");
        assert!(
            err.to_string().contains("certificates/example.com/chain"),
            "{err}"
        );
        assert!(err.to_string().contains("different writes"), "{err}");

        // Same serial and names (the test CA reuses them), other key pair:
        // caught by matching the key against the certificate.
        let mut mixed = stored(&first);
        mixed.set(CertificatePart::Key, &second.key);
        let err = codec.decode_certificate(&name(), &mixed).expect_err("key");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn corrupt_items_name_the_item_and_the_fault() {
        let codec = Codec::default();
        let encoded = codec
            .encode_certificate(&name(), &bundle())
            .expect("encode");

        let mut bad = stored(&encoded);
        bad.set(CertificatePart::Metadata, b"{not json");
        let err = codec
            .decode_certificate(&name(), &bad)
            .expect_err("bad json");
        assert!(
            err.to_string()
                .contains("certificates/example.com/metadata"),
            "{err}"
        );

        let mut document: serde_json::Value =
            serde_json::from_slice(&encoded.metadata).expect("json");
        document["metadata"]["not_after"] = serde_json::Value::from("yesterday");
        let mut bad = stored(&encoded);
        bad.set(
            CertificatePart::Metadata,
            &serde_json::to_vec(&document).expect("json"),
        );
        let err = codec
            .decode_certificate(&name(), &bad)
            .expect_err("bad metadata");
        assert!(err.to_string().contains("metadata.not_after"), "{err}");

        let mut bad = stored(&encoded);
        bad.set(CertificatePart::Key, b"secret material, not PEM");
        let err = codec
            .decode_certificate(&name(), &bad)
            .expect_err("not a key");
        assert!(
            err.to_string().contains("neither a PEM private key"),
            "{err}"
        );
        assert!(!err.to_string().contains("secret material"), "{err}");

        let mut bad = stored(&encoded);
        bad.set(CertificatePart::Key, br#"{"alg": "secret material"}"#);
        let err = codec
            .decode_certificate(&name(), &bad)
            .expect_err("bad seal");
        assert!(
            err.to_string().contains("certificates/example.com/key"),
            "{err}"
        );
        assert!(!err.to_string().contains("secret material"), "{err}");
    }

    #[test]
    fn account_round_trip_sealed() {
        let codec = Codec::new(Some(Arc::new(
            KeyEncryption::from_bytes(&[4; 32]).expect("key"),
        )));
        let id = AccountId::for_directory("https://ca.example/dir");
        let account = StoredAccount {
            directory_url: "https://ca.example/dir".to_owned(),
            contact: vec!["mailto:ops@example.com".to_owned()],
            credentials_json: Secret::new(r#"{"id":"x","key_pkcs8":"c2VjcmV0"}"#.to_owned()),
        };
        let bytes = codec.encode_account(&id, &account).expect("encode");
        assert!(!String::from_utf8_lossy(&bytes).contains("c2VjcmV0"));
        let back = codec.decode_account(&id, &bytes).expect("decode");
        assert_eq!(back.credentials_json, account.credentials_json);
        assert_eq!(back.contact, account.contact);
    }

    fn key(byte: u8) -> Option<Arc<KeyEncryption>> {
        Some(Arc::new(
            KeyEncryption::from_bytes(&[byte; 32]).expect("key"),
        ))
    }

    #[test]
    fn plaintext_and_previous_key_items_are_resealed_with_the_current_key() {
        let bundle = bundle();
        let key_item = certificate_item(&name(), CertificatePart::Key);
        let plain = Codec::default()
            .encode_certificate(&name(), &bundle)
            .expect("encode");
        let sealed_a = Codec::new(key(1))
            .encode_certificate(&name(), &bundle)
            .expect("encode");
        let codec = Codec::new(key(2)).with_previous(key(1));

        assert_eq!(
            codec.key_at_rest(&key_item, &plain.key),
            Some(KeyAtRest::Plaintext)
        );
        assert_eq!(
            codec.key_at_rest(&key_item, &sealed_a.key),
            Some(KeyAtRest::SealedPrevious)
        );
        assert_eq!(
            Codec::new(key(2)).key_at_rest(&key_item, &sealed_a.key),
            Some(KeyAtRest::SealedOther)
        );
        let metadata_item = certificate_item(&name(), CertificatePart::Metadata);
        assert_eq!(codec.key_at_rest(&metadata_item, &plain.metadata), None);
        assert!(
            codec
                .reseal(&metadata_item, &plain.metadata)
                .expect("ok")
                .is_none()
        );

        // Items sealed with the previous key read as they are.
        let mut read_back = stored(&sealed_a);
        let opened = codec
            .decode_certificate(&name(), &read_back)
            .expect("previous key opens")
            .expect("present");
        assert_eq!(opened.key_pem(), bundle.key_pem());

        for before in [&plain.key, &sealed_a.key] {
            let after = codec
                .reseal(&key_item, before)
                .expect("reseals")
                .expect("changed");
            assert_eq!(
                codec.key_at_rest(&key_item, &after),
                Some(KeyAtRest::SealedCurrent)
            );
            assert!(!String::from_utf8_lossy(&after).contains("PRIVATE KEY"));
            assert!(codec.reseal(&key_item, &after).expect("ok").is_none());
            // The current key alone opens it, and it still fits its certificate.
            read_back.set(CertificatePart::Key, &after);
            let opened = Codec::new(key(2))
                .decode_certificate(&name(), &read_back)
                .expect("current key opens")
                .expect("present");
            assert_eq!(opened.key_pem(), bundle.key_pem());
        }

        // Without a key nothing is resealed.
        assert!(
            Codec::default()
                .reseal(&key_item, &plain.key)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn account_credentials_are_resealed_too() {
        let id = AccountId::for_directory("https://ca.example/dir");
        let item = account_item(&id);
        let account = StoredAccount {
            directory_url: "https://ca.example/dir".to_owned(),
            contact: vec![],
            credentials_json: Secret::new(r#"{"id":"x","key_pkcs8":"c2VjcmV0"}"#.to_owned()),
        };
        let plain = Codec::default()
            .encode_account(&id, &account)
            .expect("encode");
        let codec = Codec::new(key(3));
        assert_eq!(codec.key_at_rest(&item, &plain), Some(KeyAtRest::Plaintext));
        let after = codec
            .reseal(&item, &plain)
            .expect("reseals")
            .expect("changed");
        assert!(!String::from_utf8_lossy(&after).contains("c2VjcmV0"));
        assert_eq!(
            codec.key_at_rest(&item, &after),
            Some(KeyAtRest::SealedCurrent)
        );
        let back = codec.decode_account(&id, &after).expect("decode");
        assert_eq!(back.credentials_json, account.credentials_json);
    }

    #[test]
    fn keys_at_rest_read_as_a_sentence() {
        let mut keys = KeysAtRest::default();
        assert_eq!(keys.summary(), "none stored yet");
        for _ in 0..3 {
            keys.count(KeyAtRest::SealedCurrent);
        }
        assert_eq!(keys.summary(), "all 3 sealed");
        assert!(keys.all_sealed());
        keys.count(KeyAtRest::Plaintext);
        keys.count(KeyAtRest::SealedPrevious);
        assert_eq!(
            keys.summary(),
            "1 of 5 in plaintext, 1 of 5 sealed with the previous key"
        );
        assert!(!keys.all_sealed());
    }

    #[test]
    fn the_routed_hosts_record_round_trips_and_a_bad_entry_only_lengthens_its_grace() {
        let codec = Codec::new(None);
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let since = now - time::Duration::hours(3);
        let routing = |unrouted_since| HostRouting {
            services: BTreeSet::from(["web".to_owned()]),
            unrouted_since,
        };
        let hosts = BTreeMap::from([
            ("a.test".to_owned(), routing(None)),
            ("b.test".to_owned(), routing(Some(since))),
        ]);
        let bytes = codec.encode_routed_hosts(&hosts).expect("encode");
        let loaded = codec.decode_routed_hosts(&bytes, now).expect("decode");
        assert_eq!(loaded.hosts, hosts);
        assert!(loaded.problems.is_empty());

        let bad = br#"{"version": 1, "hosts": {
            "a.test": {"services": ["web"], "unrouted_since": "soon"},
            "b.test": {"unrouted_since": "2999-01-01T00:00:00Z"},
            "c d": {"unrouted_since": null}
        }}"#;
        let loaded = codec
            .decode_routed_hosts(bad, now)
            .expect("entries read one by one");
        assert_eq!(loaded.hosts["a.test"].unrouted_since, Some(now));
        assert_eq!(loaded.hosts["b.test"].unrouted_since, Some(now));
        assert!(!loaded.hosts.contains_key("c d"));
        assert_eq!(loaded.problems.len(), 3, "{:?}", loaded.problems);
        assert!(
            loaded
                .problems
                .iter()
                .all(|p| p.starts_with("routed-hosts: ")),
            "{:?}",
            loaded.problems
        );

        for (bytes, fault) in [
            (&b"{ not json"[..], "JSON invalid"),
            (&br#"{"version": 2, "hosts": {}}"#[..], "format version 2"),
        ] {
            let error = codec.decode_routed_hosts(bytes, now).expect_err("unusable");
            let message = error.to_string();
            assert!(message.contains("routed-hosts"), "{message}");
            assert!(message.contains(fault), "{message}");
        }
    }
}

//! How each stored item is encoded: versioned JSON, private keys optionally
//! sealed (see [`super::encryption`]). Shared by every backend, so items can
//! be copied between them and decode errors read the same everywhere.
//!
//! Decoding re-validates everything: the certificate against its key and
//! metadata (see [`CertificateBundle::from_stored`]), so corruption is found
//! when loading, with the item and the fault named, not when Envoy rejects it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;
use zeroize::Zeroizing;

use super::encryption::{EncryptionError, KeyEncryption, Sealed};
use super::{AccountId, SecretName, StoreError, StoredAccount};
use time::OffsetDateTime;

use crate::certificate::{CertificateBundle, CertificateMetadata};
use crate::policy::OrderHistory;
use crate::secret::Secret;

const FORMAT_VERSION: u32 = 1;

/// The key a certificate is stored under: `certificates/<secret name>`.
pub fn certificate_item(name: &SecretName) -> String {
    format!("certificates/{}", name.path_segment())
}

/// The key an order history is stored under: `orders/<secret name>`.
pub fn order_history_item(name: &SecretName) -> String {
    format!("orders/{}", name.path_segment())
}

/// The key an ACME account is stored under: `accounts/<directory id>`.
pub fn account_item(id: &AccountId) -> String {
    format!("accounts/{id}")
}

/// The key an operator's renewal request is stored under: `renewals/<secret name>`.
pub fn renewal_request_item(name: &SecretName) -> String {
    format!("renewals/{}", name.path_segment())
}

/// An operator's request to renew a certificate now.
#[derive(Serialize, Deserialize)]
struct RenewalRequestDocument {
    #[serde(with = "time::serde::rfc3339")]
    requested_at: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct CertificateDocument {
    version: u32,
    metadata: CertificateMetadata,
    chain_pem: String,
    private_key: SecretField,
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

/// Encodes and decodes items, sealing secrets when a key is configured.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    encryption: Option<Arc<KeyEncryption>>,
}

impl Codec {
    pub fn new(encryption: Option<Arc<KeyEncryption>>) -> Self {
        Self { encryption }
    }

    pub fn encode_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let item = certificate_item(name);
        let document = CertificateDocument {
            version: FORMAT_VERSION,
            metadata: bundle.metadata().clone(),
            chain_pem: bundle.chain_pem().to_owned(),
            private_key: self.seal(&item, bundle.key_pem().expose())?,
        };
        to_json(&item, &document)
    }

    pub fn decode_certificate(
        &self,
        name: &SecretName,
        bytes: &[u8],
    ) -> Result<CertificateBundle, StoreError> {
        let item = certificate_item(name);
        let document: CertificateDocument = from_json(&item, bytes)?;
        check_version(&item, document.version)?;
        let key_pem = self.open(&item, document.private_key)?;
        CertificateBundle::from_stored(document.chain_pem, key_pem, document.metadata).map_err(
            |e| StoreError::Corrupt {
                item,
                reason: e.to_string(),
            },
        )
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
        requested_at: OffsetDateTime,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        to_json(
            &renewal_request_item(name),
            &RenewalRequestDocument { requested_at },
        )
    }

    pub fn decode_renewal_request(
        &self,
        name: &SecretName,
        bytes: &[u8],
    ) -> Result<OffsetDateTime, StoreError> {
        from_json::<RenewalRequestDocument>(&renewal_request_item(name), bytes)
            .map(|document| document.requested_at)
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
                let bytes = encryption.open(item, &sealed).map_err(encryption_error)?;
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

fn to_json<T: Serialize>(item: &str, value: &T) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    serde_json::to_vec_pretty(value)
        .map(Zeroizing::new)
        .map_err(|e| StoreError::Corrupt {
            item: item.to_owned(),
            reason: format!("cannot encode: {e}"),
        })
}

fn from_json<T: for<'de> Deserialize<'de>>(item: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // serde's messages may quote the offending value; under a secret
        // field that value could be key material, so only the place is named.
        let detail = if path.starts_with("private_key") || path.starts_with("credentials") {
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

    #[test]
    fn plain_round_trip() {
        let bundle = bundle();
        let codec = Codec::default();
        let bytes = codec.encode_certificate(&name(), &bundle).expect("encode");
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        assert!(text.contains("\"plain\": \"-----BEGIN PRIVATE KEY-----"));
        let back = codec.decode_certificate(&name(), &bytes).expect("decode");
        assert_eq!(back.metadata(), bundle.metadata());
        assert_eq!(back.key_pem(), bundle.key_pem());
    }

    #[test]
    fn sealed_round_trip_and_wrong_key() {
        let bundle = bundle();
        let codec = Codec::new(Some(Arc::new(
            KeyEncryption::from_bytes(&[1; 32]).expect("key"),
        )));
        let bytes = codec.encode_certificate(&name(), &bundle).expect("encode");
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        assert!(!text.contains("PRIVATE KEY"), "key stored in clear");
        let back = codec.decode_certificate(&name(), &bytes).expect("decode");
        assert_eq!(back.key_pem(), bundle.key_pem());

        let wrong = Codec::new(Some(Arc::new(
            KeyEncryption::from_bytes(&[2; 32]).expect("key"),
        )));
        let err = wrong
            .decode_certificate(&name(), &bytes)
            .expect_err("wrong key");
        assert!(err.to_string().contains("wrong encryption key"), "{err}");
        let none = Codec::default();
        let err = none
            .decode_certificate(&name(), &bytes)
            .expect_err("no key");
        assert!(
            err.to_string().contains("no encryption key is configured"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_items_name_the_item_and_the_fault() {
        let codec = Codec::default();
        let err = codec
            .decode_certificate(&name(), b"{not json")
            .expect_err("bad json");
        assert!(
            err.to_string().contains("certificates/example.com"),
            "{err}"
        );

        let bundle = bundle();
        let bytes = codec.encode_certificate(&name(), &bundle).expect("encode");
        let mut document: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        document["metadata"]["not_after"] = serde_json::Value::from("yesterday");
        let err = codec
            .decode_certificate(&name(), &serde_json::to_vec(&document).expect("json"))
            .expect_err("bad metadata");
        assert!(err.to_string().contains("metadata.not_after"), "{err}");

        let mut document: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        document["private_key"]["plain"] = serde_json::Value::from(other_key);
        let err = codec
            .decode_certificate(&name(), &serde_json::to_vec(&document).expect("json"))
            .expect_err("mismatched key");
        assert!(err.to_string().contains("does not match"), "{err}");

        let mut document: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        document["private_key"] = serde_json::Value::from("-----BEGIN PRIVATE KEY----- secret");
        let err = codec
            .decode_certificate(&name(), &serde_json::to_vec(&document).expect("json"))
            .expect_err("wrong shape");
        assert!(!err.to_string().contains("secret"), "{err}");
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
}

//! An issued certificate with its key, and the facts about it renewal decisions need.
//!
//! A [`CertificateBundle`] can only be built through a check that the key
//! matches the leaf certificate, so whatever holds one (the store, the SDS
//! server) never serves a pair Envoy would reject.

use std::fmt;

use instant_acme::CertificateIdentifier;
use rustls_pki_types::{CertificateDer, Der, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::{DomainName, NameSet};
use crate::keys::KeyType;
use crate::pem::{PemError, parse_certificate_chain, parse_private_key};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate chain PEM unparsable: {0}")]
    ChainPem(#[source] PemError),
    #[error("private key PEM unparsable: {0}")]
    KeyPem(#[source] PemError),
    #[error("leaf certificate is not valid X.509: {0}")]
    X509(String),
    #[error(
        "private key is not usable ({0}); only PKCS#8 ECDSA P-256/P-384, Ed25519 and RSA keys are"
    )]
    UnsupportedKey(String),
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    #[error("certificate does not cover {missing:?}")]
    NamesNotCovered { missing: Vec<String> },
    #[error("certificate lists a name that is not a valid DNS name: {0}")]
    BadName(String),
    #[error(
        "metadata does not describe the certificate: {field} is {stored} in the metadata but {actual} in the certificate"
    )]
    MetadataMismatch {
        field: &'static str,
        stored: String,
        actual: String,
    },
}

/// What the renewal policy and the SDS server need to know about a certificate
/// without parsing it again. Stored beside it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateMetadata {
    /// The dNSName SANs of the leaf, sorted.
    pub names: Vec<DomainName>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Lowercase hex of the serial number's DER bytes.
    pub serial: String,
    /// When this service received the certificate from the CA.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// The RFC 9773 ARI identifier (`base64url(AKI).base64url(serial)`), when
    /// the certificate has an Authority Key Identifier.
    pub ari_cert_id: Option<String>,
    pub key_type: Option<KeyType>,
    /// The ACME profile the certificate was ordered with, if any.
    pub profile: Option<String>,
}

impl CertificateMetadata {
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }

    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// A certificate chain (leaf first), its private key and its metadata, known
/// to belong together.
#[derive(Clone)]
pub struct CertificateBundle {
    chain_pem: String,
    key_pem: Secret<String>,
    metadata: CertificateMetadata,
}

impl fmt::Debug for CertificateBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateBundle")
            .field("metadata", &self.metadata)
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

/// What ordering parameters a new bundle records in its metadata.
#[derive(Debug, Clone, Default)]
pub struct IssuanceFacts {
    pub key_type: Option<KeyType>,
    pub profile: Option<String>,
}

impl CertificateBundle {
    /// A bundle for a certificate just received: metadata derived from the leaf.
    pub fn from_issued(
        chain_pem: String,
        key_pem: Secret<String>,
        issued_at: OffsetDateTime,
        facts: IssuanceFacts,
    ) -> Result<Self, CertificateError> {
        let leaf = LeafFacts::from_chain_and_key(&chain_pem, &key_pem)?;
        let metadata = CertificateMetadata {
            names: leaf.names,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            serial: leaf.serial,
            issued_at,
            ari_cert_id: leaf.ari_cert_id,
            key_type: facts.key_type,
            profile: facts.profile,
        };
        Ok(Self {
            chain_pem,
            key_pem,
            metadata,
        })
    }

    /// A bundle read back from storage: the stored metadata must describe the
    /// stored certificate, and the key must match it.
    pub fn from_stored(
        chain_pem: String,
        key_pem: Secret<String>,
        metadata: CertificateMetadata,
    ) -> Result<Self, CertificateError> {
        let leaf = LeafFacts::from_chain_and_key(&chain_pem, &key_pem)?;
        let mismatch = |field, stored: String, actual: String| {
            Err(CertificateError::MetadataMismatch {
                field,
                stored,
                actual,
            })
        };
        if leaf.serial != metadata.serial {
            return mismatch("serial", metadata.serial, leaf.serial);
        }
        if leaf.not_after != metadata.not_after {
            return mismatch(
                "not_after",
                metadata.not_after.to_string(),
                leaf.not_after.to_string(),
            );
        }
        if leaf.names != metadata.names {
            return mismatch(
                "names",
                format!("{:?}", metadata.names),
                format!("{:?}", leaf.names),
            );
        }
        Ok(Self {
            chain_pem,
            key_pem,
            metadata,
        })
    }

    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    pub fn key_pem(&self) -> &Secret<String> {
        &self.key_pem
    }

    pub fn metadata(&self) -> &CertificateMetadata {
        &self.metadata
    }

    /// Fails unless every name of `names` is listed in the certificate.
    pub fn ensure_covers(&self, names: &NameSet) -> Result<(), CertificateError> {
        let missing: Vec<String> = names
            .missing_from(&self.metadata.names)
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CertificateError::NamesNotCovered { missing })
        }
    }

    /// The ARI identifier of this certificate, for `renewalInfo` and `replaces`.
    pub fn ari_identifier(&self) -> Option<CertificateIdentifier<'static>> {
        let (aki, serial) = self.metadata.ari_cert_id.as_deref()?.split_once('.')?;
        Some(CertificateIdentifier {
            authority_key_identifier: aki.to_owned().into(),
            serial: serial.to_owned().into(),
        })
    }
}

/// Facts read from the leaf certificate after checking it against the key.
struct LeafFacts {
    names: Vec<DomainName>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: String,
    ari_cert_id: Option<String>,
}

impl LeafFacts {
    fn from_chain_and_key(
        chain_pem: &str,
        key_pem: &Secret<String>,
    ) -> Result<Self, CertificateError> {
        let chain = parse_certificate_chain(chain_pem).map_err(CertificateError::ChainPem)?;
        let key = parse_private_key(key_pem.expose()).map_err(CertificateError::KeyPem)?;
        // parse_certificate_chain never returns an empty chain.
        let leaf_der = chain
            .first()
            .ok_or(CertificateError::ChainPem(PemError::NoCertificate))?;
        let facts = Self::from_leaf(leaf_der)?;
        ensure_key_matches(&key, leaf_der)?;
        Ok(facts)
    }

    fn from_leaf(der: &CertificateDer<'_>) -> Result<Self, CertificateError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertificateError::X509(e.to_string()))?;
        let mut names = Vec::new();
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| CertificateError::X509(e.to_string()))?
        {
            for general_name in &san.value.general_names {
                if let GeneralName::DNSName(name) = general_name {
                    names.push(
                        DomainName::parse(name)
                            .map_err(|e| CertificateError::BadName(e.to_string()))?,
                    );
                }
            }
        }
        names.sort();
        names.dedup();
        let ari_cert_id = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| {
                        CertificateIdentifier::new(
                            Der::from_slice(id.0),
                            Der::from_slice(cert.raw_serial()),
                        )
                        .to_string()
                    })
                }
                _ => None,
            });
        Ok(Self {
            names,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            serial: hex(cert.raw_serial()),
            ari_cert_id,
        })
    }
}

/// Compares the public half of `key` with the leaf's subjectPublicKey.
fn ensure_key_matches(
    key: &PrivateKeyDer<'_>,
    leaf_der: &CertificateDer<'_>,
) -> Result<(), CertificateError> {
    let key_pair = rcgen::KeyPair::try_from(key)
        .map_err(|e| CertificateError::UnsupportedKey(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(leaf_der.as_ref())
        .map_err(|e| CertificateError::X509(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() == key_pair.public_key_raw() {
        Ok(())
    } else {
        Err(CertificateError::KeyMismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// A CA-signed leaf for `names` valid from `not_before` for `lifetime`,
    /// with its key: what a CA would hand out.
    pub(crate) fn issue_test_certificate(
        names: &[&str],
        not_before: OffsetDateTime,
        lifetime: time::Duration,
    ) -> (String, Secret<String>) {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.not_before = not_before;
        params.not_after = not_before + lifetime;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x01, 0x02, 0xab]));
        let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf");
        (
            format!("{}{}", leaf.pem(), ca_cert.pem()),
            Secret::new(leaf_key.serialize_pem()),
        )
    }

    fn now() -> OffsetDateTime {
        // Whole seconds: X.509 times have no sub-second part.
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("valid timestamp")
    }

    #[test]
    fn metadata_is_derived_from_the_leaf() {
        let start = now();
        let (chain, key) = issue_test_certificate(
            &["example.com", "*.example.com"],
            start,
            time::Duration::days(90),
        );
        let bundle = CertificateBundle::from_issued(chain, key, start, IssuanceFacts::default())
            .expect("bundle");
        let meta = bundle.metadata();
        assert_eq!(
            meta.names
                .iter()
                .map(DomainName::as_str)
                .collect::<Vec<_>>(),
            vec!["*.example.com", "example.com"]
        );
        assert_eq!(meta.not_before, start);
        assert_eq!(meta.lifetime(), time::Duration::days(90));
        assert_eq!(meta.serial, "0102ab");
        let ari = meta.ari_cert_id.as_deref().expect("AKI present");
        assert!(ari.ends_with(".AQKr"), "{ari}");
        let id = bundle.ari_identifier().expect("parsed back");
        assert_eq!(id.to_string(), ari);
        let names = NameSet::parse(&["example.com", "*.example.com"]).expect("names");
        bundle.ensure_covers(&names).expect("covered");
        let more = NameSet::parse(&["example.com", "www.example.com"]).expect("names");
        assert!(matches!(
            bundle.ensure_covers(&more),
            Err(CertificateError::NamesNotCovered { missing }) if missing == vec!["www.example.com"]
        ));
    }

    #[test]
    fn a_foreign_key_is_rejected() {
        let (chain, _) = issue_test_certificate(&["example.com"], now(), time::Duration::days(90));
        let other = Secret::new(KeyPair::generate().expect("key").serialize_pem());
        assert!(matches!(
            CertificateBundle::from_issued(chain, other, now(), IssuanceFacts::default()),
            Err(CertificateError::KeyMismatch)
        ));
    }

    #[test]
    fn stored_metadata_must_describe_the_certificate() {
        let start = now();
        let (chain, key) =
            issue_test_certificate(&["example.com"], start, time::Duration::days(90));
        let bundle = CertificateBundle::from_issued(
            chain.clone(),
            key.clone(),
            start,
            IssuanceFacts::default(),
        )
        .expect("bundle");
        let mut meta = bundle.metadata().clone();
        CertificateBundle::from_stored(chain.clone(), key.clone(), meta.clone())
            .expect("consistent");
        meta.serial = "ff".to_owned();
        let err = CertificateBundle::from_stored(chain, key, meta).expect_err("inconsistent");
        assert!(err.to_string().contains("serial is ff"), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let (chain, key) =
            issue_test_certificate(&["example.com"], now(), time::Duration::days(90));
        assert!(matches!(
            CertificateBundle::from_issued("junk".to_owned(), key, now(), IssuanceFacts::default()),
            Err(CertificateError::ChainPem(PemError::NoCertificate))
        ));
        assert!(matches!(
            CertificateBundle::from_issued(
                chain,
                Secret::new("junk".to_owned()),
                now(),
                IssuanceFacts::default()
            ),
            Err(CertificateError::KeyPem(PemError::NoPrivateKey))
        ));
    }
}

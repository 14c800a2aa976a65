//! Certificate private keys and the certificate signing requests made with them.
//!
//! A fresh key is generated for every order: reusing a key across renewals
//! would make a key compromise outlive the certificate.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};

use crate::domain::NameSet;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a {key_type} key: {reason}")]
    Generate { key_type: KeyType, reason: String },
    #[error("building the certificate signing request: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("unknown key type `{0}` (expected `ecdsa-p256` or `rsa-2048`)")]
    UnknownKeyType(String),
}

/// The kind of key a certificate is issued for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256: small, fast, accepted by every current TLS client.
    #[default]
    EcdsaP256,
    /// RSA 2048 for clients that still cannot do ECDSA.
    Rsa2048,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Rsa2048 => "rsa-2048",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" | "ec256" => Ok(Self::EcdsaP256),
            "rsa-2048" | "rsa2048" | "rsa" => Ok(Self::Rsa2048),
            other => Err(KeyError::UnknownKeyType(other.to_owned())),
        }
    }
}

/// A freshly generated key pair, ready to sign a CSR.
pub struct CertificateKey {
    key_pair: KeyPair,
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateKey")
            .field("algorithm", &self.key_pair.algorithm())
            .finish_non_exhaustive()
    }
}

impl CertificateKey {
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let key_pair = match key_type {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::Rsa2048 => generate_rsa_2048(),
        }
        .map_err(|e| KeyError::Generate {
            key_type,
            reason: e.to_string(),
        })?;
        Ok(Self { key_pair })
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as Envoy reads it.
    pub fn private_key_pem(&self) -> Secret<String> {
        Secret::new(self.key_pair.serialize_pem())
    }

    /// A DER CSR for exactly `names`, with an empty subject: CAs take the names
    /// from the subjectAltName extension, and Let's Encrypt ignores the CN.
    pub fn csr_der(&self, names: &NameSet) -> Result<Vec<u8>, KeyError> {
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .map_err(KeyError::Csr)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&self.key_pair)
            .map_err(KeyError::Csr)?;
        Ok(csr.der().to_vec())
    }
}

/// ring, rcgen's crypto backend here, signs with RSA keys but cannot generate
/// them, so the `rsa` crate makes the key and ring does all signing (see ADR 0003).
fn generate_rsa_2048() -> Result<KeyPair, rcgen::Error> {
    use rsa::pkcs8::EncodePrivateKey;

    let mut rng = rsa::rand_core::OsRng;
    let private_key = rsa::RsaPrivateKey::new(&mut rng, 2048)
        .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
    let pkcs8 = private_key
        .to_pkcs8_der()
        .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pem::parse_private_key;
    use x509_parser::prelude::FromDer;

    #[test]
    fn key_type_parses_common_spellings() {
        assert_eq!(
            "ECDSA-P256".parse::<KeyType>().ok(),
            Some(KeyType::EcdsaP256)
        );
        assert_eq!("rsa2048".parse::<KeyType>().ok(), Some(KeyType::Rsa2048));
        assert!("dsa".parse::<KeyType>().is_err());
    }

    #[test]
    fn ecdsa_key_is_pkcs8_pem_and_signs_a_csr_with_all_names() {
        let key = CertificateKey::generate(KeyType::EcdsaP256).expect("keygen");
        let pem = key.private_key_pem();
        assert!(pem.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
        parse_private_key(pem.expose()).expect("parses back");
        let names = NameSet::parse(&["example.com", "*.example.com"]).expect("names");
        let csr = key.csr_der(&names).expect("csr");
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr)
                .expect("csr parses");
        let mut sans: Vec<String> = Vec::new();
        for extension in parsed.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = extension
            {
                for name in &san.general_names {
                    if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                        sans.push((*dns).to_owned());
                    }
                }
            }
        }
        sans.sort();
        assert_eq!(sans, vec!["*.example.com", "example.com"]);
    }

    #[test]
    fn rsa_key_is_generated_and_signs_a_csr() {
        let key = CertificateKey::generate(KeyType::Rsa2048).expect("keygen");
        assert_eq!(key.key_pair.algorithm(), &rcgen::PKCS_RSA_SHA256);
        let names = NameSet::parse(&["example.com"]).expect("names");
        key.csr_der(&names).expect("csr");
    }
}

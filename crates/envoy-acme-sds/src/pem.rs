//! PEM decoding of certificate chains and private keys.
//!
//! Uses `rustls-pki-types`' `PemObject` (see ADR 0004): the same decoder rustls
//! itself uses, with no extra crate.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("no PRIVATE KEY block found (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoPrivateKey,
    #[error("malformed PEM: {0}")]
    Malformed(String),
}

impl From<pem::Error> for PemError {
    fn from(error: pem::Error) -> Self {
        // The decoder's messages name markers and base64 offsets, never key bytes.
        Self::Malformed(error.to_string())
    }
}

/// All certificates of a PEM chain, leaf first as ACME servers send them.
pub fn parse_certificate_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(chain)
}

/// One certificate as PEM, 64 base64 characters a line (RFC 7468).
pub fn encode_certificate_pem(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The first private key in `pem`.
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(PemError::NoPrivateKey),
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_keeps_order_and_rejects_empty_input() {
        let ca = rcgen::KeyPair::generate().expect("key");
        let a = rcgen::CertificateParams::new(vec!["a.example".to_owned()])
            .expect("params")
            .self_signed(&ca)
            .expect("cert");
        let b = rcgen::CertificateParams::new(vec!["b.example".to_owned()])
            .expect("params")
            .self_signed(&ca)
            .expect("cert");
        let pem = format!("{}{}", a.pem(), b.pem());
        let chain = parse_certificate_chain(&pem).expect("parses");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), a.der().as_ref());
        let reencoded: String = chain
            .iter()
            .map(|der| encode_certificate_pem(der.as_ref()))
            .collect();
        assert_eq!(reencoded, pem);
        assert!(matches!(
            parse_certificate_chain("nothing here"),
            Err(PemError::NoCertificate)
        ));
        assert!(matches!(
            parse_certificate_chain(
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            ),
            Err(PemError::Malformed(_))
        ));
    }

    #[test]
    fn private_key_missing_is_distinguished_from_malformed() {
        assert!(matches!(parse_private_key(""), Err(PemError::NoPrivateKey)));
        let key = rcgen::KeyPair::generate().expect("key");
        assert!(parse_private_key(&key.serialize_pem()).is_ok());
    }
}

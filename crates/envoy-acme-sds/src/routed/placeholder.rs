//! Self-signed placeholders: what Envoy is served under a routed host's name
//! until its real certificate exists (or for good, when the host is
//! refused). Envoy warms a listener until every secret its filter chains
//! name arrives; answering at once keeps a new host from holding the TLS
//! listener, and with it every other host, in warming.
//!
//! A client never trusts a placeholder (it is self-signed, and its subject
//! says what it is), so serving one is a handshake failure for that host
//! only, never a certificate a client could mistake for the real one.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::OffsetDateTime;

use crate::certificate::{CertificateBundle, CertificateError, IssuanceFacts};
use crate::secret::Secret;

/// The subject's organisation, which marks a placeholder as such.
pub const PLACEHOLDER_ORGANIZATION: &str = "envoy-acme-sds placeholder (not issued yet)";

#[derive(Debug, thiserror::Error)]
pub enum PlaceholderError {
    #[error("generating a placeholder certificate for {host}: {source}")]
    Generate {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("placeholder certificate for {host}: {source}")]
    Bundle {
        host: String,
        #[source]
        source: CertificateError,
    },
}

/// A self-signed certificate for `host`, valid for a year from now.
pub fn placeholder(host: &str) -> Result<CertificateBundle, PlaceholderError> {
    let generate = |source| PlaceholderError::Generate {
        host: host.to_owned(),
        source,
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(generate)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, host);
    subject.push(DnType::OrganizationName, PLACEHOLDER_ORGANIZATION);
    params.distinguished_name = subject;
    // Whole seconds: X.509 times have none below.
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365);
    let certificate = params.self_signed(&key).map_err(generate)?;
    CertificateBundle::from_issued(
        certificate.pem(),
        Secret::new(key.serialize_pem()),
        now,
        IssuanceFacts::default(),
    )
    .map_err(|source| PlaceholderError::Bundle {
        host: host.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_names_the_host_and_says_what_it_is() {
        for host in ["new.demo.test", "*.demo.test"] {
            let bundle = placeholder(host).expect("placeholder");
            let names: Vec<&str> = bundle.metadata().names.iter().map(|n| n.as_str()).collect();
            assert_eq!(names, vec![host]);
            assert!(bundle.metadata().not_after > OffsetDateTime::now_utc());
            let der = crate::pem::parse_certificate_chain(bundle.chain_pem()).expect("chain");
            let (_, parsed) =
                x509_parser::parse_x509_certificate(der[0].as_ref()).expect("certificate");
            assert!(
                parsed.subject().to_string().contains("placeholder"),
                "{}",
                parsed.subject()
            );
            assert_eq!(parsed.subject(), parsed.issuer(), "self-signed");
        }
    }
}

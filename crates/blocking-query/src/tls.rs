//! The rustls client configuration for `https` agents: which roots to trust
//! and which certificate to present (Consul's `verify_incoming`, Nomad's
//! `verify_https_client`), and
//! [`root_store`], the trust decision shared with other HTTPS clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS settings, as Consul's and Nomad's CLIs take them (`*_CACERT`,
/// `*_CAPATH`, `*_CLIENT_CERT`, `*_CLIENT_KEY`, `*_TLS_SERVER_NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust. With neither this nor `ca_path`, the
    /// system's roots are trusted.
    pub ca_cert: Option<PathBuf>,
    /// A directory of PEM CA files.
    pub ca_path: Option<PathBuf>,
    /// PEM certificate chain presented to the agent.
    pub client_cert: Option<PathBuf>,
    /// Its PEM private key.
    pub client_key: Option<PathBuf>,
    /// The name to verify instead of the address's host.
    pub server_name: Option<String>,
}

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("a client certificate needs its key and a key its certificate")]
    IncompleteClientIdentity,
    #[error("no trusted root certificate could be loaded: {reason}")]
    NoRoots { reason: String },
    #[error("CA certificate PEM: {reason}")]
    CaPem { reason: String },
    #[error("`{name}` is not a valid TLS server name")]
    ServerName { name: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsConfig {
    /// The name to verify, when it is not the address's host.
    pub fn server_name(&self) -> Result<Option<rustls_pki_types::ServerName<'static>>, TlsError> {
        self.server_name
            .as_ref()
            .map(|name| {
                rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName { name: name.clone() })
            })
            .transpose()
    }

    /// A rustls configuration (ring provider, TLS 1.2 and 1.3). ALPN is left
    /// to the connector, which offers `h2` and `http/1.1`.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(TlsError::IncompleteClientIdentity);
        }
        let roots = self.roots()?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates("client certificate", cert)?;
                let key = read_private_key(key)?;
                Ok(builder.with_client_auth_cert(chain, key)?)
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        if self.ca_cert.is_none() && self.ca_path.is_none() {
            return system_roots("configure a CA certificate");
        }
        let mut roots = RootCertStore::empty();
        if let Some(file) = &self.ca_cert {
            add_roots(&mut roots, "CA certificate", file)?;
        }
        if let Some(dir) = &self.ca_path {
            let entries = std::fs::read_dir(dir).map_err(|source| TlsError::Read {
                what: "CA directory",
                path: dir.clone(),
                source,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|source| TlsError::Read {
                        what: "CA directory",
                        path: dir.clone(),
                        source,
                    })?
                    .path();
                if path.is_file() {
                    add_roots(&mut roots, "CA certificate", &path)?;
                }
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots {
                reason: "the CA file or directory holds no certificate".to_owned(),
            });
        }
        Ok(roots)
    }
}

/// The roots an HTTPS client trusts: the CA certificates in `ca_pem` when
/// given (a private CA), the system's otherwise.
///
/// Public, and free of anything Consul or Nomad, because a program's other
/// HTTPS clients (an ACME client, say) should trust exactly as its Consul
/// client does, through one implementation.
pub fn root_store(ca_pem: Option<&[u8]>) -> Result<RootCertStore, TlsError> {
    let Some(pem) = ca_pem else {
        return system_roots("configure a CA certificate");
    };
    let mut roots = RootCertStore::empty();
    let certificates = parse_certificates(pem).map_err(|reason| TlsError::CaPem { reason })?;
    add_certificates(&mut roots, certificates).map_err(|reason| TlsError::CaPem { reason })?;
    if roots.is_empty() {
        return Err(TlsError::NoRoots {
            reason: "the CA PEM holds no certificate".to_owned(),
        });
    }
    Ok(roots)
}

/// The system's roots; `hint` ends the error when there are none, naming
/// the caller's own way to configure a CA instead.
fn system_roots(hint: &str) -> Result<RootCertStore, TlsError> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping unreadable system root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        return Err(TlsError::NoRoots {
            reason: native.errors.first().map_or_else(
                || format!("the system store is empty; {hint}"),
                ToString::to_string,
            ),
        });
    }
    Ok(roots)
}

fn add_roots(roots: &mut RootCertStore, what: &'static str, path: &Path) -> Result<(), TlsError> {
    add_certificates(roots, read_certificates(what, path)?).map_err(|reason| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    })
}

/// Adds every certificate as a trust anchor; the error is rustls' reason.
fn add_certificates(
    roots: &mut RootCertStore,
    certificates: Vec<CertificateDer<'static>>,
) -> Result<(), String> {
    for certificate in certificates {
        roots.add(certificate).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Every certificate in `pem`; the error is the decoder's reason.
fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = parse_certificates(&pem).map_err(|reason| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "client key",
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "client key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let config = TlsConfig {
            client_cert: Some(PathBuf::from("/etc/agent/cli.pem")),
            ..TlsConfig::default()
        };
        assert!(matches!(
            config.rustls_config(),
            Err(TlsError::IncompleteClientIdentity)
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").expect("write");
        let config = TlsConfig {
            ca_cert: Some(ca),
            ..TlsConfig::default()
        };
        assert!(matches!(
            config.rustls_config(),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let config = TlsConfig {
            ca_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsConfig::default()
        };
        let error = config.rustls_config().expect_err("missing CA file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_ca_pem_is_trusted_instead_of_the_system_store() {
        let ca = test_support::TestCa::new("root store test CA").expect("CA");
        let roots = root_store(Some(ca.cert_pem().as_bytes())).expect("roots");
        assert_eq!(roots.len(), 1);
        assert!(matches!(
            root_store(Some(b"not a certificate")),
            Err(TlsError::NoRoots { .. })
        ));
    }
}

//! Test certificate authorities and an HTTPS GET that trusts a given root.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::http::{HttpResponse, http_error, send};
use crate::{HarnessError, Result};

/// A throw-away CA that signs leaf certificates for test servers.
#[derive(Debug)]
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct LeafPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Result<LeafPem> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        self.sign(params)
    }

    /// A client certificate for `common_name`, limited to the clientAuth
    /// extended key usage as CAs issuing mTLS identities make them, so a
    /// server that checks the purpose meets what it gets in production
    /// (leaves from [`TestCa::leaf`] carry no usage and pass any check).
    pub fn client_leaf(&self, common_name: &str) -> Result<LeafPem> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<LeafPem> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(LeafPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `GET https://server_name/path` at `addr`, trusting only `roots_pem`.
///
/// Returns the response and the DER of the certificate the server presented,
/// so tests can check *which* certificate a TLS listener serves.
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    roots_pem: &str,
    path: &str,
) -> Result<(HttpResponse, Vec<u8>)> {
    let url = format!("https://{server_name}{path} (at {addr})");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        let cert = cert.map_err(|e| http_error(&url, e))?;
        roots.add(cert).map_err(|e| http_error(&url, e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| http_error(&url, e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| http_error(&url, e))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| http_error(&url, e))?;
    // As curl and browsers do: the request after the handshake must not
    // wait for the acknowledgement of the handshake's last flight (Nagle
    // meeting a delayed ACK costs 40 ms on Linux).
    tcp.set_nodelay(true).map_err(|e| http_error(&url, e))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| http_error(&url, e))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.as_ref().to_vec())
        .ok_or_else(|| HarnessError::Http {
            url: url.clone(),
            reason: "server presented no certificate".to_owned(),
        })?;
    let response = send(tls, &url, "GET", server_name, path, &[], Vec::new()).await?;
    Ok((response, presented))
}

/// A TLS acceptor serving `cert_pem` (chain) with `key_pem` at `authority`
/// (named in errors); with `client_ca_pem`, a client certificate signed by
/// it is required.
pub(crate) fn tls_acceptor(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
    authority: &str,
) -> Result<tokio_rustls::TlsAcceptor> {
    let url = format!("https://{authority}/");
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| http_error(&url, e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| http_error(&url, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| http_error(&url, e))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                let cert = cert.map_err(|e| http_error(&url, e))?;
                roots.add(cert).map_err(|e| http_error(&url, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| http_error(&url, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| http_error(&url, e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

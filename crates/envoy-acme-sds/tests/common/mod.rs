//! Helpers shared by the integration tests: a knot zone, a pebble CA
//! resolving through it, and checks on what comes out.

#![allow(dead_code)] // Each test binary uses a subset.

pub mod service;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use envoy_acme_sds::acme::AcmeConfig;
use envoy_acme_sds::certificate::{CertificateBundle, CertificateMetadata};
use envoy_acme_sds::challenge::ChallengeSolver;
use envoy_acme_sds::challenge::dns01::{Rfc2136Config, Rfc2136Solver, TsigKey};
use envoy_acme_sds::domain::NameSet;
use envoy_acme_sds::manager::CertificateSpec;
use envoy_acme_sds::store::AccountId;
use envoy_acme_sds::store::disk::DiskStore;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use test_support::{Knot, Pebble, PebbleOptions};

pub const ZONE: &str = "example.test";

pub fn tsig_key(knot: &Knot) -> TsigKey {
    let tsig = knot.tsig();
    TsigKey::new(&tsig.name, &tsig.algorithm, &tsig.secret_base64).expect("knot's TSIG key")
}

pub fn dns01_solver(knot: &Knot, key: TsigKey) -> Arc<dyn ChallengeSolver> {
    Arc::new(Rfc2136Solver::new(Rfc2136Config::new(knot.addr(), knot.zone(), key)).expect("solver"))
}

pub fn acme_config(pebble: &Pebble) -> AcmeConfig {
    let mut config = AcmeConfig::new(pebble.directory_url());
    config.ca_root_pem = Some(pebble.listener_ca_pem().to_owned());
    config.contact = vec!["hostmaster@example.test".to_owned()];
    config
}

pub async fn start_pebble(knot: &Knot, options: PebbleOptions) -> Pebble {
    Pebble::start(PebbleOptions {
        dns_server: Some(knot.addr()),
        ..options
    })
    .await
    .expect("pebble starts")
}

pub fn apex_and_wildcard() -> CertificateSpec {
    CertificateSpec::new(NameSet::parse(&[ZONE, "*.example.test"]).expect("names")).expect("spec")
}

/// Verifies `bundle`'s chain up to `root_pem` for `host`, as a TLS client would.
pub fn verify_chain(bundle: &CertificateBundle, root_pem: &str, host: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(root.expect("root PEM")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle.chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain PEM");
    let (leaf, intermediates) = chain.split_first().expect("non-empty chain");
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &ServerName::try_from(host.to_owned()).expect("server name"),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("chain does not verify for {host} against pebble's root: {e}"));
}

pub fn names(metadata: &CertificateMetadata) -> Vec<&str> {
    metadata.names.iter().map(|n| n.as_str()).collect()
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// The file holding the ACME account of `pebble`'s directory.
pub fn account_file(store: &DiskStore, pebble: &Pebble) -> std::path::PathBuf {
    store.item_path(&format!(
        "accounts/{}",
        AccountId::for_directory(&pebble.directory_url())
    ))
}

/// Writes knot's TSIG key as a BIND-style key file, as an operator would.
pub fn tsig_key_file(knot: &Knot, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tsig.key");
    std::fs::write(&path, knot.tsig().bind_key_file()).expect("write TSIG key file");
    path
}

/// pebble's HTTPS listener root, written for `--acme-ca-file`.
pub fn acme_ca_file(pebble: &Pebble, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pebble-listener-ca.pem");
    std::fs::write(&path, pebble.listener_ca_pem()).expect("write CA file");
    path
}

//! The SDS listener over mutual TLS, through the binary and real Envoys:
//! `--sds-tls-cert`/`--sds-tls-key` serve gRPC over TLS and `--sds-client-ca`
//! demands a client certificate from that CA. An Envoy holding one gets the
//! pebble-issued certificate on its TLS listener; an Envoy without a client
//! certificate, and one whose certificate comes from another CA, are turned
//! away at the handshake and never get the secret.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::service::{SdsService, presented};
use common::{ZONE, acme_ca_file, start_pebble, tsig_key_file};
use test_support::bootstrap::{SdsClientTls, SdsListenerBootstrap};
use test_support::{Envoy, Knot, LeafPem, PebbleOptions, TestCa, eventually, free_port};

/// Envoy dials a loopback address but checks this name (SNI and SAN), as it
/// would check a named SDS service across the network.
const SDS_SERVER_NAME: &str = "sds.test";

/// Envoy's per-secret SDS counter of accepted updates.
const SECRET_UPDATES: &str = "sds.example.test.update_success";

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    path
}

/// A client certificate and key on disk, for Envoy's `tls_certificates`.
fn write_identity(dir: &Path, name: &str, leaf: &LeafPem) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{name}.pem"), &leaf.cert_pem),
        write(dir, &format!("{name}.key"), &leaf.key_pem),
    )
}

/// One TLS listener whose certificate is the SDS secret, the `sds` cluster
/// speaking TLS: it trusts `trusted_ca`, checks the server's name, and
/// presents `client` when given. Envoys built from it differ only in that
/// client certificate, so a difference in what they get is the server's
/// client authentication at work.
fn mtls_bootstrap(
    node: &str,
    listener_port: u16,
    sds: SocketAddr,
    trusted_ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> String {
    SdsListenerBootstrap::new(node, listener_port, ZONE, sds)
        .tls(SdsClientTls {
            server_name: SDS_SERVER_NAME.to_owned(),
            trusted_ca: trusted_ca.to_owned(),
            client: client.cloned(),
        })
        .yaml()
}

/// A counter of `envoy`; 0 while Envoy has not created it.
async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(name)
        .await
        .unwrap_or_else(|e| panic!("reading {name} from Envoy: {e}"))
        .unwrap_or(0)
}

/// Waits until `envoy` has tried the SDS server at least twice (so one
/// refusal is not mistaken for a slow start) or got the secret, then
/// asserts it was refused at the TLS layer and has nothing to serve.
async fn assert_refused(envoy: &Envoy, who: &str, listener: SocketAddr, root: &str) {
    let (connections, updates) = eventually(
        &format!("{who} retries the SDS server"),
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let connections = stat(envoy, "cluster.sds.upstream_cx_total").await;
            let updates = stat(envoy, SECRET_UPDATES).await;
            (connections >= 2 || updates > 0).then_some((connections, updates))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    assert_eq!(
        updates, 0,
        "{who} got the secret after {connections} connection(s): the SDS listener does not enforce mTLS"
    );
    let tls_errors = stat(envoy, "cluster.sds.ssl.connection_error").await;
    assert!(
        tls_errors >= 1,
        "{who} made {connections} connections but saw no TLS error: refused for another reason"
    );
    assert_eq!(
        presented(listener, ZONE, root).await,
        None,
        "{who}'s listener serves a certificate it cannot have received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_over_mtls_serves_only_envoys_with_a_client_certificate_from_the_ca() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let sds_ca = TestCa::new("sds test CA").expect("SDS CA");
    let server = sds_ca.leaf(&[SDS_SERVER_NAME]).expect("SDS server leaf");
    let ca_file = write(dir.path(), "sds-ca.pem", sds_ca.cert_pem());
    let server_cert = write(dir.path(), "sds-server.pem", &server.cert_pem);
    let server_key = write(dir.path(), "sds-server.key", &server.key_pem);
    let trusted = write_identity(
        dir.path(),
        "trusted-client",
        &sds_ca.client_leaf("gateway").expect("client leaf"),
    );
    // Same name and purpose, another issuer: only the CA check can tell.
    let stranger_ca = TestCa::new("stranger CA").expect("stranger CA");
    let stranger = write_identity(
        dir.path(),
        "stranger-client",
        &stranger_ca.client_leaf("gateway").expect("stranger leaf"),
    );

    let path = |p: &Path| p.display().to_string();
    let args: Vec<String> = [
        "--acme-directory",
        &pebble.directory_url(),
        "--acme-ca-file",
        &path(&acme_ca_file(&pebble, dir.path())),
        "--email",
        "hostmaster@example.test",
        "--cert",
        ZONE,
        "--challenge",
        "dns-01",
        "--rfc2136-server",
        &knot.addr().to_string(),
        "--tsig-key-file",
        &path(&tsig_key_file(&knot, dir.path())),
        "--storage",
        &format!("disk:{}", dir.path().join("store").display()),
        "--sds-tls-cert",
        &path(&server_cert),
        "--sds-tls-key",
        &path(&server_key),
        "--sds-client-ca",
        &path(&ca_file),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut service = SdsService::start("envoy-acme-sds", dir.path(), &args);
    service.wait_ready(Duration::from_secs(60)).await;
    let served = service
        .served_serial(ZONE)
        .await
        .expect("a ready service serves the certificate");

    // The refused Envoys start first and retry while the trusted one starts.
    // Without /ready: their listener waits for a secret that never comes.
    let anonymous_port = free_port();
    let anonymous = Envoy::start_no_wait(&mtls_bootstrap(
        "anonymous",
        anonymous_port,
        service.sds,
        &ca_file,
        None,
    ))
    .await
    .expect("Envoy without a client certificate starts");
    let stranger_port = free_port();
    let foreign = Envoy::start_no_wait(&mtls_bootstrap(
        "stranger",
        stranger_port,
        service.sds,
        &ca_file,
        Some(&stranger),
    ))
    .await
    .expect("Envoy with another CA's certificate starts");
    let trusted_port = free_port();
    let gateway = Envoy::start(&mtls_bootstrap(
        "gateway",
        trusted_port,
        service.sds,
        &ca_file,
        Some(&trusted),
    ))
    .await
    .expect("Envoy with a client certificate from the CA gets its secret and is ready");

    let root = pebble.issuing_root_pem().await.expect("pebble root");
    let listener = SocketAddr::from(([127, 0, 0, 1], trusted_port));
    let seen = eventually(
        "the trusted Envoy presents the ACME certificate",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || presented(listener, ZONE, &root),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_tail()));
    assert_eq!(
        seen.serial, served,
        "Envoy presents another certificate than the one served"
    );
    assert_eq!(seen.names, vec![ZONE]);
    assert!(
        stat(&gateway, "cluster.sds.ssl.handshake").await >= 1,
        "the secret did not come over TLS"
    );
    // Also proves the counter's name, which the refused Envoys must show at 0.
    assert!(
        stat(&gateway, SECRET_UPDATES).await >= 1,
        "{SECRET_UPDATES} does not count the secret the trusted Envoy presents"
    );

    let refused_listener = |port| SocketAddr::from(([127, 0, 0, 1], port));
    assert_refused(
        &anonymous,
        "the Envoy without a client certificate",
        refused_listener(anonymous_port),
        &root,
    )
    .await;
    assert_refused(
        &foreign,
        "the Envoy with another CA's client certificate",
        refused_listener(stranger_port),
        &root,
    )
    .await;

    // The server side agrees: one SDS stream, the trusted Envoy's.
    assert_eq!(
        service
            .metric("xds_streams{service=\"sds\",protocol=\"sotw\"}")
            .await,
        1.0,
        "a refused Envoy holds an SDS stream"
    );
}

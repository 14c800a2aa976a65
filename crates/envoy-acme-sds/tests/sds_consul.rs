//! The binary end to end with Consul storage: an apex + wildcard certificate
//! ordered from pebble with DNS-01 through knot, stored (sealed) in Consul
//! KV behind ACLs, served over SDS to a real Envoy TLS listener, rotated by
//! `envoy-acme-sds renew` without touching Envoy, and the lock released on
//! SIGTERM. Neither the Consul token, the TSIG secret nor a private key
//! appears in its logs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::service::{SdsService, assert_absent, binary, pem_body, presented};
use common::{ZONE, acme_ca_file, start_pebble, tsig_key_file};
use consul_client::{Address, Client, ClientConfig, QueryOptions, Token};
use envoy_acme_sds::store::codec::{CertificatePart, certificate_item};
use envoy_acme_sds::store::consul::ConsulStore;
use envoy_acme_sds::store::encryption::KeyEncryption;
use envoy_acme_sds::store::{CertificateStore, SecretName};
use test_support::bootstrap::{SdsListenerBootstrap, SdsTransport};
use test_support::{ConsulAgent, ConsulOptions, Envoy, Knot, PebbleOptions, eventually, free_port};

const PREFIX: &str = "edge/acme";

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_certificate_is_served_over_sds_rotated_by_renew_and_never_logged() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let hex = random_hex(16);
    let token = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let consul = ConsulAgent::start_with(ConsulOptions {
        acl_master_token: Some(token.clone()),
        ..ConsulOptions::default()
    })
    .await
    .expect("consul starts");

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("consul-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let key_file = dir.path().join("encryption.key");
    std::fs::write(&key_file, random_hex(32)).expect("key file");
    let tsig_file = tsig_key_file(&knot, dir.path());
    let path = |p: &std::path::Path| p.display().to_string();
    let storage = format!("consul:{PREFIX}");
    let consul_args = [
        "--storage".to_owned(),
        storage.clone(),
        "--consul-addr".to_owned(),
        consul.http_url(),
        "--consul-token-file".to_owned(),
        path(&token_file),
        "--encryption-key-file".to_owned(),
        path(&key_file),
    ];
    let mut args: Vec<String> = [
        "--acme-directory",
        &pebble.directory_url(),
        "--acme-ca-file",
        &path(&acme_ca_file(&pebble, dir.path())),
        "--email",
        "hostmaster@example.test",
        "--cert",
        "example.test,*.example.test",
        "--challenge",
        "dns-01",
        "--rfc2136-server",
        &knot.addr().to_string(),
        "--tsig-key-file",
        &path(&tsig_file),
        "--lock-delay",
        "0s",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(consul_args.iter().cloned());

    let mut service = SdsService::start("envoy-acme-sds", dir.path(), &args);
    service.wait_ready(Duration::from_secs(60)).await;

    // What the store holds: sealed in KV, readable with the key.
    let client = Client::new(ClientConfig {
        token: Some(Token::new(token.clone()).expect("token")),
        ..ClientConfig::new(consul.http_url().parse::<Address>().expect("address"))
    })
    .expect("client");
    let encryption = Arc::new(KeyEncryption::from_key_file(&key_file).expect("key"));
    let store = ConsulStore::new(client.clone(), PREFIX, Some(encryption)).expect("store");
    let name = SecretName::new(ZONE).expect("name");
    let stored = store
        .load_certificate(&name)
        .await
        .expect("readable")
        .expect("stored");
    let raw = client
        .kv_get(
            &store.key(&certificate_item(&name, CertificatePart::Key)),
            &QueryOptions::default(),
        )
        .await
        .expect("kv")
        .value
        .and_then(|pair| pair.value)
        .expect("entry");
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("PRIVATE KEY"), "private key stored in clear");
    assert!(raw.contains("AES-256-GCM"));

    // An Envoy TLS listener whose certificate is the SDS secret (delta protocol).
    let listener_port = free_port();
    let bootstrap = SdsListenerBootstrap::new("gateway-1", listener_port, ZONE, service.sds)
        .transport(SdsTransport::Delta);
    let envoy = Envoy::start(&bootstrap.yaml()).await.expect("envoy starts");
    let listener = std::net::SocketAddr::from(([127, 0, 0, 1], listener_port));
    let root = pebble.issuing_root_pem().await.expect("pebble root");
    let first = eventually(
        "Envoy presents the certificate",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || presented(listener, ZONE, &root),
    )
    .await
    .expect("presented");
    assert_eq!(first.serial, stored.metadata().serial);
    assert_eq!(first.names, vec!["*.example.test", "example.test"]);
    let wildcard = presented(listener, "www.example.test", &root)
        .await
        .expect("the wildcard name verifies too");
    assert_eq!(wildcard.serial, first.serial);

    // Admin: this replica renews, ordered once, serves what is stored.
    assert_eq!(service.metric("envoy_acme_sds_lock_holder").await, 1.0);
    let ok = "envoy_acme_sds_renewals_total{secret=\"example.test\",result=\"ok\"}";
    assert_eq!(service.metric(ok).await, 1.0);
    assert_eq!(
        service.served_serial(ZONE).await.as_deref(),
        Some(first.serial.as_str())
    );
    // The SDS stream of that Envoy, from xds-core's metrics on the same page.
    assert_eq!(
        service
            .metric("xds_streams{service=\"sds\",protocol=\"delta\"}")
            .await,
        1.0
    );
    let page = service.debug_certificates().await;
    assert_eq!(page["renews"], true);
    assert_eq!(
        page["certificates"][0]["source"],
        format!("consul:{PREFIX}")
    );
    assert!(!page.to_string().contains("PRIVATE KEY"));

    // An operator asks for a new certificate; Envoy presents it to new
    // connections, from the same process, with no restart.
    let envoy_pid = envoy.pid();
    let mut renew_args = vec!["renew".to_owned(), "--cert".to_owned(), ZONE.to_owned()];
    renew_args.extend(consul_args.iter().cloned());
    let output = std::process::Command::new(binary())
        .args(&renew_args)
        .output()
        .expect("renew runs");
    assert!(
        output.status.success(),
        "renew failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second = eventually(
        "Envoy presents the renewed certificate",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            presented(listener, ZONE, &root)
                .await
                .filter(|p| p.serial != first.serial)
        },
    )
    .await
    .expect("rotated");
    let renewed = store
        .load_certificate(&name)
        .await
        .expect("readable")
        .expect("stored");
    assert_eq!(second.serial, renewed.metadata().serial);
    assert_eq!(second.names, first.names);
    assert_eq!(envoy.pid(), envoy_pid);
    assert_eq!(service.metric(ok).await, 2.0);

    // SIGTERM: the lock is released (not left to expire) and the process exits.
    service.signal("TERM");
    eventually(
        "envoy-acme-sds exits on SIGTERM",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let running = service.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await
    .expect("exited");
    let lock = client
        .kv_get(&store.lock_key(), &QueryOptions::default())
        .await
        .expect("kv")
        .value
        .expect("lock key exists");
    assert_eq!(lock.session, None, "the lock is still held after SIGTERM");

    // The logs saw both orders, and none of the secrets.
    let logs = service.logs();
    assert!(logs.contains("certificate served over SDS"), "{logs}");
    assert!(logs.contains("DNS-01 TXT records added"));
    assert!(logs.contains("renewal lock released"));
    assert_absent(&logs, &token, "Consul token");
    assert_absent(&logs, &knot.tsig().secret_base64, "TSIG secret");
    assert_absent(
        &logs,
        &pem_body(stored.key_pem().expose()),
        "first private key",
    );
    assert_absent(
        &logs,
        &pem_body(renewed.key_pem().expose()),
        "second private key",
    );
    let encryption_key = std::fs::read_to_string(&key_file).expect("key file");
    assert_absent(&logs, &encryption_key, "encryption key");
}

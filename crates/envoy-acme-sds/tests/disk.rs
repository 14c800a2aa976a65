//! Disk storage: the store specification (see `store_suite`) against a
//! directory, and the binary with disk storage, one instance:
//! - private keys 0600 (sealed) in 0700 directories;
//! - `renew` + SIGHUP orders a new certificate at once;
//! - a DNS update the server refuses backs off, and the old certificate
//!   stays in service;
//! - a wrong encryption key is a clear error, never garbage served.

mod common;
#[macro_use]
mod store_suite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::service::{SdsService, binary};
use common::{ZONE, acme_ca_file, mode, start_pebble, tsig_key_file};
use envoy_acme_sds::store::codec::{
    CertificatePart, account_item, order_history_item, parse_certificate_item, renewal_request_item,
};
use envoy_acme_sds::store::disk::DiskStore;
use envoy_acme_sds::store::encryption::KeyEncryption;
use envoy_acme_sds::store::{AccountId, CertificateStore, SecretName};
use test_support::{Knot, PebbleOptions, eventually};

/// A store directory in a temporary directory of its own.
struct Directory {
    _temp: tempfile::TempDir,
    root: PathBuf,
}

async fn directory() -> Directory {
    let temp = tempfile::tempdir().expect("tempdir");
    let root = temp.path().join("store");
    Directory { _temp: temp, root }
}

impl Directory {
    fn open(&self, encryption: Option<Arc<KeyEncryption>>) -> DiskStore {
        DiskStore::open(&self.root, encryption).expect("open")
    }

    /// The file an item is in: a certificate's items in the generation in service.
    fn path(&self, item: &str) -> PathBuf {
        let store = self.open(None);
        match parse_certificate_item(item) {
            Some((name, part)) => store.certificate_path(&name, part),
            None => store.item_path(item),
        }
    }
}

#[async_trait]
impl store_suite::Location for Directory {
    fn store(&self, encryption: Option<Arc<KeyEncryption>>) -> Arc<dyn CertificateStore> {
        Arc::new(self.open(encryption))
    }

    async fn read_raw(&self, item: &str) -> Vec<u8> {
        std::fs::read(self.path(item)).expect("read")
    }

    async fn write_raw(&self, item: &str, bytes: &[u8]) {
        std::fs::write(self.path(item), bytes).expect("write");
    }

    async fn remove_raw(&self, item: &str) {
        std::fs::remove_file(self.path(item)).expect("rm");
    }
}

store_specification!(directory);

#[tokio::test]
async fn items_are_private_files_in_private_directories() {
    let dir = directory().await;
    store_suite::every_kind_of_item_round_trips(&dir).await;
    let store = dir.open(None);
    let name = SecretName::new(store_suite::ROUND_TRIP_SECRET).expect("name");
    let id = AccountId::for_directory(store_suite::ROUND_TRIP_DIRECTORY);

    for sub in ["", "certificates", "orders", "accounts", "renewals"] {
        assert_eq!(mode(&dir.root.join(sub)), 0o700, "directory {sub:?}");
    }
    let cert_dir = store.certificate_dir(&name);
    assert!(cert_dir.ends_with("certificates/%2A.example.com"));
    assert_eq!(mode(&cert_dir), 0o700);
    for part in CertificatePart::ALL {
        let path = store.certificate_path(&name, part);
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        assert_eq!(mode(path.parent().expect("generation")), 0o700);
    }
    assert_eq!(mode(&store.item_path(&account_item(&id))), 0o600);
    assert_eq!(mode(&store.item_path(&order_history_item(&name))), 0o600);
    assert_eq!(mode(&store.item_path(&renewal_request_item(&name))), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.root.join("certificates"))
        .expect("read_dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_storage_renews_on_request_and_keeps_the_old_certificate_on_failure() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    // No authorization reuse: a renewal must prove the names again, so a
    // refused DNS update does fail it.
    let pebble = start_pebble(
        &knot,
        PebbleOptions {
            extra_env: vec![("PEBBLE_AUTHZREUSE".to_owned(), "0".to_owned())],
            ..PebbleOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let key_file = dir.path().join("encryption.key");
    std::fs::write(&key_file, random_hex(32)).expect("key file");
    let good_tsig = tsig_key_file(&knot, dir.path());
    let wrong_tsig = dir.path().join("wrong-tsig.key");
    std::fs::write(
        &wrong_tsig,
        format!(
            "{}:{}:d3JvbmcgdHNpZyBzZWNyZXQgb2YgMzIgYnl0ZXMhIQ==\n",
            knot.tsig().name,
            knot.tsig().algorithm
        ),
    )
    .expect("wrong key file");
    let path = |p: &std::path::Path| p.display().to_string();
    let storage = format!("disk:{}", path(&store_dir));
    let args = |tsig: &std::path::Path, encryption_key: &std::path::Path| -> Vec<String> {
        [
            "--acme-directory",
            &pebble.directory_url(),
            "--acme-ca-file",
            &path(&acme_ca_file(&pebble, dir.path())),
            "--cert",
            "example.test,*.example.test",
            "--rfc2136-server",
            &knot.addr().to_string(),
            "--tsig-key-file",
            &path(tsig),
            "--storage",
            &storage,
            "--encryption-key-file",
            &path(encryption_key),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let ok = "envoy_acme_sds_renewals_total{secret=\"example.test\",result=\"ok\"}";
    let failed = "envoy_acme_sds_renewals_total{secret=\"example.test\",result=\"failed\"}";

    // Issued and stored privately.
    let mut first = SdsService::start("first", dir.path(), &args(&good_tsig, &key_file));
    first.wait_ready(Duration::from_secs(60)).await;
    let certificate_dir = store_dir.join("certificates/example.test");
    let stored_key = certificate_dir.join("current/key");
    for (file, wanted) in [
        (store_dir.clone(), 0o700),
        (store_dir.join("certificates"), 0o700),
        (certificate_dir.clone(), 0o700),
        (certificate_dir.join("current/"), 0o700),
        (stored_key.clone(), 0o600),
        (certificate_dir.join("current/certificate"), 0o600),
        (certificate_dir.join("current/metadata"), 0o600),
        (store_dir.join("orders/example.test.json"), 0o600),
    ] {
        assert_eq!(mode(&file), wanted, "{}", file.display());
    }
    let account = std::fs::read_dir(store_dir.join("accounts"))
        .expect("accounts")
        .next()
        .expect("an account file")
        .expect("entry")
        .path();
    assert_eq!(mode(&account), 0o600);
    let stored = std::fs::read_to_string(&stored_key).expect("stored");
    assert!(!stored.contains("PRIVATE KEY"), "key stored in clear");
    let issued = first.served_serial(ZONE).await.expect("served");
    assert_eq!(first.metric("envoy_acme_sds_lock_holder").await, 1.0);

    // `renew` records the request; SIGHUP makes the service act on it now.
    let output = std::process::Command::new(binary())
        .args(["renew", "--cert", ZONE, "--storage", &storage])
        .output()
        .expect("renew runs");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("SIGHUP"));
    first.signal("HUP");
    let renewed = eventually(
        "a new certificate is served",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { first.served_serial(ZONE).await.filter(|s| *s != issued) },
    )
    .await
    .expect("renewed");
    assert_eq!(first.metric(ok).await, 2.0);
    // Both issuances were timed, step by step, and no challenge record
    // failed to go.
    assert_eq!(
        first
            .metric("envoy_acme_sds_issuance_duration_seconds_count")
            .await,
        2.0
    );
    for step in [
        "order_created",
        "validated",
        "finalized",
        "stored",
        "published",
    ] {
        let count =
            format!("envoy_acme_sds_issuance_step_duration_seconds_count{{step=\"{step}\"}}");
        assert_eq!(first.metric(&count).await, 2.0, "{count}");
    }
    assert_eq!(
        first
            .metric("envoy_acme_sds_challenge_withdrawal_failures_total")
            .await,
        0.0
    );
    first.signal("TERM");
    eventually(
        "exit on SIGTERM",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let running = first.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await
    .expect("exited");

    // The DNS server refuses our updates: the renewal fails and backs off,
    // the stored certificate stays served.
    let output = std::process::Command::new(binary())
        .args(["renew", "--cert", ZONE, "--storage", &storage])
        .output()
        .expect("renew runs");
    assert!(output.status.success(), "{output:?}");
    let mut refused = SdsService::start("refused", dir.path(), &args(&wrong_tsig, &key_file));
    refused.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        refused.served_serial(ZONE).await.as_deref(),
        Some(renewed.as_str())
    );
    eventually(
        "the renewal fails",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { (refused.metric(failed).await >= 1.0).then_some(()) },
    )
    .await
    .expect("failure counted");
    assert_eq!(refused.metric(ok).await, 0.0);
    assert_eq!(
        refused.served_serial(ZONE).await.as_deref(),
        Some(renewed.as_str())
    );
    let logs = refused.logs();
    assert!(logs.contains("TSIG error BadSig"), "{logs}");
    assert!(
        logs.contains("the current certificate stays in service"),
        "{logs}"
    );
    assert!(logs.contains("retry_at"), "{logs}");
    refused.kill();

    // Another encryption key: reported as such, nothing served, nothing ordered.
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, random_hex(32)).expect("key file");
    let before = std::fs::read(&stored_key).expect("stored");
    let mut wrong_key = SdsService::start("wrong-key", dir.path(), &args(&good_tsig, &other_key));
    eventually(
        "the wrong key is reported",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let logs = wrong_key.logs();
            async move { logs.contains("wrong encryption key").then_some(()) }
        },
    )
    .await
    .expect("reported");
    let readiness = wrong_key.admin("/readyz").await.expect("admin answers");
    assert_eq!(readiness.status, 503, "{}", readiness.body);
    assert!(
        readiness.body.contains("example.test"),
        "{}",
        readiness.body
    );
    assert_eq!(wrong_key.metric(ok).await, 0.0);
    assert!(wrong_key.is_running());
    assert_eq!(std::fs::read(&stored_key).expect("stored"), before);
}

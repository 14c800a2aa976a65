//! Private keys at rest in Consul KV, with the real binary, Consul, pebble
//! and knot: no start without a key unless plaintext is allowed out loud,
//! plaintext items sealed when a key is given, and a key rotation through
//! `--previous-encryption-key-file`. Each check reads the raw KV value, so
//! what is proven is what anyone with KV read on the prefix would see.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::service::{SdsService, binary};
use common::{ZONE, acme_ca_file, start_pebble, tsig_key_file};
use consul_client::{Address, Client, ClientConfig, QueryOptions};
use envoy_acme_sds::store::SecretName;
use envoy_acme_sds::store::codec::{CertificatePart, certificate_item};
use envoy_acme_sds::store::encryption::KeyEncryption;
use test_support::{ConsulAgent, Knot, Pebble, PebbleOptions, eventually};

const PREFIX: &str = "keys-at-rest";

#[test]
fn consul_storage_without_a_key_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(binary())
        .args([
            "--storage",
            "consul:anywhere",
            // Never contacted: the configuration is refused first.
            "--consul-addr",
            "http://127.0.0.1:9",
            "--cert",
            ZONE,
            "--challenge",
            "http-01",
            "--http01-listen",
            "127.0.0.1:0",
            "--sds-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("the binary runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("started without a key:\n{stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--encryption-key-file"), "{stderr}");
    assert!(stderr.contains("--allow-plaintext-keys"), "{stderr}");
    assert!(stderr.contains("KV read on the prefix"), "{stderr}");
}

/// Knot, pebble, Consul and the flags every run of the service shares.
struct Setup {
    _knot: Knot,
    _pebble: Pebble,
    _consul: ConsulAgent,
    dir: tempfile::TempDir,
    client: Client,
    args: Vec<String>,
}

impl Setup {
    async fn start() -> Self {
        let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
        let pebble = start_pebble(&knot, PebbleOptions::default()).await;
        let consul = ConsulAgent::start().await.expect("consul starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |p: PathBuf| p.display().to_string();
        let args = [
            "--acme-directory",
            &pebble.directory_url(),
            "--acme-ca-file",
            &path(acme_ca_file(&pebble, dir.path())),
            "--email",
            "hostmaster@example.test",
            "--cert",
            ZONE,
            "--challenge",
            "dns-01",
            "--rfc2136-server",
            &knot.addr().to_string(),
            "--tsig-key-file",
            &path(tsig_key_file(&knot, dir.path())),
            "--storage",
            &format!("consul:{PREFIX}"),
            "--consul-addr",
            &consul.http_url(),
            "--lock-delay",
            "0s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let client = Client::new(ClientConfig::new(
            consul.http_url().parse::<Address>().expect("address"),
        ))
        .expect("client");
        Self {
            _knot: knot,
            _pebble: pebble,
            _consul: consul,
            dir,
            client,
            args,
        }
    }

    /// A key file of 32 random bytes, in hex as an operator would make it.
    fn key_file(&self, name: &str) -> (PathBuf, String) {
        let bytes: [u8; 32] = rand::random();
        let path = self.dir.path().join(name);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, format!("{hex}\n")).expect("key file");
        let key_id = KeyEncryption::from_bytes(&bytes)
            .expect("key")
            .key_id()
            .to_owned();
        (path, key_id)
    }

    /// Runs the service with the shared flags and `extra`, until ready.
    async fn run(&self, name: &str, extra: &[&str]) -> SdsService {
        let mut args = self.args.clone();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut service = SdsService::start(name, self.dir.path(), &args);
        service.wait_ready(Duration::from_secs(60)).await;
        service
    }

    /// The raw value of `item` in Consul KV.
    async fn raw(&self, item: &str) -> String {
        let pair = self
            .client
            .kv_get(&format!("{PREFIX}/{item}"), &QueryOptions::default())
            .await
            .expect("kv")
            .value
            .unwrap_or_else(|| panic!("{item} is stored"));
        String::from_utf8_lossy(&pair.value.unwrap_or_default()).into_owned()
    }

    /// Every account item under the prefix (one per ACME directory).
    async fn account_items(&self) -> Vec<String> {
        self.client
            .kv_list(&format!("{PREFIX}/accounts/"), &QueryOptions::default())
            .await
            .expect("kv")
            .value
            .into_iter()
            .filter_map(|pair| {
                pair.key
                    .strip_prefix(&format!("{PREFIX}/"))
                    .map(str::to_owned)
            })
            .collect()
    }
}

fn key_item() -> String {
    certificate_item(&SecretName::new(ZONE).expect("name"), CertificatePart::Key)
}

/// The key id of a sealed private key item; `None` when not sealed.
fn sealed_key_id(raw: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    value["key_id"].as_str().map(str::to_owned)
}

/// The key id sealing an account item's credentials; `None` when in plaintext.
fn account_key_id(raw: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(raw).expect("account JSON");
    value["credentials"]["sealed"]["key_id"]
        .as_str()
        .map(str::to_owned)
}

/// SIGTERM, then waits for the process to release its lock and exit.
async fn stop(mut service: SdsService) {
    service.signal("TERM");
    let stopped = eventually(
        "the service exits on SIGTERM",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let running = service.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await
    .ok();
    assert!(stopped.is_some(), "still running:\n{}", service.logs());
}

async fn keys_at_rest_summary(service: &SdsService) -> Option<String> {
    service.debug_certificates().await["keys_at_rest"]["summary"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_for_summary(service: &SdsService, wanted: &str) {
    let seen = eventually(
        "the status page shows how keys lie at rest",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { keys_at_rest_summary(service).await.filter(|s| s == wanted) },
    )
    .await
    .ok();
    assert!(
        seen.is_some(),
        "status says {:?}, not {wanted:?}",
        keys_at_rest_summary(service).await
    );
}

const RESEALED: &str = "envoy_acme_sds_keys_resealed_total";
const ORDERED: &str = "envoy_acme_sds_renewals_total{secret=\"example.test\",result=\"ok\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_keys_are_sealed_at_the_first_start_with_a_key() {
    let setup = Setup::start().await;

    let plaintext = setup.run("plaintext", &["--allow-plaintext-keys"]).await;
    assert!(
        plaintext
            .logs()
            .contains("--allow-plaintext-keys: private keys are stored in plaintext"),
        "no warning at start:\n{}",
        plaintext.logs()
    );
    assert!(
        setup
            .raw(&key_item())
            .await
            .starts_with("-----BEGIN PRIVATE KEY-----"),
        "the run allowed to store plaintext did"
    );
    let accounts = setup.account_items().await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(account_key_id(&setup.raw(&accounts[0]).await), None);
    wait_for_summary(&plaintext, "2 of 2 in plaintext").await;
    let serial = plaintext.served_serial(ZONE).await.expect("served");
    stop(plaintext).await;

    let (key_file, key_id) = setup.key_file("current.key");
    let key_arg = key_file.display().to_string();
    let sealed = setup
        .run("sealed", &["--encryption-key-file", &key_arg])
        .await;
    let resealed = eventually(
        "the stored key is resealed",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { sealed_key_id(&setup.raw(&key_item()).await) },
    )
    .await
    .ok();
    assert_eq!(resealed.as_deref(), Some(key_id.as_str()));
    let raw = setup.raw(&key_item()).await;
    assert!(!raw.contains("PRIVATE KEY"), "{raw}");
    assert_eq!(
        account_key_id(&setup.raw(&accounts[0]).await).as_deref(),
        Some(key_id.as_str())
    );
    wait_for_summary(&sealed, "all 2 sealed").await;
    assert_eq!(sealed.metric(RESEALED).await, 2.0);
    assert!(sealed.logs().contains("resealed"), "{}", sealed.logs());
    // Resealed, not replaced: the same certificate, no new order.
    assert_eq!(
        sealed.served_serial(ZONE).await.as_deref(),
        Some(serial.as_str())
    );
    assert_eq!(sealed.metric(ORDERED).await, 0.0);
    stop(sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reseals_with_the_new_key_which_then_reads_alone() {
    let setup = Setup::start().await;
    let (key_a, id_a) = setup.key_file("a.key");
    let (key_b, id_b) = setup.key_file("b.key");
    let (a, b) = (path_arg(&key_a), path_arg(&key_b));

    let first = setup.run("key-a", &["--encryption-key-file", &a]).await;
    assert_eq!(
        sealed_key_id(&setup.raw(&key_item()).await).as_deref(),
        Some(id_a.as_str())
    );
    let serial = first.served_serial(ZONE).await.expect("served");
    wait_for_summary(&first, "all 2 sealed").await;
    stop(first).await;

    let rotating = setup
        .run(
            "key-b-previous-a",
            &[
                "--encryption-key-file",
                &b,
                "--previous-encryption-key-file",
                &a,
            ],
        )
        .await;
    let resealed = eventually(
        "the stored key is resealed with key B",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { sealed_key_id(&setup.raw(&key_item()).await).filter(|id| *id == id_b) },
    )
    .await
    .ok();
    assert!(resealed.is_some(), "{}", rotating.logs());
    let accounts = setup.account_items().await;
    assert_eq!(
        account_key_id(&setup.raw(&accounts[0]).await).as_deref(),
        Some(id_b.as_str())
    );
    wait_for_summary(&rotating, "all 2 sealed").await;
    assert_eq!(rotating.metric(RESEALED).await, 2.0);
    assert_eq!(
        rotating.served_serial(ZONE).await.as_deref(),
        Some(serial.as_str())
    );
    stop(rotating).await;

    // Key A is gone: key B alone reads what is stored, so nothing is ordered.
    let after = setup.run("key-b", &["--encryption-key-file", &b]).await;
    assert_eq!(
        after.served_serial(ZONE).await.as_deref(),
        Some(serial.as_str())
    );
    assert_eq!(after.metric(ORDERED).await, 0.0);
    assert_eq!(after.metric(RESEALED).await, 0.0);
    assert!(!after.logs().contains("unusable"), "{}", after.logs());
    stop(after).await;
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

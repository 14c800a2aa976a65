//! No log line, at any level and from any crate, carries the TSIG secret or
//! a private key, through a failed and a successful issuance.
//!
//! Alone in its test binary: the capturing subscriber is thread-local, and
//! tracing caches per-callsite interest globally, so concurrent tests
//! without a subscriber could make it miss events.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{
    ZONE, account_file, acme_config, apex_and_wildcard, dns01_solver, start_pebble, tsig_key,
};
use envoy_acme_sds::acme::AcmeClient;
use envoy_acme_sds::challenge::dns01::TsigKey;
use envoy_acme_sds::manager::{CertManager, Outcome};
use envoy_acme_sds::store::CertificateStore;
use envoy_acme_sds::store::disk::DiskStore;
use test_support::{Knot, PebbleOptions};
use time::OffsetDateTime;

/// Collects everything a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Asserts that no 24-character window of `secret` occurs in `logs`, so a
/// secret sliced or embedded in a longer string is caught too.
fn assert_absent(logs: &str, secret: &str, what: &str) {
    assert!(secret.len() >= 24, "{what} too short to check");
    for start in 0..=secret.len() - 24 {
        assert!(
            !logs.contains(&secret[start..start + 24]),
            "{what} (or part of it) appears in the logs"
        );
    }
}

#[tokio::test]
async fn no_log_line_carries_the_tsig_secret_or_a_private_key() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));

    // Everything at TRACE, hyper, rustls, h2 and hickory included. The
    // runtime is single-threaded, so the thread-local subscriber sees all tasks.
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);

    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    // First with a key knot does not know: the failure and its error chain are logged.
    let tsig = knot.tsig();
    let wrong_secret = "d3JvbmcgdHNpZyBzZWNyZXQgb2YgMzIgYnl0ZXMhIQ==";
    let wrong_key = TsigKey::new(&tsig.name, &tsig.algorithm, wrong_secret).expect("key");
    let mut failing = CertManager::new(
        apex_and_wildcard(),
        Arc::clone(&acme),
        dns01_solver(&knot, wrong_key),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );
    let outcome = failing.reconcile(OffsetDateTime::now_utc()).await;
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");

    let mut manager = CertManager::new(
        apex_and_wildcard(),
        acme,
        dns01_solver(&knot, tsig_key(&knot)),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );
    let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
    assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
    drop(guard);

    let logs = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf8 logs");
    // The capture works and covers both paths...
    assert!(
        logs.contains("certificate renewal failed"),
        "failure not captured"
    );
    assert!(
        logs.contains("DNS-01 TXT records added"),
        "update not captured"
    );
    assert!(logs.contains("certificate issued"), "issuance not captured");
    assert!(logs.contains("TRACE"), "not capturing at TRACE");

    // ...and holds neither TSIG secret...
    assert_absent(&logs, &tsig.secret_base64, "TSIG secret");
    assert_absent(&logs, wrong_secret, "wrong TSIG secret");

    // ...nor the account key...
    let account: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(account_file(&store, &pebble)).expect("account"),
    )
    .expect("json");
    let credentials: serde_json::Value = serde_json::from_str(
        account["credentials"]["plain"]
            .as_str()
            .expect("plain credentials"),
    )
    .expect("credentials json");
    let account_key = credentials["key_pkcs8"].as_str().expect("account key");
    assert_absent(&logs, account_key, "account key");

    // ...nor the certificate's private key.
    let bundle = manager.current().expect("bundle");
    let key_base64: String = bundle
        .key_pem()
        .expose()
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert_absent(&logs, &key_base64, "certificate private key");
}

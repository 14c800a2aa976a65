//! End-to-end issuance against a real pebble CA, with DNS-01 records
//! published in a real knot server through TSIG-signed RFC 2136 updates.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use common::{
    ZONE, account_file, acme_config, apex_and_wildcard, dns01_solver, mode, names, start_pebble,
    tsig_key, verify_chain,
};
use envoy_acme_sds::acme::AcmeClient;
use envoy_acme_sds::certificate::{CertificateBundle, IssuanceFacts};
use envoy_acme_sds::challenge::dns01::TsigKey;
use envoy_acme_sds::challenge::exec::{ExecHookConfig, ExecHookSolver};
use envoy_acme_sds::challenge::http01::{Http01Server, Http01Solver, MemoryTokenStore, TokenStore};
use envoy_acme_sds::domain::NameSet;
use envoy_acme_sds::keys::KeyType;
use envoy_acme_sds::manager::{CertManager, CertificateSpec, ManagerError, Outcome};
use envoy_acme_sds::policy::{OrderHistory, OrderOutcome, default_renewal_time};
use envoy_acme_sds::secret::Secret;
use envoy_acme_sds::store::codec::CertificatePart;
use envoy_acme_sds::store::disk::DiskStore;
use envoy_acme_sds::store::{
    AccountId, CertificateStore, LoadedRoutedHosts, RenewalRequest, RoutedHostsRecord, SecretName,
    StoreError, StoredAccount,
};
use envoy_acme_sds::timings::IssuanceStep;
use test_support::{Knot, PebbleOptions};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn dns01_apex_and_wildcard_through_knot() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path().join("store"), None).expect("store"));
    let config = acme_config(&pebble);
    let withdrawals = config.withdrawals.clone();
    let acme = Arc::new(
        AcmeClient::connect(config, store.as_ref())
            .await
            .expect("account"),
    );
    let mut manager = CertManager::new(
        apex_and_wildcard(),
        Arc::clone(&acme),
        dns01_solver(&knot, tsig_key(&knot)),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );
    let mut published = manager.subscribe();
    assert!(published.borrow().is_none());

    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let outcome = manager.reconcile(now).await;
    let elapsed = started.elapsed();
    println!("issuance of apex + wildcard via DNS-01 (pebble + knot): {elapsed:?}");
    let Outcome::Issued {
        serial,
        next_check,
        timings,
    } = &outcome
    else {
        panic!("expected a certificate, got {outcome:?}");
    };
    // Every step of a DNS-01 issuance is timed, and the laps fit in the
    // wall time measured around them.
    println!("issuance steps: {timings}");
    for step in [
        IssuanceStep::HistoryRecorded,
        IssuanceStep::OrderCreated,
        IssuanceStep::AuthorizationsFetched,
        IssuanceStep::ChallengesPublished,
        IssuanceStep::ChallengesVisible,
        IssuanceStep::ChallengesReady,
        IssuanceStep::Validated,
        IssuanceStep::KeyGenerated,
        IssuanceStep::Finalized,
        IssuanceStep::CertificateDownloaded,
        IssuanceStep::Checked,
        IssuanceStep::Stored,
        IssuanceStep::Published,
        IssuanceStep::HistorySettled,
    ] {
        assert!(timings.get(step).is_some(), "{step} not timed: {timings}");
    }
    assert!(timings.total() <= elapsed, "{timings} vs {elapsed:?}");
    // Whether the CA offers ARI is learnt within half a day of issuance.
    assert!(
        *next_check <= now + time::Duration::hours(12),
        "{next_check}"
    );

    published.changed().await.expect("published");
    let bundle = published.borrow().clone().expect("bundle published");
    assert_eq!(&bundle.metadata().serial, serial);
    assert_eq!(
        names(bundle.metadata()),
        vec!["*.example.test", "example.test"]
    );
    let root = pebble.issuing_root_pem().await.expect("pebble root");
    verify_chain(&bundle, &root, "example.test");
    verify_chain(&bundle, &root, "www.example.test");

    // Stored, 0600 in 0700 directories, and read back identical.
    let secret_name = SecretName::new("example.test").expect("name");
    for part in CertificatePart::ALL {
        let item = store.certificate_path(&secret_name, part);
        assert_eq!(mode(&item), 0o600, "{}", item.display());
        assert_eq!(mode(item.parent().expect("generation")), 0o700);
    }
    assert_eq!(mode(&store.certificate_dir(&secret_name)), 0o700);
    assert_eq!(mode(store.root()), 0o700);
    assert_eq!(mode(&account_file(&store, &pebble)), 0o600);
    let stored = store
        .load_certificate(&SecretName::new("example.test").expect("name"))
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(stored.metadata(), bundle.metadata());

    // Nothing to do right after issuance: no second order.
    let again = manager.reconcile(OffsetDateTime::now_utc()).await;
    // pebble offers no ARI, so the lifetime rule schedules the renewal.
    let Outcome::Unchanged { next_check, .. } = again else {
        panic!("expected no order right after issuance, got {again:?}");
    };
    assert_eq!(next_check, default_renewal_time(bundle.metadata()));
    let history = store
        .load_order_history(&SecretName::new("example.test").expect("name"))
        .await
        .expect("history");
    assert_eq!(history.len(), 1);

    // The challenge records went after the certificate was out, on a
    // tracked task: once it is done, knot serves none of them.
    withdrawals.close();
    tokio::time::timeout(std::time::Duration::from_secs(30), withdrawals.wait())
        .await
        .expect("withdrawal finishes");
    assert_eq!(
        txt_values(knot.addr(), "_acme-challenge.example.test.").await,
        Vec::<String>::new()
    );
}

/// The TXT values `server` serves under `name`, asked over TCP.
async fn txt_values(server: std::net::SocketAddr, name: &str) -> Vec<String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::TXT,
    ));
    let request = query.to_vec().expect("encodes");
    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .expect("connects");
    let length = u16::try_from(request.len()).expect("small");
    stream
        .write_all(&length.to_be_bytes())
        .await
        .expect("writes");
    stream.write_all(&request).await.expect("writes");
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.expect("reads");
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut response).await.expect("reads");
    Message::from_vec(&response)
        .expect("decodes")
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn http01_answered_by_our_listener() {
    // pebble resolves the name through knot to 127.0.0.1 and connects to the
    // port our listener bound.
    let knot = Knot::start(ZONE, &["www A 127.0.0.1"])
        .await
        .expect("knot starts");
    let tokens: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let server = Http01Server::bind("127.0.0.1:0".parse().expect("addr"), Arc::clone(&tokens))
        .await
        .expect("bind");
    let port = server.local_addr().expect("addr").port();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    let pebble = start_pebble(
        &knot,
        PebbleOptions {
            http01_port: Some(port),
            ..PebbleOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let spec =
        CertificateSpec::new(NameSet::parse(&["www.example.test"]).expect("names")).expect("spec");
    let mut manager = CertManager::new(
        spec,
        acme,
        Arc::new(Http01Solver::new(Arc::clone(&tokens))),
        store,
    );

    let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
    assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
    let bundle = manager.current().expect("published");
    assert_eq!(names(bundle.metadata()), vec!["www.example.test"]);
    verify_chain(
        &bundle,
        &pebble.issuing_root_pem().await.expect("root"),
        "www.example.test",
    );

    shutdown.cancel();
    serving.await.expect("listener task");
}

#[tokio::test]
async fn bad_nonces_are_retried_until_the_order_succeeds() {
    // At 60 % rejection a ~15-request order survives the ACME library's own
    // three attempts per request about 3 % of the time; it needs our retries.
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(
        &knot,
        PebbleOptions {
            nonce_reject_percent: Some(60),
            ..PebbleOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account despite bad nonces"),
    );
    let mut manager = CertManager::new(
        apex_and_wildcard(),
        acme,
        dns01_solver(&knot, tsig_key(&knot)),
        store,
    );
    let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
    assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
}

/// A certificate for the apex and wildcard, issued 80 of its 90 days ago by a
/// throw-away CA: valid, but due for renewal.
fn due_certificate() -> CertificateBundle {
    due_certificate_for(&[ZONE, "*.example.test"])
}

fn due_certificate_for(names: &[&str]) -> CertificateBundle {
    certificate_for(names, 80, 10)
}

/// A certificate for `names` issued `days_ago` by a throw-away CA, expiring
/// in `days_left`.
fn certificate_for(names: &[&str], days_ago: i64, days_left: i64) -> CertificateBundle {
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .expect("now");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.not_before = now - time::Duration::days(days_ago);
    params.not_after = now + time::Duration::days(days_left);
    let leaf = params.signed_by(&key, &issuer).expect("leaf");
    CertificateBundle::from_issued(
        format!("{}{}", leaf.pem(), ca.pem()),
        Secret::new(key.serialize_pem()),
        now - time::Duration::days(days_ago),
        IssuanceFacts {
            key_type: Some(KeyType::EcdsaP256),
            profile: None,
        },
    )
    .expect("bundle")
}

/// A CA that refuses every order for `www.example.test`: pebble's HTTP-01
/// validation finds nothing listening, so the authorization and the order
/// end invalid with an ACME error document.
struct RefusingCa {
    _knot: Knot,
    pebble: test_support::Pebble,
    _dir: tempfile::TempDir,
    store: Arc<DiskStore>,
    secret_name: SecretName,
}

impl RefusingCa {
    async fn start() -> Self {
        let knot = Knot::start(ZONE, &["www A 127.0.0.1"])
            .await
            .expect("knot starts");
        let pebble = start_pebble(
            &knot,
            PebbleOptions {
                // Free, and nothing binds it: every validation is refused.
                http01_port: Some(test_support::free_port()),
                ..PebbleOptions::default()
            },
        )
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
        Self {
            _knot: knot,
            pebble,
            _dir: dir,
            store,
            secret_name: SecretName::new("www.example.test").expect("name"),
        }
    }

    fn spec() -> CertificateSpec {
        CertificateSpec::new(NameSet::parse(&["www.example.test"]).expect("names")).expect("spec")
    }

    /// A manager for the certificate, answering HTTP-01 from memory.
    async fn manager(&self) -> CertManager {
        let acme = Arc::new(
            AcmeClient::connect(acme_config(&self.pebble), self.store.as_ref())
                .await
                .expect("account"),
        );
        let tokens: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
        CertManager::new(
            Self::spec(),
            acme,
            Arc::new(Http01Solver::new(tokens)),
            Arc::clone(&self.store) as Arc<dyn CertificateStore>,
        )
    }
}

/// pebble itself refuses: its HTTP-01 validation finds nothing listening, so
/// the authorization and the order end invalid with an ACME error document.
#[tokio::test]
async fn ca_refusing_the_order_backs_off_and_keeps_the_old_certificate() {
    let ca = RefusingCa::start().await;
    let old = due_certificate_for(&["www.example.test"]);
    ca.store
        .save_certificate(&ca.secret_name, &old)
        .await
        .expect("seed");
    let mut manager = ca.manager().await;

    let message = first_failure_keeps(&mut manager, ca.store.as_ref(), &ca.secret_name, &old).await;
    // pebble's own problem document, passed on: type and detail.
    assert!(
        message.contains("urn:ietf:params:acme:error:connection"),
        "{message}"
    );
    assert!(message.contains("www.example.test"), "{message}");
}

/// Runs the first renewal attempt, expected to fail at the CA: it backs off
/// 1 minute (± 10 % jitter) and `old` stays published and stored. Returns
/// the error's text.
async fn first_failure_keeps(
    manager: &mut CertManager,
    store: &DiskStore,
    secret_name: &SecretName,
    old: &CertificateBundle,
) -> String {
    let now = OffsetDateTime::now_utc();
    let outcome = manager.reconcile(now).await;
    let Outcome::Failed {
        error,
        consecutive_failures,
        retry_at,
    } = outcome
    else {
        panic!("expected a failure, got {outcome:?}");
    };
    let message = error.to_string();
    assert!(matches!(error, ManagerError::Acme(_)), "{message}");
    assert_eq!(consecutive_failures, 1);
    let delay = retry_at - now;
    assert!(
        (time::Duration::seconds(54)..=time::Duration::seconds(66)).contains(&delay),
        "retry in {delay}"
    );

    let serving = manager.current().expect("old certificate published");
    assert_eq!(serving.metadata(), old.metadata());
    let on_disk = store
        .load_certificate(secret_name)
        .await
        .expect("load")
        .expect("still stored");
    assert_eq!(on_disk.metadata(), old.metadata());
    assert_eq!(on_disk.key_pem(), old.key_pem());
    // No certificate came of it: the order counts as failed, not against
    // the weekly duplicate-certificate budget.
    let history = store
        .load_order_history(secret_name)
        .await
        .expect("history");
    assert_eq!(history.outcomes(), vec![OrderOutcome::Failed]);
    message
}

#[tokio::test]
async fn refused_dns_update_backs_off_and_keeps_the_old_certificate() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
    let secret_name = SecretName::new(ZONE).expect("name");
    let old = due_certificate();
    store
        .save_certificate(&secret_name, &old)
        .await
        .expect("seed");

    let tsig = knot.tsig();
    let wrong_key = TsigKey::new(
        &tsig.name,
        &tsig.algorithm,
        "d3JvbmcgdHNpZyBzZWNyZXQgb2YgMzIgYnl0ZXMhIQ==",
    )
    .expect("well-formed key");
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let mut manager = CertManager::new(
        apex_and_wildcard(),
        acme,
        dns01_solver(&knot, wrong_key),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );

    let message = first_failure_keeps(&mut manager, store.as_ref(), &secret_name, &old).await;
    assert!(message.contains("RFC 2136"), "{message}");
    assert!(message.contains("TSIG error BadSig"), "{message}");

    // The next failure backs off further: 10 minutes ± 10 %.
    let now = OffsetDateTime::now_utc();
    let Outcome::Failed {
        consecutive_failures,
        retry_at,
        ..
    } = manager.reconcile(now).await
    else {
        panic!("expected a second failure");
    };
    assert_eq!(consecutive_failures, 2);
    let delay = retry_at - now;
    assert!(
        (time::Duration::seconds(540)..=time::Duration::seconds(660)).contains(&delay),
        "retry in {delay}"
    );
}

#[tokio::test]
async fn sixth_order_in_a_week_is_refused_without_asking_the_ca() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
    let secret_name = SecretName::new(ZONE).expect("name");
    let spec = apex_and_wildcard();
    let now = OffsetDateTime::now_utc();
    let mut history = OrderHistory::default();
    for hours_ago in [100, 80, 60, 40, 20] {
        history.record(
            &spec.names.canonical_key(),
            now - time::Duration::hours(hours_ago),
        );
    }
    store
        .save_order_history(&secret_name, &history)
        .await
        .expect("seed");
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let mut manager = CertManager::new(
        spec,
        acme,
        dns01_solver(&knot, tsig_key(&knot)),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );

    let outcome = manager.reconcile(now).await;
    let Outcome::Failed {
        error, retry_at, ..
    } = outcome
    else {
        panic!("expected a refusal, got {outcome:?}");
    };
    assert!(matches!(error, ManagerError::Budget(_)), "{error}");
    assert!(error.to_string().contains("limit 5"), "{error}");
    assert!(retry_at >= now - time::Duration::hours(100) + time::Duration::days(7));
    assert!(manager.current().is_none());
    let history = store
        .load_order_history(&secret_name)
        .await
        .expect("history");
    assert_eq!(
        history.len(),
        5,
        "no order was recorded, so none was placed"
    );
}

#[tokio::test]
async fn exec_hook_publishes_records_with_knsupdate() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let knsupdate = test_support::tool("knsupdate").expect("knsupdate installed");
    let hook = dir.path().join("hook.sh");
    let mut script = std::fs::File::create(&hook).expect("hook");
    write!(
        script,
        r#"#!/bin/sh
set -e
case "$ACME_ACTION" in present) verb=add ;; cleanup) verb=del ;; *) exit 2 ;; esac
printf 'server {ip} {port}\nzone {zone}\nupdate %s %s. 60 TXT "%s"\nsend\n' \
    "$verb" "$ACME_RECORD_NAME" "$ACME_VALUE" | {knsupdate} -y "$TSIG"
"#,
        ip = knot.addr().ip(),
        port = knot.addr().port(),
        zone = ZONE,
        knsupdate = knsupdate.display(),
    )
    .expect("write hook");
    drop(script);
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    // The hook gets the provider credential from its own environment.
    let mut config = ExecHookConfig::new("/usr/bin/env");
    config.args = vec![
        format!("TSIG={}", knot.tsig().knsupdate_arg()),
        hook.display().to_string(),
    ];
    let solver = Arc::new(ExecHookSolver::new(config));
    let store = Arc::new(DiskStore::open(dir.path().join("store"), None).expect("store"));
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let mut manager = CertManager::new(apex_and_wildcard(), acme, solver, store);
    let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
    assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
    let bundle = manager.current().expect("published");
    assert_eq!(
        names(bundle.metadata()),
        vec!["*.example.test", "example.test"]
    );
}

#[tokio::test]
async fn rsa_certificate_through_the_run_loop() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let mut spec = apex_and_wildcard();
    spec.key_type = KeyType::Rsa2048;
    let manager = CertManager::new(spec, acme, dns01_solver(&knot, tsig_key(&knot)), store);
    let mut published = manager.subscribe();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));

    published
        .changed()
        .await
        .expect("a certificate is published");
    let bundle = published.borrow().clone().expect("bundle");
    assert_eq!(bundle.metadata().key_type, Some(KeyType::Rsa2048));
    assert!(
        bundle
            .key_pem()
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    verify_chain(
        &bundle,
        &pebble.issuing_root_pem().await.expect("root"),
        "example.test",
    );

    shutdown.cancel();
    running.await.expect("run loop ends on shutdown");
}

/// A store whose first `failing_reads` certificate reads fail as a Consul
/// 500 or a timeout would; everything else goes to `inner`.
#[derive(Debug)]
struct FailingReads {
    inner: Arc<DiskStore>,
    failing_reads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl CertificateStore for FailingReads {
    async fn load_certificate(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateBundle>, StoreError> {
        use std::sync::atomic::Ordering;
        let left = self.failing_reads.load(Ordering::SeqCst);
        if left > 0 {
            self.failing_reads.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Io {
                operation: "reading",
                item: format!("certificates/{name}"),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            });
        }
        self.inner.load_certificate(name).await
    }
    async fn save_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<(), StoreError> {
        self.inner.save_certificate(name, bundle).await
    }
    async fn load_order_history(&self, name: &SecretName) -> Result<OrderHistory, StoreError> {
        self.inner.load_order_history(name).await
    }
    async fn save_order_history(
        &self,
        name: &SecretName,
        history: &OrderHistory,
    ) -> Result<(), StoreError> {
        self.inner.save_order_history(name, history).await
    }
    async fn load_account(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        self.inner.load_account(id).await
    }
    async fn save_account(
        &self,
        id: &AccountId,
        account: &StoredAccount,
    ) -> Result<(), StoreError> {
        self.inner.save_account(id, account).await
    }
    async fn load_renewal_request(
        &self,
        name: &SecretName,
    ) -> Result<Option<RenewalRequest>, StoreError> {
        self.inner.load_renewal_request(name).await
    }
    async fn request_renewal(
        &self,
        name: &SecretName,
        request: &RenewalRequest,
    ) -> Result<(), StoreError> {
        self.inner.request_renewal(name, request).await
    }
    async fn load_routed_hosts(
        &self,
        now: time::OffsetDateTime,
    ) -> Result<LoadedRoutedHosts, StoreError> {
        self.inner.load_routed_hosts(now).await
    }
    async fn save_routed_hosts(&self, hosts: &RoutedHostsRecord) -> Result<(), StoreError> {
        self.inner.save_routed_hosts(hosts).await
    }
}

/// A fresh manager (a new lock term, a restart) whose first read of a
/// stored, valid certificate fails must not take it for absent: it backs off
/// and reads again, and orders nothing.
#[tokio::test]
async fn a_failed_read_of_the_stored_certificate_orders_nothing() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(DiskStore::open(dir.path().join("store"), None).expect("store"));
    let secret_name = SecretName::new(ZONE).expect("name");
    let stored = certificate_for(&[ZONE, "*.example.test"], 1, 89);
    disk.save_certificate(&secret_name, &stored)
        .await
        .expect("stored");
    let store = Arc::new(FailingReads {
        inner: Arc::clone(&disk),
        failing_reads: 1.into(),
    });
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), disk.as_ref())
            .await
            .expect("account"),
    );
    let mut manager = CertManager::new(
        apex_and_wildcard(),
        acme,
        dns01_solver(&knot, tsig_key(&knot)),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );

    let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
    let Outcome::Failed { error, .. } = &outcome else {
        panic!("a failed read must not be taken for a missing certificate: {outcome:?}");
    };
    assert!(matches!(error, ManagerError::Load(_)), "{error}");
    let history = disk
        .load_order_history(&secret_name)
        .await
        .expect("history");
    assert_eq!(history.len(), 0, "no order placed");
    let on_disk = disk
        .load_certificate(&secret_name)
        .await
        .expect("load")
        .expect("still stored");
    assert_eq!(on_disk.metadata(), stored.metadata(), "not replaced");

    // The read works again: the stored certificate is served, nothing ordered.
    let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
    assert!(matches!(outcome, Outcome::Unchanged { .. }), "{outcome:?}");
    assert_eq!(
        manager.current().expect("served").metadata(),
        stored.metadata()
    );
    assert_eq!(
        disk.load_order_history(&secret_name)
            .await
            .expect("history")
            .len(),
        0
    );
}

/// Presents nothing and never finishes presenting; records cleanups.
#[derive(Debug, Default)]
struct StuckSolver {
    cleaned_up: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl envoy_acme_sds::challenge::ChallengeSolver for StuckSolver {
    fn kind(&self) -> envoy_acme_sds::challenge::ChallengeKind {
        envoy_acme_sds::challenge::ChallengeKind::Dns01
    }

    async fn present(
        &self,
        _challenges: &[envoy_acme_sds::challenge::Challenge],
    ) -> Result<(), envoy_acme_sds::challenge::SolverError> {
        std::future::pending().await
    }

    async fn cleanup(
        &self,
        challenges: &[envoy_acme_sds::challenge::Challenge],
    ) -> Result<(), envoy_acme_sds::challenge::SolverError> {
        let mut cleaned = self.cleaned_up.lock().expect("lock");
        cleaned.extend(challenges.iter().map(|c| c.identifier().to_string()));
        Ok(())
    }
}

/// An order dropped half-way (the renewal lock lost, SIGTERM: the manager's
/// future is dropped) still withdraws the challenge responses it published.
#[tokio::test]
async fn an_order_dropped_half_way_withdraws_its_challenges() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path().join("store"), None).expect("store"));
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let solver = Arc::new(StuckSolver::default());
    let mut manager = CertManager::new(
        apex_and_wildcard(),
        acme,
        Arc::clone(&solver) as Arc<dyn envoy_acme_sds::challenge::ChallengeSolver>,
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );
    let dropped = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        manager.reconcile(OffsetDateTime::now_utc()),
    )
    .await;
    assert!(dropped.is_err(), "the order cannot finish: {dropped:?}");
    test_support::eventually(
        "the dropped order's challenges withdrawn",
        std::time::Duration::from_secs(2),
        std::time::Duration::from_millis(10),
        || async {
            let cleaned = solver.cleaned_up.lock().expect("lock").clone();
            (cleaned.len() == 2).then_some(cleaned)
        },
    )
    .await
    .expect("cleanup ran for both names");
}

/// Four certificates issued this week, then the CA refuses an order: the
/// refused one issued nothing, so it must not use up the fifth and last
/// slot of the week. The next attempt asks the CA again.
#[tokio::test]
async fn a_refused_order_does_not_use_up_the_weekly_budget() {
    let ca = RefusingCa::start().await;
    let now = OffsetDateTime::now_utc();
    let mut history = OrderHistory::default();
    for hours_ago in [100, 80, 60, 40] {
        history.record(
            &RefusingCa::spec().names.canonical_key(),
            now - time::Duration::hours(hours_ago),
        );
    }
    ca.store
        .save_order_history(&ca.secret_name, &history)
        .await
        .expect("seed");
    let mut manager = ca.manager().await;
    for attempt in 0..2 {
        let outcome = manager
            .reconcile(now + time::Duration::minutes(2 * attempt))
            .await;
        let Outcome::Failed { error, .. } = outcome else {
            panic!("the CA refuses every order: {outcome:?}");
        };
        assert!(
            matches!(error, ManagerError::Acme(_)),
            "attempt {attempt} must reach the CA, got: {error}"
        );
    }
}

/// `renew` run on a machine whose clock is a year ahead of the renewing
/// replica's: one renewal answers the request, and the next reconcile
/// orders nothing (the request names the certificate to replace, so no two
/// clocks are compared).
#[tokio::test]
async fn a_request_stamped_by_a_clock_far_ahead_is_answered_by_one_renewal() {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot, PebbleOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path().join("store"), None).expect("store"));
    let secret_name = SecretName::new(ZONE).expect("name");
    let stored = certificate_for(&[ZONE, "*.example.test"], 1, 89);
    store
        .save_certificate(&secret_name, &stored)
        .await
        .expect("stored");
    let acme = Arc::new(
        AcmeClient::connect(acme_config(&pebble), store.as_ref())
            .await
            .expect("account"),
    );
    let mut manager = CertManager::new(
        apex_and_wildcard(),
        acme,
        dns01_solver(&knot, tsig_key(&knot)),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );
    let now = OffsetDateTime::now_utc();
    let outcome = manager.reconcile(now).await;
    assert!(matches!(outcome, Outcome::Unchanged { .. }), "{outcome:?}");

    store
        .request_renewal(
            &secret_name,
            &RenewalRequest::replacing(stored.metadata(), now + time::Duration::days(365)),
        )
        .await
        .expect("request");
    let outcome = manager.reconcile(now).await;
    let Outcome::Issued { serial, .. } = &outcome else {
        panic!("the request is answered: {outcome:?}");
    };
    assert_ne!(serial, &stored.metadata().serial);

    for minutes in [1, 10] {
        let outcome = manager
            .reconcile(now + time::Duration::minutes(minutes))
            .await;
        assert!(
            matches!(outcome, Outcome::Unchanged { .. }),
            "the request was answered; ordering again spends the budget: {outcome:?}"
        );
    }
    let history = store
        .load_order_history(&secret_name)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "one order for one request");
}

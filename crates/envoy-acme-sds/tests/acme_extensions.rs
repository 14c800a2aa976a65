//! ACME Renewal Information (RFC 9773) and ACME profiles end to end:
//! certificates really ordered from pebble, through an in-process front that
//! adds what pebble 2.4 lacks (`renewalInfo`, reflecting `replaces`, and
//! advertising profiles).
//!
//! The manager is driven pass by pass with `reconcile(now)`: a `now` past the
//! CA's `Retry-After` stands for the wait the run loop would sleep, so the
//! twice-a-day rhythm of ARI checks is exercised without waiting for it.

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::verify_chain;
use envoy_acme_sds::acme::{AcmeClient, AcmeConfig};
use envoy_acme_sds::certificate::CertificateBundle;
use envoy_acme_sds::challenge::http01::{Http01Solver, MemoryTokenStore};
use envoy_acme_sds::domain::NameSet;
use envoy_acme_sds::manager::{CertManager, CertificateSpec, Outcome};
use envoy_acme_sds::store::disk::DiskStore;
use envoy_acme_sds::store::{CertificateStore, SecretName};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;
use test_support::acme_ari::{AriFront, OrderSeen, RenewalInfoAnswer};
use test_support::{Pebble, PebbleOptions};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const NAME: &str = "www.example.test";
/// What the front tells the manager about when to ask again.
const RETRY_AFTER: Duration = Duration::minutes(5);

/// pebble behind the ARI front, and a manager ordering through the front.
struct Setup {
    pebble: Pebble,
    front: AriFront,
    store: Arc<DiskStore>,
    manager: CertManager,
    _dir: TempDir,
}

async fn setup() -> Setup {
    setup_with(&[], None).await
}

/// [`setup`] with a CA advertising `profiles`, and a certificate ordered
/// with `profile`.
async fn setup_with(profiles: &[(&str, &str)], profile: Option<&str>) -> Setup {
    // Validation is not under test here: pebble accepts every challenge,
    // so no DNS or HTTP-01 server is needed. Nor are `badNonce` retries
    // (see acme_pebble.rs): with none, every new-order request seen is one
    // order, and counts are exact.
    let pebble = Pebble::start(PebbleOptions {
        always_valid: true,
        nonce_reject_percent: Some(0),
        ..PebbleOptions::default()
    })
    .await
    .expect("pebble starts");
    let front = AriFront::start(&pebble.directory_url(), pebble.listener_ca_pem())
        .await
        .expect("ARI front starts");
    front.set_retry_after(RETRY_AFTER.whole_seconds().unsigned_abs());
    // Before the account connects: the client reads the directory once.
    front.set_profiles(profiles);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path().join("store"), None).expect("store"));
    // Only the front's root is trusted: a URL of pebble's own would fail,
    // so every request, and every order counted, went through the front.
    let mut config = AcmeConfig::new(front.directory_url());
    config.ca_root_pem = Some(front.ca_pem().to_owned());
    let acme = Arc::new(
        AcmeClient::connect(config, store.as_ref())
            .await
            .expect("account through the front"),
    );
    let mut spec = CertificateSpec::new(NameSet::parse(&[NAME]).expect("names")).expect("spec");
    spec.profile = profile.map(str::to_owned);
    let manager = CertManager::new(
        spec,
        acme,
        Arc::new(Http01Solver::new(Arc::new(MemoryTokenStore::new()))),
        Arc::clone(&store) as Arc<dyn CertificateStore>,
    );
    Setup {
        pebble,
        front,
        store,
        manager,
        _dir: dir,
    }
}

/// RFC 9773 §4.1's certificate identifier, computed here from the leaf
/// rather than by the code under test: base64url(AKI keyIdentifier) "."
/// base64url(DER serial number bytes).
fn ari_id(bundle: &CertificateBundle) -> String {
    let leaf = CertificateDer::pem_slice_iter(bundle.chain_pem().as_bytes())
        .next()
        .expect("a leaf")
        .expect("leaf PEM");
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).expect("leaf DER");
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .expect("pebble's leaves carry an authority key identifier");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(aki.0),
        URL_SAFE_NO_PAD.encode(cert.raw_serial())
    )
}

fn window_ahead() -> RenewalInfoAnswer {
    let now = OffsetDateTime::now_utc();
    RenewalInfoAnswer::Window {
        start: now + Duration::days(30),
        end: now + Duration::days(31),
    }
}

/// Opened an hour ago, closing in seconds: whatever point the manager
/// picks in it has passed by the next due check.
fn window_open_now() -> RenewalInfoAnswer {
    let now = OffsetDateTime::now_utc();
    RenewalInfoAnswer::Window {
        start: now - Duration::hours(1),
        end: now + Duration::seconds(5),
    }
}

fn plain_order() -> OrderSeen {
    OrderSeen {
        replaces: None,
        profile: None,
        status: 201,
        echoed_by_ca: false,
    }
}

fn replacing(id: &str) -> OrderSeen {
    OrderSeen {
        replaces: Some(id.to_owned()),
        profile: None,
        status: 201,
        // pebble accepts the order and drops the unknown field.
        echoed_by_ca: false,
    }
}

async fn issue(manager: &mut CertManager, now: OffsetDateTime) -> Arc<CertificateBundle> {
    let outcome = manager.reconcile(now).await;
    let Outcome::Issued { serial, .. } = &outcome else {
        panic!("expected a certificate, got {outcome:?}");
    };
    let bundle = manager.current().expect("the new certificate is published");
    assert_eq!(&bundle.metadata().serial, serial);
    bundle
}

async fn unchanged(manager: &mut CertManager, now: OffsetDateTime) -> OffsetDateTime {
    let outcome = manager.reconcile(now).await;
    let Outcome::Unchanged { next_check, .. } = outcome else {
        panic!("expected the certificate to stay at {now}, got {outcome:?}");
    };
    next_check
}

#[tokio::test]
async fn window_opening_renews_the_certificate_and_names_the_one_replaced() {
    let Setup {
        pebble,
        front,
        store,
        mut manager,
        _dir,
    } = setup().await;
    let mut published = manager.subscribe();

    let first = issue(&mut manager, OffsetDateTime::now_utc()).await;
    // Later passes are timed from here: pebble's certificates start at
    // their issuance, and one not valid yet would be ordered again.
    let t0 = OffsetDateTime::now_utc();
    let first_id = ari_id(&first);
    assert_eq!(front.orders(), vec![plain_order()]);
    assert!(
        front.renewal_info_queries().is_empty(),
        "a certificate is asked about once it is in service, not while ordered"
    );

    // The next pass asks about the certificate by its own identifier; the
    // front starts with a window two months ahead, so nothing is ordered, and the next look is
    // when the CA's Retry-After says.
    let next_check = unchanged(&mut manager, t0).await;
    assert_eq!(front.renewal_info_queries(), vec![first_id.clone()]);
    assert!(
        (t0 + RETRY_AFTER - Duration::seconds(2)..=t0 + RETRY_AFTER).contains(&next_check),
        "next ARI check at {next_check}, expected Retry-After ({RETRY_AFTER}) after {t0}"
    );

    // The CA moves the window to now (an incident, a revocation). Until its
    // Retry-After has passed the manager does not ask, so does not know.
    front.set_renewal_info(window_open_now());
    unchanged(&mut manager, t0 + RETRY_AFTER - Duration::minutes(1)).await;
    assert_eq!(front.renewal_info_queries().len(), 1, "asked before due");
    assert_eq!(front.orders().len(), 1);

    // Once due, it asks again, finds the window open and renews at once,
    // telling the CA which certificate the order replaces.
    let due = t0 + RETRY_AFTER;
    let second = issue(&mut manager, due).await;
    assert_eq!(
        front.renewal_info_queries(),
        vec![first_id.clone(), first_id.clone()]
    );
    assert_eq!(front.orders(), vec![plain_order(), replacing(&first_id)]);
    assert_ne!(second.metadata().serial, first.metadata().serial);
    let second_id = ari_id(&second);
    assert_ne!(second_id, first_id);
    verify_chain(
        &second,
        &pebble.issuing_root_pem().await.expect("pebble's root"),
        NAME,
    );

    // Stored, and what subscribers (the SDS server) are handed.
    let stored = store
        .load_certificate(&SecretName::new(NAME).expect("name"))
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(stored.metadata(), second.metadata());
    assert_eq!(
        published
            .borrow_and_update()
            .as_ref()
            .map(|b| b.metadata().serial.clone()),
        Some(second.metadata().serial.clone())
    );

    // The replacement is asked about under its own identifier; its window is
    // ahead again, so there is no second renewal.
    front.set_renewal_info(window_ahead());
    unchanged(&mut manager, due).await;
    assert_eq!(
        front.renewal_info_queries(),
        vec![first_id.clone(), first_id, second_id]
    );
    assert_eq!(front.orders().len(), 2);
}

#[tokio::test]
async fn failing_renewal_info_keeps_the_certificate_and_orders_nothing() {
    // Every part is bound: a field left to `..` would be dropped here,
    // killing pebble.
    let Setup {
        pebble: _pebble,
        front,
        store: _store,
        mut manager,
        _dir,
    } = setup().await;
    front.set_renewal_info(RenewalInfoAnswer::Status(500));
    let first = issue(&mut manager, OffsetDateTime::now_utc()).await;
    let t0 = OffsetDateTime::now_utc();
    let first_id = ari_id(&first);

    // A failed check falls back on the lifetime rule (years away for
    // pebble's certificates) and is retried in an hour, not at once.
    let next_check = unchanged(&mut manager, t0).await;
    assert_eq!(next_check, t0 + Duration::hours(1));
    assert_eq!(front.renewal_info_queries(), vec![first_id.clone()]);

    // No storm: passes before then (woken by a SIGHUP or a renewal request
    // for another certificate) neither ask again nor order.
    for minutes in [1, 10, 59] {
        unchanged(&mut manager, t0 + Duration::minutes(minutes)).await;
    }
    assert_eq!(front.renewal_info_queries().len(), 1);
    assert_eq!(front.orders(), vec![plain_order()]);

    // Malformed renewal information is a failure like any other.
    front.set_renewal_info(RenewalInfoAnswer::Body(
        r#"{"suggestedWindow": {"start": "soon"}}"#.to_owned(),
    ));
    let next_check = unchanged(&mut manager, t0 + Duration::hours(1)).await;
    assert_eq!(next_check, t0 + Duration::hours(2));
    assert_eq!(front.renewal_info_queries().len(), 2);
    assert_eq!(front.orders().len(), 1);
    assert_eq!(
        manager.current().expect("still served").metadata(),
        first.metadata(),
        "the certificate in service is kept through ARI failures"
    );

    // When the CA answers again, its open window is honoured at the next retry.
    front.set_renewal_info(window_open_now());
    let second = issue(&mut manager, t0 + Duration::hours(2)).await;
    assert_ne!(second.metadata().serial, first.metadata().serial);
    assert_eq!(front.renewal_info_queries().len(), 3);
    assert_eq!(front.orders(), vec![plain_order(), replacing(&first_id)]);
}

#[tokio::test]
async fn ca_not_reflecting_replaces_gets_a_plain_order_instead() {
    // pebble's own behaviour: it creates the order but drops `replaces`,
    // which the ACME library takes as a refused replacement.
    // Every part is bound: a field left to `..` would be dropped here,
    // killing pebble.
    let Setup {
        pebble: _pebble,
        front,
        store: _store,
        mut manager,
        _dir,
    } = setup().await;
    front.set_echo_replaces(false);
    let first = issue(&mut manager, OffsetDateTime::now_utc()).await;
    let t0 = OffsetDateTime::now_utc();
    let first_id = ari_id(&first);
    unchanged(&mut manager, t0).await;

    front.set_renewal_info(window_open_now());
    let second = issue(&mut manager, t0 + RETRY_AFTER).await;
    assert_ne!(second.metadata().serial, first.metadata().serial);
    assert_eq!(
        front.orders(),
        vec![plain_order(), replacing(&first_id), plain_order()],
        "one attempt with `replaces`, then one without"
    );

    // The client remembers: the next renewal orders once, without `replaces`,
    // rather than leaving another abandoned order at the CA.
    let third = issue(&mut manager, t0 + RETRY_AFTER + Duration::seconds(1)).await;
    assert_ne!(third.metadata().serial, second.metadata().serial);
    assert_eq!(
        front.orders(),
        vec![
            plain_order(),
            replacing(&first_id),
            plain_order(),
            plain_order()
        ],
    );
}

/// Let's Encrypt's profiles, as its directory describes them.
const PROFILES: &[(&str, &str)] = &[
    ("classic", "The same profile you're accustomed to"),
    (
        "shortlived",
        "A short-lived cert profile, without actual enforcement",
    ),
    ("tlsserver", "A TLS-only profile"),
];

#[tokio::test]
async fn the_configured_profile_is_ordered_and_recorded() {
    let Setup {
        pebble: _pebble,
        front,
        store,
        mut manager,
        _dir,
    } = setup_with(PROFILES, Some("shortlived")).await;
    let issued = issue(&mut manager, OffsetDateTime::now_utc()).await;
    let orders = front.orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0].profile.as_deref(), Some("shortlived"));
    assert_eq!(issued.metadata().profile.as_deref(), Some("shortlived"));
    let stored = store
        .load_certificate(&SecretName::new(NAME).expect("name"))
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(stored.metadata().profile.as_deref(), Some("shortlived"));
}

#[tokio::test]
async fn a_profile_the_ca_does_not_offer_is_a_clear_error_and_no_order() {
    for (offered, listed) in [
        (PROFILES, "classic, shortlived, tlsserver"),
        (&[][..], "none"),
    ] {
        let Setup {
            pebble: _pebble,
            front,
            store: _store,
            mut manager,
            _dir,
        } = setup_with(offered, Some("sixday")).await;
        let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
        let Outcome::Failed { error, .. } = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        let message = error.to_string();
        assert!(message.contains("no ACME profile `sixday`"), "{message}");
        assert!(message.contains(&format!("offered: {listed}")), "{message}");
        assert!(manager.current().is_none());
        assert!(front.orders().is_empty(), "{:?}", front.orders());
    }
}

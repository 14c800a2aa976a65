//! What every certificate store does, whatever its backend: one
//! specification, run against the disk (`tests/disk.rs`) and Consul KV
//! (`tests/consul_store.rs`). A backend's test file implements
//! [`Location`] and expands `store_specification!` with it.
//!
//! What only one backend does (generations and permissions on disk,
//! fencing in Consul) is specified beside that backend.

#![allow(dead_code)] // Each test binary uses a subset.

use std::sync::Arc;

use async_trait::async_trait;
use envoy_acme_sds::certificate::{CertificateBundle, IssuanceFacts};
use envoy_acme_sds::policy::OrderHistory;
use envoy_acme_sds::secret::Secret;
use envoy_acme_sds::store::codec::{CertificatePart, certificate_item};
use envoy_acme_sds::store::encryption::KeyEncryption;
use envoy_acme_sds::store::{
    AccountId, CertificateStore, RenewalRequest, SecretName, StoredAccount,
};
use time::OffsetDateTime;

/// One place a backend keeps items: a directory, a KV prefix.
#[async_trait]
pub trait Location: Send + Sync {
    /// A store here, allowed to write as the renewing replica, sealing
    /// private keys with `encryption`.
    fn store(&self, encryption: Option<Arc<KeyEncryption>>) -> Arc<dyn CertificateStore>;
    /// The bytes of an item as an operator's tools show them.
    async fn read_raw(&self, item: &str) -> Vec<u8>;
    /// Overwrites an item behind the store's back (a hand edit).
    async fn write_raw(&self, item: &str, bytes: &[u8]);
    /// Deletes an item behind the store's back.
    async fn remove_raw(&self, item: &str);
}

/// Expands to one test per specification, each against a fresh location
/// made by `$open` (an async fn returning a [`Location`]).
macro_rules! store_specification {
    ($open:path) => {
        mod store_specification {
            use super::*;

            #[tokio::test]
            async fn nothing_stored_loads_as_nothing() {
                store_suite::nothing_stored_loads_as_nothing(&$open().await).await;
            }

            #[tokio::test]
            async fn every_kind_of_item_round_trips() {
                store_suite::every_kind_of_item_round_trips(&$open().await).await;
            }

            #[tokio::test]
            async fn a_partial_certificate_is_reported_not_taken_for_absent() {
                store_suite::a_partial_certificate_is_reported_not_taken_for_absent(&$open().await)
                    .await;
            }

            #[tokio::test]
            async fn a_corrupt_item_is_reported_with_its_name() {
                store_suite::a_corrupt_item_is_reported_with_its_name(&$open().await).await;
            }

            #[tokio::test]
            async fn private_keys_are_sealed_and_a_wrong_key_is_named() {
                store_suite::private_keys_are_sealed_and_a_wrong_key_is_named(&$open().await).await;
            }
        }
    };
}

/// A certificate for `names` from a throw-away CA, as a CA would issue it.
pub fn certificate(names: &[&str]) -> CertificateBundle {
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
    params.not_before = now;
    params.not_after = now + time::Duration::days(90);
    params.serial_number = Some(rcgen::SerialNumber::from(
        rand::random::<u64>().to_be_bytes().to_vec(),
    ));
    let leaf = params.signed_by(&key, &issuer).expect("leaf");
    CertificateBundle::from_issued(
        format!("{}{}", leaf.pem(), ca.pem()),
        Secret::new(key.serialize_pem()),
        now,
        IssuanceFacts::default(),
    )
    .expect("bundle")
}

fn name(name: &str) -> SecretName {
    SecretName::new(name).expect("name")
}

fn encryption_key(byte: u8) -> Option<Arc<KeyEncryption>> {
    Some(Arc::new(
        KeyEncryption::from_bytes(&[byte; 32]).expect("key"),
    ))
}

pub async fn nothing_stored_loads_as_nothing(location: &impl Location) {
    let store = location.store(None);
    let name = name("*.example.com");
    assert!(store.load_certificate(&name).await.expect("load").is_none());
    assert!(
        store
            .load_order_history(&name)
            .await
            .expect("history")
            .is_empty()
    );
    let id = AccountId::for_directory("https://ca.example/dir");
    assert!(store.load_account(&id).await.expect("account").is_none());
    assert_eq!(
        store.load_renewal_request(&name).await.expect("request"),
        None
    );
}

/// The secret name and ACME directory [`every_kind_of_item_round_trips`] stores under.
pub const ROUND_TRIP_SECRET: &str = "*.example.com";
pub const ROUND_TRIP_DIRECTORY: &str = "https://ca.example/dir";

/// An order history with one order in it.
pub fn one_order(names_key: &str) -> OrderHistory {
    let mut history = OrderHistory::default();
    history.record(names_key, OffsetDateTime::now_utc());
    history
}

pub async fn every_kind_of_item_round_trips(location: &impl Location) {
    let store = location.store(None);
    let name = name(ROUND_TRIP_SECRET);

    let bundle = certificate(&["*.example.com", "example.com"]);
    store.save_certificate(&name, &bundle).await.expect("save");
    let loaded = store
        .load_certificate(&name)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(loaded.metadata(), bundle.metadata());
    assert_eq!(loaded.key_pem(), bundle.key_pem());

    let history = one_order("example.com");
    store
        .save_order_history(&name, &history)
        .await
        .expect("save");
    assert_eq!(
        store.load_order_history(&name).await.expect("load"),
        history
    );

    let id = AccountId::for_directory(ROUND_TRIP_DIRECTORY);
    let account = StoredAccount {
        directory_url: ROUND_TRIP_DIRECTORY.to_owned(),
        contact: Vec::new(),
        credentials_json: Secret::new("{}".to_owned()),
    };
    store.save_account(&id, &account).await.expect("save");
    let loaded = store
        .load_account(&id)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(loaded.directory_url, account.directory_url);

    let request = RenewalRequest {
        requested_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time"),
        replaces_serial: Some("01ab".to_owned()),
    };
    store
        .request_renewal(&name, &request)
        .await
        .expect("request");
    assert_eq!(
        store.load_renewal_request(&name).await.expect("load"),
        Some(request)
    );
}

pub async fn a_partial_certificate_is_reported_not_taken_for_absent(location: &impl Location) {
    let store = location.store(None);
    let name = name("example.com");
    store
        .save_certificate(&name, &certificate(&["example.com"]))
        .await
        .expect("save");
    location
        .remove_raw(&certificate_item(&name, CertificatePart::Key))
        .await;
    let err = store.load_certificate(&name).await.expect_err("partial");
    assert!(err.to_string().contains("key missing"), "{err}");
}

pub async fn a_corrupt_item_is_reported_with_its_name(location: &impl Location) {
    let store = location.store(None);
    let name = name("example.com");
    store
        .save_certificate(&name, &certificate(&["example.com"]))
        .await
        .expect("save");
    location
        .write_raw(
            &certificate_item(&name, CertificatePart::Metadata),
            b"{\"version\": 1, \"metadata\": ",
        )
        .await;
    let err = store.load_certificate(&name).await.expect_err("corrupt");
    assert!(
        err.to_string()
            .contains("certificates/example.com/metadata"),
        "{err}"
    );
}

pub async fn private_keys_are_sealed_and_a_wrong_key_is_named(location: &impl Location) {
    let store = location.store(encryption_key(1));
    let name = name("example.com");
    let bundle = certificate(&["example.com"]);
    store.save_certificate(&name, &bundle).await.expect("save");
    let raw = location
        .read_raw(&certificate_item(&name, CertificatePart::Key))
        .await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("PRIVATE KEY"), "private key stored in clear");
    assert!(raw.contains("AES-256-GCM"));
    let loaded = store
        .load_certificate(&name)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(loaded.key_pem(), bundle.key_pem());

    let wrong = location.store(encryption_key(2));
    let err = wrong.load_certificate(&name).await.expect_err("wrong key");
    assert!(err.to_string().contains("wrong encryption key"), "{err}");
}

//! Routed hosts from Nomad alone: the real `envoy-acme-sds` binary with
//! `--follow-routes --sources nomad`, disk storage and no Consul anywhere,
//! reading a stand-in Nomad agent's service registry.
//!
//! - a Nomad registration with a `tls=true` route tag makes its host a
//!   routed host, served a placeholder until its certificate exists;
//! - while Nomad fails, the host stays routed;
//! - once Nomad answers again, a deregistration it reports unroutes it.
//!
//! No CA answers here: the order itself is the pebble tests' concern.

mod common;

use std::time::Duration;

use common::service::SdsService;
use serde_json::Value;
use test_support::nomad_api::{FakeNomad, Registration};
use test_support::{eventually, free_port};

const HOST: &str = "new.demo.test";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// The routed host `HOST` as `/debug/certificates` lists it.
async fn routed_entry(sds: &SdsService) -> Option<Value> {
    let page = sds.debug_certificates().await;
    page["routed"]
        .as_array()?
        .iter()
        .find(|entry| entry["host"] == HOST)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_route_tag_gets_a_placeholder_kept_while_nomad_fails_without_any_consul() {
    let nomad = FakeNomad::start().await.expect("the stand-in Nomad starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("disk:{}", dir.path().join("store").display());
    let nowhere = free_port();
    let sds = SdsService::start(
        "envoy-acme-sds",
        dir.path(),
        &[
            // No CA listens there: orders fail, the placeholder stays.
            "--acme-directory".to_owned(),
            format!("https://127.0.0.1:{nowhere}/dir"),
            "--challenge".to_owned(),
            "http-01".to_owned(),
            "--http01-listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--storage".to_owned(),
            storage,
            "--follow-routes".to_owned(),
            "--allowed-domains".to_owned(),
            "demo.test".to_owned(),
            "--sources".to_owned(),
            "nomad".to_owned(),
            "--nomad-addr".to_owned(),
            nomad.address(),
            // No Consul runs; a Consul address that is read would fail.
            "--consul-addr".to_owned(),
            format!("http://127.0.0.1:{nowhere}"),
        ],
    );

    nomad.register(
        Registration::new("web", "127.0.0.1", 8080)
            .id("web-1")
            .tags(&[&format!("edge.route={HOST}/ tls=true")]),
    );
    let entry = eventually("the Nomad route's host is routed", WAIT, POLL, || async {
        routed_entry(&sds)
            .await
            .filter(|entry| entry["served_as"] == "placeholder")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert_eq!(entry["services"], serde_json::json!(["web"]));
    assert_eq!(entry["plan"], "ordered");
    assert!(entry["unrouted_since"].is_null(), "{entry}");

    // Nomad fails: the host stays routed, with its placeholder. The
    // blocking query in flight answers the next change; the one after it
    // meets the failure.
    nomad.fail_with(Some(500));
    nomad.register(
        Registration::new("api", "127.0.0.1", 8081)
            .id("api-1")
            .tags(&["edge.route=api.demo.test/ tls=true"]),
    );
    eventually("the failure is noticed", WAIT, POLL, || async {
        sds.logs()
            .contains("cannot read the registry")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entry = routed_entry(&sds).await.expect("still listed");
    assert!(
        entry["unrouted_since"].is_null(),
        "unrouted by a failure: {entry}"
    );
    assert_eq!(entry["served_as"], "placeholder");

    // Nomad answers again; a deregistration after that is believed (with
    // another host still routed: an answer routing none at all is never
    // believed, as it may be an ACL-filtered one).
    nomad.fail_with(None);
    eventually("Nomad answers again", WAIT, POLL, || async {
        sds.logs()
            .contains("the registry answers again")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    nomad.deregister("default", "web-1");
    let entry = eventually("the deregistered host is unrouted", WAIT, POLL, || async {
        routed_entry(&sds)
            .await
            .filter(|entry| !entry["unrouted_since"].is_null())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    // Still served: renewal goes on for the unrouted grace.
    assert_eq!(entry["served_as"], "placeholder");

    let logs = sds.logs();
    assert!(
        !logs.contains("/v1/catalog") && !logs.contains("Consul client"),
        "Consul was read:\n{logs}"
    );
}

//! Routed hosts from Nomad alone: the real `envoy-acme-sds` binary with
//! `--follow-routes --sources nomad`, disk storage and no Consul anywhere,
//! reading the service registry of a stand-in for Nomad.
//!
//! - a Nomad registration with a `tls=true` route tag makes its host a
//!   routed host, served a placeholder until its certificate exists;
//! - while Nomad fails, the host stays routed;
//! - once Nomad answers again, a deregistration it reports unroutes it;
//! - with `--sources consul,nomad` (a real Consul), nothing is routed until
//!   Nomad has answered too, then the hosts of both are.
//!
//! No CA answers here: the order itself is the pebble tests' concern.

mod common;

use std::time::Duration;

use common::service::SdsService;
use serde_json::Value;
use test_support::nomad_api::{FakeNomad, Registration};
use test_support::{ConsulAgent, eventually, free_port, http_request};

const HOST: &str = "new.demo.test";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// The routed host `HOST` as `/debug/certificates` lists it.
async fn routed_entry(sds: &SdsService) -> Option<Value> {
    routed_host(sds, HOST).await
}

async fn routed_host(sds: &SdsService, host: &str) -> Option<Value> {
    let page = sds.debug_certificates().await;
    page["routed"]
        .as_array()?
        .iter()
        .find(|entry| entry["host"] == host)
        .cloned()
}

/// envoy-acme-sds following routes with http-01, disk storage under `dir`
/// and no CA (orders fail; placeholders stay), plus `extra`.
fn start_sds(dir: &std::path::Path, extra: &[String]) -> SdsService {
    let mut args = vec![
        "--acme-directory".to_owned(),
        format!("https://127.0.0.1:{}/dir", free_port()),
        "--challenge".to_owned(),
        "http-01".to_owned(),
        "--http01-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--storage".to_owned(),
        format!("disk:{}", dir.join("store").display()),
        "--follow-routes".to_owned(),
        "--allowed-domains".to_owned(),
        "demo.test".to_owned(),
    ];
    args.extend_from_slice(extra);
    SdsService::start("envoy-acme-sds", dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_route_tag_gets_a_placeholder_kept_while_nomad_fails_without_any_consul() {
    let nomad = FakeNomad::start().await.expect("the stand-in Nomad starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let sds = start_sds(
        dir.path(),
        &[
            "--sources".to_owned(),
            "nomad".to_owned(),
            "--nomad-addr".to_owned(),
            nomad.address(),
            // No Consul runs; a Consul address that is read would fail.
            "--consul-addr".to_owned(),
            format!("http://127.0.0.1:{}", free_port()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_and_nomad_routes_are_united_once_both_have_answered() {
    let consul = ConsulAgent::start().await.expect("Consul starts");
    let nomad = FakeNomad::start().await.expect("the stand-in Nomad starts");
    // Nomad is slow to answer as envoy-acme-sds starts.
    nomad.set_delay(Duration::from_secs(2));
    nomad.register(
        Registration::new("web", "127.0.0.1", 8080)
            .id("web-1")
            .tags(&["edge.route=nomad.demo.test/ tls=true"]),
    );
    let registration = serde_json::json!({
        "Name": "shop",
        "ID": "shop-1",
        "Port": 8081,
        "Tags": ["edge.route=consul.demo.test/ tls=true"],
    });
    let registered = http_request(
        "PUT",
        consul.http_addr(),
        "/v1/agent/service/register",
        &[],
        registration.to_string().into_bytes(),
    )
    .await
    .expect("Consul answers");
    assert_eq!(registered.status, 200, "{}", registered.body);

    let dir = tempfile::tempdir().expect("tempdir");
    let sds = start_sds(
        dir.path(),
        &[
            "--sources".to_owned(),
            "consul,nomad".to_owned(),
            "--consul-addr".to_owned(),
            consul.http_url(),
            "--nomad-addr".to_owned(),
            nomad.address(),
        ],
    );
    eventually("Consul has answered", WAIT, POLL, || async {
        sds.logs()
            .contains("waiting for every registry's first answer")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert!(
        routed_host(&sds, "consul.demo.test").await.is_none(),
        "routed before Nomad answered:\n{}",
        sds.logs()
    );

    nomad.set_delay(Duration::ZERO);
    for host in ["consul.demo.test", "nomad.demo.test"] {
        let entry = eventually(&format!("{host} is routed"), WAIT, POLL, || async {
            routed_host(&sds, host)
                .await
                .filter(|entry| entry["served_as"] == "placeholder")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
        assert!(entry["unrouted_since"].is_null(), "{entry}");
    }
}

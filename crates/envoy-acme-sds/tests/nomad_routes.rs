//! Routed hosts from Nomad alone: the real `envoy-acme-sds` binary with
//! `--follow-routes --sources nomad`, disk storage and no Consul anywhere,
//! reading the service registry of a stand-in for Nomad.
//!
//! - a Nomad registration with a `tls=true` route tag makes its host a
//!   routed host, served a placeholder until its certificate exists;
//! - while Nomad fails, the host stays routed;
//! - once Nomad answers again, a deregistration it reports unroutes it;
//! - with `--sources consul,nomad` (a real Consul), nothing is routed until
//!   Nomad has answered too, then the hosts of both are;
//! - with `--nomad-namespace '*'`, the hosts of every namespace the token
//!   reads are routed, a namespace a narrowed token loses keeps its hosts
//!   routed, and one that really emptied unroutes them;
//! - end to end, with every other part real (test-support's
//!   `GatewayWorld`): a service registered in Nomad alone with a `tls=true`
//!   route gets a certificate from pebble, by HTTP-01 through the gateway
//!   (the responder's own route declared in Nomad too) and by DNS-01
//!   through knot, and HTTPS through Envoy with the host's SNI verifies
//!   against pebble's root and reaches the backend. consul-eds-server and
//!   envoy-acme-sds both read `--sources nomad`; the world's Consul holds
//!   none of the services.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::service::{SdsService, binary, describe_certificate};
use serde_json::Value;
use test_support::gateway::{Challenge, GatewayWorld, GatewayWorldOptions, eds_binary_beside};
use test_support::nomad_api::{Acl, FakeNomad, FakeNomadOptions, Registration};
use test_support::{Backend, ConsulAgent, eventually, free_port, http_get, http_request};

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

/// `--nomad-namespace '*'`: hosts from two namespaces; a narrowed token
/// drops one namespace from Nomad's `*` listing without a word, and its
/// host stays routed (the namespace read directly answers 403); once it is
/// readable again and really empty, its host is unrouted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_namespace_a_narrowed_token_keeps_the_hosts_of_the_namespace_it_lost() {
    const TEAM: &str = "team-token";
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        acl: Some(Acl::new().token(TEAM, &["a", "b"])),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("the stand-in Nomad starts");
    let tagged = |service: &str, namespace: &str| {
        Registration::new(service, "127.0.0.1", 8080)
            .namespace(namespace)
            .id(&format!("{service}-1"))
            .tags(&[&format!("edge.route={service}.demo.test/ tls=true")])
    };
    nomad.register(tagged("web", "a"));
    nomad.register(tagged("api", "b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("nomad_token");
    std::fs::write(&token_file, TEAM).expect("token file");
    let sds = start_sds(
        dir.path(),
        &[
            "--sources".to_owned(),
            "nomad".to_owned(),
            "--nomad-addr".to_owned(),
            nomad.address(),
            "--nomad-namespace".to_owned(),
            "*".to_owned(),
            "--nomad-token-file".to_owned(),
            token_file.display().to_string(),
            "--consul-addr".to_owned(),
            format!("http://127.0.0.1:{}", free_port()),
        ],
    );
    let routed = |host: &'static str| {
        let sds = &sds;
        async move {
            eventually(&format!("{host} is routed"), WAIT, POLL, || async {
                routed_host(sds, host)
                    .await
                    .filter(|entry| entry["unrouted_since"].is_null())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()))
        }
    };
    routed("web.demo.test").await;
    routed("api.demo.test").await;

    // Narrowed to `b`. The query in flight answers the next change with
    // the token's old rights; the listing after that leaves `a` out.
    nomad.set_token(TEAM, &["b"]);
    nomad.register(tagged("shop", "b"));
    routed("shop.demo.test").await;
    nomad.register(tagged("cart", "b"));
    routed("cart.demo.test").await;
    // The answer that routed `cart` is the one without `a`.
    let entry = routed_host(&sds, "web.demo.test")
        .await
        .expect("still listed");
    assert!(
        entry["unrouted_since"].is_null(),
        "unrouted by a narrowed token: {entry}\n{}",
        sds.logs()
    );
    eventually("the lost namespace to be reported", WAIT, POLL, || async {
        sds.logs()
            .contains("vanished from the `*` listing and cannot be read directly")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));

    // Readable again once `a` has emptied: the direct read says so, and
    // its host is unrouted.
    nomad.set_token(TEAM, &["a", "b"]);
    nomad.deregister("a", "web-1");
    nomad.register(tagged("extra", "b"));
    let entry = eventually(
        "the emptied namespace's host is unrouted",
        WAIT,
        POLL,
        || async {
            routed_host(&sds, "web.demo.test")
                .await
                .filter(|entry| !entry["unrouted_since"].is_null())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert_eq!(entry["services"], serde_json::json!(["web"]));
    for host in [
        "api.demo.test",
        "shop.demo.test",
        "cart.demo.test",
        "extra.demo.test",
    ] {
        let entry = routed_host(&sds, host).await.expect("listed");
        assert!(entry["unrouted_since"].is_null(), "{host}: {entry}");
    }
}

/// HTTP-01 through the gateway, every route read from Nomad: pebble
/// validates on the gateway's plain listener, which forwards the challenge
/// to envoy-acme-sds's responder because the responder's registration in
/// Nomad declares an empty-host route for the challenge path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_routed_host_gets_a_certificate_by_http01_through_the_gateway() {
    https_for_a_nomad_routed_host(Proof::Http01).await;
}

/// DNS-01 through knot for a host only Nomad routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_routed_host_gets_a_certificate_by_dns01() {
    https_for_a_nomad_routed_host(Proof::Dns01).await;
}

#[derive(Debug, Clone, Copy)]
enum Proof {
    Http01,
    Dns01,
}

async fn https_for_a_nomad_routed_host(proof: Proof) {
    let nomad = FakeNomad::start().await.expect("the stand-in Nomad starts");
    // A live Nomad's index is its Raft index, far above the 1 an empty
    // table answers with. The stand-in's moves by one per write, so its
    // first write would leave it at 1, unseen by a query blocked at 1
    // until its deadline: start it where a running cluster would be.
    nomad.reset_index(1_000);
    let world = GatewayWorld::start(GatewayWorldOptions {
        // pebble resolves the HTTP-01 host through knot.
        records: vec!["new A 127.0.0.1".to_owned()],
        ..GatewayWorldOptions::new(eds_binary_beside(&binary()), "demo.test")
    })
    .await
    .expect("the world starts");
    let responder = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let challenge = match proof {
        Proof::Http01 => Challenge::Http01 { responder },
        Proof::Dns01 => Challenge::Dns01,
    };
    let reads_nomad = vec![
        "--sources".to_owned(),
        "nomad".to_owned(),
        "--nomad-addr".to_owned(),
        nomad.address(),
    ];
    let mut args = world.follow_routes_args(
        challenge,
        &format!("disk:{}", world.dir.path().join("store").display()),
        &[],
    );
    args.extend(reads_nomad.iter().cloned());
    let mut sds = SdsService::start("envoy-acme-sds", world.dir.path(), &args);
    // Ready at once: no configured certificate to wait for.
    sds.wait_ready(Duration::from_secs(30)).await;
    let edge = world
        .edge_reading(sds.sds, &reads_nomad)
        .await
        .expect("the gateway and Envoy start");

    if let Proof::Http01 = proof {
        nomad.register(
            Registration::new("envoy-acme-sds-http01", "127.0.0.1", responder.port())
                .id("envoy-acme-sds-http01")
                .tags(&["edge.route=/.well-known/acme-challenge/"]),
        );
        world
            .wait_for_challenge_route(&edge, HOST)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", edge.gateway_log_tail()));
    }

    let backend = Backend::start("new-1").await.expect("backend");
    let addr = backend.addr();
    nomad.register(
        Registration::new("new", &addr.ip().to_string(), addr.port())
            .id("new-1")
            .tags(&[&format!("edge.route={HOST}/ tls=true")]),
    );
    let verified = world
        .wait_for_https(&edge, HOST, Duration::from_secs(150))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nenvoy-acme-sds:\n{}\nEnvoy:\n{}\ngateway:\n{}",
                sds.logs(),
                edge.envoy.log_tail(),
                edge.gateway_log_tail()
            )
        });
    eprintln!(
        "{proof:?}: Nomad registration -> first verified HTTPS response: {:?}",
        verified.elapsed
    );
    assert_eq!(verified.body, "new-1");
    let presented = describe_certificate(&verified.certificate_der);
    assert_eq!(presented.names, vec![HOST.to_owned()], "the host's own");
    assert_eq!(
        sds.served_serial(HOST).await.as_deref(),
        Some(presented.serial.as_str()),
        "served under the host's name"
    );
    assert_eq!(
        sds.metric("envoy_acme_sds_renewals_total{secret=\"new.demo.test\",result=\"ok\"}")
            .await,
        1.0,
        "issued at the first attempt"
    );
    assert_eq!(sds.metric("envoy_acme_sds_placeholder_secrets").await, 0.0);
    let entry = routed_entry(&sds).await.expect("the host is listed");
    assert_eq!(entry["served_as"], "own", "{entry}");
    assert_eq!(entry["services"], serde_json::json!(["new"]), "{entry}");
    // Only Nomad knows the service: the world's Consul never saw it.
    let catalog = http_get(world.consul.http_addr(), "/v1/catalog/services")
        .await
        .expect("Consul answers");
    let services: Value = serde_json::from_str(&catalog.body).expect("JSON");
    assert_eq!(services, serde_json::json!({ "consul": [] }), "{services}");
    assert!(sds.is_running());
}

//! consul-eds-server reading Nomad's own service registry (services with
//! `provider = "nomad"`) and serving it to a real Envoy 1.40.
//!
//! Nomad itself cannot run here (docs/adr/0007-nomad-api-stand-in.md): its
//! HTTP API is test-support's `FakeNomad`, which answers as Nomad 1.6.5 does.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{EdsServer, consul_client, gateway, hostnames, register_passing, wait_for_hostnames};
use test_support::bootstrap::EdsTransport;
use test_support::nomad_api::{Acl, FakeNomad, FakeNomadOptions, Registration};
use test_support::{Backend, ConsulAgent, eventually, free_port, http_get};

/// The gauge of a Nomad service whose reads fail.
const DEGRADED: &str = "consul_eds_service_degraded{service=\"web\",datacenter=\"local\",source=\"nomad\",namespace=\"default\"} 1";

fn registration(id: &str, backend: &Backend) -> Registration {
    let addr = backend.addr();
    Registration::new("web", &addr.ip().to_string(), addr.port()).id(id)
}

/// A Consul address nothing listens on: with `--sources nomad` the server
/// must not need Consul at all.
fn no_consul() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Waits until the Nomad service's degraded gauge says `degraded`.
async fn wait_degraded(eds: &EdsServer, degraded: bool, what: &str, limit: Duration) {
    eventually(what, limit, Duration::from_millis(50), || async {
        let metrics = http_get(eds.admin, "/metrics").await.ok()?.body;
        (metrics.contains(DEGRADED) == degraded).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", eds.process.log_tail()));
}

async fn nomad_only_server(nomad: &FakeNomad, extra: &[&str]) -> EdsServer {
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let address = nomad.address();
    let mut args = vec!["--sources", "nomad", "--nomad-addr", address.as_str()];
    args.extend_from_slice(extra);
    EdsServer::start_reading(&no_consul(), xds, &args).await
}

#[tokio::test]
async fn nomad_registrations_reach_envoy_and_leave_it_with_their_allocation() {
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let backends = [
        Backend::start("web-1").await.expect("backend"),
        Backend::start("web-2").await.expect("backend"),
    ];
    let first = registration("web-1", &backends[0]);
    let second = registration("web-2", &backends[1]);
    let second_alloc = second.alloc_id.clone();
    nomad.register(first);
    nomad.register(second);

    let eds = nomad_only_server(&nomad, &[]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-1", "web-2"], Duration::from_secs(10)).await;
    for _ in 0..20 {
        let response = http_get(listener, "/").await.expect("through envoy");
        assert_eq!(response.status, 200, "{}", response.body);
    }
    assert!(
        backends.iter().all(|b| b.requests() > 0),
        "both backends get traffic"
    );

    // Nomad removes an allocation's registrations when it stops.
    nomad.stop_allocation(&second_alloc);
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(5)).await;
    nomad.deregister("default", "web-1");
    wait_for_hostnames(&envoy, "web", &[], Duration::from_secs(5)).await;
    let (status, body) = eds.readyz().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn nomad_failures_and_index_resets_keep_the_last_good_endpoints() {
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let backends = [
        Backend::start("web-1").await.expect("backend"),
        Backend::start("web-2").await.expect("backend"),
        Backend::start("web-3").await.expect("backend"),
    ];
    nomad.register(registration("web-1", &backends[0]));
    let eds = nomad_only_server(&nomad, &[]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(10)).await;

    let mut expected = vec!["web-1"];
    for (status, backend) in [(500, &backends[1]), (403, &backends[2])] {
        // From now on every request fails; the blocking query in flight
        // answers the change below, the next one gets the error.
        nomad.fail_with(Some(status));
        nomad.register(registration(backend.name(), backend));
        expected.push(backend.name());
        wait_for_hostnames(&envoy, "web", &expected, Duration::from_secs(5)).await;
        wait_degraded(
            &eds,
            true,
            &format!("the service to show as degraded while Nomad answers {status}"),
            Duration::from_secs(10),
        )
        .await;
        let hosts = common::hosts(&envoy, "web").await;
        assert_eq!(hostnames(&hosts), expected, "Nomad answering {status}");
        let response = http_get(listener, "/").await.expect("through envoy");
        assert_eq!(
            response.status, 200,
            "Nomad answering {status}: {}",
            response.body
        );
        nomad.fail_with(None);
        // Recovered (and blocking again) before the next fault.
        wait_degraded(
            &eds,
            false,
            "the service to recover",
            Duration::from_secs(15),
        )
        .await;
    }

    // Nomad gone: its connections drop, reads fail, nothing is taken away.
    let address: SocketAddr = nomad
        .address()
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    drop(nomad);
    wait_degraded(
        &eds,
        true,
        "the service to show as degraded with Nomad gone",
        Duration::from_secs(10),
    )
    .await;
    let hosts = common::hosts(&envoy, "web").await;
    assert_eq!(hostnames(&hosts), expected, "Nomad gone");

    // It comes back empty at the same address, its index back at the start
    // (a restore, a lost state): the empty answer is held for the reset
    // grace (3 s here) while the allocations register again.
    let restarted = FakeNomad::start_with(FakeNomadOptions {
        listen: Some(address),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("fake nomad again");
    // Another job registers first: a real Nomad's index counts every Raft
    // write, so the table's next change always moves it past what the
    // first answer (floored at 1) said.
    let other = Backend::start("db-1").await.expect("backend");
    let addr = other.addr();
    restarted.register(Registration::new("db", &addr.ip().to_string(), addr.port()));
    wait_degraded(
        &eds,
        false,
        "the server to read the restarted Nomad",
        Duration::from_secs(15),
    )
    .await;
    let hosts = common::hosts(&envoy, "web").await;
    assert_eq!(hostnames(&hosts), expected, "held after the reset");
    restarted.register(registration("web-1", &backends[0]));
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(5)).await;
    let response = http_get(listener, "/").await.expect("through envoy");
    assert_eq!(response.status, 200, "{}", response.body);
}

/// The token of the `*` tests: it may read namespaces `a` and `b` until a
/// test narrows it.
const TEAM: &str = "team-token";

/// A Nomad stand-in with ACLs on and [`TEAM`]'s token, and a file holding
/// that token for `--nomad-token-file` (kept while the directory lives).
async fn nomad_with_team_token() -> (FakeNomad, tempfile::TempDir, String) {
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        acl: Some(Acl::new().token(TEAM, &["a", "b"])),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("fake nomad");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("nomad_token");
    std::fs::write(&token_file, TEAM).expect("token file");
    let token_file = token_file.display().to_string();
    (nomad, dir, token_file)
}

/// `--nomad-namespace '*'`: the services of every namespace the token reads
/// reach Envoy; a narrowed token drops a namespace from Nomad's `*` listing
/// without a word, and its endpoints stay (degraded, the namespace read
/// directly answers 403); once it is readable and really empty, they go.
#[tokio::test]
async fn with_every_namespace_a_narrowed_token_keeps_the_endpoints_of_the_namespace_it_lost() {
    let (nomad, _token_dir, token_file) = nomad_with_team_token().await;
    let backends = [
        Backend::start("web-a").await.expect("backend"),
        Backend::start("web-b").await.expect("backend"),
        Backend::start("web-b2").await.expect("backend"),
        Backend::start("web-b3").await.expect("backend"),
    ];
    nomad.register(registration("web-a", &backends[0]).namespace("a"));
    nomad.register(registration("web-b", &backends[1]).namespace("b"));
    let eds = nomad_only_server(
        &nomad,
        &["--nomad-namespace", "*", "--nomad-token-file", &token_file],
    )
    .await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-a", "web-b"], Duration::from_secs(10)).await;
    // Each namespace is read by name: `*` only ever goes to /v1/services.
    let requests = nomad.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.path.starts_with("/v1/service/"))
            .all(|r| r.query.contains("namespace=a") || r.query.contains("namespace=b")),
        "{requests:?}"
    );

    // Narrowed to `b`. The queries in flight answer the next change with
    // the token's old rights; the listing after that leaves `a` out.
    nomad.set_token(TEAM, &["b"]);
    nomad.register(registration("web-b2", &backends[2]).namespace("b"));
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-a", "web-b", "web-b2"],
        Duration::from_secs(10),
    )
    .await;
    nomad.register(registration("web-b3", &backends[3]).namespace("b"));
    let held = "consul_eds_service_degraded{service=\"web\",datacenter=\"local\",source=\"nomad\",namespace=\"a\"} 1";
    eventually(
        "the namespace the token lost to show as degraded",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let metrics = http_get(eds.admin, "/metrics").await.ok()?.body;
            metrics.contains(held).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", eds.process.log_tail()));
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-a", "web-b", "web-b2", "web-b3"],
        Duration::from_secs(10),
    )
    .await;
    let log = std::fs::read_to_string(eds.process.log_path()).expect("the server's log");
    assert!(
        log.contains("vanished from the `*` listing and cannot be read directly"),
        "{log}"
    );
    let (status, body) = eds.readyz().await;
    assert_eq!(status, 429, "degraded while a namespace is held: {body}");
    let response = http_get(listener, "/").await.expect("through envoy");
    assert_eq!(response.status, 200, "{}", response.body);

    // Readable again once `a` has emptied: the direct read says so, and
    // its endpoints go.
    nomad.set_token(TEAM, &["a", "b"]);
    nomad.deregister("a", "web-a");
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-b", "web-b2", "web-b3"],
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn a_service_in_both_registries_is_one_cluster_unless_the_template_parts_them() {
    let consul = ConsulAgent::start().await.expect("consul");
    let client = consul_client(&consul);
    let in_consul = Backend::start("web-consul").await.expect("backend");
    register_passing(&client, "web", &in_consul).await;
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let in_nomad = Backend::start("web-nomad").await.expect("backend");
    nomad.register(registration("web-nomad", &in_nomad));
    let address = nomad.address();

    let merged = EdsServer::start(
        &consul,
        &[
            "--sources",
            "consul,nomad",
            "--nomad-addr",
            address.as_str(),
        ],
    )
    .await;
    let (envoy, _) = gateway(merged.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-consul", "web-nomad"],
        Duration::from_secs(10),
    )
    .await;
    // Nomad failing takes nothing away, Consul's changes still go through.
    nomad.fail_with(Some(500));
    let more = Backend::start("web-consul-2").await.expect("backend");
    register_passing(&client, "web", &more).await;
    wait_for_hostnames(
        &envoy,
        "web",
        &["web-consul", "web-consul-2", "web-nomad"],
        Duration::from_secs(10),
    )
    .await;
    nomad.fail_with(None);

    let parted = EdsServer::start(
        &consul,
        &[
            "--sources",
            "consul,nomad",
            "--nomad-addr",
            address.as_str(),
            "--cluster-name-template",
            "{source}-{service}",
        ],
    )
    .await;
    let (envoy, _) = gateway(parted.xds, &["consul-web", "nomad-web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "nomad-web", &["web-nomad"], Duration::from_secs(10)).await;
    wait_for_hostnames(
        &envoy,
        "consul-web",
        &["web-consul", "web-consul-2"],
        Duration::from_secs(10),
    )
    .await;
}

/// Status and body of a request through Envoy for `host`.
/// An Envoy with only an ADS source, fed the gateway's listeners by `eds`
/// (the listener's port names its node).
async fn gateway_envoy(eds: &EdsServer, port: u16) -> test_support::Envoy {
    test_support::Envoy::start(&test_support::bootstrap::ads_only_bootstrap(
        &format!("gw-{port}"),
        eds.xds,
        false,
    ))
    .await
    .expect("Envoy starts with the small bootstrap")
}

async fn get(listener: SocketAddr, host: &str) -> (u16, String) {
    match test_support::http_request("GET", listener, "/", &[("host", host)], Vec::new()).await {
        Ok(response) => (response.status, response.body),
        Err(_) => (0, String::new()),
    }
}

async fn expect_answer(eds: &EdsServer, listener: SocketAddr, host: &str, status: u16, body: &str) {
    eventually(
        &format!("{host} to answer {status} {body}"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { (get(listener, host).await == (status, body.to_owned())).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", eds.process.log_tail()));
}

/// Gateway mode routes a job registered in Nomad from its tags alone, beside
/// a Consul service, and a Nomad that fails afterwards takes no route away.
#[tokio::test]
async fn the_gateway_routes_nomad_services_from_their_tags() {
    let consul = ConsulAgent::start().await.expect("consul");
    let client = consul_client(&consul);
    let shop = Backend::start("shop-1").await.expect("backend");
    let nomad = FakeNomad::start().await.expect("fake nomad");
    let api = Backend::start("api-1").await.expect("backend");
    let addr = api.addr();
    nomad.register(
        Registration::new("api", &addr.ip().to_string(), addr.port())
            .id("api-1")
            .tags(&["edge.route=api.test/"]),
    );

    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let address = nomad.address();
    let eds = EdsServer::start(
        &consul,
        &[
            "--gateway",
            "--listener",
            &format!("web=127.0.0.1:{port}"),
            "--sources",
            "consul,nomad",
            "--nomad-addr",
            address.as_str(),
        ],
    )
    .await;
    let envoy = gateway_envoy(&eds, port).await;
    expect_answer(&eds, listener, "api.test", 200, "api-1").await;

    // A Consul service's tags route beside it.
    common::register_tagged(&client, "shop", &shop, &["edge.route=shop.test/"]).await;
    expect_answer(&eds, listener, "shop.test", 200, "shop-1").await;

    // Nomad fails: its route and endpoints stay, Consul's changes go on.
    nomad.fail_with(Some(500));
    let more = Backend::start("api-2").await.expect("backend");
    let addr = more.addr();
    nomad.register(
        Registration::new("api", &addr.ip().to_string(), addr.port())
            .id("api-2")
            .tags(&["edge.route=api.test/"]),
    );
    let late = Backend::start("late-1").await.expect("backend");
    common::register_tagged(&client, "late", &late, &["edge.route=late.test/"]).await;
    expect_answer(&eds, listener, "late.test", 200, "late-1").await;
    for _ in 0..10 {
        let (status, body) = get(listener, "api.test").await;
        assert_eq!(status, 200, "api.test while Nomad fails: {body}");
    }
    // The cluster of a Nomad service has outlier detection by default.
    let clusters = envoy
        .admin_get("/config_dump?resource=dynamic_active_clusters")
        .await
        .expect("config dump");
    let api_cluster = clusters
        .split("\"name\": \"")
        .find(|part| part.starts_with("api\""))
        .expect("the api cluster in Envoy's config");
    assert!(api_cluster.contains("outlier_detection"), "{api_cluster}");
    drop(envoy);
}

/// Gateway mode with `--nomad-namespace '*'`: routes from the tags of two
/// namespaces' services, read from one `*` listing; a narrowed token keeps
/// the lost namespace's route and endpoints.
#[tokio::test]
async fn the_gateway_routes_every_namespace_and_keeps_the_routes_of_one_the_token_lost() {
    let (nomad, _token_dir, token_file) = nomad_with_team_token().await;
    let tagged = |service: &str, namespace: &str, backend: &Backend| {
        let addr = backend.addr();
        Registration::new(service, &addr.ip().to_string(), addr.port())
            .namespace(namespace)
            .id(backend.name())
            .tags(&[&format!("edge.route={service}.test/")])
    };
    let backends = [
        Backend::start("api-1").await.expect("backend"),
        Backend::start("shop-1").await.expect("backend"),
        Backend::start("cart-1").await.expect("backend"),
        Backend::start("late-1").await.expect("backend"),
    ];
    nomad.register(tagged("api", "a", &backends[0]));
    nomad.register(tagged("shop", "b", &backends[1]));
    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let listen = format!("web=127.0.0.1:{port}");
    let eds = nomad_only_server(
        &nomad,
        &[
            "--gateway",
            "--listener",
            &listen,
            "--nomad-namespace",
            "*",
            "--nomad-token-file",
            &token_file,
        ],
    )
    .await;
    let _envoy = gateway_envoy(&eds, port).await;
    expect_answer(&eds, listener, "api.test", 200, "api-1").await;
    expect_answer(&eds, listener, "shop.test", 200, "shop-1").await;

    // Narrowed to `b`: the query in flight answers `cart` with the old
    // rights, the listing that brings `late` leaves `a` out.
    nomad.set_token(TEAM, &["b"]);
    nomad.register(tagged("cart", "b", &backends[2]));
    expect_answer(&eds, listener, "cart.test", 200, "cart-1").await;
    nomad.register(tagged("late", "b", &backends[3]));
    expect_answer(&eds, listener, "late.test", 200, "late-1").await;
    for _ in 0..10 {
        let (status, body) = get(listener, "api.test").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "api-1"),
            "api.test after the token lost `a`\n{}",
            eds.process.log_tail()
        );
    }
}

//! Gateway mode end to end: real Consul 1.8.7, the real server with
//! `--gateway`, and a real Envoy whose bootstrap holds only the node, the
//! admin and the control-plane clusters. Every route comes from service
//! tags; every assertion is a request sent through Envoy.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::EdsServer;
use serde_json::Value;
use test_support::bootstrap::ads_only_bootstrap;
use test_support::{Backend, ConsulAgent, Envoy, eventually, free_port, http_get, http_request};

const SETTLE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Sotw,
    Delta,
}

/// The small bootstrap of docs/envoy/gateway.yaml, reduced to what a test
/// needs: node, admin (by Envoy::start), ADS over gRPC to the server.
fn bootstrap(node: &str, xds: SocketAddr, protocol: Protocol) -> String {
    ads_only_bootstrap(node, xds, matches!(protocol, Protocol::Delta))
}

use common::{consul_client as client, register_tagged as register};

/// Status and body of a request through Envoy.
async fn get(listener: SocketAddr, host: &str, path: &str) -> (u16, String) {
    match http_request("GET", listener, path, &[("host", host)], Vec::new()).await {
        Ok(response) => (response.status, response.body),
        Err(_) => (0, String::new()),
    }
}

/// Waits until `host` + `path` answers `status` with `body` (when given).
async fn expect(
    envoy: &Envoy,
    eds: &EdsServer,
    listener: SocketAddr,
    host: &str,
    path: &str,
    status: u16,
    body: Option<&str>,
) {
    let what = format!("{host}{path} to answer {status} {body:?}");
    let outcome = eventually(&what, SETTLE, Duration::from_millis(50), || async {
        let answer = get(listener, host, path).await;
        (answer.0 == status && body.is_none_or(|b| answer.1 == b)).then_some(())
    })
    .await;
    if let Err(error) = outcome {
        let last = get(listener, host, path).await;
        panic!(
            "{error}; last answer {last:?}\nEnvoy:\n{}\nserver:\n{}",
            envoy.log_tail(),
            eds.process.log_tail()
        );
    }
}

async fn debug_routes(eds: &EdsServer) -> Value {
    let response = http_get(eds.admin, "/debug/routes")
        .await
        .expect("/debug/routes");
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("JSON")
}

async fn assert_nothing_rejected(envoy: &Envoy) {
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
        "http.web.rds.web.update_rejected",
    ] {
        assert_eq!(
            envoy.stat(stat).await.expect("stats"),
            Some(0),
            "{stat}\n{}",
            envoy.log_tail()
        );
    }
}

async fn routes_follow_the_tags(protocol: Protocol) {
    let mut consul = ConsulAgent::start().await.expect("consul");
    let consul_client = client(&consul);
    let shop = Backend::start("shop-1").await.expect("backend");
    register(&consul_client, "shop", &shop, &["edge.route=shop.test/"]).await;

    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let eds = EdsServer::start(
        &consul,
        &[
            "--gateway",
            "--listener",
            &format!("web=127.0.0.1:{port}"),
            "--coalesce",
            "20ms",
        ],
    )
    .await;
    let envoy = Envoy::start(&bootstrap(&format!("gw-{port}"), eds.xds, protocol))
        .await
        .expect("Envoy starts with the small bootstrap");

    // A service registered with a tag answers at its host, nothing changed
    // in Envoy.
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/",
        200,
        Some("shop-1"),
    )
    .await;
    expect(
        &envoy,
        &eds,
        listener,
        "SHOP.test:8080",
        "/cart",
        200,
        Some("shop-1"),
    )
    .await;
    expect(&envoy, &eds, listener, "other.test", "/", 404, None).await;

    // A second service takes a path of the same host.
    let api = Backend::start("api-1").await.expect("backend");
    register(
        &consul_client,
        "api",
        &api,
        &["edge.route=shop.test/api strip=/api"],
    )
    .await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/api/items",
        200,
        Some("api-1"),
    )
    .await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/apix",
        200,
        Some("shop-1"),
    )
    .await;

    // An invalid tag and a conflicting claim are reported; every other
    // route keeps answering.
    let bad = Backend::start("bad-1").await.expect("backend");
    register(
        &consul_client,
        "bad",
        &bad,
        &["edge.route=bad.test/ timeout=banana"],
    )
    .await;
    let rival = Backend::start("rival-1").await.expect("backend");
    register(&consul_client, "rival", &rival, &["edge.route=shop.test/"]).await;
    let routes = eventually(
        "both problems reported",
        SETTLE,
        Duration::from_millis(50),
        || async {
            let routes = debug_routes(&eds).await;
            let problems = routes["problems"].as_array().cloned().unwrap_or_default();
            let kinds: Vec<String> = problems
                .iter()
                .map(|p| format!("{}:{}", p["service"], p["kind"]["kind"]))
                .collect();
            (kinds.contains(&"\"bad\":\"invalid_tag\"".to_owned())
                && kinds.contains(&"\"rival\":\"conflict\"".to_owned()))
            .then_some(routes)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", eds.process.log_tail()));
    let conflict = routes["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .find(|p| p["service"] == "rival")
        .expect("rival's problem");
    assert_eq!(
        conflict["kind"]["winner"], "shop",
        "the route already served wins"
    );
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/",
        200,
        Some("shop-1"),
    )
    .await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/api/x",
        200,
        Some("api-1"),
    )
    .await;
    assert_eq!(rival.requests(), 0, "the losing claim gets no traffic");

    // A rolling deploy: a new instance of `shop` declares another route and
    // not the old one. Instances that disagree never delete a route: both
    // are served, and the disagreement is shown.
    let shop2 = Backend::start("shop-2").await.expect("backend");
    register(&consul_client, "shop", &shop2, &["edge.route=new.test/"]).await;
    expect(&envoy, &eds, listener, "new.test", "/", 200, None).await;
    expect(&envoy, &eds, listener, "shop.test", "/", 200, None).await;
    let routes = debug_routes(&eds).await;
    let note = routes["services"]["shop"]["disagreement"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(note.contains("disagree"), "{routes:#}");
    consul_client
        .agent_service_deregister("shop-2")
        .await
        .expect("deregister");
    expect(&envoy, &eds, listener, "new.test", "/", 404, None).await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/",
        200,
        Some("shop-1"),
    )
    .await;

    // Editing the tag moves the route.
    register(&consul_client, "api", &api, &["edge.route=api.test/v2"]).await;
    expect(
        &envoy,
        &eds,
        listener,
        "api.test",
        "/v2/items",
        200,
        Some("api-1"),
    )
    .await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/api/items",
        200,
        Some("shop-1"),
    )
    .await;

    // Removing it gives 404 for that route only.
    consul_client
        .agent_service_deregister("api-1")
        .await
        .expect("deregister");
    expect(&envoy, &eds, listener, "api.test", "/v2/items", 404, None).await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/",
        200,
        Some("shop-1"),
    )
    .await;
    assert_nothing_rejected(&envoy).await;

    // Consul stopped: every route keeps answering.
    consul.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get(listener, "shop.test", "/").await,
        (200, "shop-1".to_owned())
    );
    // Consul back, empty (a dev agent keeps nothing): the empty catalog is
    // held for the reset grace while the agents re-register, and changes
    // flow again.
    consul.restart().await.expect("consul restarts");
    let consul_client = client(&consul);
    // The server read the empty catalog and holds what it had.
    eventually(
        "shop held",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async {
            let routes = debug_routes(&eds).await;
            (routes["services"]["shop"]["held"] == true).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", eds.process.log_tail()));
    assert_eq!(
        get(listener, "shop.test", "/").await,
        (200, "shop-1".to_owned())
    );
    register(&consul_client, "shop", &shop, &["edge.route=shop.test/"]).await;
    let late = Backend::start("late-1").await.expect("backend");
    register(&consul_client, "late", &late, &["edge.route=late.test/"]).await;
    expect(
        &envoy,
        &eds,
        listener,
        "late.test",
        "/",
        200,
        Some("late-1"),
    )
    .await;
    expect(
        &envoy,
        &eds,
        listener,
        "shop.test",
        "/",
        200,
        Some("shop-1"),
    )
    .await;
    assert_nothing_rejected(&envoy).await;
}

#[tokio::test]
async fn sotw_routes_follow_the_tags() {
    routes_follow_the_tags(Protocol::Sotw).await;
}

#[tokio::test]
async fn delta_routes_follow_the_tags() {
    routes_follow_the_tags(Protocol::Delta).await;
}

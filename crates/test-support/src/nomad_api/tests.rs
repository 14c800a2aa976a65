//! The stand-in against a plain HTTP client: each test states one behaviour
//! of Nomad's API that a client relies on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::*;
use crate::http::{HttpResponse, http_error, send};
use crate::http_request;
use crate::tls::TestCa;

fn socket_addr(nomad: &FakeNomad) -> SocketAddr {
    let address = nomad.address();
    let authority = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .expect("scheme");
    authority.parse().expect("socket address")
}

async fn get_with(nomad: &FakeNomad, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request("GET", socket_addr(nomad), path, headers, Vec::new())
        .await
        .expect("request answered")
}

async fn get(nomad: &FakeNomad, path: &str) -> HttpResponse {
    get_with(nomad, path, &[]).await
}

fn body(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("JSON body ({e}): {}", response.body))
}

fn nomad_index(response: &HttpResponse) -> u64 {
    response
        .headers
        .get("x-nomad-index")
        .expect("X-Nomad-Index")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number")
}

/// `GET path` on a task of its own, for queries that block.
fn spawn_get(nomad: &Arc<FakeNomad>, path: String) -> tokio::task::JoinHandle<HttpResponse> {
    let nomad = Arc::clone(nomad);
    tokio::spawn(async move { get(&nomad, &path).await })
}

/// Waits until exactly `expected` queries are blocked in the stand-in.
async fn blocked_queries_reach(nomad: &FakeNomad, expected: usize) {
    crate::eventually(
        "the count of blocked queries",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || async { (nomad.blocking_queries_in_flight() == expected).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

fn acl_nomad() -> FakeNomadOptions {
    FakeNomadOptions {
        acl: Some(
            Acl::new()
                .token("all-secret", &["*"])
                .token("default-secret", &["default"]),
        ),
        ..FakeNomadOptions::default()
    }
}

#[tokio::test]
async fn services_lists_each_name_with_the_union_of_its_tags_per_namespace() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080).tags(&["b", "a"]));
    nomad.register(Registration::new("web", "10.0.0.2", 8080).tags(&["c", "a"]));
    nomad.register(Registration::new("api", "10.0.0.3", 9090));
    nomad.register(Registration::new("db", "10.0.0.4", 5432).namespace("prod"));

    let listing = get(&nomad, "/v1/services").await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert_eq!(
        body(&listing),
        json!([{ "Namespace": "default", "Services": [
            { "ServiceName": "api", "Tags": [] },
            { "ServiceName": "web", "Tags": ["a", "b", "c"] },
        ]}])
    );
    let prod = get(&nomad, "/v1/services?namespace=prod").await;
    assert_eq!(
        body(&prod),
        json!([{ "Namespace": "prod", "Services": [{ "ServiceName": "db", "Tags": [] }]}])
    );
    let empty = get(&nomad, "/v1/services?namespace=staging").await;
    assert_eq!((empty.status, body(&empty)), (200, json!([])));
    let everything = get(&nomad, "/v1/services?namespace=*").await;
    let everything = body(&everything);
    let namespaces: Vec<&str> = everything
        .as_array()
        .expect("array")
        .iter()
        .map(|entry| entry["Namespace"].as_str().expect("namespace"))
        .collect();
    assert_eq!(namespaces, ["default", "prod"]);
}

#[tokio::test]
async fn a_service_answers_nomads_fields_and_query_meta_headers() {
    let nomad = FakeNomad::start().await.expect("start");
    let registration = Registration::new("web", "10.0.0.1", 8080)
        .tags(&["edge.route=example.org"])
        .node_id("node-1")
        .datacenter("dc2")
        .job_id("web-job")
        .alloc_id("alloc-1");
    assert_eq!(registration.id, "_nomad-task-alloc-1-app-web-http");
    let index = nomad.register(registration);
    nomad.register(Registration::new("other", "10.0.0.9", 1));

    let answer = get(&nomad, "/v1/service/web").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        body(&answer),
        json!([{
            "ID": "_nomad-task-alloc-1-app-web-http",
            "ServiceName": "web",
            "Namespace": "default",
            "NodeID": "node-1",
            "Datacenter": "dc2",
            "JobID": "web-job",
            "AllocID": "alloc-1",
            "Tags": ["edge.route=example.org"],
            "Address": "10.0.0.1",
            "Port": 8080,
            "CreateIndex": index,
            "ModifyIndex": index,
        }])
    );
    let header = |name: &str| answer.headers.get(name).map(|v| v.to_str().expect("ASCII"));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("x-nomad-knownleader"), Some("true"));
    assert_eq!(header("x-nomad-lastcontact"), Some("0"));
    assert_eq!(nomad_index(&answer), nomad.index(), "the table's index");

    let unknown = get(&nomad, "/v1/service/missing").await;
    assert_eq!((unknown.status, body(&unknown)), (200, json!([])));
}

#[tokio::test]
async fn the_index_is_the_whole_tables_and_only_real_changes_move_it() {
    let nomad = FakeNomad::start().await.expect("start");
    let fresh = get(&nomad, "/v1/service/web").await;
    assert_eq!(nomad_index(&fresh), 1, "Nomad floors the index at 1");

    let web = Registration::new("web", "10.0.0.1", 8080);
    let created = nomad.register(web.clone());
    assert_eq!(
        nomad.register(web.clone()),
        created,
        "same registration: no write"
    );
    let other = nomad.register(Registration::new("api", "10.0.0.2", 80));
    assert!(other > created);
    assert_eq!(nomad_index(&get(&nomad, "/v1/service/web").await), other);

    let moved = nomad.register(web.clone().tags(&["v2"]));
    let entry = body(&get(&nomad, "/v1/service/web").await)[0].clone();
    assert_eq!(
        (entry["CreateIndex"].as_u64(), entry["ModifyIndex"].as_u64()),
        (Some(created), Some(moved))
    );
    assert_eq!(nomad.deregister("default", "no-such-id"), moved, "no write");
    assert!(nomad.deregister("default", &web.id) > moved);
    assert_eq!(body(&get(&nomad, "/v1/service/web").await), json!([]));
}

#[tokio::test]
async fn a_blocking_query_wakes_when_its_service_changes() {
    let nomad = Arc::new(FakeNomad::start().await.expect("start"));
    let index = nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let started = Instant::now();
    let blocked = spawn_get(&nomad, format!("/v1/service/web?index={index}&wait=10s"));
    blocked_queries_reach(&nomad, 1).await;
    assert!(!blocked.is_finished(), "nothing changed yet");

    let changed = nomad.register(Registration::new("web", "10.0.0.2", 8080));
    let answer = blocked.await.expect("query task");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );
    assert_eq!(nomad_index(&answer), changed);
    assert_eq!(body(&answer).as_array().expect("array").len(), 2);
    assert_eq!(nomad.blocking_queries_in_flight(), 0);
}

#[tokio::test]
async fn a_change_to_another_service_does_not_wake_a_blocked_query_but_moves_the_next_ones_index() {
    let nomad = Arc::new(FakeNomad::start().await.expect("start"));
    let index = nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let before = body(&get(&nomad, "/v1/service/web").await);
    let started = Instant::now();
    let blocked = spawn_get(&nomad, format!("/v1/service/web?index={index}&wait=600ms"));
    blocked_queries_reach(&nomad, 1).await;
    let other = nomad.register(Registration::new("api", "10.0.0.2", 80));

    let timed_out = blocked.await.expect("query task");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "answered after {waited:?}"
    );
    // The wait plus at most a sixteenth of jitter, and some slack.
    assert!(
        waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
    assert_eq!(nomad_index(&timed_out), index, "the index of its last read");
    assert_eq!(body(&timed_out), before);

    let asked_at = Instant::now();
    let next = get(&nomad, &format!("/v1/service/web?index={index}&wait=5s")).await;
    assert!(
        asked_at.elapsed() < Duration::from_secs(2),
        "answers at once"
    );
    assert_eq!(nomad_index(&next), other, "moved by the other service");
    assert_eq!(body(&next), before, "same content");
}

#[tokio::test]
async fn a_wildcard_listing_wakes_on_a_change_in_any_namespace() {
    let nomad = Arc::new(FakeNomad::start().await.expect("start"));
    let index = nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let blocked = spawn_get(
        &nomad,
        format!("/v1/services?namespace=*&index={index}&wait=10s"),
    );
    blocked_queries_reach(&nomad, 1).await;
    let changed = nomad.register(Registration::new("db", "10.0.0.5", 5432).namespace("prod"));
    let answer = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("woken before the wait")
        .expect("query task");
    assert_eq!(nomad_index(&answer), changed);
    assert_eq!(body(&answer).as_array().expect("array").len(), 2);
}

#[tokio::test]
async fn after_a_restore_an_index_above_the_tables_waits_out_the_deadline_and_answers_lower() {
    let nomad = Arc::new(FakeNomad::start().await.expect("start"));
    for port in 1..=3 {
        nomad.register(Registration::new("web", "10.0.0.1", port));
    }
    let high = nomad.index();
    let blocked = spawn_get(&nomad, format!("/v1/service/web?index={high}&wait=500ms"));
    blocked_queries_reach(&nomad, 1).await;
    let started = Instant::now();
    nomad.reset_index(1);
    // A write after the restore still leaves the index below the query's.
    nomad.register(Registration::new("web", "10.0.0.9", 9));
    let answer = blocked.await.expect("query task");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not answered at the restore"
    );
    assert_eq!(
        nomad_index(&answer),
        2,
        "the restored index, moved by one write"
    );
    assert_eq!(body(&answer).as_array().expect("array").len(), 4);

    let entry = &body(&answer)[0];
    assert!(entry["ModifyIndex"].as_u64().expect("index") <= 2);
}

#[tokio::test]
async fn bad_index_and_wait_are_refused_with_nomads_answers() {
    let nomad = FakeNomad::start().await.expect("start");
    for (path, expected) in [
        ("/v1/services?index=x", "Invalid index"),
        ("/v1/service/web?index=-3", "Invalid index"),
        ("/v1/services?index=1&wait=5", "Invalid wait time"),
        ("/v1/service/web?wait=soon", "Invalid wait time"),
    ] {
        let answer = get(&nomad, path).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (400, expected),
            "{path}"
        );
    }
    let fine = get(&nomad, "/v1/service/web?index=0&wait=1m30s").await;
    assert_eq!(fine.status, 200, "index 0 does not block: {}", fine.body);
}

#[tokio::test]
async fn another_region_has_no_path() {
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        region: "europe".to_owned(),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("start");
    let own = get(&nomad, "/v1/services?region=europe").await;
    assert_eq!(own.status, 200, "{}", own.body);
    let other = get(&nomad, "/v1/service/web?region=global").await;
    assert_eq!(
        (other.status, other.body.as_str()),
        (500, "No path to region")
    );
}

#[tokio::test]
async fn unknown_paths_methods_and_malformed_service_paths_are_refused_as_nomad_does() {
    let nomad = FakeNomad::start().await.expect("start");
    let addr = socket_addr(&nomad);
    let request = |method: &'static str, path: &'static str| async move {
        http_request(method, addr, path, &[], Vec::new())
            .await
            .expect("answered")
    };
    let cases = [
        ("GET", "/v1/nothing", 404, ""),
        ("GET", "/v1/services/", 404, ""),
        ("POST", "/v1/services", 405, "Invalid method"),
        ("PUT", "/v1/service/web", 405, "Invalid method"),
        ("GET", "/v1/service/", 400, "missing service name"),
        ("GET", "/v1/service/web/id/extra", 400, "invalid URI"),
        (
            "GET",
            "/v1/client/allocation/abc/stats",
            404,
            "resource not found",
        ),
    ];
    for (method, path, status, text) in cases {
        let answer = request(method, path).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (status, text),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn with_acls_a_missing_or_unknown_token_is_denied() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    for headers in [
        &[][..],
        &[("x-nomad-token", "wrong-secret")][..],
        &[("authorization", "Bearer wrong-secret")][..],
    ] {
        for path in ["/v1/services", "/v1/service/web"] {
            let answer = get_with(&nomad, path, headers).await;
            assert_eq!(
                (answer.status, answer.body.as_str()),
                (403, "Permission denied"),
                "{path} with {} header(s)",
                headers.len()
            );
        }
    }
    let header = get_with(
        &nomad,
        "/v1/service/web",
        &[("x-nomad-token", "default-secret")],
    )
    .await;
    assert_eq!(header.status, 200, "{}", header.body);
    let bearer = get_with(
        &nomad,
        "/v1/service/web",
        &[("authorization", "Bearer default-secret")],
    )
    .await;
    assert_eq!(body(&bearer), body(&header));
}

#[tokio::test]
async fn a_token_reads_only_its_namespaces_and_a_wildcard_silently_drops_the_others() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    nomad.register(Registration::new("db", "10.0.0.2", 5432).namespace("prod"));
    let limited = [("x-nomad-token", "default-secret")];

    let prod = get_with(&nomad, "/v1/service/db?namespace=prod", &limited).await;
    assert_eq!(
        (prod.status, prod.body.as_str()),
        (403, "Permission denied")
    );

    let partial = get_with(&nomad, "/v1/services?namespace=*", &limited).await;
    assert_eq!(partial.status, 200, "{}", partial.body);
    assert_eq!(
        body(&partial),
        json!([{ "Namespace": "default", "Services": [{ "ServiceName": "web", "Tags": [] }]}])
    );
    let full = get_with(
        &nomad,
        "/v1/services?namespace=*",
        &[("x-nomad-token", "all-secret")],
    )
    .await;
    assert_eq!(body(&full).as_array().expect("array").len(), 2);

    let anonymous = get(&nomad, "/v1/services?namespace=*").await;
    assert_eq!((anonymous.status, body(&anonymous)), (200, json!([])));
    assert_eq!(
        nomad_index(&anonymous),
        0,
        "Nomad answers before reading the index"
    );
}

/// A narrowed token: the `*` listing drops the namespace without a word,
/// a direct read of it is a 403, and a query blocked before the change
/// keeps what it was allowed (Nomad resolves the token once per request).
#[tokio::test]
async fn a_token_narrowed_while_running_loses_its_namespace_from_the_next_request_on() {
    let nomad = Arc::new(FakeNomad::start_with(acl_nomad()).await.expect("start"));
    nomad.set_token("team-secret", &["a", "b"]);
    nomad.register(Registration::new("web", "10.0.0.1", 8080).namespace("a"));
    let index = nomad.register(Registration::new("api", "10.0.0.2", 8080).namespace("b"));
    let team = [("x-nomad-token", "team-secret")];
    let both = get_with(&nomad, "/v1/services?namespace=*", &team).await;
    assert_eq!(body(&both).as_array().expect("array").len(), 2);

    let blocked = {
        let nomad = Arc::clone(&nomad);
        tokio::spawn(async move {
            let path = format!("/v1/services?namespace=*&index={index}");
            get_with(&nomad, &path, &[("x-nomad-token", "team-secret")]).await
        })
    };
    blocked_queries_reach(&nomad, 1).await;
    nomad.set_token("team-secret", &["b"]);
    nomad.register(Registration::new("api", "10.0.0.3", 8080).namespace("b"));
    let woken = blocked.await.expect("answered");
    assert_eq!(
        body(&woken).as_array().expect("array").len(),
        2,
        "a query blocked before the change keeps its token's old rights"
    );

    let narrowed = get_with(&nomad, "/v1/services?namespace=*", &team).await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.body);
    assert_eq!(
        body(&narrowed),
        json!([{ "Namespace": "b", "Services": [{ "ServiceName": "api", "Tags": [] }]}])
    );
    let direct = get_with(&nomad, "/v1/services?namespace=a", &team).await;
    assert_eq!(
        (direct.status, direct.body.as_str()),
        (403, "Permission denied")
    );
    let service = get_with(&nomad, "/v1/service/web?namespace=a", &team).await;
    assert_eq!(service.status, 403);

    // Widened again: listed again.
    nomad.set_token("team-secret", &["a", "b"]);
    let again = get_with(&nomad, "/v1/services?namespace=*", &team).await;
    assert_eq!(body(&again).as_array().expect("array").len(), 2);
}

#[tokio::test]
async fn a_wildcard_namespace_on_one_service_matches_nothing() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let answer = get(&nomad, "/v1/service/web?namespace=*").await;
    assert_eq!((answer.status, body(&answer)), (200, json!([])));
    assert_eq!(nomad_index(&answer), nomad.index());
}

#[tokio::test]
async fn allocation_checks_answer_per_check_id_until_the_allocation_stops() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    let web = Registration::new("web", "10.0.0.1", 8080).alloc_id("alloc-1");
    nomad.register(web.clone());
    nomad.register(Registration::new("web", "10.0.0.2", 8080));
    let passing = AllocCheck::new("web", "alive", CheckStatus::Success).id("check-1");
    let pending = AllocCheck::new("web", "ready", CheckStatus::Pending)
        .id("check-2")
        .task("server")
        .mode(CheckMode::Readiness);
    nomad.set_allocation_checks("alloc-1", vec![passing.clone(), pending]);
    let token = [("x-nomad-token", "default-secret")];

    let checks = get_with(&nomad, "/v1/client/allocation/alloc-1/checks", &token).await;
    assert_eq!(checks.status, 200, "{}", checks.body);
    assert!(
        checks.headers.get("x-nomad-index").is_none(),
        "not a blocking endpoint"
    );
    assert_eq!(
        body(&checks),
        json!({
            "check-1": {
                "ID": "check-1", "Check": "alive", "Service": "web", "Group": "app",
                "Mode": "healthiness", "Status": "success", "StatusCode": 200,
                "Output": "nomad: http ok", "Timestamp": passing.timestamp,
            },
            "check-2": {
                "ID": "check-2", "Check": "ready", "Service": "web", "Group": "app",
                "Task": "server", "Mode": "readiness", "Status": "pending",
                "Output": "", "Timestamp": body(&checks)["check-2"]["Timestamp"],
            },
        })
    );
    let unknown_token = get_with(
        &nomad,
        "/v1/client/allocation/alloc-1/checks",
        &[("x-nomad-token", "wrong")],
    )
    .await;
    assert_eq!(
        (unknown_token.status, unknown_token.body.as_str()),
        (403, "ACL token not found")
    );
    let anonymous = get(&nomad, "/v1/client/allocation/alloc-1/checks").await;
    assert_eq!(anonymous.status, 403);

    let before = nomad.index();
    assert!(nomad.stop_allocation("alloc-1") > before);
    let remaining = body(&get_with(&nomad, "/v1/service/web", &token).await);
    assert_eq!(
        remaining.as_array().expect("array").len(),
        1,
        "the other allocation stays"
    );
    assert_ne!(remaining[0]["AllocID"], "alloc-1");
    let gone = get_with(&nomad, "/v1/client/allocation/alloc-1/checks", &token).await;
    assert_eq!(
        (gone.status, gone.body.as_str()),
        (404, "Unknown allocation \"alloc-1\"")
    );
}

#[tokio::test]
async fn injected_failures_and_delays_apply_to_every_request_and_all_are_recorded() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.fail_with(Some(503));
    let failed = get_with(
        &nomad,
        "/v1/services?index=0",
        &[("x-nomad-token", "s3cret")],
    )
    .await;
    assert_eq!(failed.status, 503);
    assert!(!failed.body.contains("s3cret"));
    nomad.fail_with(None);

    nomad.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    let slow = get(&nomad, "/v1/service/web").await;
    assert_eq!(slow.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    assert_eq!(
        nomad.requests(),
        [
            RecordedRequest {
                method: "GET".to_owned(),
                path: "/v1/services".to_owned(),
                query: "index=0".to_owned(),
                had_token: true,
                status: 503,
            },
            RecordedRequest {
                method: "GET".to_owned(),
                path: "/v1/service/web".to_owned(),
                query: String::new(),
                had_token: false,
                status: 200,
            },
        ]
    );
}

#[tokio::test]
async fn debug_output_names_no_token() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    let printed = format!("{nomad:?} {:?}", acl_nomad());
    assert!(printed.contains("default"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");
}

#[tokio::test]
async fn dropping_the_server_closes_its_port_and_its_blocked_connections() {
    let nomad = FakeNomad::start().await.expect("start");
    let addr = socket_addr(&nomad);
    let index = nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let blocked = tokio::spawn(async move {
        http_request(
            "GET",
            addr,
            &format!("/v1/service/web?index={index}"),
            &[],
            Vec::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(nomad);
    let outcome = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the blocked request ends with the server")
        .expect("request task");
    assert!(
        outcome.is_err(),
        "no answer from a stopped server: {outcome:?}"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "port closed");
}

#[tokio::test]
async fn a_blocked_query_whose_client_hangs_up_stops_counting() {
    use tokio::io::AsyncWriteExt;

    let nomad = FakeNomad::start().await.expect("start");
    let index = nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let mut client = TcpStream::connect(socket_addr(&nomad))
        .await
        .expect("connect");
    let request =
        format!("GET /v1/service/web?index={index}&wait=30s HTTP/1.1\r\nhost: nomad\r\n\r\n");
    client.write_all(request.as_bytes()).await.expect("write");
    blocked_queries_reach(&nomad, 1).await;
    drop(client);
    blocked_queries_reach(&nomad, 0).await;
}

/// `GET https://127.0.0.1/path` trusting `ca`, presenting `client` if given.
async fn https_get_as(
    addr: SocketAddr,
    ca: &TestCa,
    client: Option<&crate::LeafPem>,
    path: &str,
) -> crate::Result<HttpResponse> {
    let url = format!("https://{addr}{path}");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client PEM");
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| http_error(&url, e))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .map_err(|e| http_error(&url, e))?;
    send(tls, &url, "GET", &addr.to_string(), path, &[], Vec::new()).await
}

#[tokio::test]
async fn over_https_with_client_certificates_required_only_a_certified_client_is_served() {
    let ca = TestCa::new("Nomad API stand-in test CA").expect("CA");
    let server = ca.leaf(&["127.0.0.1"]).expect("server leaf");
    let client = ca.client_leaf("nomad-client").expect("client leaf");
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        tls: Some(
            FakeNomadTls::new(&server.cert_pem, &server.key_pem)
                .require_client_certificates(ca.cert_pem()),
        ),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("start");
    assert!(nomad.address().starts_with("https://127.0.0.1:"));
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let addr = socket_addr(&nomad);

    let served = https_get_as(addr, &ca, Some(&client), "/v1/service/web")
        .await
        .expect("served with a client certificate");
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(body(&served).as_array().expect("array").len(), 1);

    let refused = https_get_as(addr, &ca, None, "/v1/service/web").await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
}

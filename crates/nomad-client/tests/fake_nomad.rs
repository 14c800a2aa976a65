//! The client against `test_support::nomad_api::FakeNomad`, a stand-in for
//! Nomad 1.6.5's HTTP API: each test states one behaviour the client
//! promises.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use nomad_client::config::{
    ENV_ADDR, ENV_CACERT, ENV_CLIENT_CERT, ENV_CLIENT_KEY, ENV_NAMESPACE, ENV_REGION,
    ENV_SKIP_VERIFY, ENV_TOKEN,
};
use nomad_client::{
    Address, Backoff, CheckStatus, CheckedListing, ConfigError, Continuity, Error, NamespaceAccess,
    NomadClient, NomadConfig, RequestClass, ServiceRegistration, TlsConfig, Token, Watch,
    WatchConfig, WatchEvent,
};
use test_support::nomad_api::{
    Acl, AllocCheck, FakeNomad, FakeNomadOptions, FakeNomadTls, Registration,
};

const SECRET: &str = "5d1d2a2e-test-secret";

fn fast_watch() -> WatchConfig {
    WatchConfig {
        wait: Duration::from_secs(10),
        min_interval: Duration::from_millis(1),
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
    }
}

fn config_for(nomad: &FakeNomad) -> NomadConfig {
    NomadConfig::new(nomad.address().parse::<Address>().expect("address"))
}

fn client_for(nomad: &FakeNomad) -> NomadClient {
    NomadClient::new(config_for(nomad)).expect("valid config")
}

fn client_with_token(nomad: &FakeNomad, secret: &str) -> NomadClient {
    NomadClient::new(NomadConfig {
        token: Some(Token::new(secret).expect("token")),
        ..config_for(nomad)
    })
    .expect("valid config")
}

async fn next<T>(watch: &mut Watch<T>) -> WatchEvent<T> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .expect("watches never end")
}

/// The next event, which must be a value: its addresses and continuity.
async fn next_value(watch: &mut Watch<Vec<ServiceRegistration>>) -> (Vec<String>, Continuity) {
    match next(watch).await {
        WatchEvent::Value {
            value, continuity, ..
        } => (addresses(&value), continuity),
        WatchEvent::Degraded { error, .. } => panic!("expected a value, got an error: {error}"),
    }
}

fn addresses(registrations: &[ServiceRegistration]) -> Vec<String> {
    let mut addresses: Vec<String> = registrations
        .iter()
        .map(|r| format!("{}:{}", r.address, r.port))
        .collect();
    addresses.sort();
    addresses
}

/// The next event, which must be `Degraded`: its error and last good value.
async fn next_degraded<T>(watch: &mut Watch<T>) -> (Error, Option<std::sync::Arc<T>>) {
    match next(watch).await {
        WatchEvent::Degraded {
            error, last_good, ..
        } => (error, last_good),
        WatchEvent::Value { index, .. } => panic!("expected Degraded, got a value at {index}"),
    }
}

fn requests_to(nomad: &FakeNomad, path: &str) -> Vec<String> {
    nomad
        .requests()
        .into_iter()
        .filter(|request| request.path == path)
        .map(|request| request.query)
        .collect()
}

#[tokio::test]
async fn registrations_come_back_typed_with_every_field_nomad_sends() {
    let nomad = FakeNomad::start().await.expect("start");
    let registration = Registration::new("web", "10.0.0.1", 8080)
        .id("_nomad-task-a1-app-web-http")
        .node_id("node-1")
        .datacenter("dc2")
        .job_id("shop")
        .alloc_id("a1")
        .tags(&["v2", "edge"]);
    let index = nomad.register(registration);
    nomad.register(Registration::new("api", "10.0.0.9", 9090));

    let web = client_for(&nomad)
        .service("web", "default")
        .await
        .expect("read");
    assert_eq!(
        web.value,
        [ServiceRegistration {
            id: "_nomad-task-a1-app-web-http".to_owned(),
            service_name: "web".to_owned(),
            namespace: "default".to_owned(),
            node_id: "node-1".to_owned(),
            datacenter: "dc2".to_owned(),
            job_id: "shop".to_owned(),
            alloc_id: "a1".to_owned(),
            tags: vec!["v2".to_owned(), "edge".to_owned()],
            address: "10.0.0.1".to_owned(),
            port: 8080,
            create_index: index,
            modify_index: index,
        }]
    );
    assert_eq!(web.meta.index, Some(nomad.index()), "the table's index");
    assert_eq!(web.meta.known_leader, Some(true));
    assert_eq!(web.meta.last_contact, Some(Duration::ZERO));
}

#[tokio::test]
async fn a_blocking_watch_wakes_on_a_change_of_its_service() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let client = client_for(&nomad);
    let mut watch = client.watch_service("web", "default", fast_watch());
    assert_eq!(
        next_value(&mut watch).await,
        (vec!["10.0.0.1:8080".to_owned()], Continuity::Initial)
    );

    let changed = tokio::spawn(async move {
        let event = next_value(&mut watch).await;
        (event, watch)
    });
    test_support::eventually(
        "the watch's blocking query",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || async { (nomad.blocking_queries_in_flight() == 1).then_some(()) },
    )
    .await
    .expect("blocked");
    nomad.register(Registration::new("web", "10.0.0.2", 8080));
    let ((addresses, continuity), _watch) = changed.await.expect("watch task");
    assert_eq!(addresses, ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(continuity, Continuity::Advanced);
    let queries = requests_to(&nomad, "/v1/service/web");
    assert!(
        queries[1].contains("index=1") && queries[1].contains("wait=10000ms"),
        "the second request blocks on the first answer's index: {queries:?}"
    );
}

#[tokio::test]
async fn another_services_change_moves_the_index_but_yields_no_event() {
    let nomad = FakeNomad::start().await.expect("start");
    let first = nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let client = client_for(&nomad);
    let mut watch = client.watch_service("web", "default", fast_watch());
    next_value(&mut watch).await;

    // While no query is in flight, another service changes: the next
    // blocking query carries an index the table has passed and returns at
    // once, with web's registrations unchanged.
    let moved = nomad.register(Registration::new("api", "10.0.0.9", 9090));
    assert!(moved > first);
    let quiet = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(quiet.is_err(), "no event for api's change: {quiet:?}");
    // The query on the old index was answered (the stand-in records a
    // request when it answers it) without a word to the consumer, and the
    // watch blocks again, now on the moved index.
    let queries = requests_to(&nomad, "/v1/service/web");
    assert!(
        queries
            .iter()
            .any(|q| q.contains(&format!("index={first}&"))),
        "the query on the old index was answered: {queries:?}"
    );
    assert_eq!(nomad.blocking_queries_in_flight(), 1);

    nomad.register(Registration::new("web", "10.0.0.2", 8080));
    let (addresses, continuity) = next_value(&mut watch).await;
    assert_eq!(addresses, ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(continuity, Continuity::Advanced);
}

#[tokio::test]
async fn an_index_reset_breaks_continuity_even_with_the_same_content() {
    let nomad = FakeNomad::start().await.expect("start");
    for port in 8080..8085 {
        nomad.register(Registration::new("web", "10.0.0.1", port));
    }
    let client = client_for(&nomad);
    let config = WatchConfig {
        wait: Duration::from_millis(300),
        ..fast_watch()
    };
    let mut watch = client.watch_service("web", "default", config);
    next_value(&mut watch).await;
    // A snapshot restore: the table's index goes back below the watch's.
    nomad.reset_index(2);
    let event = next(&mut watch).await;
    match event {
        WatchEvent::Value {
            value,
            index,
            continuity,
            ..
        } => {
            assert_eq!(continuity, Continuity::Reset);
            assert!(continuity.breaks_continuity());
            assert_eq!(index, 2);
            assert_eq!(value.len(), 5, "the registrations are all still there");
        }
        WatchEvent::Degraded { error, .. } => panic!("{error}"),
    }
}

#[tokio::test]
async fn a_500_is_degraded_with_the_last_good_value_kept_then_recovers() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let client = client_for(&nomad);
    let mut watch = client.watch_service("web", "default", fast_watch());
    next_value(&mut watch).await;

    nomad.fail_with(Some(500));
    let (error, last_good) = next_degraded(&mut watch).await;
    assert!(
        matches!(error, Error::Status { status: 500, ref endpoint, .. } if endpoint == "GET /v1/service/web"),
        "{error:?}"
    );
    assert_eq!(
        addresses(&last_good.expect("a last good value")),
        ["10.0.0.1:8080"]
    );

    nomad.fail_with(None);
    let mut recovered = None;
    for _ in 0..20 {
        if let WatchEvent::Value { continuity, .. } = next(&mut watch).await {
            recovered = Some(continuity);
            break;
        }
    }
    assert_eq!(
        recovered,
        Some(Continuity::Recovered { index_moved: false })
    );
}

#[tokio::test]
async fn a_403_is_degraded_with_the_last_good_value_kept() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let client = client_for(&nomad);
    let mut watch = client.watch_service("web", "default", fast_watch());
    next_value(&mut watch).await;
    nomad.fail_with(Some(403));
    let (error, last_good) = next_degraded(&mut watch).await;
    assert!(matches!(error, Error::PermissionDenied { .. }), "{error:?}");
    assert_eq!(error.status(), Some(403));
    assert_eq!(last_good.map(|v| v.len()), Some(1));
}

#[tokio::test]
async fn an_unreachable_agent_is_degraded_with_the_last_good_value_kept() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let client = client_for(&nomad);
    let mut watch = client.watch_service("web", "default", fast_watch());
    next_value(&mut watch).await;
    drop(nomad);
    let (error, last_good) = next_degraded(&mut watch).await;
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert_eq!(
        addresses(&last_good.expect("kept")),
        ["10.0.0.1:8080"],
        "a Nomad error never empties the cluster"
    );
    // The retries keep failing, and keep the value.
    let (_, last_good) = next_degraded(&mut watch).await;
    assert!(last_good.is_some());
}

#[tokio::test]
async fn a_request_past_its_deadline_is_a_timeout() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.set_delay(Duration::from_secs(2));
    let client = NomadClient::new(NomadConfig {
        request_timeout: Duration::from_millis(200),
        ..config_for(&nomad)
    })
    .expect("valid");
    let error = client.services("default").await.expect_err("too slow");
    assert!(
        matches!(error, Error::Timeout { after, .. } if after == Duration::from_millis(200)),
        "{error:?}"
    );
}

fn acl_nomad() -> FakeNomadOptions {
    FakeNomadOptions {
        acl: Some(
            Acl::new()
                .token(SECRET, &["default", "team-a"])
                .token("nothing-secret", &[]),
        ),
        ..FakeNomadOptions::default()
    }
}

async fn three_namespaces(nomad: &FakeNomad) {
    nomad.register(Registration::new("web", "10.0.0.1", 8080).tags(&["b", "a"]));
    nomad.register(Registration::new("web", "10.0.1.1", 8080).namespace("team-a"));
    nomad.register(Registration::new("web", "10.0.2.1", 8080).namespace("secret"));
    nomad.register(Registration::new("api", "10.0.0.9", 9090));
}

#[tokio::test]
async fn namespaces_one_or_all_and_the_silent_narrowing_of_star() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    three_namespaces(&nomad).await;
    let client = client_with_token(&nomad, SECRET);

    let default = client.services("default").await.expect("default");
    assert_eq!(default.value.len(), 1);
    let names: Vec<&str> = default.value[0]
        .services
        .iter()
        .map(|s| s.service_name.as_str())
        .collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(default.value[0].services[1].tags, ["a", "b"]);

    // `*`: every namespace the token may read, and `secret` dropped
    // without a word.
    let all = client.services("*").await.expect("all readable");
    let namespaces: Vec<&str> = all.value.iter().map(|n| n.namespace.as_str()).collect();
    assert_eq!(namespaces, ["default", "team-a"]);
    // What the client offers to see the narrowing: ask per namespace.
    assert_eq!(
        client
            .namespace_access(&["default", "team-a", "secret"])
            .await
            .expect("answers"),
        NamespaceAccess {
            readable: vec!["default".to_owned(), "team-a".to_owned()],
            denied: vec!["secret".to_owned()],
        }
    );
    let denied = client.services("secret").await.expect_err("403");
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "{denied:?}"
    );

    // A token that may read nothing gets `[]` at index 0 for `*`: reported
    // as a denial, not as "no services".
    let nothing = client_with_token(&nomad, "nothing-secret");
    let error = nothing.services("*").await.expect_err("nothing readable");
    assert!(matches!(error, Error::PermissionDenied { .. }), "{error:?}");
}

/// The `*` trap, checked: a namespace that vanishes from the listing is
/// read directly; denied, it is kept at its last services; empty, it goes.
#[tokio::test]
async fn the_checked_star_watch_keeps_a_namespace_the_token_lost_and_drops_one_that_emptied() {
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        acl: Some(Acl::new().token(SECRET, &["a", "b"])),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("start");
    nomad.register(
        Registration::new("web", "10.0.0.1", 8080)
            .namespace("a")
            .id("web-a"),
    );
    nomad.register(
        Registration::new("api", "10.0.0.2", 8080)
            .namespace("b")
            .id("api-b"),
    );
    let client = client_with_token(&nomad, SECRET);
    let mut watch = client.watch_all_namespaces(fast_watch());
    let mut next_listing = async || {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event within 10 s")
            .expect("watches never end");
        match event {
            WatchEvent::Value { value, .. } => value,
            WatchEvent::Degraded { error, .. } => panic!("expected a listing, got {error}"),
        }
    };
    let services = |listing: &CheckedListing| -> Vec<String> {
        listing
            .namespaces
            .iter()
            .flat_map(|n| {
                n.services
                    .iter()
                    .map(move |s| format!("{}/{}", n.namespace, s.service_name))
            })
            .collect()
    };
    let first = next_listing().await;
    assert_eq!(services(&first), ["a/web", "b/api"]);
    assert!(first.held.is_empty());

    // Narrowed to `b`: the listing drops `a` without a word, and the
    // direct read of `a` is a 403, so `a` is kept at what it had.
    nomad.set_token(SECRET, &["b"]);
    nomad.register(Registration::new("db", "10.0.0.3", 8080).namespace("b"));
    let held = next_listing().await;
    assert_eq!(services(&held), ["a/web", "b/api", "b/db"]);
    assert_eq!(held.held.keys().collect::<Vec<_>>(), ["a"]);
    assert!(
        matches!(held.held["a"], Error::PermissionDenied { .. }),
        "{:?}",
        held.held
    );
    let direct: Vec<u16> = nomad
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/services" && r.query == "namespace=a")
        .map(|r| r.status)
        .collect();
    assert_eq!(direct, [403], "one direct read of the vanished namespace");

    // The token gets `a` back after `a` emptied: the direct read says it
    // is empty, and that is believed.
    nomad.set_token(SECRET, &["a", "b"]);
    nomad.deregister("a", "web-a");
    nomad.register(Registration::new("cache", "10.0.0.4", 8080).namespace("b"));
    let emptied = next_listing().await;
    assert_eq!(services(&emptied), ["b/api", "b/cache", "b/db"]);
    assert!(emptied.held.is_empty());
}

#[tokio::test]
async fn star_is_refused_for_one_service_before_anything_is_sent() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let error = client_for(&nomad)
        .service("web", "*")
        .await
        .expect_err("not a wildcard here");
    assert!(matches!(error, Error::InvalidRequest { .. }), "{error:?}");
    assert!(nomad.requests().is_empty(), "{:?}", nomad.requests());
}

#[tokio::test]
async fn several_namespaces_are_watched_one_query_each_and_fail_alone() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    three_namespaces(&nomad).await;
    let client = client_with_token(&nomad, SECRET);
    let mut watch = client.watch_service_in(
        "web",
        ["default", "team-a", "secret", "default"],
        fast_watch(),
    );
    let mut first: HashMap<String, Result<Vec<String>, Error>> = HashMap::new();
    while first.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("events")
            .expect("never ends");
        let outcome = match event.event {
            WatchEvent::Value { value, .. } => Ok(addresses(&value)),
            WatchEvent::Degraded { error, .. } => Err(error),
        };
        first.entry(event.namespace.to_string()).or_insert(outcome);
    }
    assert_eq!(
        first["default"].as_ref().expect("readable"),
        &["10.0.0.1:8080"]
    );
    assert_eq!(
        first["team-a"].as_ref().expect("readable"),
        &["10.0.1.1:8080"]
    );
    assert!(
        matches!(first["secret"], Err(Error::PermissionDenied { .. })),
        "{:?}",
        first["secret"]
    );
    let mut queried: Vec<String> = requests_to(&nomad, "/v1/service/web")
        .into_iter()
        .filter_map(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix("namespace=").map(str::to_owned))
        })
        .collect();
    queried.sort();
    queried.dedup();
    assert_eq!(queried, ["default", "secret", "team-a"]);
}

#[tokio::test]
async fn the_region_is_sent_and_another_region_is_an_error() {
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        region: "eu".to_owned(),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let in_region = NomadClient::new(NomadConfig {
        region: Some("eu".to_owned()),
        ..config_for(&nomad)
    })
    .expect("valid");
    assert_eq!(
        in_region
            .service("web", "default")
            .await
            .expect("read")
            .value
            .len(),
        1
    );
    assert!(requests_to(&nomad, "/v1/service/web")[0].contains("region=eu"));

    let elsewhere = NomadClient::new(NomadConfig {
        region: Some("us".to_owned()),
        ..config_for(&nomad)
    })
    .expect("valid");
    let error = elsewhere
        .service("web", "default")
        .await
        .expect_err("no path");
    assert!(
        matches!(error, Error::Status { status: 500, ref body, .. } if body.contains("No path to region")),
        "{error:?}"
    );
}

#[tokio::test]
async fn https_with_a_ca_and_a_client_certificate() {
    let ca = test_support::TestCa::new("nomad-client test CA").expect("CA");
    let server = ca.leaf(&["127.0.0.1"]).expect("server leaf");
    let client_leaf = ca.client_leaf("nomad-client").expect("client leaf");
    let nomad = FakeNomad::start_with(FakeNomadOptions {
        tls: Some(
            FakeNomadTls::new(&server.cert_pem, &server.key_pem)
                .require_client_certificates(ca.cert_pem()),
        ),
        ..FakeNomadOptions::default()
    })
    .await
    .expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let tls = TlsConfig {
        ca_cert: Some(write("ca.pem", ca.cert_pem())),
        client_cert: Some(write("client.pem", &client_leaf.cert_pem)),
        client_key: Some(write("client-key.pem", &client_leaf.key_pem)),
        ..TlsConfig::default()
    };
    let client = NomadClient::new(NomadConfig {
        tls: tls.clone(),
        ..config_for(&nomad)
    })
    .expect("valid");
    assert!(client.address().to_string().starts_with("https://"));
    let web = client.service("web", "default").await.expect("served");
    assert_eq!(addresses(&web.value), ["10.0.0.1:8080"]);

    let anonymous = NomadClient::new(NomadConfig {
        tls: TlsConfig {
            client_cert: None,
            client_key: None,
            ..tls
        },
        ..config_for(&nomad)
    })
    .expect("valid");
    let error = anonymous
        .service("web", "default")
        .await
        .expect_err("refused without a certificate");
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
}

#[tokio::test]
async fn the_token_travels_only_in_the_header() {
    let nomad = FakeNomad::start_with(acl_nomad()).await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    let alloc = "0b7e5a43-alloc";
    nomad.register(Registration::new("api", "10.0.0.2", 80).alloc_id(alloc));
    nomad.set_allocation_checks(
        alloc,
        vec![AllocCheck::new(
            "api",
            "alive",
            test_support::nomad_api::CheckStatus::Success,
        )],
    );
    let client = client_with_token(&nomad, SECRET);
    client.services("*").await.expect("list");
    client.allocation_checks(alloc).await.expect("checks");
    let mut watch = client.watch_service("web", "default", fast_watch());
    next_value(&mut watch).await;
    nomad.register(Registration::new("web", "10.0.0.3", 8080));
    next_value(&mut watch).await;
    drop(watch);

    let requests = nomad.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    for request in &requests {
        assert!(request.had_token, "{request:?}");
        assert!(!request.query.contains(SECRET), "{request:?}");
        assert!(!request.path.contains(SECRET), "{request:?}");
        assert_eq!(request.status, 200, "{request:?}");
    }
    assert!(!format!("{client:?}").contains(SECRET));

    // Without the token, the same agent refuses.
    let error = client_for(&nomad)
        .service("web", "default")
        .await
        .expect_err("anonymous");
    assert!(matches!(error, Error::PermissionDenied { .. }), "{error:?}");
}

#[tokio::test]
async fn allocation_checks_are_read_and_an_unknown_allocation_is_not_found() {
    let nomad = FakeNomad::start().await.expect("start");
    let alloc = "5f1c0e2d-alloc";
    nomad.register(Registration::new("web", "10.0.0.1", 8080).alloc_id(alloc));
    nomad.set_allocation_checks(
        alloc,
        vec![
            AllocCheck::new(
                "web",
                "ready",
                test_support::nomad_api::CheckStatus::Failure,
            )
            .id("c1"),
        ],
    );
    let client = client_for(&nomad);
    let checks = client.allocation_checks(alloc).await.expect("checks");
    let check = &checks["c1"];
    assert_eq!(
        (
            check.status,
            check.status_code,
            check.service.as_str(),
            check.check.as_str()
        ),
        (CheckStatus::Failure, 503, "web", "ready")
    );
    let error = client
        .allocation_checks("no-such-alloc")
        .await
        .expect_err("unknown");
    assert!(
        matches!(error, Error::NotFound { ref endpoint, .. } if endpoint == "GET /v1/client/allocation/no-such-alloc/checks"),
        "{error:?}"
    );
}

#[tokio::test]
async fn blocking_queries_share_one_budget_in_fifo_order() {
    let nomad = FakeNomad::start().await.expect("start");
    nomad.register(Registration::new("web", "10.0.0.1", 8080));
    nomad.register(Registration::new("api", "10.0.0.2", 80));
    let client = NomadClient::new(NomadConfig {
        max_blocking_queries: 1,
        ..config_for(&nomad)
    })
    .expect("valid");
    let mut web = client.watch_service("web", "default", fast_watch());
    let mut api = client.watch_service("api", "default", fast_watch());
    next_value(&mut web).await;
    next_value(&mut api).await;
    let web = tokio::spawn(async move { web.next().await.map(|_| ()) });
    let api = tokio::spawn(async move { api.next().await.map(|_| ()) });
    test_support::eventually(
        "one query blocked and one queued",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || async {
            (nomad.blocking_queries_in_flight() == 1
                && client.metrics().requests_queued(RequestClass::Blocking) == 1)
                .then_some(())
        },
    )
    .await
    .expect("the budget holds the second query back");
    web.abort();
    api.abort();
}

fn from_vars(vars: &[(&str, &str)]) -> Result<NomadConfig, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    NomadConfig::from_lookup(|name| vars.get(name).cloned())
}

#[test]
fn the_environment_is_read_like_nomads_cli() {
    let config = from_vars(&[
        (ENV_ADDR, "https://nomad.example:4646"),
        (ENV_TOKEN, SECRET),
        (ENV_REGION, "eu"),
        (ENV_NAMESPACE, "team-a"),
        (ENV_CACERT, "/etc/nomad/ca.pem"),
        (ENV_CLIENT_CERT, "/etc/nomad/cli.pem"),
        (ENV_CLIENT_KEY, "/etc/nomad/cli-key.pem"),
        (ENV_SKIP_VERIFY, "false"),
    ])
    .expect("valid");
    assert_eq!(config.address.to_string(), "https://nomad.example:4646");
    assert_eq!(config.token, Some(Token::new(SECRET).expect("token")));
    assert_eq!(config.region.as_deref(), Some("eu"));
    assert_eq!(config.namespace, "team-a");
    assert_eq!(
        config.tls.client_key.as_deref(),
        Some(Path::new("/etc/nomad/cli-key.pem"))
    );
    assert!(!format!("{config:?}").contains(SECRET));

    let defaults = from_vars(&[]).expect("valid");
    assert_eq!(defaults.address.to_string(), "http://127.0.0.1:4646");
    assert_eq!(
        (defaults.namespace.as_str(), defaults.region),
        ("default", None)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").expect("write");
    let config = from_vars(&[(ENV_TOKEN, SECRET)])
        .expect("valid")
        .with_token_file(&file)
        .expect("readable");
    assert_eq!(config.token, Some(Token::new("from-file").expect("token")));
}

#[test]
fn environment_errors_name_the_variable_or_file_at_fault() {
    let error = from_vars(&[(ENV_ADDR, "ftp://nomad:4646")]).expect_err("bad scheme");
    assert!(matches!(
        error,
        ConfigError::InvalidAddress { name: ENV_ADDR, .. }
    ));
    assert!(error.to_string().contains("NOMAD_ADDR"), "{error}");

    let error = from_vars(&[(ENV_SKIP_VERIFY, "true")]).expect_err("insecure");
    assert!(matches!(error, ConfigError::InsecureTls));
    let error = from_vars(&[(ENV_SKIP_VERIFY, "perhaps")]).expect_err("not a bool");
    assert!(error.to_string().contains("NOMAD_SKIP_VERIFY"), "{error}");

    let error = from_vars(&[(ENV_CLIENT_CERT, "/etc/nomad/cli.pem")]).expect_err("no key");
    assert!(matches!(error, ConfigError::IncompleteClientIdentity));
    assert!(error.to_string().contains("NOMAD_CLIENT_KEY"), "{error}");

    let error = from_vars(&[(ENV_TOKEN, "bad\nsecret-part")]).expect_err("control char");
    let text = error.to_string();
    assert!(
        text.contains("NOMAD_TOKEN") && !text.contains("secret-part"),
        "{text}"
    );

    let error = NomadConfig::default()
        .with_token_file(Path::new("/nonexistent/nomad-token"))
        .expect_err("missing file");
    assert!(matches!(error, ConfigError::TokenFile { .. }));
    assert!(
        error.to_string().contains("/nonexistent/nomad-token"),
        "{error}"
    );

    let error = NomadClient::new(NomadConfig {
        tls: TlsConfig {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        },
        ..NomadConfig::new("https://127.0.0.1:4646".parse().expect("address"))
    })
    .expect_err("missing CA");
    let text = error.to_string();
    assert!(
        text.contains("/nonexistent/ca.pem") && text.contains("NOMAD_CACERT"),
        "{text}"
    );
}

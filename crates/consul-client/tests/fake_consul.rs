//! The client against an in-process fake agent, for faults a real Consul
//! cannot produce on demand.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{FakeConsul, Recorded, Reply, health_body, lock, scripted};
use consul_client::watch::{Watch, watch};
use consul_client::{
    Address, Backoff, Client, ClientConfig, Continuity, Error, HealthFilter, HealthState,
    QueryOptions, RequestClass, ServiceEntry, TlsConfig, Token, WatchConfig, WatchEvent,
};
use futures::StreamExt;
use tokio::time::Instant;

/// Generous: only guards against a hang, never measures anything.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn config_for(fake: &FakeConsul) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(10),
        blocking_timeout_margin: Duration::from_secs(5),
        ..ClientConfig::new(fake.http_url().parse().expect("valid address"))
    }
}

fn client_for(fake: &FakeConsul) -> Client {
    Client::new(config_for(fake)).expect("valid config")
}

fn fast_watch() -> WatchConfig {
    WatchConfig {
        wait: Duration::from_secs(30),
        min_interval: Duration::from_millis(5),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_secs(1),
        },
        ..WatchConfig::default()
    }
}

async fn next<T>(watch: &mut Watch<T>) -> WatchEvent<T> {
    tokio::time::timeout(HANG_GUARD, watch.next())
        .await
        .expect("the watch yields an event")
        .expect("a watch never ends")
}

fn ids(entries: &[ServiceEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.service.id.as_str()).collect()
}

/// The next event must be a value; returns its index, instance IDs and
/// continuity.
async fn next_value(watch: &mut Watch<Vec<ServiceEntry>>) -> (u64, Vec<String>, Continuity) {
    match next(watch).await {
        WatchEvent::Value {
            value,
            index,
            continuity,
            ..
        } => (
            index,
            ids(&value).into_iter().map(str::to_owned).collect(),
            continuity,
        ),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn indexes(requests: &[Recorded]) -> Vec<Option<u64>> {
    requests.iter().map(Recorded::index).collect()
}

#[tokio::test]
async fn an_index_going_backwards_resets_to_zero_then_continues() {
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(10), health_body(&[("a", 1)])),
        Reply::json(Some(12), health_body(&[("a", 1), ("b", 2)])),
        // The agent lost its state: a lower index, with the data it has now.
        Reply::json(Some(3), health_body(&[("c", 3)])),
        Reply::json(Some(3), health_body(&[("c", 3)])),
        Reply::json(Some(4), health_body(&[("c", 3), ("d", 4)])),
    ]))
    .await;
    let mut watch = client_for(&fake).watch_health_service("web", HealthFilter::All, fast_watch());

    assert_eq!(
        next_value(&mut watch).await,
        (10, vec!["a".into()], Continuity::Initial)
    );
    assert_eq!(
        next_value(&mut watch).await,
        (12, vec!["a".into(), "b".into()], Continuity::Advanced)
    );
    assert_eq!(
        next_value(&mut watch).await,
        (3, vec!["c".into()], Continuity::Reset),
        "the event says the index went backwards"
    );
    // The plain re-read at index 3 is no change; the next event is index 4.
    assert_eq!(
        next_value(&mut watch).await,
        (4, vec!["c".into(), "d".into()], Continuity::Advanced)
    );

    let requests = fake.requests();
    assert_eq!(
        indexes(&requests[..5]),
        [None, Some(10), Some(12), None, Some(3)],
        "after the index went backwards the watch re-reads without an index, then blocks on the new one"
    );
}

/// Consul 1.11+ answers a read its token may not fully see with 200, the
/// entries it may see (often none) and a header saying so: the watch passes
/// that on, so no consumer takes the answer for the whole truth.
#[tokio::test]
async fn an_answer_filtered_by_acls_says_so_in_its_meta() {
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(10), health_body(&[("a", 1)])),
        Reply::json(Some(11), "[]").header("X-Consul-Results-Filtered-By-ACLs", "true"),
    ]))
    .await;
    let mut watch = client_for(&fake).watch_health_service("web", HealthFilter::All, fast_watch());
    let mut filtered = Vec::new();
    for _ in 0..2 {
        match next(&mut watch).await {
            WatchEvent::Value { value, meta, .. } => {
                filtered.push((ids(&value).len(), meta.results_filtered_by_acls));
            }
            other => panic!("expected a value, got {other:?}"),
        }
    }
    assert_eq!(filtered, [(1, false), (0, true)]);
}

#[tokio::test]
async fn a_missing_or_zero_index_is_blocked_on_as_one() {
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(None, health_body(&[("a", 1)])),
        Reply::json(Some(0), health_body(&[("a", 1)])),
        Reply::json(Some(2), health_body(&[("b", 2)])),
    ]))
    .await;
    let mut watch = client_for(&fake).watch_health_service("web", HealthFilter::All, fast_watch());

    assert_eq!(
        next_value(&mut watch).await,
        (1, vec!["a".into()], Continuity::Initial)
    );
    assert_eq!(
        next_value(&mut watch).await,
        (2, vec!["b".into()], Continuity::Advanced)
    );
    assert_eq!(indexes(&fake.requests()[..3]), [None, Some(1), Some(1)]);
}

#[tokio::test]
async fn an_unchanged_index_after_a_timeout_yields_nothing() {
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(5), health_body(&[("a", 1)])),
        // Two blocking queries that ran out their wait with no change.
        Reply::json(Some(5), health_body(&[("a", 1)])),
        Reply::json(Some(5), health_body(&[("a", 1)])),
        Reply::json(Some(6), health_body(&[("b", 2)])),
    ]))
    .await;
    let mut watch = client_for(&fake).watch_health_service("web", HealthFilter::All, fast_watch());

    assert_eq!(
        next_value(&mut watch).await,
        (5, vec!["a".into()], Continuity::Initial)
    );
    // Were the unchanged answers yielded, this would be index 5 again.
    assert_eq!(
        next_value(&mut watch).await,
        (6, vec!["b".into()], Continuity::Advanced)
    );
    assert_eq!(
        indexes(&fake.requests()[..4]),
        [None, Some(5), Some(5), Some(5)]
    );
}

#[tokio::test]
async fn failures_back_off_keep_the_last_value_and_recover() {
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(5), health_body(&[("a", 1)])),
        Reply::status(500, "rpc error: No cluster leader"),
        Reply::status(500, "rpc error: No cluster leader"),
        Reply::reset(),
        Reply::status(500, "rpc error: No cluster leader"),
        Reply::json(Some(6), health_body(&[("a", 1), ("b", 2)])),
    ]))
    .await;
    let base = Duration::from_millis(100);
    let config = WatchConfig {
        backoff: Backoff {
            base,
            max: Duration::from_secs(10),
        },
        ..fast_watch()
    };
    let mut watch = client_for(&fake).watch_health_service("web", HealthFilter::All, config);

    assert_eq!(
        next_value(&mut watch).await,
        (5, vec!["a".into()], Continuity::Initial)
    );
    let mut advertised = Vec::new();
    for attempt in 1..=4u32 {
        match next(&mut watch).await {
            WatchEvent::Degraded {
                last_good,
                error,
                failures,
                retry_in,
            } => {
                let last_good = last_good.expect("the last good value is kept");
                assert_eq!(ids(&last_good), ["a"], "never replaced by nothing");
                assert_eq!(failures, attempt);
                if attempt == 3 {
                    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
                } else {
                    assert!(
                        matches!(error, Error::Status { status: 500, .. }),
                        "{error:?}"
                    );
                }
                let ceiling = base * 2u32.pow(attempt - 1);
                assert!(
                    retry_in >= ceiling / 2 && retry_in <= ceiling,
                    "attempt {attempt}: {retry_in:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
                advertised.push(retry_in);
            }
            other => panic!("expected Degraded, got {other:?}"),
        }
    }
    match next(&mut watch).await {
        WatchEvent::Value {
            value,
            index,
            continuity,
            ..
        } => {
            assert_eq!(continuity, Continuity::Recovered { index_moved: true });
            assert_eq!(index, 6);
            assert_eq!(ids(&value), ["a", "b"]);
        }
        other => panic!("expected the recovered value, got {other:?}"),
    }

    // The watch really waited: each retry arrived at least the advertised
    // delay after the failed attempt, and the waits grew.
    let arrivals: Vec<Instant> = fake.requests().iter().map(|r| r.arrived).collect();
    let gaps: Vec<Duration> = (1..=4).map(|i| arrivals[i + 1] - arrivals[i]).collect();
    for (gap, retry_in) in gaps.iter().zip(&advertised) {
        assert!(
            gap >= retry_in,
            "retried after {gap:?}, before the advertised {retry_in:?}"
        );
    }
    assert!(gaps[3] > gaps[0], "backoff did not grow: {gaps:?}");
    println!("backoff gaps between attempts: {gaps:?}");
    // The failed blocking query was on 5; retries are plain reads, so an
    // agent that lost its state answers at once instead of holding them.
    assert_eq!(
        indexes(&fake.requests()[1..6]),
        [Some(5), None, None, None, None]
    );
}

#[tokio::test]
async fn an_answer_slower_than_the_deadline_is_a_timeout_then_a_retry() {
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(5), health_body(&[("a", 1)])),
        Reply::json(Some(6), health_body(&[("late", 9)])).delayed(Duration::from_secs(30)),
        Reply::json(Some(7), health_body(&[("b", 2)])),
    ]))
    .await;
    let client = Client::new(ClientConfig {
        blocking_timeout_margin: Duration::from_millis(100),
        ..config_for(&fake)
    })
    .expect("valid config");
    let wait = Duration::from_millis(200);
    let config = WatchConfig {
        wait,
        ..fast_watch()
    };
    let mut watch = client.watch_health_service("web", HealthFilter::All, config);

    assert_eq!(
        next_value(&mut watch).await,
        (5, vec!["a".into()], Continuity::Initial)
    );
    match next(&mut watch).await {
        WatchEvent::Degraded {
            error: Error::Timeout { after, endpoint },
            last_good,
            ..
        } => {
            // wait + wait/16 (Consul's jitter) + the margin.
            assert_eq!(after, wait + wait / 16 + Duration::from_millis(100));
            assert_eq!(endpoint, "GET /v1/health/service/web");
            assert!(last_good.is_some());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    match next(&mut watch).await {
        WatchEvent::Value {
            value,
            index,
            continuity: Continuity::Recovered { .. },
            ..
        } => {
            assert_eq!(index, 7);
            assert_eq!(ids(&value), ["b"]);
        }
        other => panic!("expected the recovered value, got {other:?}"),
    }

    // A non-blocking request has its own deadline.
    let slow =
        FakeConsul::start(|_| Reply::json(Some(1), "{}").delayed(Duration::from_secs(30))).await;
    let client = Client::new(ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..config_for(&slow)
    })
    .expect("valid config");
    let error = client.agent_self().await.expect_err("too slow");
    assert!(error.is_timeout(), "{error:?}");
}

#[tokio::test]
async fn malformed_json_is_an_error_naming_the_field() {
    let bad = r#"[{"Node": {"Node": 5, "Address": "10.0.0.1"},
                  "Service": {"ID": "a", "Service": "web", "Port": 1}, "Checks": []}]"#;
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(5), bad),
        Reply::json(Some(5), health_body(&[("a", 1)])),
        Reply::json(Some(6), bad),
        Reply::json(Some(7), health_body(&[("b", 2)])),
    ]))
    .await;
    let client = client_for(&fake);

    let error = client
        .health_service("web", HealthFilter::All, &QueryOptions::default())
        .await
        .expect_err("a number is not a node name");
    match &error {
        Error::Decode { endpoint, path, .. } => {
            assert_eq!(endpoint, "GET /v1/health/service/web");
            assert_eq!(path, "[0].Node.Node");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(error.to_string().contains("[0].Node.Node"), "{error}");

    // In a watch, a malformed answer degrades it; the last value stays.
    let mut watch = client.watch_health_service("web", HealthFilter::All, fast_watch());
    assert_eq!(
        next_value(&mut watch).await,
        (5, vec!["a".into()], Continuity::Initial)
    );
    match next(&mut watch).await {
        WatchEvent::Degraded {
            error: Error::Decode { path, .. },
            last_good: Some(last_good),
            ..
        } => {
            assert_eq!(path, "[0].Node.Node");
            assert_eq!(ids(&last_good), ["a"]);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(matches!(
        next(&mut watch).await,
        WatchEvent::Value {
            index: 7,
            continuity: Continuity::Recovered { .. },
            ..
        }
    ));
}

/// A `/v1/health/state/any` answer of `checks` service checks as Consul
/// 1.8 writes them (output, definition and all), every seventh critical;
/// the check at `bad_status_at`, if any, has a status Consul never sends.
fn state_any_body(checks: usize, bad_status_at: Option<usize>) -> String {
    let entries: Vec<String> = (0..checks)
        .map(|n| {
            let status = match n {
                _ if Some(n) == bad_status_at => "fine",
                _ if n % 7 == 0 => "critical",
                _ => "passing",
            };
            format!(
                r#"{{"Node": "node-{node}", "CheckID": "check:svc-{n}", "Name": "bench",
                "Status": "{status}", "Notes": "", "Output": "HTTP GET: 200 OK {{\"ok\": [1, 2]}}",
                "ServiceID": "svc-{n}", "ServiceName": "svc-{service}", "ServiceTags": [],
                "Type": "http", "Definition": {{"Interval": "10s", "Header": null}},
                "CreateIndex": {n}, "ModifyIndex": {n}}}"#,
                node = n % 50,
                service = n % 500,
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    checks: usize,
    critical: usize,
    services: std::collections::BTreeSet<String>,
}

fn tally(tally: &mut Tally, check: consul_client::CheckBrief<'_>) {
    tally.checks += 1;
    if check.status == consul_client::CheckStatus::Critical {
        tally.critical += 1;
    }
    if !tally.services.contains(&*check.service_name) {
        tally.services.insert(check.service_name.into_owned());
    }
}

#[tokio::test]
async fn a_large_checks_answer_is_folded_check_by_check_and_a_bad_check_is_named() {
    // About 9 MiB: hyper hands it over in many chunks, and checks (and
    // the escapes inside their output) straddle chunk boundaries.
    let checks = 25_000;
    let good = state_any_body(checks, None);
    assert!(good.len() > 8 << 20, "a body of {} bytes", good.len());
    let bad = state_any_body(checks, Some(12_345));
    let fake = FakeConsul::start(scripted(vec![
        Reply::json(Some(7), good.clone()),
        Reply::json(Some(8), bad.clone()),
        Reply::json(Some(9), good),
        Reply::json(Some(10), bad),
    ]))
    .await;
    let client = client_for(&fake);
    let expected = Tally {
        checks,
        critical: checks.div_ceil(7),
        services: (0..500).map(|s| format!("svc-{s}")).collect(),
    };

    let answer = client
        .health_state_fold(
            HealthState::Any,
            &QueryOptions::default(),
            Tally::default(),
            tally,
        )
        .await
        .expect("a valid answer");
    assert_eq!(answer.meta.index, Some(7));
    assert_eq!(answer.value, expected, "every check folded exactly once");

    let error = client
        .health_state_fold(
            HealthState::Any,
            &QueryOptions::default(),
            Tally::default(),
            tally,
        )
        .await
        .expect_err("an unknown status");
    match &error {
        Error::Decode {
            endpoint,
            path,
            message,
        } => {
            assert_eq!(endpoint, "GET /v1/health/state/any");
            assert_eq!(
                path, "[12345].Status",
                "the bad check is named by its index"
            );
            assert!(message.contains("fine"), "{message}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }

    // In a watch, the folded value is what is kept; a malformed answer
    // degrades the watch and leaves the last good value in place.
    let mut watch =
        client.watch_health_state_fold(HealthState::Any, fast_watch(), Tally::default, tally);
    match next(&mut watch).await {
        WatchEvent::Value {
            value,
            index,
            continuity: Continuity::Initial,
            ..
        } => {
            assert_eq!(index, 9);
            assert_eq!(*value, expected);
        }
        other => panic!("expected the first value, got {other:?}"),
    }
    match next(&mut watch).await {
        WatchEvent::Degraded {
            error: Error::Decode { path, .. },
            last_good: Some(last_good),
            ..
        } => {
            assert_eq!(path, "[12345].Status");
            assert_eq!(*last_good, expected);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn statuses_map_to_distinct_errors() {
    let fake = FakeConsul::start(|request| match request.path.as_str() {
        "/v1/kv/denied" => Reply::status(403, "Permission denied"),
        "/v1/kv/absent" => Reply::status(404, "").header("x-consul-index", "41"),
        "/v1/session/renew/gone" => Reply::status(404, "Session id 'gone' not found"),
        "/v1/health/service/web" => Reply::status(404, "no such thing"),
        _ => Reply::status(500, "rpc error: No cluster leader"),
    })
    .await;
    let client = client_for(&fake);
    let options = QueryOptions::default();

    let denied = client.kv_get("denied", &options).await.expect_err("403");
    assert!(
        matches!(&denied, Error::PermissionDenied { endpoint, message }
            if endpoint == "GET /v1/kv/denied" && message == "Permission denied"),
        "{denied:?}"
    );
    assert_eq!(denied.status(), Some(403));

    // A missing key is an answer, with the index to block on.
    let absent = client
        .kv_get("absent", &options)
        .await
        .expect("404 is an answer");
    assert_eq!(absent.value, None);
    assert_eq!(absent.meta.index, Some(41));
    let renewed = client
        .session_renew(&consul_client::SessionId::new("gone"))
        .await
        .expect("404 is an answer");
    assert_eq!(renewed, None);

    let missing = client
        .health_service("web", HealthFilter::All, &options)
        .await
        .expect_err("404");
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");

    let failed = client.catalog_services(&options).await.expect_err("500");
    assert!(
        matches!(&failed, Error::Status { status: 500, body, .. } if body.contains("No cluster leader")),
        "{failed:?}"
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_token_travels_only_in_its_header() {
    const SECRET: &str = "b1gs3cr3t-4c1-t0k3n";
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    // The test runtime is single-threaded: every span of the test is captured.
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeConsul::start(|request| match request.path.as_str() {
        "/v1/kv/secret" => Reply::status(403, "Permission denied"),
        _ => Reply::json(Some(3), "{}"),
    })
    .await;
    let client = Client::new(ClientConfig {
        token: Some(Token::new(SECRET).expect("valid token")),
        datacenter: Some("dc1".to_owned()),
        ..config_for(&fake)
    })
    .expect("valid config");
    client
        .catalog_services(&QueryOptions::default().blocking(2, Duration::from_secs(1)))
        .await
        .expect("answered");
    let error = client
        .kv_get("secret", &QueryOptions::default())
        .await
        .expect_err("denied");

    for request in fake.requests() {
        assert_eq!(
            request.headers.get("x-consul-token").map(|v| v.as_bytes()),
            Some(SECRET.as_bytes())
        );
        assert!(!request.raw_query.contains(SECRET), "{}", request.raw_query);
        assert!(!request.path.contains(SECRET), "{}", request.path);
    }
    let logs = String::from_utf8(lock(&logs.0).clone()).expect("utf-8 logs");
    assert!(
        logs.contains("consul_request"),
        "spans were logged:\n{logs}"
    );
    assert!(logs.contains("catalog_services"), "{logs}");
    assert!(
        !logs.contains(SECRET),
        "the token leaked into the logs:\n{logs}"
    );
    assert!(!error.to_string().contains(SECRET));
    assert!(!format!("{error:?} {client:?}").contains(SECRET));
}

#[tokio::test]
async fn datacenter_and_stale_reads_are_sent_and_their_meta_surfaced() {
    let fake = FakeConsul::start(|request| match request.path.as_str() {
        "/v1/kv/x" => Reply::json(None, "true"),
        _ if request.index().is_some() => Reply::stall(),
        _ => Reply::json(Some(8), health_body(&[("a", 1)]))
            .header("x-consul-lastcontact", "120")
            .header("x-consul-knownleader", "true"),
    })
    .await;
    let client = Client::new(ClientConfig {
        datacenter: Some("dc1".to_owned()),
        ..config_for(&fake)
    })
    .expect("valid config");
    let config = WatchConfig {
        stale: true,
        datacenter: Some("dc2".to_owned()),
        ..fast_watch()
    };
    let mut watch = client.watch_health_service("web", HealthFilter::PassingOnly, config);
    match next(&mut watch).await {
        WatchEvent::Value {
            meta,
            continuity: Continuity::Initial,
            ..
        } => {
            assert_eq!(meta.last_contact, Some(Duration::from_millis(120)));
            assert_eq!(meta.known_leader, Some(true));
        }
        other => panic!("expected the first value, got {other:?}"),
    }
    let first = &fake.requests()[0];
    assert_eq!(first.query.get("dc").map(String::as_str), Some("dc2"));
    assert!(first.query.contains_key("stale"), "{}", first.raw_query);
    assert_eq!(first.query.get("passing").map(String::as_str), Some("true"));

    client.kv_put("x", "1").await.expect("written");
    let write = fake.requests().last().cloned().expect("recorded");
    assert_eq!(
        write.query.get("dc").map(String::as_str),
        Some("dc1"),
        "the client's default"
    );
}

#[tokio::test]
async fn a_fast_changing_index_is_rate_limited() {
    let index = Arc::new(AtomicU64::new(0));
    let fake = FakeConsul::start({
        let index = index.clone();
        move |_| Reply::json(Some(index.fetch_add(1, Ordering::SeqCst) + 1), "{}")
    })
    .await;
    let client = client_for(&fake);
    let min_interval = Duration::from_millis(100);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut watch = watch(
        WatchConfig {
            min_interval,
            ..fast_watch()
        },
        {
            let starts = starts.clone();
            move |options| {
                lock(&starts).push(Instant::now());
                let client = client.clone();
                async move { client.catalog_services(&options).await }
            }
        },
    );
    for expected in 1..=6 {
        match next(&mut watch).await {
            WatchEvent::Value {
                index, continuity, ..
            } => {
                assert_eq!(index, expected);
                let follows = if expected == 1 {
                    Continuity::Initial
                } else {
                    Continuity::Advanced
                };
                assert_eq!(continuity, follows);
            }
            other => panic!("expected a value, got {other:?}"),
        }
    }
    // Every answer returns at once: only the rate limit paces the watch,
    // which lets two requests start back to back but never a third within
    // the same interval.
    // The starts are stamped here, a moment after the watch stamped them
    // for its limit; under load that moment varies by up to a millisecond or
    // so, hence the slack. Without a limit they would be microseconds apart.
    let slack = Duration::from_millis(5);
    let starts = lock(&starts).clone();
    for three in starts.windows(3).take(4) {
        assert!(
            three[2] - three[0] >= min_interval - slack,
            "three requests started within {:?}",
            three[2] - three[0]
        );
    }
    assert!(
        starts[5] - starts[0] >= 2 * min_interval - slack,
        "six requests took {:?}: the index was read more than twice per interval",
        starts[5] - starts[0]
    );
}

#[tokio::test]
async fn blocking_queries_are_capped_and_never_starve_other_requests() {
    let (open, gate) = tokio::sync::watch::channel(false);
    let fake = FakeConsul::start(move |request| {
        if request.index().is_some() {
            Reply::json(Some(100), "[]").gated(gate.clone())
        } else {
            Reply::json(
                Some(1),
                r#"{"Config": {"Datacenter": "dc1", "NodeName": "n1"}}"#,
            )
        }
    })
    .await;
    let client = Client::new(ClientConfig {
        max_blocking_queries: 2,
        ..config_for(&fake)
    })
    .expect("valid config");

    let blocking: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .kv_get(
                        "k",
                        &QueryOptions::default().blocking(99, Duration::from_secs(60)),
                    )
                    .await
            })
        })
        .collect();
    test_support::eventually(
        "two blocking queries in flight",
        HANG_GUARD,
        Duration::from_millis(10),
        || async { (fake.blocking_in_flight() == 2).then_some(()) },
    )
    .await
    .expect("the first two are admitted");

    // The blocking budget is exhausted; a quick request still goes through.
    let agent = tokio::time::timeout(HANG_GUARD, client.agent_self())
        .await
        .expect("not starved")
        .expect("answered");
    assert_eq!(agent.datacenter, "dc1");

    let mut registry = prometheus_client::registry::Registry::default();
    client.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodable");
    assert!(
        text.contains(r#"consul_client_requests_queued{class="blocking"} 3"#),
        "three queries wait for the budget:\n{text}"
    );
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.index().is_some())
            .count(),
        2,
        "the others wait in the client, not at the agent"
    );

    open.send_replace(true);
    for query in blocking {
        query.await.expect("joined").expect("answered");
    }
    assert_eq!(fake.max_blocking_in_flight(), 2);
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.index().is_some())
            .count(),
        5
    );
}

#[tokio::test]
async fn session_renewals_never_wait_behind_other_requests() {
    // KV reads hang at the agent until the gate opens: a flood that holds
    // every slot of the budget quick requests share.
    let (open, gate) = tokio::sync::watch::channel(false);
    let fake = FakeConsul::start(move |request| {
        if request.path.starts_with("/v1/kv/") {
            Reply::json(Some(7), "[]").gated(gate.clone())
        } else {
            Reply::json(
                Some(1),
                r#"[{"ID": "4ca8e74b-6350-7587-addf-a18084928f3c", "Node": "n1", "Behavior": "delete", "TTL": "15s"}]"#,
            )
        }
    })
    .await;
    let client = Client::new(ClientConfig {
        max_concurrent_requests: 2,
        ..config_for(&fake)
    })
    .expect("valid config");
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.kv_get("k", &QueryOptions::default()).await })
        })
        .collect();
    test_support::eventually(
        "the shared budget is exhausted",
        HANG_GUARD,
        Duration::from_millis(10),
        || async { (client.metrics().requests_queued(RequestClass::Other) == 18).then_some(()) },
    )
    .await
    .expect("two reads in flight, the rest queued");

    // Well inside the shortest TTL Consul allows (10 s).
    let session = consul_client::SessionId::new("4ca8e74b-6350-7587-addf-a18084928f3c");
    let renewed = tokio::time::timeout(Duration::from_secs(2), client.session_renew(&session))
        .await
        .expect("the renewal is not queued behind the reads");
    assert!(
        renewed.expect("answered").is_some(),
        "the session is renewed"
    );

    open.send_replace(true);
    for read in flood {
        read.await.expect("joined").expect("answered");
    }
}

#[tokio::test]
async fn metrics_are_labelled_by_endpoint_kind_and_error() {
    let fake = FakeConsul::start(|request| match request.path.as_str() {
        "/v1/kv/denied" => Reply::status(403, "Permission denied"),
        _ => Reply::json(Some(3), r#"{"web": ["v1"]}"#),
    })
    .await;
    let client = client_for(&fake);
    let options = QueryOptions::default();
    client.catalog_services(&options).await.expect("answered");
    client.catalog_services(&options).await.expect("answered");
    client.kv_get("denied", &options).await.expect_err("403");

    let mut registry = prometheus_client::registry::Registry::default();
    client.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodable");
    for expected in [
        r#"consul_client_request_duration_seconds_count{endpoint="catalog_services",class="other"} 2"#,
        r#"consul_client_request_duration_seconds_count{endpoint="kv_get",class="other"} 1"#,
        r#"consul_client_request_errors_total{endpoint="kv_get",error="permission_denied"} 1"#,
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(!text.contains("/v1/"), "paths are not labels:\n{text}");
}

#[tokio::test]
async fn unix_socket_addresses_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("consul.sock");
    let fake = FakeConsul::start_unix(&socket, |_| {
        Reply::json(
            Some(1),
            r#"{"Config": {"Datacenter": "dc-unix", "NodeName": "n1"}}"#,
        )
    })
    .await;
    let address: Address = format!("unix://{}", socket.display())
        .parse()
        .expect("valid");
    let client = Client::new(ClientConfig::new(address)).expect("valid config");
    let agent = client.agent_self().await.expect("answered over the socket");
    assert_eq!(agent.datacenter, "dc-unix");
    assert_eq!(fake.requests()[0].path, "/v1/agent/self");
}

mod tls {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    struct Pki {
        _dir: tempfile::TempDir,
        server: Arc<rustls::ServerConfig>,
        ca_file: std::path::PathBuf,
        client_cert: std::path::PathBuf,
        client_key: std::path::PathBuf,
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate;
    /// the server requires client certificates from that CA (Consul's
    /// `verify_incoming`) and offers h2.
    fn pki() -> Pki {
        let ca = test_support::TestCa::new("consul-client test CA").expect("CA");
        let server_leaf = ca.leaf(&["127.0.0.1"]).expect("server certificate");
        let client_leaf = ca.leaf(&["consul-client"]).expect("client certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        let ca_file = write("ca.pem", ca.cert_pem());
        let client_cert = write("client.pem", &client_leaf.cert_pem);
        let client_key = write("client-key.pem", &client_leaf.key_pem);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let chain = CertificateDer::pem_slice_iter(server_leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server PEM");
        let key = PrivateKeyDer::from_pem_slice(server_leaf.key_pem.as_bytes()).expect("key PEM");
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Pki {
            _dir: dir,
            server: Arc::new(server),
            ca_file,
            client_cert,
            client_key,
        }
    }

    #[tokio::test]
    async fn https_uses_the_ca_presents_the_client_certificate_and_shares_one_http2_connection() {
        let pki = pki();
        let (open, gate) = tokio::sync::watch::channel(false);
        let fake = FakeConsul::start_tls(pki.server.clone(), move |request| {
            if request.index().is_some() {
                Reply::json(Some(100), "[]").gated(gate.clone())
            } else {
                Reply::json(
                    Some(1),
                    r#"{"Config": {"Datacenter": "dc1", "NodeName": "n1"}}"#,
                )
            }
        })
        .await;
        let address: Address = format!("https://{}", fake.addr()).parse().expect("valid");
        let tls = TlsConfig {
            ca_cert: Some(pki.ca_file.clone()),
            client_cert: Some(pki.client_cert.clone()),
            client_key: Some(pki.client_key.clone()),
            ..TlsConfig::default()
        };
        let client = Client::new(ClientConfig {
            tls: tls.clone(),
            ..ClientConfig::new(address.clone())
        })
        .expect("valid config");

        client.agent_self().await.expect("mutual TLS works");
        let queries: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .health_service(
                            "web",
                            HealthFilter::All,
                            &QueryOptions::default().blocking(99, Duration::from_secs(60)),
                        )
                        .await
                })
            })
            .collect();
        test_support::eventually(
            "ten blocking queries in flight",
            HANG_GUARD,
            Duration::from_millis(10),
            || async { (fake.blocking_in_flight() == 10).then_some(()) },
        )
        .await
        .expect("all ten reach the server");
        assert_eq!(
            fake.connections(),
            1,
            "ten blocking queries share one connection"
        );
        assert!(
            fake.requests()
                .iter()
                .all(|r| r.version == hyper::Version::HTTP_2),
            "ALPN negotiated HTTP/2"
        );
        open.send_replace(true);
        for query in queries {
            query.await.expect("joined").expect("answered");
        }

        // Without the client certificate the agent refuses the handshake.
        let anonymous = Client::new(ClientConfig {
            tls: TlsConfig {
                client_cert: None,
                client_key: None,
                ..tls
            },
            ..ClientConfig::new(address)
        })
        .expect("valid config");
        let error = anonymous.agent_self().await.expect_err("refused");
        assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn an_untrusted_server_certificate_is_refused() {
        let pki = pki();
        let fake = FakeConsul::start_tls(pki.server.clone(), |_| Reply::json(Some(1), "{}")).await;
        let other_ca = test_support::TestCa::new("another CA").expect("CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let other_ca_file = dir.path().join("other-ca.pem");
        std::fs::write(&other_ca_file, other_ca.cert_pem()).expect("write");
        let client = Client::new(ClientConfig {
            tls: TlsConfig {
                ca_cert: Some(other_ca_file),
                client_cert: Some(pki.client_cert.clone()),
                client_key: Some(pki.client_key.clone()),
                ..TlsConfig::default()
            },
            ..ClientConfig::new(format!("https://{}", fake.addr()).parse().expect("valid"))
        })
        .expect("valid config");
        let error = client.agent_self().await.expect_err("untrusted");
        match error {
            Error::Transport { reason, .. } => {
                assert!(reason.to_lowercase().contains("certificate"), "{reason}")
            }
            other => panic!("expected a transport error, got {other:?}"),
        }
        assert!(fake.requests().is_empty());
    }
}

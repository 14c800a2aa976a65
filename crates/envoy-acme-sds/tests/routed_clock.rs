//! The unrouted clock of routed hosts outlives the process and the lock
//! term: real Consul 1.8.7, real pebble validating DNS-01 through real
//! knot, the real binary. A host's clock is read back from what each
//! replica shows and from the stored record itself; "renewal stops" is the
//! lock holder's count of hosts it keeps renewing, and no order is placed
//! again (counted at the CA's door).
//!
//! - two replicas on one Consul prefix: a host unrouted while only one ran
//!   is shown by the other, started later, with the first one's clock; once
//!   the first stops, the second holds the lock, keeps renewing the host
//!   until that clock's grace ends, then stops, and keeps it while its own
//!   certificate is served, while a refused host unrouted with it is
//!   forgotten, on the page and in the record; routed again, its entry is
//!   cleared;
//! - one instance on disk: a restart keeps the clock; an entry that cannot
//!   be read is taken as unrouted from the restart; a record that cannot be
//!   read at all is reported, naming it, and left as it is.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::service::{SdsService, binary};
use test_support::gateway::{Challenge, GatewayWorld, GatewayWorldOptions, eds_binary_beside};
use test_support::{eventually, free_port, http_get};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ZONE: &str = "demo.test";
const HOST: &str = "clock.demo.test";
/// Refused (outside the allowed domains), unrouted with `HOST`.
const GONE: &str = "gone.other.test";
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const RENEWING: &str = "envoy_acme_sds_routed_renewing";

async fn world() -> GatewayWorld {
    GatewayWorld::start(GatewayWorldOptions {
        records: vec!["@ A 127.0.0.1".to_owned()],
        count_orders: true,
        ..GatewayWorldOptions::new(eds_binary_beside(&binary()), ZONE)
    })
    .await
    .expect("the DNS-01 world starts")
}

/// Registers the service routing `HOST` over TLS (its own instance, no
/// backend needed: nothing is requested through a gateway here), and one
/// routing a host outside the allowed domains (refused: no order), which
/// stays: an answer with no TLS host at all never starts a clock (it is
/// what an ACL-narrowed read looks like).
async fn route_host(world: &GatewayWorld) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    world
        .register_at("stay", addr, &["edge.route=stay.other.test/ tls=true"])
        .await
        .expect("register");
    world
        .register_at("gone", addr, &[&format!("edge.route={GONE}/ tls=true")])
        .await
        .expect("register");
    world
        .register_at("clock", addr, &[&format!("edge.route={HOST}/ tls=true")])
        .await
        .expect("register");
}

/// `HOST` as `/debug/certificates` shows it, once `accept` says so.
async fn host_entry(
    sds: &SdsService,
    what: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, WAIT, POLL, || async {
        let page = sds.debug_certificates().await;
        page["routed"]
            .as_array()?
            .iter()
            .find(|r| r["host"] == HOST && accept(r))
            .cloned()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()))
}

fn unrouted_since(entry: &serde_json::Value) -> OffsetDateTime {
    let since = entry["unrouted_since"].as_str().expect("unrouted");
    OffsetDateTime::parse(since, &Rfc3339).expect("RFC 3339")
}

/// The stored record's entry of `HOST`, in Consul under `prefix`.
async fn consul_record(world: &GatewayWorld, prefix: &str) -> serde_json::Value {
    consul_record_of(world, prefix, HOST).await
}

/// The stored record's entry of `host` (null when there is none).
async fn consul_record_of(world: &GatewayWorld, prefix: &str, host: &str) -> serde_json::Value {
    let response = http_get(
        world.consul.http_addr(),
        &format!("/v1/kv/{prefix}/routed-hosts?raw"),
    )
    .await
    .expect("KV read");
    assert_eq!(response.status, 200, "{}", response.body);
    let record: serde_json::Value = serde_json::from_str(&response.body).expect("JSON record");
    record["hosts"][host].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lock_holder_continues_the_unrouted_clock_of_the_one_before() {
    let world = world().await;
    let front = world.front.as_ref().expect("orders counted");
    let key_file = world.dir.path().join("encryption.key");
    std::fs::write(&key_file, [7_u8; 32]).expect("key file");
    let prefix = "routed-clock";
    // Long enough for the second replica to start and take the lock well
    // within it, short enough for the test to see renewal stop.
    let grace = Duration::from_secs(40);
    let start = |name: &str| {
        let mut args = world.follow_routes_args(Challenge::Dns01, &format!("consul:{prefix}"), &[]);
        args.extend(
            [
                "--encryption-key-file",
                &key_file.display().to_string(),
                "--instance-name",
                name,
                "--lock-delay",
                "0s",
                "--session-ttl",
                "10s",
                "--unrouted-grace",
                &format!("{}s", grace.as_secs()),
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        SdsService::start(name, world.dir.path(), &args)
    };

    // Only the first replica runs while the host is routed, then unrouted.
    let mut first = start("replica-a");
    first.wait_ready(Duration::from_secs(30)).await;
    eventually("the first replica holds the lock", WAIT, POLL, || async {
        (first.metric("envoy_acme_sds_lock_holder").await == 1.0).then_some(())
    })
    .await
    .expect("lock");
    route_host(&world).await;
    host_entry(&first, "the host issued", |r| r["served_as"] == "own").await;
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    world.deregister("clock").await.expect("deregister");
    let entry = host_entry(&first, "the host unrouted", |r| {
        r["unrouted_since"].is_string()
    })
    .await;
    let since = unrouted_since(&entry);
    world.deregister("gone").await.expect("deregister");
    let recorded = eventually("the clock stored", WAIT, POLL, || async {
        let entry = consul_record(&world, prefix).await;
        entry["unrouted_since"].is_string().then_some(entry)
    })
    .await
    .expect("record");
    assert_eq!(unrouted_since(&recorded), since, "{recorded}");
    assert_eq!(
        first.metric(RENEWING).await,
        1.0,
        "renewed within the grace"
    );

    // The second replica never saw the host routed: it knows it, and its
    // clock, only from the record.
    let mut second = start("replica-b");
    second.wait_ready(Duration::from_secs(30)).await;
    let entry = host_entry(&second, "the host known to the second replica", |r| {
        r["unrouted_since"].is_string()
    })
    .await;
    assert_eq!(unrouted_since(&entry), since, "{entry}");
    assert_eq!(entry["services"], serde_json::json!(["clock"]), "{entry}");

    // The holder stops; the second takes over and keeps renewing the host
    // (by the first's clock, still within the grace), without an order.
    first.signal("TERM");
    let deadline = std::time::Instant::now() + WAIT;
    while first.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first replica does not stop"
        );
        tokio::time::sleep(POLL).await;
    }
    eventually("the second replica renews the host", WAIT, POLL, || async {
        let holds = second.metric("envoy_acme_sds_lock_holder").await == 1.0;
        (holds && second.metric(RENEWING).await == 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    assert!(
        OffsetDateTime::now_utc() < since + grace,
        "the test took over after the grace ended: no evidence it was renewed within it"
    );

    // Its renewal stops at the first replica's clock plus the grace, not
    // that of the second's start or term.
    eventually("renewal of the host stops", grace + WAIT, POLL, || async {
        (second.metric(RENEWING).await == 0.0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    assert!(OffsetDateTime::now_utc() >= since + grace, "stopped early");
    let entry = host_entry(&second, "the host past its grace", |r| {
        r["renewed"] == false
    })
    .await;
    assert_eq!(unrouted_since(&entry), since, "{entry}");
    assert_eq!(entry["served_as"], "own", "still served: {entry}");
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());

    // The refused host has no certificate of its own: past its grace it is
    // forgotten, on the page and in the record the holder writes.
    eventually("the refused host forgotten", WAIT, POLL, || async {
        let page = second.debug_certificates().await;
        let routed = page["routed"].as_array()?;
        let stay = routed.iter().any(|r| r["host"] == "stay.other.test");
        let gone = routed.iter().any(|r| r["host"] == GONE);
        let recorded = consul_record_of(&world, prefix, GONE).await;
        (stay && !gone && recorded.is_null()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    host_entry(&second, "the host still served kept", |r| {
        r["served_as"] == "own"
    })
    .await;

    // Routed again: the entry is cleared and renewal resumes, still with
    // the certificate it has.
    route_host(&world).await;
    let recorded = eventually("the entry cleared", WAIT, POLL, || async {
        let entry = consul_record(&world, prefix).await;
        (entry.is_object() && entry["unrouted_since"].is_null()).then_some(entry)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    assert_eq!(recorded["services"], serde_json::json!(["clock"]));
    eventually("renewal resumes", WAIT, POLL, || async {
        (second.metric(RENEWING).await == 1.0).then_some(())
    })
    .await
    .expect("renewing");
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    assert!(second.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_disk_keeps_the_unrouted_clock_and_bad_records_never_shorten_it() {
    let world = world().await;
    let front = world.front.as_ref().expect("orders counted");
    let storage = world.dir.path().join("store");
    let record_file: PathBuf = storage.join("routed-hosts.json");
    let mut args = world.follow_routes_args(
        Challenge::Dns01,
        &format!("disk:{}", storage.display()),
        &[],
    );
    args.extend(["--unrouted-grace".to_owned(), "1h".to_owned()]);
    let start = |name: &str| SdsService::start(name, world.dir.path(), &args);

    let mut sds = start("before-restart");
    sds.wait_ready(Duration::from_secs(30)).await;
    route_host(&world).await;
    host_entry(&sds, "the host issued", |r| r["served_as"] == "own").await;
    world.deregister("clock").await.expect("deregister");
    let entry = host_entry(&sds, "the host unrouted", |r| {
        r["unrouted_since"].is_string()
    })
    .await;
    let since = unrouted_since(&entry);
    eventually("the clock stored", WAIT, POLL, || async {
        let text = std::fs::read_to_string(&record_file).ok()?;
        let record: serde_json::Value = serde_json::from_str(&text).ok()?;
        record["hosts"][HOST]["unrouted_since"]
            .is_string()
            .then_some(())
    })
    .await
    .expect("record file");
    let mode = std::fs::metadata(&record_file)
        .expect("record")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "record mode {mode:o}");
    let dir_mode = std::fs::metadata(&storage)
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "store mode {dir_mode:o}");
    sds.kill();

    // Restarted: the host no route names is still known, by its clock.
    let mut sds = start("after-restart");
    sds.wait_ready(Duration::from_secs(30)).await;
    let entry = host_entry(&sds, "the host known after the restart", |r| {
        r["unrouted_since"].is_string()
    })
    .await;
    assert_eq!(unrouted_since(&entry), since, "{entry}");
    assert_eq!(entry["renewed"], true, "{entry}");
    assert_eq!(entry["served_as"], "own", "{entry}");
    eventually("its renewal goes on", WAIT, POLL, || async {
        (sds.metric(RENEWING).await == 1.0).then_some(())
    })
    .await
    .expect("renewing");
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    sds.kill();

    // An entry whose clock cannot be read: taken as unrouted from the
    // restart (renewed longer, never shorter), and named in the log.
    let text = std::fs::read_to_string(&record_file).expect("record");
    let mut record: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    record["hosts"][HOST]["unrouted_since"] = serde_json::json!("last tuesday");
    std::fs::write(&record_file, record.to_string()).expect("rewrite");
    let restarted = OffsetDateTime::now_utc();
    let mut sds = start("bad-entry");
    sds.wait_ready(Duration::from_secs(30)).await;
    let entry = host_entry(&sds, "the host unrouted from the restart", |r| {
        r["unrouted_since"].is_string()
    })
    .await;
    assert!(unrouted_since(&entry) >= restarted, "{entry}");
    assert_eq!(entry["renewed"], true, "{entry}");
    let logs = sds.logs();
    assert!(
        logs.contains("routed-hosts: entry of clock.demo.test invalid"),
        "{logs}"
    );
    sds.kill();

    // A record that cannot be read at all: reported with its name and
    // fault, and never replaced, even when the hosts change.
    std::fs::write(&record_file, b"{ not json").expect("garble");
    let mut sds = start("bad-record");
    sds.wait_ready(Duration::from_secs(30)).await;
    route_host(&world).await;
    host_entry(&sds, "the host routed again", |r| {
        r["unrouted_since"].is_null() && r["served_as"] == "own"
    })
    .await;
    eventually("the record reported", WAIT, POLL, || async {
        let logs = sds.logs();
        (logs.contains("stored routed-hosts is unusable") && logs.contains("left as it is"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert_eq!(
        std::fs::read(&record_file).expect("record"),
        b"{ not json",
        "the unreadable record was replaced"
    );
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    assert!(sds.is_running());
}

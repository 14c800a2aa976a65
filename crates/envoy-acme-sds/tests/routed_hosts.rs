//! Certificates for routed hosts, end to end: real Consul 1.8.7, the real
//! consul-eds-server in gateway mode, a real Envoy taking its listeners
//! from it and its certificates from envoy-acme-sds over SDS, and a real
//! pebble validating DNS-01 through knot. Every assertion is a request
//! sent through Envoy, or what the CA saw.
//!
//! - a service registering a `tls=true` route for a new host gets HTTPS for
//!   it, verified against pebble's root, with no operator step;
//! - a host a configured wildcard covers is served that certificate, with
//!   no new order (counted at the CA's door);
//! - a host outside `--allowed-domains` gets no order, is reported with its
//!   reason, and is served a placeholder, while HTTPS to the other hosts
//!   never fails.
//! - a host the CA refuses (pebble's blocklist) is tried once, backs off
//!   and is served a placeholder, while another new host is issued and
//!   HTTPS requests sent back to back to a served host never fail.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::service::{SdsService, binary, describe_certificate};
use test_support::gateway::{
    Challenge, Edge, GatewayWorld, GatewayWorldOptions, eds_binary_beside,
};
use test_support::{Backend, eventually, free_port};

const ZONE: &str = "demo.test";
const NEW_HOST: &str = "new.demo.test";
const COVERED_HOST: &str = "shop.wild.demo.test";
const OUTSIDE_HOST: &str = "evil.other.test";
/// Allowed by `--allowed-domains`, refused by the CA (pebble's blocklist).
const CA_REFUSED_HOST: &str = "blocked.demo.test";

/// The consul-eds-server binary, built beside this package's.
fn eds_binary() -> PathBuf {
    eds_binary_beside(&binary())
}

/// What the DNS-01 tests share: knot serving the zone, Consul, pebble
/// (refusing to order for `blocked` names) behind a front that counts new
/// orders, and pebble's root.
async fn dns01_world(blocked: &[&str]) -> GatewayWorld {
    GatewayWorld::start(GatewayWorldOptions {
        records: vec!["@ A 127.0.0.1".to_owned()],
        ca_blocklist: blocked.iter().map(|b| (*b).to_owned()).collect(),
        count_orders: true,
        ..GatewayWorldOptions::new(eds_binary(), ZONE)
    })
    .await
    .expect("the DNS-01 world starts")
}

/// envoy-acme-sds ordering DNS-01 through knot, with `--cert wildcard`,
/// disk storage at `storage`, following routes under the zone.
fn follow_routes_args(
    world: &GatewayWorld,
    wildcard: &str,
    storage: &std::path::Path,
) -> Vec<String> {
    world.follow_routes_args(
        Challenge::Dns01,
        &format!("disk:{}", storage.display()),
        &[wildcard],
    )
}

/// The gateway and an Envoy taking its listeners from it and its
/// certificates from `sds`.
async fn edge(world: &GatewayWorld, sds: &SdsService) -> Edge {
    world
        .edge(sds.sds)
        .await
        .expect("the gateway and Envoy start")
}

/// An HTTPS request through the edge's TLS listener with SNI `host`,
/// verified against `root`: the presented serial and the body, when both
/// the handshake and the request succeed with 200.
async fn https(edge: &Edge, host: &str, root: &str) -> Option<(String, String)> {
    let (der, body) = edge.https(host, root).await?;
    Some((describe_certificate(&der).serial, body))
}

/// A host given HTTPS by a route tag.
struct Routed {
    serial: String,
    body: String,
    /// From the registration to the first verified response.
    elapsed: Duration,
}

/// Registers `backend` as `service` with a TLS route for `host`, then waits
/// up to `limit` until HTTPS with that SNI verifies against pebble's root
/// and is answered 200; fails with the logs of everything on the way.
async fn route_and_verify(
    world: &GatewayWorld,
    edge: &Edge,
    sds: &SdsService,
    (service, backend): (&str, &Backend),
    host: &str,
    limit: Duration,
) -> Routed {
    let verified = world
        .route_tls_host(edge, service, backend, host, limit)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nenvoy-acme-sds:\n{}\nEnvoy:\n{}\ngateway:\n{}",
                sds.logs(),
                edge.envoy.log_tail(),
                edge.gateway_log_tail()
            )
        });
    Routed {
        serial: describe_certificate(&verified.certificate_der).serial,
        body: verified.body,
        elapsed: verified.elapsed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_tls_host_gets_https_covered_hosts_order_nothing_outsiders_are_refused() {
    let world = dns01_world(&[]).await;
    let (front, root) = (world.front.as_ref().expect("orders counted"), &world.root);
    let storage = world.dir.path().join("store");
    let wildcard = "*.wild.demo.test";
    let mut sds = SdsService::start(
        "envoy-acme-sds",
        world.dir.path(),
        &follow_routes_args(&world, wildcard, &storage),
    );
    sds.wait_ready(Duration::from_secs(60)).await;
    // The configured wildcard is the one order so far.
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    let edge = edge(&world, &sds).await;

    // A service registers a TLS route for a host nobody configured.
    let new_backend = Backend::start("new-1").await.expect("backend");
    let new = route_and_verify(
        &world,
        &edge,
        &sds,
        ("new", &new_backend),
        NEW_HOST,
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "dns-01: tag registered -> first verified HTTPS response: {:?}",
        new.elapsed
    );
    let new_serial = new.serial;
    assert_eq!(new.body, "new-1");
    assert_eq!(front.orders().len(), 2, "one order for the new host");
    assert_eq!(
        sds.served_serial(NEW_HOST).await.as_deref(),
        Some(new_serial.as_str()),
        "the host's own certificate, stored under its name"
    );

    // A host under the configured wildcard: served that certificate, no order.
    let shop = Backend::start("shop-1").await.expect("backend");
    let covered = route_and_verify(
        &world,
        &edge,
        &sds,
        ("shop", &shop),
        COVERED_HOST,
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "covered: tag registered -> first verified HTTPS response: {:?}",
        covered.elapsed
    );
    assert_eq!(covered.body, "shop-1");
    assert_eq!(
        sds.served_serial(wildcard).await.as_deref(),
        Some(covered.serial.as_str()),
        "the wildcard's certificate"
    );

    // A host outside the allowed suffixes: refused, reported, no order;
    // the other hosts keep answering over HTTPS throughout.
    let evil = Backend::start("evil-1").await.expect("backend");
    world
        .register(
            "evil",
            &evil,
            &[&format!("edge.route={OUTSIDE_HOST}/ tls=true")],
        )
        .await
        .expect("register");
    let refused = eventually(
        "the outside host reported as refused",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            assert!(
                https(&edge, NEW_HOST, root).await.is_some(),
                "HTTPS to the new host failed while another host was added"
            );
            let page = sds.debug_certificates().await;
            page["refused"]
                .as_array()?
                .iter()
                .find(|r| r["host"] == OUTSIDE_HOST)
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert_eq!(refused["reason"], "not_allowed", "{refused}");
    assert_eq!(refused["services"][0], "evil", "{refused}");
    // Served at once, as a placeholder no client trusts: the listener never
    // waits on it, and the handshake fails for that host only.
    let placeholder = eventually(
        "a placeholder served for the refused host",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let page = sds.debug_certificates().await;
            page["routed"]
                .as_array()?
                .iter()
                .find(|r| r["host"] == OUTSIDE_HOST && r["served_as"] == "placeholder")
                .cloned()
        },
    )
    .await
    .expect("placeholder");
    assert_eq!(placeholder["plan"], "refused", "{placeholder}");
    assert!(https(&edge, OUTSIDE_HOST, root).await.is_none());
    let status = sds.admin("/").await.expect("status page");
    assert!(status.body.contains(OUTSIDE_HOST), "{}", status.body);
    assert!(
        status.body.contains("not under any --allowed-domains"),
        "{}",
        status.body
    );
    assert!(
        status.body.contains("covered by *.wild.demo.test"),
        "{}",
        status.body
    );
    assert_eq!(
        sds.metric("envoy_acme_sds_routed_refused_hosts{reason=\"not_allowed\"}")
            .await,
        1.0
    );
    assert_eq!(sds.metric("envoy_acme_sds_placeholder_secrets").await, 1.0);
    assert_eq!(
        sds.metric("envoy_acme_sds_routed_hosts{plan=\"covered\"}")
            .await,
        1.0
    );

    // Still the same two orders: the covered and the refused host cost none.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(front.orders().len(), 2, "{:?}", front.orders());
    let directory = std::fs::read_dir(&storage).expect("store").count();
    assert!(directory > 0);
    assert!(https(&edge, NEW_HOST, root).await.is_some());
    assert!(https(&edge, COVERED_HOST, root).await.is_some());

    // The new host's service goes away: its certificate stays served (it
    // is not deleted), its unrouted clock starts, renewal goes on for the
    // grace; the other hosts are untouched.
    world
        .deregister(new_backend.name())
        .await
        .expect("deregister");
    let unrouted = eventually(
        "the new host reported unrouted",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let page = sds.debug_certificates().await;
            page["routed"]
                .as_array()?
                .iter()
                .find(|r| r["host"] == NEW_HOST && r["unrouted_since"].is_string())
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert_eq!(unrouted["renewed"], true, "{unrouted}");
    assert_eq!(unrouted["served_as"], "own", "{unrouted}");
    assert_eq!(
        sds.served_serial(NEW_HOST).await.as_deref(),
        Some(new_serial.as_str()),
        "still served"
    );
    assert!(https(&edge, COVERED_HOST, root).await.is_some());
    assert_eq!(front.orders().len(), 2, "{:?}", front.orders());
    assert!(sds.is_running());
}

/// Pebble refuses one allowed host's order (its blocklist) while another
/// new host is issued. HTTPS to a host already served is sent without a
/// pause through both changes and never fails; the refused host's order
/// is tried once, then backs off, and the host is served a placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_ca_refuses_backs_off_and_https_to_the_others_never_fails() {
    let world = dns01_world(&[CA_REFUSED_HOST]).await;
    let (front, root) = (world.front.as_ref().expect("orders counted"), &world.root);
    let storage = world.dir.path().join("store");
    let mut sds = SdsService::start(
        "envoy-acme-sds",
        world.dir.path(),
        &follow_routes_args(&world, "*.wild.demo.test", &storage),
    );
    sds.wait_ready(Duration::from_secs(60)).await;
    let edge = Arc::new(edge(&world, &sds).await);

    // A host already served: the configured wildcard covers it.
    let shop = Backend::start("shop-1").await.expect("backend");
    route_and_verify(
        &world,
        &edge,
        &sds,
        ("shop", &shop),
        COVERED_HOST,
        Duration::from_secs(30),
    )
    .await;

    // From here on, HTTPS to it is sent back to back until both changes
    // have played out.
    let done = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn({
        let (done, edge, root) = (Arc::clone(&done), Arc::clone(&edge), root.clone());
        async move {
            let (mut sent, mut failed) = (0_u32, Vec::new());
            while !done.load(Ordering::Relaxed) {
                sent += 1;
                match https(&edge, COVERED_HOST, &root).await {
                    Some((_, body)) if body == "shop-1" => {}
                    other => failed.push(format!("request {sent}: {other:?}")),
                }
            }
            (sent, failed)
        }
    });

    let orders_before = front.orders().len();
    let blocked = Backend::start("blocked-1").await.expect("backend");
    world
        .register(
            "blocked",
            &blocked,
            &[&format!("edge.route={CA_REFUSED_HOST}/ tls=true")],
        )
        .await
        .expect("register");
    // The new host, issued beside the refused one.
    let new_backend = Backend::start("new-1").await.expect("backend");
    let new = route_and_verify(
        &world,
        &edge,
        &sds,
        ("new", &new_backend),
        NEW_HOST,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(new.body, "new-1");
    let refused = eventually(
        "the CA's refusal reported for its host",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let page = sds.debug_certificates().await;
            page["routed"]
                .as_array()?
                .iter()
                .find(|r| r["host"] == CA_REFUSED_HOST && r["last_outcome"]["result"] == "failed")
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    // A moment more of requests after both outcomes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let (sent, failed) = prober.await.expect("prober");
    assert!(
        failed.is_empty(),
        "{} of {sent} HTTPS requests to the covered host failed: {failed:?}",
        failed.len()
    );
    assert!(sent >= 10, "only {sent} requests were sent");
    eprintln!("HTTPS to the covered host through both changes: {sent} requests, none failed");

    // Allowed by us, refused by the CA: a placeholder is served, the
    // failure names the CA's reason and when it is tried again.
    assert_eq!(refused["plan"], "ordered", "{refused}");
    assert_eq!(refused["served_as"], "placeholder", "{refused}");
    let detail = refused["last_outcome"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("rejectedIdentifier"), "{refused}");
    assert!(detail.contains("1 in a row; retry at"), "{refused}");
    assert!(https(&edge, CA_REFUSED_HOST, root).await.is_none());
    // One order each for the two hosts, the refused one answered with an
    // error; it backs off instead of asking again.
    let refusals = |orders: &[test_support::acme_ari::OrderSeen]| {
        orders.iter().filter(|o| o.status != 201).count()
    };
    let orders = front.orders();
    assert_eq!(orders.len() - orders_before, 2, "{orders:?}");
    assert_eq!(refusals(&orders[orders_before..]), 1, "{orders:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        front.orders().len() - orders_before,
        2,
        "asked again without backing off"
    );
    assert!(https(&edge, NEW_HOST, root).await.is_some());
    assert!(sds.is_running());
}

/// HTTP-01 through the gateway: pebble validates on the gateway's plain
/// listener (resolving the host through knot), which forwards the
/// challenge to envoy-acme-sds's responder because the responder is
/// itself declared by an empty-host route tag: no special case anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_through_the_gateway_gives_a_new_host_https() {
    let world = GatewayWorld::start(GatewayWorldOptions {
        records: vec!["new A 127.0.0.1".to_owned()],
        ..GatewayWorldOptions::new(eds_binary(), ZONE)
    })
    .await
    .expect("the world starts");
    let root = &world.root;
    let responder = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = world.follow_routes_args(
        Challenge::Http01 { responder },
        &format!("disk:{}", world.dir.path().join("store").display()),
        &[],
    );
    let mut sds = SdsService::start("envoy-acme-sds", world.dir.path(), &args);
    // Ready at once: no configured certificate to wait for.
    sds.wait_ready(Duration::from_secs(30)).await;
    let edge = edge(&world, &sds).await;

    // The responder declares its own route, for every host.
    world
        .route_challenges_to(&edge, responder, NEW_HOST)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", edge.envoy.log_tail()));

    let backend = Backend::start("new-1").await.expect("backend");
    let new = route_and_verify(
        &world,
        &edge,
        &sds,
        ("new", &backend),
        NEW_HOST,
        Duration::from_secs(150),
    )
    .await;
    eprintln!(
        "http-01: tag registered -> first verified HTTPS response: {:?}",
        new.elapsed
    );
    let body = new.body;
    assert_eq!(body, "new-1");
    assert_eq!(
        sds.metric("envoy_acme_sds_renewals_total{secret=\"new.demo.test\",result=\"ok\"}")
            .await,
        1.0,
        "issued at the first attempt: the challenge went through the gateway"
    );
    assert_eq!(sds.metric("envoy_acme_sds_placeholder_secrets").await, 0.0);
    // Plain http to the TLS host is redirected, the challenge path excepted.
    let redirect =
        test_support::http_request("GET", edge.plain, "/", &[("host", NEW_HOST)], Vec::new())
            .await
            .expect("plain request");
    assert_eq!(redirect.status, 308);

    // A host pebble cannot validate (no address in DNS): its order fails,
    // it backs off on its own, and the other host's HTTPS never fails.
    let broken = Backend::start("broken-1").await.expect("backend");
    world
        .register(
            "broken",
            &broken,
            &["edge.route=broken.demo.test/ tls=true"],
        )
        .await
        .expect("register");
    let failed = "envoy_acme_sds_renewals_total{secret=\"broken.demo.test\",result=\"failed\"}";
    eventually(
        "the broken host's order fails",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            assert!(
                https(&edge, NEW_HOST, root).await.is_some(),
                "HTTPS to the new host failed while another host's order failed"
            );
            (sds.metric(failed).await >= 1.0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    // Backed off: no second attempt within the next seconds (the first
    // retry waits a minute), and HTTPS to the other host keeps answering.
    for _ in 0..20 {
        assert!(https(&edge, NEW_HOST, root).await.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sds.metric(failed).await, 1.0, "retried without backing off");
    let page = sds.debug_certificates().await;
    let entry = page["routed"]
        .as_array()
        .expect("routed")
        .iter()
        .find(|r| r["host"] == "broken.demo.test")
        .cloned()
        .expect("the broken host is listed");
    assert_eq!(entry["served_as"], "placeholder", "{entry}");
    assert_eq!(entry["plan"], "ordered", "{entry}");
    // The renewing replica says what the last order did, and why it failed.
    assert_eq!(entry["last_outcome"]["result"], "failed", "{entry}");
    let issued = page["routed"]
        .as_array()
        .expect("routed")
        .iter()
        .find(|r| r["host"] == NEW_HOST)
        .cloned()
        .expect("the new host is listed");
    assert_eq!(issued["last_outcome"]["result"], "issued", "{issued}");
    let status = sds.admin("/").await.expect("status page");
    assert!(status.body.contains("1 in a row"), "{}", status.body);
}

/// Two replicas on one Consul prefix, each behind its own gateway and
/// Envoy: only the lock holder orders the new host's certificate, and both
/// Envoys present it, each from its own replica's SDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_orders_both_envoys_present_the_new_hosts_certificate() {
    let world = dns01_world(&[]).await;
    let front = world.front.as_ref().expect("orders counted");
    let key_file = world.dir.path().join("encryption.key");
    std::fs::write(&key_file, [9_u8; 32]).expect("key file");
    let start = |name: &str| {
        let mut args = world.follow_routes_args(Challenge::Dns01, "consul:routed-ha", &[]);
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
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        SdsService::start(name, world.dir.path(), &args)
    };
    let mut replicas = vec![start("replica-a"), start("replica-b")];
    for replica in &mut replicas {
        replica.wait_ready(Duration::from_secs(30)).await;
    }
    let holders = eventually(
        "one replica holds the lock",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let mut holders = Vec::new();
            for (index, replica) in replicas.iter().enumerate() {
                if replica.metric("envoy_acme_sds_lock_holder").await == 1.0 {
                    holders.push(index);
                }
            }
            (holders.len() == 1).then_some(holders)
        },
    )
    .await
    .expect("a lock holder");
    let leader = holders[0];
    let leader_name = ["replica-a", "replica-b"][leader];
    let follower_page = replicas[1 - leader].admin("/").await.expect("status page");
    assert!(
        follower_page
            .body
            .contains(&format!("the renewal lock is held by <b>{leader_name}</b>")),
        "{}",
        follower_page.body
    );

    // The second edge's plain listener is elsewhere: DNS-01 needs none.
    let edges = [
        world.edge(replicas[0].sds).await.expect("first edge"),
        world
            .edge_on(replicas[1].sds, free_port())
            .await
            .expect("second edge"),
    ];

    let backend = Backend::start("new-1").await.expect("backend");
    world
        .register(
            "new",
            &backend,
            &[&format!("edge.route={NEW_HOST}/ tls=true")],
        )
        .await
        .expect("register");
    let mut serials = Vec::new();
    for (index, edge) in edges.iter().enumerate() {
        let verified = world
            .wait_for_https(edge, NEW_HOST, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{e} (Envoy {index})\n{}\nreplica:\n{}",
                    edge.envoy.log_tail(),
                    replicas[index].logs()
                )
            });
        assert_eq!(verified.body, "new-1");
        serials.push(describe_certificate(&verified.certificate_der).serial);
    }
    assert_eq!(serials[0], serials[1], "both present the one certificate");
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    let issued = "envoy_acme_sds_renewals_total{secret=\"new.demo.test\",result=\"ok\"}";
    assert_eq!(replicas[leader].metric(issued).await, 1.0);
    assert_eq!(
        replicas[1 - leader].metric(issued).await,
        0.0,
        "the follower ordered"
    );
    for replica in &mut replicas {
        assert!(replica.is_running());
    }
}

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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::service::{SdsService, binary, describe_certificate};
use common::{start_pebble, tsig_key_file};
use consul_client::{AgentCheck, AgentServiceRegistration, CheckStatus, Client, ClientConfig};
use test_support::acme_ari::AriFront;
use test_support::bootstrap::{ads_only_bootstrap, control_plane_cluster};
use test_support::{
    Backend, ConsulAgent, Envoy, Knot, ManagedProcess, Pebble, PebbleOptions, eventually,
    free_port, http_get,
};

const ZONE: &str = "demo.test";
const NEW_HOST: &str = "new.demo.test";
const COVERED_HOST: &str = "shop.wild.demo.test";
const OUTSIDE_HOST: &str = "evil.other.test";
/// Allowed by `--allowed-domains`, refused by the CA (pebble's blocklist).
const CA_REFUSED_HOST: &str = "blocked.demo.test";

/// The consul-eds-server binary, built beside this package's.
fn eds_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CONSUL_EDS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let path = binary().with_file_name("consul-eds-server");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p consul-eds-server) or set CONSUL_EDS_SERVER_BIN",
        path.display()
    );
    path
}

fn client(consul: &ConsulAgent) -> Client {
    let address: consul_client::config::Address = consul.http_url().parse().expect("address");
    Client::new(ClientConfig::new(address)).expect("client")
}

async fn register(client: &Client, service: &str, backend: &Backend, tags: &[&str]) {
    let registration = AgentServiceRegistration {
        id: Some(backend.name().to_owned()),
        name: service.to_owned(),
        address: backend.addr().ip().to_string(),
        port: backend.addr().port(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        checks: vec![
            AgentCheck::ttl("ttl", Duration::from_secs(600))
                .with_id(format!("ttl:{}", backend.name()))
                .with_initial_status(CheckStatus::Passing),
        ],
        ..AgentServiceRegistration::default()
    };
    client
        .agent_service_register(&registration)
        .await
        .expect("register");
}

/// An HTTPS request through Envoy's TLS listener with SNI `host`,
/// verified against `root`: the presented serial and the body, when both
/// the handshake and the request succeed with 200.
async fn https(listener: SocketAddr, host: &str, root: &str) -> Option<(String, String)> {
    let (response, der) = test_support::https_get(listener, host, root, "/")
        .await
        .ok()?;
    (response.status == 200).then(|| (describe_certificate(&der).serial, response.body))
}

struct Gateway {
    process: ManagedProcess,
    _dir: tempfile::TempDir,
}

async fn start_gateway(consul: &ConsulAgent, xds: SocketAddr, plain: u16, secure: u16) -> Gateway {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--consul-addr",
        &consul.http_url(),
        "--xds-listen",
        &xds.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--gateway",
        "--listener",
        &format!("web=127.0.0.1:{plain}"),
        "--listener",
        &format!("secure=127.0.0.1:{secure},tls"),
        "--sds-cluster",
        "sds",
        "--coalesce",
        "20ms",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let process = ManagedProcess::spawn(
        "consul-eds-server",
        &eds_binary(),
        &args,
        &[("RUST_LOG".to_owned(), "info".to_owned())],
        &dir.path().join("eds.log"),
    )
    .expect("consul-eds-server starts");
    let gateway = Gateway { process, _dir: dir };
    eventually(
        "consul-eds-server admin",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            http_get(admin, "/healthz")
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.process.log_tail()));
    gateway
}

/// What the DNS-01 tests share: knot serving the zone, Consul, pebble
/// behind an ARI front that counts new orders, pebble's root, and a
/// directory holding the front's CA and knot's TSIG key.
struct Dns01World {
    knot: Knot,
    consul: ConsulAgent,
    consul_client: Client,
    _pebble: Pebble,
    front: AriFront,
    root: String,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    tsig: PathBuf,
}

impl Dns01World {
    async fn start() -> Self {
        Self::start_with_blocklist(&[]).await
    }

    /// The world with pebble refusing to order for `blocked` names.
    async fn start_with_blocklist(blocked: &[&str]) -> Self {
        let knot = Knot::start(ZONE, &["@ A 127.0.0.1"]).await.expect("knot");
        let consul = ConsulAgent::start().await.expect("consul");
        let consul_client = client(&consul);
        // No nonce rejections: every new-order request the front sees is
        // one order, so its count is exact.
        let pebble = start_pebble(
            &knot,
            PebbleOptions {
                nonce_reject_percent: Some(0),
                domain_blocklist: blocked.iter().map(|b| (*b).to_owned()).collect(),
                ..PebbleOptions::default()
            },
        )
        .await;
        let front = AriFront::start(&pebble.directory_url(), pebble.listener_ca_pem())
            .await
            .expect("front");
        let root = pebble.issuing_root_pem().await.expect("pebble root");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("front-ca.pem");
        std::fs::write(&ca_file, front.ca_pem()).expect("ca file");
        let tsig = tsig_key_file(&knot, dir.path());
        Self {
            knot,
            consul,
            consul_client,
            _pebble: pebble,
            front,
            root,
            dir,
            ca_file,
            tsig,
        }
    }

    /// envoy-acme-sds ordering DNS-01 through knot, with `--cert wildcard`,
    /// disk storage at `storage`, following routes under the zone.
    fn follow_routes_args(&self, wildcard: &str, storage: &std::path::Path) -> Vec<String> {
        [
            "--acme-directory",
            &self.front.directory_url(),
            "--acme-ca-file",
            &self.ca_file.display().to_string(),
            "--challenge",
            "dns-01",
            "--rfc2136-server",
            &self.knot.addr().to_string(),
            "--tsig-key-file",
            &self.tsig.display().to_string(),
            "--rfc2136-zone",
            ZONE,
            "--cert",
            wildcard,
            "--storage",
            &format!("disk:{}", storage.display()),
            "--consul-addr",
            &self.consul.http_url(),
            "--follow-routes",
            "--allowed-domains",
            ZONE,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// The gateway and an Envoy taking its listeners from it and its
    /// certificates from `sds`; returns them with the TLS listener.
    async fn edge(&self, sds: &SdsService) -> (Gateway, Envoy, SocketAddr) {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let plain = free_port();
        let secure = free_port();
        let gateway = start_gateway(&self.consul, xds, plain, secure).await;
        let bootstrap = format!(
            "{}{}",
            ads_only_bootstrap(&format!("gw-{secure}"), xds, false),
            control_plane_cluster("sds", sds.sds, "")
        );
        let envoy = Envoy::start(&bootstrap).await.expect("Envoy starts");
        (gateway, envoy, SocketAddr::from(([127, 0, 0, 1], secure)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_tls_host_gets_https_covered_hosts_order_nothing_outsiders_are_refused() {
    let world = Dns01World::start().await;
    let (consul_client, front, root) = (&world.consul_client, &world.front, &world.root);
    let storage = world.dir.path().join("store");
    let wildcard = "*.wild.demo.test";
    let mut sds = SdsService::start(
        "envoy-acme-sds",
        world.dir.path(),
        &world.follow_routes_args(wildcard, &storage),
    );
    sds.wait_ready(Duration::from_secs(60)).await;
    // The configured wildcard is the one order so far.
    assert_eq!(front.orders().len(), 1, "{:?}", front.orders());
    let (gateway, envoy, listener) = world.edge(&sds).await;

    // A service registers a TLS route for a host nobody configured.
    let new_backend = Backend::start("new-1").await.expect("backend");
    let registered = Instant::now();
    register(
        consul_client,
        "new",
        &new_backend,
        &[&format!("edge.route={NEW_HOST}/ tls=true")],
    )
    .await;
    let (new_serial, body) = eventually(
        "HTTPS to the new host verifies against pebble's root",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || https(listener, NEW_HOST, root),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nenvoy-acme-sds:\n{}\nEnvoy:\n{}\ngateway:\n{}",
            sds.logs(),
            envoy.log_tail(),
            gateway.process.log_tail()
        )
    });
    eprintln!(
        "dns-01: tag registered -> first verified HTTPS response: {:?}",
        registered.elapsed()
    );
    assert_eq!(body, "new-1");
    assert_eq!(front.orders().len(), 2, "one order for the new host");
    assert_eq!(
        sds.served_serial(NEW_HOST).await.as_deref(),
        Some(new_serial.as_str()),
        "the host's own certificate, stored under its name"
    );

    // A host under the configured wildcard: served that certificate, no order.
    let shop = Backend::start("shop-1").await.expect("backend");
    let registered = Instant::now();
    register(
        consul_client,
        "shop",
        &shop,
        &[&format!("edge.route={COVERED_HOST}/ tls=true")],
    )
    .await;
    let (covered_serial, body) = eventually(
        "HTTPS to the covered host",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || https(listener, COVERED_HOST, root),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    eprintln!(
        "covered: tag registered -> first verified HTTPS response: {:?}",
        registered.elapsed()
    );
    assert_eq!(body, "shop-1");
    assert_eq!(
        sds.served_serial(wildcard).await.as_deref(),
        Some(covered_serial.as_str()),
        "the wildcard's certificate"
    );

    // A host outside the allowed suffixes: refused, reported, no order;
    // the other hosts keep answering over HTTPS throughout.
    let evil = Backend::start("evil-1").await.expect("backend");
    register(
        consul_client,
        "evil",
        &evil,
        &[&format!("edge.route={OUTSIDE_HOST}/ tls=true")],
    )
    .await;
    let refused = eventually(
        "the outside host reported as refused",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            assert!(
                https(listener, NEW_HOST, root).await.is_some(),
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
    assert!(https(listener, OUTSIDE_HOST, root).await.is_none());
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
    assert!(https(listener, NEW_HOST, root).await.is_some());
    assert!(https(listener, COVERED_HOST, root).await.is_some());

    // The new host's service goes away: its certificate stays served (it
    // is not deleted), its unrouted clock starts, renewal goes on for the
    // grace; the other hosts are untouched.
    consul_client
        .agent_service_deregister(new_backend.name())
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
    assert!(https(listener, COVERED_HOST, root).await.is_some());
    assert_eq!(front.orders().len(), 2, "{:?}", front.orders());
    assert!(sds.is_running());
}

/// Pebble refuses one allowed host's order (its blocklist) while another
/// new host is issued. HTTPS to a host already served is sent without a
/// pause through both changes and never fails; the refused host's order
/// is tried once, then backs off, and the host is served a placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_ca_refuses_backs_off_and_https_to_the_others_never_fails() {
    let world = Dns01World::start_with_blocklist(&[CA_REFUSED_HOST]).await;
    let (consul_client, front, root) = (&world.consul_client, &world.front, &world.root);
    let storage = world.dir.path().join("store");
    let mut sds = SdsService::start(
        "envoy-acme-sds",
        world.dir.path(),
        &world.follow_routes_args("*.wild.demo.test", &storage),
    );
    sds.wait_ready(Duration::from_secs(60)).await;
    let (_gateway, envoy, listener) = world.edge(&sds).await;

    // A host already served: the configured wildcard covers it.
    let shop = Backend::start("shop-1").await.expect("backend");
    register(
        consul_client,
        "shop",
        &shop,
        &[&format!("edge.route={COVERED_HOST}/ tls=true")],
    )
    .await;
    eventually(
        "HTTPS to the covered host",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || https(listener, COVERED_HOST, root),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sds.logs(), envoy.log_tail()));

    // From here on, HTTPS to it is sent back to back until both changes
    // have played out.
    let done = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn({
        let (done, root) = (Arc::clone(&done), root.clone());
        async move {
            let (mut sent, mut failed) = (0_u32, Vec::new());
            while !done.load(Ordering::Relaxed) {
                sent += 1;
                match https(listener, COVERED_HOST, &root).await {
                    Some((_, body)) if body == "shop-1" => {}
                    other => failed.push(format!("request {sent}: {other:?}")),
                }
            }
            (sent, failed)
        }
    });

    let orders_before = front.orders().len();
    let blocked = Backend::start("blocked-1").await.expect("backend");
    register(
        consul_client,
        "blocked",
        &blocked,
        &[&format!("edge.route={CA_REFUSED_HOST}/ tls=true")],
    )
    .await;
    let new_backend = Backend::start("new-1").await.expect("backend");
    register(
        consul_client,
        "new",
        &new_backend,
        &[&format!("edge.route={NEW_HOST}/ tls=true")],
    )
    .await;
    let (_, body) = eventually(
        "HTTPS to the new host, issued beside the refused one",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || https(listener, NEW_HOST, root),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sds.logs()));
    assert_eq!(body, "new-1");
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
    assert!(https(listener, CA_REFUSED_HOST, root).await.is_none());
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
    assert!(https(listener, NEW_HOST, root).await.is_some());
    assert!(sds.is_running());
}

/// Registers a service at `addr` (not a test backend) with `tags`.
async fn register_at(client: &Client, service: &str, addr: SocketAddr, tags: &[&str]) {
    let registration = AgentServiceRegistration {
        id: Some(service.to_owned()),
        name: service.to_owned(),
        address: addr.ip().to_string(),
        port: addr.port(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..AgentServiceRegistration::default()
    };
    client
        .agent_service_register(&registration)
        .await
        .expect("register");
}

/// HTTP-01 through the gateway: pebble validates on the gateway's plain
/// listener (resolving the host through knot), which forwards the
/// challenge to envoy-acme-sds's responder because the responder is
/// itself declared by an empty-host route tag: no special case anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_through_the_gateway_gives_a_new_host_https() {
    let knot = Knot::start(ZONE, &["new A 127.0.0.1"]).await.expect("knot");
    let consul = ConsulAgent::start().await.expect("consul");
    let consul_client = client(&consul);
    let plain = free_port();
    let secure = free_port();
    let pebble = start_pebble(
        &knot,
        PebbleOptions {
            http01_port: Some(plain),
            nonce_reject_percent: Some(0),
            ..PebbleOptions::default()
        },
    )
    .await;
    let root = pebble.issuing_root_pem().await.expect("pebble root");

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = common::acme_ca_file(&pebble, dir.path());
    let http01 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args: Vec<String> = [
        "--acme-directory",
        &pebble.directory_url(),
        "--acme-ca-file",
        &ca_file.display().to_string(),
        "--challenge",
        "http-01",
        "--http01-listen",
        &http01.to_string(),
        "--storage",
        &format!("disk:{}", dir.path().join("store").display()),
        "--consul-addr",
        &consul.http_url(),
        "--follow-routes",
        "--allowed-domains",
        ZONE,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut sds = SdsService::start("envoy-acme-sds", dir.path(), &args);
    // Ready at once: no configured certificate to wait for.
    sds.wait_ready(Duration::from_secs(30)).await;

    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gateway = start_gateway(&consul, xds, plain, secure).await;
    let bootstrap = format!(
        "{}{}",
        ads_only_bootstrap(&format!("gw-{secure}"), xds, false),
        control_plane_cluster("sds", sds.sds, "")
    );
    let envoy = Envoy::start(&bootstrap).await.expect("Envoy starts");

    // The responder declares its own route, for every host.
    register_at(
        &consul_client,
        "envoy-acme-sds-http01",
        http01,
        &["edge.route=/.well-known/acme-challenge/"],
    )
    .await;
    let plain_listener = SocketAddr::from(([127, 0, 0, 1], plain));
    // The responder answers a POST with 405 (Envoy, without the route, 404).
    eventually(
        "the gateway routes challenges to the responder",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            test_support::http_request(
                "POST",
                plain_listener,
                "/.well-known/acme-challenge/probe",
                &[("host", NEW_HOST)],
                Vec::new(),
            )
            .await
            .ok()
            .filter(|r| r.status == 405)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));

    let backend = Backend::start("new-1").await.expect("backend");
    let registered = Instant::now();
    register(
        &consul_client,
        "new",
        &backend,
        &[&format!("edge.route={NEW_HOST}/ tls=true")],
    )
    .await;
    let listener = SocketAddr::from(([127, 0, 0, 1], secure));
    let (_, body) = eventually(
        "HTTPS to the new host verifies against pebble's root",
        Duration::from_secs(150),
        Duration::from_millis(50),
        || https(listener, NEW_HOST, &root),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nenvoy-acme-sds:\n{}\nEnvoy:\n{}\ngateway:\n{}",
            sds.logs(),
            envoy.log_tail(),
            gateway.process.log_tail()
        )
    });
    eprintln!(
        "http-01: tag registered -> first verified HTTPS response: {:?}",
        registered.elapsed()
    );
    assert_eq!(body, "new-1");
    assert_eq!(
        sds.metric("envoy_acme_sds_renewals_total{secret=\"new.demo.test\",result=\"ok\"}")
            .await,
        1.0,
        "issued at the first attempt: the challenge went through the gateway"
    );
    assert_eq!(sds.metric("envoy_acme_sds_placeholder_secrets").await, 0.0);
    // Plain http to the TLS host is redirected, the challenge path excepted.
    let redirect = test_support::http_request(
        "GET",
        plain_listener,
        "/",
        &[("host", NEW_HOST)],
        Vec::new(),
    )
    .await
    .expect("plain request");
    assert_eq!(redirect.status, 308);

    // A host pebble cannot validate (no address in DNS): its order fails,
    // it backs off on its own, and the other host's HTTPS never fails.
    let broken = Backend::start("broken-1").await.expect("backend");
    register(
        &consul_client,
        "broken",
        &broken,
        &["edge.route=broken.demo.test/ tls=true"],
    )
    .await;
    let failed = "envoy_acme_sds_renewals_total{secret=\"broken.demo.test\",result=\"failed\"}";
    eventually(
        "the broken host's order fails",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            assert!(
                https(listener, NEW_HOST, &root).await.is_some(),
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
        assert!(https(listener, NEW_HOST, &root).await.is_some());
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
    let Dns01World {
        knot,
        consul,
        consul_client,
        _pebble,
        front,
        root,
        dir,
        ca_file,
        tsig,
    } = Dns01World::start().await;
    let key_file = dir.path().join("encryption.key");
    std::fs::write(&key_file, [9_u8; 32]).expect("key file");
    let start = |name: &str| {
        let args: Vec<String> = [
            "--acme-directory",
            &front.directory_url(),
            "--acme-ca-file",
            &ca_file.display().to_string(),
            "--challenge",
            "dns-01",
            "--rfc2136-server",
            &knot.addr().to_string(),
            "--tsig-key-file",
            &tsig.display().to_string(),
            "--storage",
            "consul:routed-ha",
            "--encryption-key-file",
            &key_file.display().to_string(),
            "--consul-addr",
            &consul.http_url(),
            "--instance-name",
            name,
            "--lock-delay",
            "0s",
            "--session-ttl",
            "10s",
            "--follow-routes",
            "--allowed-domains",
            ZONE,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        SdsService::start(name, dir.path(), &args)
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

    let mut edges = Vec::new();
    for replica in &replicas {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let plain = free_port();
        let secure = free_port();
        let gateway = start_gateway(&consul, xds, plain, secure).await;
        let bootstrap = format!(
            "{}{}",
            ads_only_bootstrap(&format!("gw-{secure}"), xds, false),
            control_plane_cluster("sds", replica.sds, "")
        );
        let envoy = Envoy::start(&bootstrap).await.expect("Envoy starts");
        edges.push((gateway, envoy, SocketAddr::from(([127, 0, 0, 1], secure))));
    }

    let backend = Backend::start("new-1").await.expect("backend");
    register(
        &consul_client,
        "new",
        &backend,
        &[&format!("edge.route={NEW_HOST}/ tls=true")],
    )
    .await;
    let mut serials = Vec::new();
    for (index, (_, envoy, listener)) in edges.iter().enumerate() {
        let (serial, body) = eventually(
            "HTTPS to the new host through this replica's Envoy",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || https(*listener, NEW_HOST, &root),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e} (Envoy {index})\n{}\nreplica:\n{}",
                envoy.log_tail(),
                replicas[index].logs()
            )
        });
        assert_eq!(body, "new-1");
        serials.push(serial);
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

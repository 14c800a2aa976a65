//! `cargo xtask bench sds`: how fast certificates are issued and how fast a
//! renewed one reaches every Envoy.
//!
//! 1. Issuance: an apex + wildcard certificate via DNS-01, pebble + knot,
//!    `--runs` times (fresh store each time, authorization reuse off, so
//!    every order proves both names); once with each run on a quiet zone,
//!    as a lone renewal finds it, once back to back.
//! 2. Propagation: two replicas of the binary on one Consul prefix, one
//!    Envoy each. A renewal is requested `--rotations` times; measured from
//!    the moment the new certificate is in Consul KV (seen by a blocking
//!    query) to the moment both Envoys present it to a new connection.
//!
//! 3. Routed hosts: envoy-acme-sds following the gateway's routes
//!    (`--follow-routes`) behind consul-eds-server in gateway mode and
//!    Envoy. For each of `--hosts` new hosts per mode, from the Consul
//!    registration of a service with a `tls=true` route tag to the first
//!    HTTPS 200 through Envoy that verifies against pebble's root: hosts
//!    ordered via HTTP-01 (pebble validating through the gateway's plain
//!    listener), via DNS-01 (RFC 2136 to knot), and hosts a configured
//!    wildcard covers (no order). Pebble's validation sleep is off.
//!
//! `--scenario issuance|propagation|routed` (repeatable) runs only those;
//! all three without it. Prints the figures, then where the time went, step
//! by step (for issuance the timings the manager reports with each issued
//! certificate; for routed hosts what envoy-acme-sds's status JSON and
//! metrics show); never fails on timing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use consul_client::{Address, Client, ClientConfig, QueryOptions};
use envoy_acme_sds::acme::{AcmeClient, AcmeConfig};
use envoy_acme_sds::challenge::dns01::{Rfc2136Config, Rfc2136Solver, TsigKey};
use envoy_acme_sds::domain::NameSet;
use envoy_acme_sds::manager::{CertManager, CertificateSpec, Outcome};
use envoy_acme_sds::store::codec::{CertificatePart, certificate_item};
use envoy_acme_sds::store::consul::ConsulStore;
use envoy_acme_sds::store::disk::DiskStore;
use envoy_acme_sds::store::encryption::KeyEncryption;
use envoy_acme_sds::store::{CertificateStore, RenewalRequest, SecretName};
use envoy_acme_sds::timings::{IssuanceStep, IssuanceTimings};
use test_support::bootstrap::SdsListenerBootstrap;
use test_support::gateway::{Challenge, Edge, GatewayWorld, GatewayWorldOptions};
use test_support::{
    Backend, ConsulAgent, Envoy, Knot, ManagedProcess, Pebble, PebbleOptions, free_port, http_get,
    https_get,
};
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;
use x509_parser::prelude::{FromDer, X509Certificate};

const ZONE: &str = "example.test";
const PREFIX: &str = "bench-sds";

/// The parts of the benchmark, run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Issuance,
    Propagation,
    Routed,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Self::Issuance, Self::Propagation, Self::Routed];

    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "issuance" => Ok(Self::Issuance),
            "propagation" => Ok(Self::Propagation),
            "routed" => Ok(Self::Routed),
            other => Err(format!(
                "--scenario: unknown `{other}`; known: issuance, propagation, routed"
            )),
        }
    }
}

struct Options {
    binary: PathBuf,
    /// consul-eds-server, for the routed scenario's gateway.
    eds_binary: Option<PathBuf>,
    scenarios: Vec<Scenario>,
    runs: usize,
    rotations: usize,
    /// Samples per routed mode.
    hosts: usize,
}

fn options() -> Result<Options, String> {
    let mut binary = None;
    let mut eds_binary = None;
    let mut scenarios = Vec::new();
    let mut runs = 10;
    let mut rotations = 20;
    let mut hosts = 10;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--binary" => binary = Some(PathBuf::from(value("--binary")?)),
            "--eds-binary" => eds_binary = Some(PathBuf::from(value("--eds-binary")?)),
            "--scenario" => scenarios.push(Scenario::parse(&value("--scenario")?)?),
            "--runs" => runs = value("--runs")?.parse().map_err(|_| "--runs: a number")?,
            "--rotations" => {
                rotations = value("--rotations")?
                    .parse()
                    .map_err(|_| "--rotations: a number")?;
            }
            "--hosts" => {
                hosts = value("--hosts")?
                    .parse()
                    .map_err(|_| "--hosts: a number of samples per mode")?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    scenarios.sort();
    scenarios.dedup();
    if scenarios.contains(&Scenario::Routed) && eds_binary.is_none() {
        return Err(
            "the routed scenario needs --eds-binary <path of consul-eds-server>".to_owned(),
        );
    }
    Ok(Options {
        binary: binary.ok_or("--binary <path of envoy-acme-sds> is required")?,
        eds_binary,
        scenarios,
        runs,
        rotations,
        hosts,
    })
}

/// Nearest-rank quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[rank]
}

fn report(what: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "| {what} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
        samples.len(),
        ms(quantile(&samples, 0.5)),
        ms(quantile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
    )
}

fn tsig(knot: &Knot) -> TsigKey {
    let key = knot.tsig();
    TsigKey::new(&key.name, &key.algorithm, &key.secret_base64).expect("knot's key")
}

async fn start_pebble(knot: &Knot) -> Pebble {
    Pebble::start(PebbleOptions {
        dns_server: Some(knot.addr()),
        extra_env: vec![("PEBBLE_AUTHZREUSE".to_owned(), "0".to_owned())],
        ..PebbleOptions::default()
    })
    .await
    .expect("pebble starts")
}

/// The p50/p99 of each issuance step over the runs, as a Markdown table.
fn step_report(runs: &[IssuanceTimings]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut table =
        String::from("| issuance step | samples | p50 | p99 | max |\n|---|---|---|---|---|\n");
    for step in IssuanceStep::ALL {
        let mut samples: Vec<Duration> = runs.iter().filter_map(|t| t.get(step)).collect();
        if samples.is_empty() {
            continue;
        }
        samples.sort();
        table.push_str(&format!(
            "| {step} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            samples.len(),
            ms(quantile(&samples, 0.5)),
            ms(quantile(&samples, 0.99)),
            ms(samples.last().copied().unwrap_or_default()),
        ));
    }
    let mut totals: Vec<Duration> = runs.iter().map(IssuanceTimings::total).collect();
    totals.sort();
    table.push_str(&format!(
        "| sum of the steps | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
        totals.len(),
        ms(quantile(&totals, 0.5)),
        ms(quantile(&totals, 0.99)),
        ms(totals.last().copied().unwrap_or_default()),
    ));
    table
}

/// How consecutive issuance runs follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pacing {
    /// Each run on a quiet zone, as a lone renewal finds it: more than a
    /// second after the previous run's challenge records were withdrawn.
    /// knot 3.2 holds an UPDATE that arrives in a later clock second than
    /// the previous one, yet less than a second after it, until about a
    /// second after that previous one (measured with `knsupdate` alone:
    /// 12-120 ms per UPDATE a second or more apart, 0.83-1.04 s for those
    /// held so).
    Quiet,
    /// Each run at once after the previous one, as when several
    /// certificates of one zone renew together: an order's UPDATE may wait
    /// up to a second behind the previous order's withdrawal.
    BackToBack,
}

/// Waits (outside the timed window) until the zone is quiet.
async fn quiet_zone(withdrawals: &TaskTracker) {
    withdrawals.close();
    withdrawals.wait().await;
    withdrawals.reopen();
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

async fn issuance(runs: usize, pacing: Pacing) -> (Vec<Duration>, Vec<IssuanceTimings>) {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot).await;
    let mut config = AcmeConfig::new(pebble.directory_url());
    config.ca_root_pem = Some(pebble.listener_ca_pem().to_owned());
    let withdrawals = config.withdrawals.clone();
    let account_dir = tempfile::tempdir().expect("tempdir");
    let account_store = DiskStore::open(account_dir.path(), None).expect("store");
    let acme = Arc::new(
        AcmeClient::connect(config, &account_store)
            .await
            .expect("account"),
    );
    let solver = Arc::new(
        Rfc2136Solver::new(Rfc2136Config::new(knot.addr(), ZONE, tsig(&knot))).expect("solver"),
    );
    let mut samples = Vec::new();
    let mut steps = Vec::new();
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DiskStore::open(dir.path(), None).expect("store"));
        let spec = CertificateSpec::new(NameSet::parse(&[ZONE, "*.example.test"]).expect("names"))
            .expect("spec");
        let mut manager = CertManager::new(spec, Arc::clone(&acme), solver.clone(), store);
        let started = Instant::now();
        let outcome = manager.reconcile(OffsetDateTime::now_utc()).await;
        let elapsed = started.elapsed();
        match outcome {
            Outcome::Issued { timings, .. } => {
                eprintln!("run {run}: {elapsed:?}: {timings}");
                samples.push(elapsed);
                steps.push(timings);
            }
            other => eprintln!("run {run}: not issued: {other:?}"),
        }
        if pacing == Pacing::Quiet {
            quiet_zone(&withdrawals).await;
        }
    }
    (samples, steps)
}

fn serial_of(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

async fn presented_serial(listener: SocketAddr, root: &str) -> Option<String> {
    let (response, der) = https_get(listener, ZONE, root, "/").await.ok()?;
    (response.status == 200).then(|| serial_of(&der))
}

async fn wait_ready(admin: SocketAddr, replica: &mut ManagedProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if http_get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200)
        {
            return;
        }
        assert!(
            replica.is_running(),
            "replica exited:\n{}",
            replica.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "replica not ready:\n{}",
            replica.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn propagation(binary: &std::path::Path, rotations: usize) -> Vec<Duration> {
    let knot = Knot::start(ZONE, &[]).await.expect("knot starts");
    let pebble = start_pebble(&knot).await;
    let consul = ConsulAgent::start().await.expect("consul starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pebble.listener_ca_pem()).expect("ca file");
    let tsig_file = dir.path().join("tsig.key");
    std::fs::write(&tsig_file, knot.tsig().knsupdate_arg()).expect("tsig file");
    // Sealed keys, as every Consul deployment runs: the benchmark measures that.
    let key_file = dir.path().join("encryption.key");
    let sealing_key: [u8; 32] = rand::random();
    std::fs::write(&key_file, sealing_key).expect("key file");

    let mut replicas = Vec::new();
    for index in 0..2 {
        let sds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args: Vec<String> = [
            "--acme-directory",
            &pebble.directory_url(),
            "--acme-ca-file",
            &ca_file.display().to_string(),
            "--cert",
            "example.test,*.example.test",
            "--rfc2136-server",
            &knot.addr().to_string(),
            "--tsig-key-file",
            &tsig_file.display().to_string(),
            "--storage",
            &format!("consul:{PREFIX}"),
            "--encryption-key-file",
            &key_file.display().to_string(),
            "--consul-addr",
            &consul.http_url(),
            "--lock-delay",
            "0s",
            "--instance-name",
            &format!("replica-{index}"),
            "--sds-listen",
            &sds.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let log = dir.path().join(format!("replica-{index}.log"));
        let process = ManagedProcess::spawn("envoy-acme-sds", binary, &args, &[], &log)
            .expect("replica starts");
        replicas.push((process, sds, admin));
    }
    for (process, _, admin) in &mut replicas {
        wait_ready(*admin, process).await;
    }
    let root = pebble.issuing_root_pem().await.expect("root");
    let mut envoys = Vec::new();
    for (index, (_, sds, _)) in replicas.iter().enumerate() {
        let port = free_port();
        let bootstrap = SdsListenerBootstrap::new(&format!("bench-{index}"), port, ZONE, *sds);
        let envoy = Envoy::start(&bootstrap.yaml()).await.expect("envoy starts");
        envoys.push((envoy, SocketAddr::from(([127, 0, 0, 1], port))));
    }

    let client = Client::new(ClientConfig::new(
        consul.http_url().parse::<Address>().expect("address"),
    ))
    .expect("client");
    let encryption = KeyEncryption::from_bytes(&sealing_key).expect("key");
    let store =
        ConsulStore::new(client.clone(), PREFIX, Some(Arc::new(encryption))).expect("store");
    let name = SecretName::new(ZONE).expect("name");
    // The four items of a certificate are written in one transaction; the
    // metadata item's index says when.
    let certificate_key = store.key(&certificate_item(&name, CertificatePart::Metadata));
    let mut samples = Vec::new();
    for rotation in 0..rotations {
        let current = client
            .kv_get(&certificate_key, &QueryOptions::default())
            .await
            .expect("kv")
            .value
            .expect("stored");
        let old = store
            .load_certificate(&name)
            .await
            .expect("load")
            .expect("stored");
        let old_serial = old.metadata().serial.clone();
        // Bench only: forget past orders, or the weekly budget (5) stops the run.
        client
            .kv_delete(&store.key("orders/example.test"))
            .await
            .expect("reset history");
        store
            .request_renewal(
                &name,
                &RenewalRequest::replacing(old.metadata(), OffsetDateTime::now_utc()),
            )
            .await
            .expect("request");

        let written = {
            let client = client.clone();
            let key = certificate_key.clone();
            let index = current.modify_index;
            tokio::spawn(async move {
                loop {
                    let options = QueryOptions::default().blocking(index, Duration::from_secs(60));
                    let response = client.kv_get(&key, &options).await.expect("blocking read");
                    if response
                        .value
                        .as_ref()
                        .is_some_and(|p| p.modify_index > index)
                    {
                        return Instant::now();
                    }
                }
            })
        };
        let mut pollers = Vec::new();
        for (_, listener) in &envoys {
            let listener = *listener;
            let root = root.clone();
            let old_serial = old_serial.clone();
            pollers.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Some(serial) = presented_serial(listener, &root).await
                        && serial != old_serial
                    {
                        return Some((Instant::now(), serial));
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        let written_at = written.await.expect("watch task");
        let new_serial = store
            .load_certificate(&name)
            .await
            .expect("load")
            .expect("stored")
            .metadata()
            .serial
            .clone();
        let mut last_seen = written_at;
        let mut complete = true;
        for poller in pollers {
            match poller.await.expect("poller") {
                Some((at, serial)) if serial == new_serial => last_seen = last_seen.max(at),
                other => {
                    eprintln!(
                        "rotation {rotation}: an Envoy presented {other:?}, expected {new_serial}"
                    );
                    complete = false;
                }
            }
        }
        if complete {
            samples.push(last_seen.saturating_duration_since(written_at));
        }
    }
    drop(envoys);
    drop(replicas);
    samples
}

/// How a routed host gets its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoutedMode {
    Http01,
    Dns01,
    /// Under the configured wildcard: no order.
    Covered,
}

impl RoutedMode {
    fn label(self) -> &'static str {
        match self {
            Self::Http01 => "HTTP-01 through the gateway (own order)",
            Self::Dns01 => "DNS-01, RFC 2136 to knot (own order)",
            Self::Covered => "under a configured wildcard (no order)",
        }
    }

    /// The new host of sample `index`.
    fn host(self, index: usize) -> String {
        match self {
            Self::Http01 => format!("http01-{index}.{ZONE}"),
            Self::Dns01 => format!("dns01-{index}.{ZONE}"),
            Self::Covered => format!("covered-{index}.{ROUTED_WILDCARD_ZONE}"),
        }
    }

    /// What envoy-acme-sds's status JSON must say of the host.
    fn plan(self) -> &'static str {
        match self {
            Self::Http01 | Self::Dns01 => "ordered",
            Self::Covered => "covered",
        }
    }
}

/// The configured wildcard of the DNS-01 instance is `*.` this.
const ROUTED_WILDCARD_ZONE: &str = "wild.example.test";

/// One routed host, clocked from its registration in Consul.
#[derive(Debug, Clone)]
struct RoutedSample {
    /// To the first verified HTTPS 200 through Envoy.
    total: Duration,
    /// To envoy-acme-sds listing the host (`/debug/certificates`).
    seen: Option<Duration>,
    /// To envoy-acme-sds serving a real certificate for it over SDS.
    published: Option<Duration>,
    /// The issuance (order recorded to certificate published), from
    /// `envoy_acme_sds_issuance_duration_seconds`; none for a covered host.
    issuance: Option<Duration>,
    /// Envoy's own clock of the updates this sample caused, from the
    /// registration: each subscription's last `update_time`.
    envoy: EnvoyUpdates,
    /// The gateway's publication steps during the sample, in seconds
    /// (the growth of `consul_eds_gateway_publish_step_seconds_sum`).
    gateway: BTreeMap<String, f64>,
}

/// When Envoy accepted each update of a sample, from the registration (by
/// the wall clock: Envoy's `update_time` stats are milliseconds since the
/// epoch, so each figure is within 1 ms). `None`: no update after the
/// registration.
#[derive(Debug, Clone, Copy, Default)]
struct EnvoyUpdates {
    /// The new cluster (`cluster_manager.cds.update_time`).
    cds: Option<Duration>,
    /// The listener with the host's filter chain (`listener_manager.lds.update_time`).
    lds: Option<Duration>,
    /// The route table with its virtual host (`http.secure.rds.secure.update_time`).
    rds: Option<Duration>,
    /// The secret under the host's name (`sds.<host>.update_time`).
    sds: Option<Duration>,
}

/// The publication steps the gateway timed so far (`step` -> seconds).
async fn gateway_step_sums(admin: SocketAddr) -> BTreeMap<String, f64> {
    let body = http_get(admin, "/metrics")
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("publish_step_seconds_sum{step=\"")?;
            let (step, rest) = rest.split_once('"')?;
            let value = rest.rsplit_once(' ')?.1.parse().ok()?;
            Some((step.to_owned(), value))
        })
        .collect()
}

/// Envoy's `update_time` stat `stat`, as the time since `registered`.
async fn envoy_update(envoy: &Envoy, stat: &str, registered: SystemTime) -> Option<Duration> {
    let millis = envoy.stat(stat).await.ok()??;
    let at = UNIX_EPOCH + Duration::from_millis(millis);
    at.duration_since(registered).ok()
}

async fn envoy_updates(envoy: &Envoy, host: &str, registered: SystemTime) -> EnvoyUpdates {
    EnvoyUpdates {
        cds: envoy_update(envoy, "cluster_manager.cds.update_time", registered).await,
        lds: envoy_update(envoy, "listener_manager.lds.update_time", registered).await,
        rds: envoy_update(envoy, "http.secure.rds.secure.update_time", registered).await,
        sds: envoy_update(envoy, &format!("sds.{host}.update_time"), registered).await,
    }
}

/// An envoy-acme-sds process with its SDS and admin listeners.
struct Follower {
    /// Killed when the follower is dropped.
    _process: ManagedProcess,
    sds: SocketAddr,
    admin: SocketAddr,
}

async fn start_follower(
    binary: &std::path::Path,
    world: &GatewayWorld,
    challenge: Challenge,
    certs: &[&str],
) -> Follower {
    let sds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let name = match challenge {
        Challenge::Dns01 => "dns01",
        Challenge::Http01 { .. } => "http01",
    };
    let storage = format!("disk:{}", world.dir.path().join(name).display());
    let mut args = vec![
        "--sds-listen".to_owned(),
        sds.to_string(),
        "--admin-listen".to_owned(),
        admin.to_string(),
    ];
    args.extend(world.follow_routes_args(challenge, &storage, certs));
    let log = world.dir.path().join(format!("envoy-acme-sds-{name}.log"));
    let mut process = ManagedProcess::spawn("envoy-acme-sds", binary, &args, &[], &log)
        .expect("envoy-acme-sds starts");
    wait_ready(admin, &mut process).await;
    Follower {
        _process: process,
        sds,
        admin,
    }
}

/// The sum of the issuance histogram, in seconds.
async fn issuance_seconds(admin: SocketAddr) -> f64 {
    let body = http_get(admin, "/metrics")
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .find_map(|line| {
            line.strip_prefix("envoy_acme_sds_issuance_duration_seconds_sum ")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// What envoy-acme-sds showed of `host`, polled from `started` on until it
/// serves a real certificate for it (or for `limit`): when it first listed
/// the host, when it served the certificate, and the plan it listed.
async fn watch_routed_host(
    admin: SocketAddr,
    host: String,
    started: Instant,
    limit: Duration,
) -> (Option<Duration>, Option<Duration>, Option<String>) {
    let (mut seen, mut plan) = (None, None);
    while started.elapsed() < limit {
        let page: serde_json::Value = match http_get(admin, "/debug/certificates").await {
            Ok(response) => serde_json::from_str(&response.body).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let at = started.elapsed();
        let entry = page["routed"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["host"] == host.as_str()));
        if let Some(entry) = entry {
            seen.get_or_insert(at);
            plan = entry["plan"].as_str().map(str::to_owned);
            if matches!(entry["served_as"].as_str(), Some("own" | "covered")) {
                return (seen, Some(at), plan);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (seen, None, plan)
}

/// Samples `count` new hosts of `mode`, one at a time: each registered,
/// clocked to its first verified HTTPS 200, then left a pause outside the
/// timed window (a quiet zone for knot, as a lone new host finds it).
async fn routed_samples(
    world: &GatewayWorld,
    edge: &Edge,
    follower: &Follower,
    mode: RoutedMode,
    count: usize,
    backends: &mut Vec<Backend>,
) -> Vec<RoutedSample> {
    let limit = Duration::from_secs(60);
    let mut samples = Vec::new();
    for index in 0..count {
        let host = mode.host(index);
        let service = host.split('.').next().unwrap_or("routed").to_owned();
        let backend = Backend::start(&service).await.expect("backend");
        let issued_before = issuance_seconds(follower.admin).await;
        let steps_before = gateway_step_sums(edge.gateway_admin()).await;
        let registered = SystemTime::now();
        let started = Instant::now();
        let watcher = tokio::spawn(watch_routed_host(
            follower.admin,
            host.clone(),
            started,
            limit,
        ));
        let verified = world
            .route_tls_host(edge, &service, &backend, &host, limit)
            .await;
        let (seen, published, plan) = watcher.await.expect("watcher");
        // The issuance is recorded as the order's outcome, just after the
        // certificate is published: read it after the pause.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let issued = issuance_seconds(follower.admin).await - issued_before;
        let envoy = envoy_updates(&edge.envoy, &host, registered).await;
        let gateway = gateway_step_sums(edge.gateway_admin())
            .await
            .into_iter()
            .map(|(step, sum)| {
                let before = steps_before.get(&step).copied().unwrap_or(0.0);
                (step, sum - before)
            })
            .filter(|(_, took)| *took > 0.0)
            .collect();
        backends.push(backend);
        let verified = match verified {
            Ok(verified) if verified.body == service => verified,
            Ok(verified) => {
                eprintln!("{host}: answered by `{}`, not `{service}`", verified.body);
                continue;
            }
            Err(error) => {
                eprintln!("{host}: {error}");
                continue;
            }
        };
        if plan.as_deref() != Some(mode.plan()) {
            eprintln!("{host}: planned {plan:?}, expected {}", mode.plan());
            continue;
        }
        let sample = RoutedSample {
            total: verified.elapsed,
            seen,
            published,
            issuance: (mode != RoutedMode::Covered)
                .then(|| Duration::from_secs_f64(issued.max(0.0))),
            envoy,
            gateway,
        };
        eprintln!("{host}: {sample:?}");
        samples.push(sample);
    }
    samples
}

/// Each mode with its samples.
async fn routed(
    binary: &std::path::Path,
    eds_binary: &std::path::Path,
    hosts: usize,
) -> Vec<(RoutedMode, Vec<RoutedSample>)> {
    let mut results = Vec::new();
    {
        // HTTP-01: every name of the zone resolves to the gateway's
        // loopback address, where pebble validates on its plain listener.
        let world = GatewayWorld::start(GatewayWorldOptions {
            records: vec!["* A 127.0.0.1".to_owned()],
            ..GatewayWorldOptions::new(eds_binary, ZONE)
        })
        .await
        .expect("the HTTP-01 world starts");
        let responder = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let follower = start_follower(binary, &world, Challenge::Http01 { responder }, &[]).await;
        let edge = world.edge(follower.sds).await.expect("edge starts");
        world
            .route_challenges_to(&edge, responder, &RoutedMode::Http01.host(0))
            .await
            .expect("challenges routed to the responder");
        let mut backends = Vec::new();
        let samples = routed_samples(
            &world,
            &edge,
            &follower,
            RoutedMode::Http01,
            hosts,
            &mut backends,
        )
        .await;
        results.push((RoutedMode::Http01, samples));
    }
    {
        let world = GatewayWorld::start(GatewayWorldOptions {
            records: vec!["@ A 127.0.0.1".to_owned()],
            ..GatewayWorldOptions::new(eds_binary, ZONE)
        })
        .await
        .expect("the DNS-01 world starts");
        let wildcard = format!("*.{ROUTED_WILDCARD_ZONE}");
        let follower = start_follower(binary, &world, Challenge::Dns01, &[&wildcard]).await;
        let edge = world.edge(follower.sds).await.expect("edge starts");
        let mut backends = Vec::new();
        for mode in [RoutedMode::Dns01, RoutedMode::Covered] {
            let samples =
                routed_samples(&world, &edge, &follower, mode, hosts, &mut backends).await;
            results.push((mode, samples));
        }
    }
    results
}

/// One row of a step report: the duration of a step in a sample, if it ran.
type StepOf = Box<dyn Fn(&RoutedSample) -> Option<Duration>>;

/// The p50/p99/max of each step of the routed samples, as a Markdown table.
fn routed_step_report(samples: &[RoutedSample]) -> String {
    type Step = fn(&RoutedSample) -> Option<Duration>;
    let steps: [(&str, Step); 4] = [
        ("registered -> listed by envoy-acme-sds", |s| s.seen),
        ("listed -> certificate served over SDS", |s| {
            Some(s.published?.saturating_sub(s.seen?))
        }),
        ("of which the issuance (order recorded -> published)", |s| {
            s.issuance
        }),
        (
            "served over SDS -> first verified HTTPS 200 via Envoy",
            |s| Some(s.total.saturating_sub(s.published?)),
        ),
    ];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut table = String::from("| step | samples | p50 | p99 | max |\n|---|---|---|---|---|\n");
    let gateway_step = |name: &'static str| {
        move |s: &RoutedSample| {
            s.gateway
                .get(name)
                .map(|seconds| Duration::from_secs_f64(*seconds))
        }
    };
    // Envoy's side: when it accepted each update (its own clock), and the
    // gateway's publication steps that sit between them.
    let timeline: [(&str, StepOf); 9] = [
        (
            "registered -> the new cluster accepted by Envoy (CDS)",
            Box::new(|s| s.envoy.cds),
        ),
        (
            "gateway: endpoints of the new cluster cached",
            Box::new(gateway_step("endpoints_cached")),
        ),
        (
            "gateway: cluster and endpoints written -> acknowledged",
            Box::new(gateway_step("clusters_acknowledged")),
        ),
        (
            "gateway: listeners and routes written",
            Box::new(gateway_step("routes_written")),
        ),
        (
            "registered -> the listener accepted by Envoy (LDS)",
            Box::new(|s| s.envoy.lds),
        ),
        (
            "registered -> the route table accepted by Envoy (RDS)",
            Box::new(|s| s.envoy.rds),
        ),
        (
            "registered -> the host's secret accepted by Envoy (SDS)",
            Box::new(|s| s.envoy.sds),
        ),
        (
            "last of LDS, RDS, SDS -> first verified HTTPS 200",
            Box::new(|s| {
                let last = s.envoy.lds?.max(s.envoy.rds?).max(s.envoy.sds?);
                s.total.checked_sub(last)
            }),
        ),
        (
            "CDS -> LDS in Envoy",
            Box::new(|s| s.envoy.lds?.checked_sub(s.envoy.cds?)),
        ),
    ];
    let rows = steps
        .into_iter()
        .map(|(name, step)| {
            (
                name,
                Box::new(step) as Box<dyn Fn(&RoutedSample) -> Option<Duration>>,
            )
        })
        .chain(timeline);
    for (name, step) in rows {
        let mut durations: Vec<Duration> = samples.iter().filter_map(&*step).collect();
        if durations.is_empty() {
            continue;
        }
        durations.sort();
        table.push_str(&format!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            durations.len(),
            ms(quantile(&durations, 0.5)),
            ms(quantile(&durations, 0.99)),
            ms(durations.last().copied().unwrap_or_default()),
        ));
    }
    table
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("bench_sds: {error}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut rows = Vec::new();
    let mut breakdowns = Vec::new();
    for scenario in &options.scenarios {
        match scenario {
            Scenario::Issuance => {
                eprintln!("issuance: {} runs ...", options.runs);
                eprintln!("issuance on a quiet zone ...");
                let (issued, steps) = issuance(options.runs, Pacing::Quiet).await;
                eprintln!("issuance back to back ...");
                let (issued_back_to_back, steps_back_to_back) =
                    issuance(options.runs, Pacing::BackToBack).await;
                rows.push(report(
                    "issuance, apex + wildcard via DNS-01 (pebble + knot)",
                    issued,
                ));
                rows.push(report(
                    "issuance as above, runs back to back (an UPDATE may wait up to 1 s in knot)",
                    issued_back_to_back,
                ));
                breakdowns.push(format!(
                    "Issuance on a quiet zone, step by step:\n\n{}",
                    step_report(&steps)
                ));
                breakdowns.push(format!(
                    "Issuance back to back, step by step:\n\n{}",
                    step_report(&steps_back_to_back)
                ));
            }
            Scenario::Propagation => {
                eprintln!("propagation: {} rotations ...", options.rotations);
                let propagated = propagation(&options.binary, options.rotations).await;
                rows.push(report(
                    "renewed certificate in KV -> presented by both replicas' Envoys",
                    propagated,
                ));
            }
            Scenario::Routed => {
                let eds_binary = options.eds_binary.as_deref().expect("checked in options");
                eprintln!("routed hosts: {} per mode ...", options.hosts);
                for (mode, samples) in routed(&options.binary, eds_binary, options.hosts).await {
                    let totals = samples.iter().map(|s| s.total).collect();
                    rows.push(report(
                        &format!(
                            "tag registered -> first verified HTTPS 200, {}",
                            mode.label()
                        ),
                        totals,
                    ));
                    breakdowns.push(format!(
                        "Routed host, {}, step by step:\n\n{}",
                        mode.label(),
                        routed_step_report(&samples)
                    ));
                }
            }
        }
    }
    println!("| measurement | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    for breakdown in breakdowns {
        println!();
        print!("{breakdown}");
    }
}

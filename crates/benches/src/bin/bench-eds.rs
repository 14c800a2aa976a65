//! `cargo xtask bench eds`: consul-eds-server against real Consul and Envoy.
//!
//! 1. convergence: a Consul health change until Envoy's admin API shows it,
//!    beside the floor: the same change seen by a raw blocking query.
//!    Envoy's side is one stat polled at a known cost (`benches::probe`).
//! 2. nomad-convergence: the same with Nomad's registry as the source, a
//!    registration added or removed in the in-process stand-in (FakeNomad),
//!    whose own blocking query is the floor.
//! 3. scale: many services x instances; initial sync, memory, CPU during a
//!    change storm, and whether any change was lost.
//! 4. reload: the churn scenario through Envoy + EDS and through nginx
//!    reloaded on every change, same load, same run.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use benches::fleet::Fleet;
use benches::nginx::NginxGateway;
use benches::probe::StatProbe;
use benches::scale_probes::{self as probes, ProbeResult};
use benches::server::{EdsServer, consul_client, envoy_stat_sum, metric_sum, ms};
use benches::stats::{cpu_time, peak_rss_kib, quantile, rss_kib};
use consul_client::{
    AgentCheck, AgentServiceRegistration, CheckStatus, Client, HealthFilter, QueryOptions,
};
use demo::backend::Behaviour;
use demo::churn::{ChurnPlan, Churner};
use demo::consul::ConsulRegistrar;
use demo::load::{LoadPlan, LoadReport, run as run_load};
use nomad_client::{NomadClient, NomadConfig, QueryIndex};
use serde_json::Value;
use test_support::bootstrap::{EdsTransport, GatewayBootstrap};
use test_support::nomad_api::{FakeNomad, Registration as NomadRegistration};
use test_support::{ConsulAgent, Envoy, eventually, free_port};
use tokio::task::JoinHandle;

struct Args {
    eds_binary: PathBuf,
    parts: Vec<String>,
    changes: usize,
    services: usize,
    instances: usize,
    storm_seconds: u64,
    churn_seconds: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        eds_binary: PathBuf::new(),
        parts: vec![],
        changes: 200,
        services: 5_000,
        instances: 20,
        storm_seconds: 20,
        churn_seconds: 60,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        let mut value = || raw.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--eds-binary" => args.eds_binary = value()?.into(),
            "--changes" => args.changes = value()?.parse()?,
            "--services" => args.services = value()?.parse()?,
            "--instances" => args.instances = value()?.parse()?,
            "--storm-seconds" => args.storm_seconds = value()?.parse()?,
            "--churn-seconds" => args.churn_seconds = value()?.parse()?,
            "convergence" | "nomad-convergence" | "scale" | "reload" => args.parts.push(arg),
            other => bail!(
                "unknown argument `{other}` (parts: convergence, nomad-convergence, scale, reload)"
            ),
        }
    }
    ensure!(
        args.eds_binary.exists(),
        "--eds-binary must name the built consul-eds-server"
    );
    if args.parts.is_empty() {
        args.parts = vec![
            "convergence".into(),
            "nomad-convergence".into(),
            "scale".into(),
            "reload".into(),
        ];
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    for part in &args.parts {
        match part.as_str() {
            "convergence" => convergence(&args).await?,
            "nomad-convergence" => nomad_convergence(&args).await?,
            "scale" => scale(&args).await?,
            "reload" => reload(&args).await?,
            _ => unreachable!("parsed above"),
        }
    }
    Ok(())
}

async fn start_eds(args: &Args, consul: &ConsulAgent, extra: &[&str]) -> Result<EdsServer> {
    Ok(EdsServer::start(&args.eds_binary, consul, extra).await?)
}

fn client_for(consul: &ConsulAgent, max_blocking: usize) -> Result<Client> {
    Ok(consul_client(consul, max_blocking)?)
}

/// Thousands of clusters go over ADS: with the plain EDS service Envoy opens
/// one gRPC stream per cluster, and its xDS cluster's default circuit
/// breaker (1,024 requests) refuses the rest.
async fn gateway(xds: SocketAddr, clusters: Vec<String>) -> Result<(Envoy, SocketAddr)> {
    let transport = if clusters.len() > 100 {
        EdsTransport::Ads
    } else {
        EdsTransport::Grpc
    };
    let listener_port = free_port();
    let yaml = GatewayBootstrap {
        node_id: "bench".to_owned(),
        xds,
        transport,
        clusters,
        listener_port,
        retries: true,
    }
    .yaml();
    let envoy = Envoy::start(&yaml).await?;
    Ok((envoy, SocketAddr::from(([127, 0, 0, 1], listener_port))))
}

/// Keeps only the `membership_total` stats of a bootstrap's Envoy. Why: an
/// admin `/stats?filter=` is matched against every stat, and with 5,000
/// clusters (about 500,000 stats) one poll took about 0.4 s of Envoy's
/// main thread, the thread that also applies xDS: polled every 200 ms, the
/// bench slowed the very sync it timed.
fn membership_stats_only(yaml: String) -> String {
    format!(
        "{yaml}\nstats_config: {{ stats_matcher: {{ inclusion_list: {{ patterns: [{{ suffix: \"membership_total\" }}] }} }} }}\n"
    )
}

/// `(hostname, eds health)` of a cluster's hosts in Envoy.
async fn envoy_hosts(envoy: &Envoy, cluster: &str) -> Result<Vec<(String, String)>> {
    let json: Value = serde_json::from_str(&envoy.admin_get("/clusters?format=json").await?)?;
    let mut hosts = Vec::new();
    for status in json["cluster_statuses"].as_array().into_iter().flatten() {
        if status["name"] == cluster {
            for host in status["host_statuses"].as_array().into_iter().flatten() {
                hosts.push((
                    host["hostname"].as_str().unwrap_or_default().to_owned(),
                    host["health_status"]["eds_health_status"]
                        .as_str()
                        .unwrap_or("HEALTHY")
                        .to_owned(),
                ));
            }
        }
    }
    Ok(hosts)
}

async fn convergence(args: &Args) -> Result<()> {
    println!("== eds convergence: {} health changes", args.changes);
    let consul = ConsulAgent::start().await?;
    let client = client_for(&consul, 64)?;
    for i in 0..5u16 {
        client
            .agent_service_register(&AgentServiceRegistration {
                id: Some(format!("web-{i}")),
                name: "web".to_owned(),
                address: "127.0.0.1".to_owned(),
                port: 20_000 + i,
                checks: vec![
                    AgentCheck::ttl("ttl", Duration::from_secs(3600))
                        .with_id(format!("ttl:web-{i}"))
                        .with_initial_status(CheckStatus::Passing),
                ],
                ..AgentServiceRegistration::default()
            })
            .await?;
    }
    let eds = start_eds(args, &consul, &[]).await?;
    let (envoy, _) = gateway(eds.xds, vec!["web".to_owned()]).await?;
    wait_for_host_count(&envoy, "web", 5, Duration::from_secs(10)).await?;

    let mut samples = ConvergenceSamples::new(&envoy, &eds, "web").await?;
    for n in 0..args.changes {
        let fail = n.is_multiple_of(2);
        let check = "ttl:web-0";
        // The floor: a blocking query already waiting when the change lands.
        let index = client
            .health_service("web", HealthFilter::All, &QueryOptions::default())
            .await?
            .meta
            .index
            .unwrap_or(1);
        let blocking_client = client.clone();
        let floor = tokio::spawn(async move {
            let options = QueryOptions {
                index,
                wait: Some(Duration::from_secs(30)),
                ..QueryOptions::default()
            };
            blocking_client
                .health_service("web", HealthFilter::All, &options)
                .await
                .map(|_| Instant::now())
                .map_err(anyhow::Error::from)
        });
        let change = async {
            if fail {
                client.agent_check_fail(check, "bench").await?;
            } else {
                client.agent_check_pass(check, "bench").await?;
            }
            Ok(())
        };
        let want = if fail { 4 } else { 5 };
        samples
            .time_change(&envoy, "web", want, floor, change)
            .await?;
    }
    samples.print(&eds).await
}

/// `convergence` with Nomad's registry as the source: each change registers
/// or deregisters one of 5 instances of `web` in the stand-in.
///
/// No Nomad binary can run here (docs/adr/0007-nomad-api-stand-in.md): the
/// stand-in serves from this process's own runtime, so the floor is the
/// stand-in's wake-up, not a real Nomad's (which adds Raft and its RPC hop).
async fn nomad_convergence(args: &Args) -> Result<()> {
    println!(
        "== eds nomad-convergence: {} registration changes; Nomad is the in-process stand-in \
         (FakeNomad, answering as Nomad 1.6.5), so the floor is the stand-in's",
        args.changes
    );
    let nomad = FakeNomad::start().await?;
    let instance =
        |i: u16| NomadRegistration::new("web", "127.0.0.1", 20_000 + i).id(&format!("web-{i}"));
    for i in 0..5u16 {
        nomad.register(instance(i));
    }
    let nomad_addr = nomad.address();
    // `--consul-addr` is always passed; nothing listens there, since with
    // `--sources nomad` the server reads no Consul at all.
    let no_consul = format!("http://127.0.0.1:{}", free_port());
    let eds = EdsServer::start_reading(
        &args.eds_binary,
        &no_consul,
        &[
            "--sources",
            "nomad",
            "--nomad-addr",
            &nomad_addr,
            // Check results are polled, not blocked on: off, so that only
            // the registrations' blocking query is measured.
            "--nomad-check-interval",
            "0s",
        ],
    )
    .await?;
    let (envoy, _) = gateway(eds.xds, vec!["web".to_owned()]).await?;
    wait_for_host_count(&envoy, "web", 5, Duration::from_secs(10)).await?;

    let client = NomadClient::new(NomadConfig::new(nomad_addr.parse()?))?;
    let mut samples = ConvergenceSamples::new(&envoy, &eds, "web").await?;
    for n in 0..args.changes {
        let deregister = n.is_multiple_of(2);
        // The floor: a blocking query already waiting when the change lands.
        let index = nomad.index().max(1);
        let blocking_client = client.clone();
        let floor = tokio::spawn(async move {
            let query = QueryIndex {
                index,
                wait: Duration::from_secs(30),
            };
            blocking_client
                .service_blocking("web", "default", query)
                .await
                .map(|_| Instant::now())
                .map_err(anyhow::Error::from)
        });
        // The server's own query and the floor's, both blocked: otherwise
        // a change could land while the server was between two queries and
        // be timed from a read that answers at once instead of a wake-up.
        eventually(
            "the server's blocking query and the floor's to wait on the stand-in",
            Duration::from_secs(10),
            Duration::from_millis(1),
            || async { (nomad.blocking_queries_in_flight() >= 2).then_some(()) },
        )
        .await?;
        let change = async {
            if deregister {
                nomad.deregister("default", "web-0");
            } else {
                nomad.register(instance(0));
            }
            Ok(())
        };
        let want = if deregister { 4 } else { 5 };
        samples
            .time_change(&envoy, "web", want, floor, change)
            .await?;
    }
    samples.print(&eds).await?;
    println!("  (the floor is the in-process stand-in's; a real Nomad's is not measured here)");
    Ok(())
}

/// Polls Envoy's admin until `cluster` has `want` hosts; the instant it saw them.
async fn wait_for_host_count(
    envoy: &Envoy,
    cluster: &str,
    want: usize,
    timeout: Duration,
) -> Result<Instant> {
    Ok(eventually(
        &format!("{want} hosts of {cluster} in Envoy"),
        timeout,
        Duration::from_millis(1),
        || async {
            envoy_hosts(envoy, cluster)
                .await
                .ok()
                .filter(|h| h.len() == want)
                .map(|_| Instant::now())
        },
    )
    .await?)
}

/// Pause between two polls of the probe: Envoy's main thread, which also
/// applies EDS updates, serves one poll per gap + round trip.
const PROBE_GAP: Duration = Duration::from_micros(250);

/// Per change of a convergence part: how long the floor (a raw blocking
/// query) and Envoy took to show it, Envoy's side read by a [`StatProbe`]
/// on the cluster's `membership_total`.
#[derive(Debug)]
struct ConvergenceSamples {
    /// `None` only while a change is being watched (the probe's thread has it).
    probe: Option<StatProbe>,
    floor: Vec<Duration>,
    /// The midpoint of each sighting's interval.
    envoy: Vec<Duration>,
    /// Per change: Envoy's time minus the floor's.
    overhead: Vec<Duration>,
    half_widths: Vec<Duration>,
    polls: u32,
    round_trips: Duration,
    /// What each poll costs, measured before the changes.
    stat_poll: Duration,
    clusters_poll: Duration,
    pushes_before: f64,
}

impl ConvergenceSamples {
    /// A probe on `cluster`'s `membership_total`, its poll's cost measured
    /// beside that of the `/clusters?format=json` poll used before it.
    async fn new(envoy: &Envoy, eds: &EdsServer, cluster: &str) -> Result<Self> {
        const ROUNDS: u32 = 100;
        let admin = envoy.admin_addr();
        let stat = format!("cluster.{cluster}.membership_total");
        let (probe, stat_poll) = tokio::task::spawn_blocking(move || {
            let mut probe = StatProbe::connect(admin, &stat, PROBE_GAP)?;
            let started = Instant::now();
            for _ in 0..ROUNDS {
                probe.read()?;
            }
            Ok::<_, anyhow::Error>((probe, started.elapsed() / ROUNDS))
        })
        .await??;
        let started = Instant::now();
        for _ in 0..ROUNDS {
            envoy_hosts(envoy, cluster).await?;
        }
        let clusters_poll = started.elapsed() / ROUNDS;
        Ok(Self {
            probe: Some(probe),
            floor: Vec::new(),
            envoy: Vec::new(),
            overhead: Vec::new(),
            half_widths: Vec::new(),
            polls: 0,
            round_trips: Duration::ZERO,
            stat_poll,
            clusters_poll,
            pushes_before: pushes(eds).await?,
        })
    }

    /// Times one change. `floor` is the blocking query already sent,
    /// returning the instant it answered; `change` makes the change. Both
    /// are timed from just before `change` starts.
    async fn time_change(
        &mut self,
        envoy: &Envoy,
        cluster: &str,
        want_hosts: usize,
        floor: JoinHandle<Result<Instant>>,
        change: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        // Lets the floor's query reach the server before the change lands.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut probe = self.probe.take().context("the probe is in use")?;
        let changed = Instant::now();
        let watching = tokio::task::spawn_blocking(move || {
            let sighting = probe.wait_for(want_hosts as u64, changed, Duration::from_secs(10));
            (probe, sighting)
        });
        change.await?;
        let (probe, sighting) = watching.await?;
        self.probe = Some(probe);
        let sighting = sighting?;
        let floor_returned = floor.await??;
        // The stat moved because the assignment did: Envoy's host list, read
        // outside the timed part, agrees.
        let hosts = envoy_hosts(envoy, cluster).await?.len();
        ensure!(
            hosts == want_hosts,
            "{cluster}'s membership_total reached {want_hosts} but Envoy lists {hosts} hosts"
        );
        let floor = floor_returned.saturating_duration_since(changed);
        let seen = sighting.midpoint().saturating_duration_since(changed);
        self.floor.push(floor);
        self.envoy.push(seen);
        self.overhead.push(seen.saturating_sub(floor));
        self.half_widths.push(sighting.half_width());
        self.polls += sighting.polls;
        self.round_trips += sighting.round_trips;
        Ok(())
    }

    async fn print(mut self, eds: &EdsServer) -> Result<()> {
        let changes = self.floor.len();
        let pushes = pushes(eds).await? - self.pushes_before;
        for samples in [
            &mut self.floor,
            &mut self.envoy,
            &mut self.overhead,
            &mut self.half_widths,
        ] {
            samples.sort();
        }
        let p = |samples: &[Duration]| (quantile(samples, 0.5), quantile(samples, 0.99));
        let ((f50, f99), (e50, e99), (o50, o99)) =
            (p(&self.floor), p(&self.envoy), p(&self.overhead));
        println!(
            "  raw blocking query (floor)   p50 {}  p99 {}",
            ms(f50),
            ms(f99)
        );
        println!(
            "  Envoy shows the change       p50 {}  p99 {}",
            ms(e50),
            ms(e99)
        );
        println!(
            "  overhead over the floor      p50 {}  p99 {}  (target: p50 within 2 ms, p99 within 5 ms)",
            ms(e50.saturating_sub(f50)),
            ms(e99.saturating_sub(f99))
        );
        println!(
            "  per change, Envoy - floor    p50 {}  p99 {}",
            ms(o50),
            ms(o99)
        );
        println!(
            "  Envoy's side: `membership_total` polled every {} µs plus its round trip, on one kept-alive connection; \
             each time is the middle of [send of the last poll not seeing the change, receipt of the first seeing it], \
             half that interval p50 {} max {}",
            PROBE_GAP.as_micros(),
            ms(quantile(&self.half_widths, 0.5)),
            ms(self.half_widths.last().copied().unwrap_or_default()),
        );
        println!(
            "  poll round trip: this stat {} µs during the changes ({} µs before them), \
             `/clusters?format=json` {} (the probe before this one)",
            (self.round_trips / self.polls.max(1)).as_micros(),
            self.stat_poll.as_micros(),
            ms(self.clusters_poll),
        );
        println!("  pushes to the xDS cache: {pushes:.0} for {changes} changes");
        Ok(())
    }
}

/// The engine's pushes so far (batches handed to the xDS cache).
async fn pushes(eds: &EdsServer) -> Result<f64> {
    Ok(metric_sum(
        &eds.metrics().await?,
        "consul_eds_pushes_total",
        None,
    ))
}

async fn scale(args: &Args) -> Result<()> {
    let total = args.services * args.instances;
    println!(
        "== eds scale: {} services x {} instances = {total} instances, default agent limits",
        args.services, args.instances
    );
    let consul = ConsulAgent::start().await?;
    let client = client_for(&consul, 64)?;
    let fleet = Fleet {
        services: args.services,
        instances: args.instances,
    };
    let started = Instant::now();
    fleet.register_all(&client, |_| Vec::new()).await?;
    println!("  registered in {:.1} s", started.elapsed().as_secs_f64());

    let clusters: Vec<String> = (0..args.services).map(Fleet::service_name).collect();
    // Probe services, kept out of the storm's random changes so their
    // instance counts are known: the last ones of the fleet (watched
    // through the DC-wide view, as all but the first few dozen are).
    let health_probes: Vec<usize> = (0..(args.services / 4).min(50))
        .map(|k| args.services - 1 - k)
        .collect();
    let registration_probes: Vec<usize> = (0..(args.services / 10).clamp(1, 10))
        .map(|k| args.services - 1 - health_probes.len() - k)
        .collect();
    let stormed = args.services - health_probes.len() - registration_probes.len();
    let eds = start_eds(args, &consul, &[]).await?;
    let pid = eds.process.pid();
    let agent_port = consul.http_addr().port();
    let peak_connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let peak = std::sync::Arc::clone(&peak_connections);
        tokio::spawn(async move {
            loop {
                if let Some(n) = probes::connections_to(pid, agent_port) {
                    peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let sync_started = Instant::now();
    // Part of the sync is Envoy's own start (a bootstrap of thousands of
    // clusters): the server's first endpoint stream marks where it ends.
    let stream_opened = async {
        while sync_started.elapsed() < Duration::from_secs(120) {
            if let Ok(text) = eds.metrics().await
                && metric_sum(&text, "xds_type_streams", Some("type=\"endpoint\"")) >= 1.0
            {
                return Some(sync_started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let main_envoy = async {
        let yaml = GatewayBootstrap {
            node_id: "bench".to_owned(),
            xds: eds.xds,
            transport: EdsTransport::Ads,
            clusters,
            listener_port: free_port(),
            retries: true,
        }
        .yaml();
        Envoy::start(&membership_stats_only(yaml)).await
    };
    let (envoy, stream_opened) = futures::join!(main_envoy, stream_opened);
    let envoy = envoy?;
    let probe_clusters: Vec<String> = health_probes
        .iter()
        .chain(&registration_probes)
        .map(|s| Fleet::service_name(*s))
        .collect();
    let probe_envoy = std::sync::Arc::new(probe_gateway(eds.xds, probe_clusters).await?);
    let expected = total as u64;
    eventually(
        "Envoy to have every instance",
        Duration::from_secs(600),
        Duration::from_millis(200),
        || async {
            membership(&envoy, "membership_total")
                .await
                .ok()
                .filter(|n| *n == expected)
        },
    )
    .await?;
    let sync = sync_started.elapsed();
    println!(
        "  initial sync (Envoy start -> all {total} endpoints in Envoy): {:.1} s, of which Envoy's start to its endpoint stream {}",
        sync.as_secs_f64(),
        stream_opened.map_or("unknown (not seen within 120 s)".to_owned(), |t| format!(
            "{:.1} s",
            t.as_secs_f64()
        ))
    );
    println!(
        "  consul-eds-server RSS after sync: {} MiB",
        rss_kib(pid).unwrap_or(0) / 1024
    );

    // The storm: 100 health changes per second, spread over services.
    // The engine's pushes (batches handed to the xDS cache) are counted
    // over it: fewer pushes for the same changes is what coalescing buys.
    let pushes_before = metric_sum(&eds.metrics().await?, "consul_eds_pushes_total", None);
    let cpu_before = cpu_time(pid).unwrap_or_default();
    let storm_started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut critical = std::collections::BTreeSet::new();
    let mut peak_rss = 0;
    let mut n = 0usize;
    let mut probing = Probing::new(&fleet, health_probes, registration_probes);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut storm_writes = tokio::task::JoinSet::new();
    while storm_started.elapsed() < Duration::from_secs(args.storm_seconds) {
        ticker.tick().await;
        n += 1;
        // One change in ten is a timed one: a probe service's health every
        // 100 ms, a probe instance registered or removed every second.
        if n.is_multiple_of(100) {
            probing.registration(&client, &probe_envoy).await?;
            continue;
        }
        if n.is_multiple_of(10) {
            probing.health(&client, &probe_envoy).await?;
            continue;
        }
        let s = (n * 7919) % stormed;
        let i = n % args.instances;
        let id = Fleet::instance_id(s, i);
        let status = if critical.contains(&id) {
            critical.remove(&id);
            CheckStatus::Passing
        } else {
            critical.insert(id);
            CheckStatus::Critical
        };
        // Sent without waiting for the answer (up to 32 at once), so the
        // storm keeps its 100/s whatever Consul's latency.
        let registration = fleet.registration(s, i, Vec::new(), status);
        let client = client.clone();
        let slot = std::sync::Arc::clone(&in_flight).acquire_owned().await?;
        storm_writes.spawn(async move {
            let _slot = slot;
            client.catalog_register(&registration).await
        });
        while let Some(written) = storm_writes.try_join_next() {
            written??;
        }
        // Once a second (a tick that is no probe's, which `continue`).
        if n % 100 == 55 {
            peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
        }
    }
    while let Some(written) = storm_writes.join_next().await {
        written??;
    }
    let storm = storm_started.elapsed();
    let cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu_before);
    let storm_pushes =
        metric_sum(&eds.metrics().await?, "consul_eds_pushes_total", None) - pushes_before;
    let storm_probes = probing.finish().await;
    // After the storm: the same probes one at a time on a quiet catalog.
    for _ in 0..10 {
        probing.health(&client, &probe_envoy).await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
        probing.registration(&client, &probe_envoy).await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let quiet_probes = probing.finish().await;
    let expected_healthy = expected + probing.extra.len() as u64
        - critical.len() as u64
        - probing.critical.len() as u64;
    let converged = eventually(
        "Envoy to converge after the storm",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            membership(&envoy, "membership_total")
                .await
                .ok()
                .filter(|n| *n == expected_healthy)
        },
    )
    .await;
    println!(
        "  storm: {n} changes in {:.1} s ({:.0}/s); consul-eds-server CPU {:.0} % of one core, RSS sampled each second up to {} MiB, VmHWM over the whole run {} MiB",
        storm.as_secs_f64(),
        n as f64 / storm.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / storm.as_secs_f64(),
        peak_rss / 1024,
        peak_rss_kib(pid).unwrap_or(0) / 1024
    );
    println!(
        "  pushes to the xDS cache during the storm: {storm_pushes:.0} ({:.1} changes per push)",
        n as f64 / storm_pushes.max(1.0)
    );
    storm_probes.print("during the storm");
    quiet_probes.print("after it");
    sampler.abort();
    println!(
        "  connections to the agent, most at once over the whole run (sampled every 20 ms): {}",
        peak_connections.load(std::sync::atomic::Ordering::Relaxed)
    );
    match converged {
        Ok(_) => {
            println!("  no change lost: Envoy has exactly the {expected_healthy} passing instances")
        }
        Err(_) => println!(
            "  CHANGES LOST: Envoy has {} endpoints, Consul {expected_healthy} passing",
            membership(&envoy, "membership_total").await.unwrap_or(0)
        ),
    }
    Ok(())
}

/// An Envoy subscribed over ADS to the probe clusters only (see
/// `benches::scale_probes`).
async fn probe_gateway(xds: SocketAddr, clusters: Vec<String>) -> Result<Envoy> {
    let yaml = GatewayBootstrap {
        node_id: "bench-probe".to_owned(),
        xds,
        transport: EdsTransport::Ads,
        clusters,
        listener_port: free_port(),
        retries: false,
    }
    .yaml();
    Ok(Envoy::start(&membership_stats_only(yaml)).await?)
}

/// The scale part's timed changes: each made in Consul, then awaited in
/// the probe Envoy by a task of its own, so the storm keeps its pace.
struct Probing {
    fleet: Fleet,
    health: Vec<usize>,
    registration: Vec<usize>,
    /// Probe services whose instance 0 is critical now.
    critical: std::collections::BTreeSet<usize>,
    /// Registration probes whose extra instance is registered now.
    extra: std::collections::BTreeSet<usize>,
    next_health: usize,
    next_registration: usize,
    /// Probes still waiting. A probe service comes round again only after
    /// 5 s (health) or 10 s (registration), by which time its last probe
    /// has ended, so each knows the count it waits for.
    pending: Vec<(ProbeKind, JoinHandle<ProbeResult>)>,
    done: Vec<(ProbeKind, ProbeResult)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Health,
    Registration,
}

/// The probes of one phase.
struct ProbeReport(Vec<(ProbeKind, ProbeResult)>);

impl Probing {
    fn new(fleet: &Fleet, health: Vec<usize>, registration: Vec<usize>) -> Self {
        Self {
            fleet: *fleet,
            health,
            registration,
            critical: Default::default(),
            extra: Default::default(),
            next_health: 0,
            next_registration: 0,
            pending: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Collects the probes that have ended.
    async fn collect_finished(&mut self) {
        for (kind, handle) in std::mem::take(&mut self.pending) {
            if handle.is_finished() {
                if let Ok(result) = handle.await {
                    self.done.push((kind, result));
                }
            } else {
                self.pending.push((kind, handle));
            }
        }
    }

    async fn health(&mut self, client: &Client, envoy: &std::sync::Arc<Envoy>) -> Result<()> {
        let Some(s) = self
            .health
            .get(self.next_health % self.health.len().max(1))
            .copied()
        else {
            return Ok(());
        };
        self.next_health += 1;
        let status = if self.critical.remove(&s) {
            CheckStatus::Passing
        } else {
            self.critical.insert(s);
            CheckStatus::Critical
        };
        let want = (self.fleet.instances - usize::from(self.critical.contains(&s))) as u64;
        client
            .catalog_register(&self.fleet.registration(s, 0, Vec::new(), status))
            .await?;
        self.watch(ProbeKind::Health, s, want, envoy);
        self.collect_finished().await;
        Ok(())
    }

    async fn registration(&mut self, client: &Client, envoy: &std::sync::Arc<Envoy>) -> Result<()> {
        let Some(s) = self
            .registration
            .get(self.next_registration % self.registration.len().max(1))
            .copied()
        else {
            return Ok(());
        };
        self.next_registration += 1;
        // The extra instance has the next index after the fleet's own.
        let extra =
            self.fleet
                .registration(s, self.fleet.instances, Vec::new(), CheckStatus::Passing);
        let want = if self.extra.remove(&s) {
            client
                .catalog_deregister(&consul_client::CatalogDeregistration {
                    node: extra.node.clone(),
                    service_id: Some(Fleet::instance_id(s, self.fleet.instances)),
                    ..Default::default()
                })
                .await?;
            self.fleet.instances
        } else {
            client.catalog_register(&extra).await?;
            self.extra.insert(s);
            self.fleet.instances + 1
        };
        self.watch(ProbeKind::Registration, s, want as u64, envoy);
        self.collect_finished().await;
        Ok(())
    }

    fn watch(&mut self, kind: ProbeKind, service: usize, want: u64, envoy: &std::sync::Arc<Envoy>) {
        let changed_at = Instant::now();
        let envoy = std::sync::Arc::clone(envoy);
        let cluster = Fleet::service_name(service);
        self.pending.push((
            kind,
            tokio::spawn(
                async move { probes::until_members(&envoy, &cluster, want, changed_at).await },
            ),
        ));
    }

    /// Waits for the pending probes; everything since the last call.
    async fn finish(&mut self) -> ProbeReport {
        for (kind, handle) in std::mem::take(&mut self.pending) {
            if let Ok(result) = handle.await {
                self.done.push((kind, result));
            }
        }
        ProbeReport(std::mem::take(&mut self.done))
    }
}

impl ProbeReport {
    fn print(&self, phase: &str) {
        for (kind, what) in [
            (ProbeKind::Health, "a health change"),
            (ProbeKind::Registration, "an instance registered or removed"),
        ] {
            let results: Vec<&ProbeResult> = self
                .0
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, r)| r)
                .collect();
            // A probe that found its count already there measured nothing:
            // left out of the figures, and counted.
            let already = results.iter().filter(|r| r.already).count();
            let mut seen: Vec<Duration> = results
                .iter()
                .filter(|r| !r.already)
                .filter_map(|r| r.visible_after)
                .collect();
            seen.sort();
            let lost = results.len() - already - seen.len();
            let poll =
                results.iter().map(|r| r.poll).sum::<Duration>() / results.len().max(1) as u32;
            println!(
                "  {phase}: {what} -> visible in Envoy: p50 {}  p99 {}  max {} ({} probes, {lost} not seen within {:?}, {already} left out: the change before them never showed; each admin poll {} on average, 2 ms apart)",
                ms(quantile(&seen, 0.5)),
                ms(quantile(&seen, 0.99)),
                ms(seen.last().copied().unwrap_or_default()),
                results.len() - already,
                probes::PROBE_TIMEOUT,
                ms(poll),
            );
        }
    }
}

/// The sum of one `cluster.*.<stat>` over every cluster but the xDS one.
async fn membership(envoy: &Envoy, stat: &str) -> Result<u64> {
    Ok(envoy_stat_sum(envoy, &format!("^cluster\\.svc-.*\\.{stat}$")).await?)
}

async fn reload(args: &Args) -> Result<()> {
    println!(
        "== eds vs reload: one backend added or removed per second for {} s, 100 req/s, 2 % deliberate 500s",
        args.churn_seconds
    );
    let plan = ChurnPlan {
        id_prefix: "web".to_owned(),
        ip: "127.0.0.1".parse()?,
        min_instances: 2,
        max_instances: 6,
        behaviour: Behaviour {
            error_ratio: 0.02,
            slow_ratio: 0.05,
            slow_delay: Duration::from_millis(100),
        },
        drain: Duration::from_secs(2),
    };

    // Envoy + consul-eds-server.
    let consul = ConsulAgent::start().await?;
    let eds = start_eds(args, &consul, &[]).await?;
    let mut churner = Churner::new(
        plan.clone(),
        ConsulRegistrar::new(client_for(&consul, 64)?, "web"),
    );
    churner.start().await?;
    let (_envoy, listener) = gateway(eds.xds, vec!["web".to_owned()]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let envoy_report = churn_under_load(&mut churner, listener, args.churn_seconds).await?;
    churner.shutdown().await;
    let eds_cpu = cpu_time(eds.process.pid()).unwrap_or_default();

    // nginx, its upstreams rewritten and reloaded on every change.
    let nginx_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let first = demo::backend::Instance::start("seed".into(), plan.ip, plan.behaviour).await?;
    let nginx = NginxGateway::start(nginx_listen, vec![first.addr]).await?;
    let mut churner = Churner::new(plan, nginx);
    churner.start().await?;
    // The seed upstream goes once the churner's instances are in.
    let upstreams: Vec<SocketAddr> = churner.live().iter().map(|i| i.addr).collect();
    churner.registrar_mut().set_upstreams(upstreams)?;
    first.stop(Duration::from_secs(1)).await;
    let nginx_report = churn_under_load(&mut churner, nginx_listen, args.churn_seconds).await?;
    let reloads = churner.registrar_mut().reloads;
    churner.shutdown().await;

    println!("  Envoy + EDS : {}", envoy_report.summary());
    println!(
        "  nginx+reload: {} ({reloads} reloads)",
        nginx_report.summary()
    );
    println!(
        "  consul-eds-server CPU over the whole run: {:.2} s",
        eds_cpu.as_secs_f64()
    );
    Ok(())
}

async fn churn_under_load<R: demo::churn::Registrar>(
    churner: &mut Churner<R>,
    target: SocketAddr,
    seconds: u64,
) -> Result<LoadReport> {
    let load = tokio::spawn(run_load(LoadPlan {
        url: format!("http://{target}/").parse()?,
        requests_per_second: 100,
        duration: Duration::from_secs(seconds),
        max_in_flight: 64,
        timeout: Duration::from_secs(5),
    }));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    for _ in 0..seconds {
        ticker.tick().await;
        churner
            .step()
            .await
            .map_err(|e| anyhow::anyhow!("churn step: {e}"))?;
    }
    Ok(load.await?)
}

//! `cargo xtask bench gateway`: consul-eds-server's gateway mode (listeners,
//! routes and clusters from Consul tags) against real Consul and Envoy.
//!
//! 1. latency: a service registered with a route tag until the first 200
//!    through Envoy on its new route, beside the floor: a blocking query on
//!    `/v1/catalog/services` woken by the same registration.
//! 2. scale: many routed services x instances, one Envoy; initial sync, one
//!    route change until Envoy serves it, what a change costs on the wire,
//!    and the server's peak memory.
//! 3. churn: a route added or removed every second while load runs against
//!    routes that do not change; those requests must all succeed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use benches::fleet::Fleet;
use benches::server::{EdsServer, consul_client, envoy_stat_sum, metric_sum, ms};
use benches::stats::{cpu_time, peak_rss_kib, quantile, rss_kib};
use consul_client::{AgentCheck, AgentServiceRegistration, CheckStatus, Client, QueryOptions};
use demo::load::{LoadPlan, LoadReport, run as run_load};
use serde_json::Value;
use test_support::bootstrap::ads_only_bootstrap;
use test_support::{Backend, ConsulAgent, Envoy, eventually, free_port, http_request};

/// The server's peak resident memory the scale scenario is held to.
const PEAK_RSS_TARGET_MIB: u64 = 200;

struct Args {
    eds_binary: PathBuf,
    parts: Vec<String>,
    samples: usize,
    services: usize,
    instances: usize,
    changes: usize,
    delta: bool,
    seconds: u64,
    requests_per_second: u32,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        eds_binary: PathBuf::new(),
        parts: vec![],
        samples: 50,
        services: 5_000,
        instances: 20,
        changes: 20,
        delta: false,
        seconds: 60,
        requests_per_second: 1_000,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        let mut value = || raw.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--eds-binary" => args.eds_binary = value()?.into(),
            "--samples" => args.samples = value()?.parse()?,
            "--services" => args.services = value()?.parse()?,
            "--instances" => args.instances = value()?.parse()?,
            "--changes" => args.changes = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--rps" => args.requests_per_second = value()?.parse()?,
            "--delta" => args.delta = true,
            "latency" | "scale" | "churn" => args.parts.push(arg),
            other => bail!("unknown argument `{other}` (parts: latency, scale, churn)"),
        }
    }
    ensure!(
        args.eds_binary.exists(),
        "--eds-binary must name the built consul-eds-server"
    );
    ensure!(
        args.samples > 0 && args.changes > 0,
        "--samples and --changes must be at least 1"
    );
    if args.parts.is_empty() {
        args.parts = vec!["latency".into(), "scale".into(), "churn".into()];
    }
    Ok(args)
}

/// One line of the closing table.
struct Row {
    scenario: &'static str,
    measurement: String,
    figure: String,
    target: &'static str,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut rows = Vec::new();
    for part in &args.parts {
        match part.as_str() {
            "latency" => latency(&args, &mut rows).await?,
            "scale" => scale(&args, &mut rows).await?,
            "churn" => churn(&args, &mut rows).await?,
            _ => unreachable!("parsed above"),
        }
    }
    print_table(&args, &rows);
    Ok(())
}

fn protocol(args: &Args) -> &'static str {
    if args.delta { "delta" } else { "SotW" }
}

fn print_table(args: &Args, rows: &[Row]) {
    println!("== summary ({} xDS)", protocol(args));
    let width = rows.iter().map(|r| r.measurement.len()).max().unwrap_or(0);
    let figure_width = rows.iter().map(|r| r.figure.len()).max().unwrap_or(0);
    for row in rows {
        println!(
            "  {:<8} {:<width$}  {:>figure_width$}  {}",
            row.scenario, row.measurement, row.figure, row.target
        );
    }
}

/// The server in gateway mode with one plain listener `web`, and an Envoy
/// that knows nothing but the way to it.
struct Gateway {
    server: EdsServer,
    envoy: Envoy,
    listener: SocketAddr,
}

impl Gateway {
    async fn start(args: &Args, consul: &ConsulAgent) -> Result<Self> {
        let port = free_port();
        let server = EdsServer::start(
            &args.eds_binary,
            consul,
            &["--gateway", "--listener", &format!("web=127.0.0.1:{port}")],
        )
        .await?;
        let envoy = Envoy::start(&ads_only_bootstrap(
            &format!("bench-{port}"),
            server.xds,
            args.delta,
        ))
        .await?;
        Ok(Self {
            server,
            envoy,
            listener: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// The status of `GET /` for `host` through Envoy (0 when the request
    /// itself failed, e.g. before Envoy has the listener).
    async fn status(&self, host: &str) -> u16 {
        http_request("GET", self.listener, "/", &[("host", host)], Vec::new())
            .await
            .map_or(0, |r| r.status)
    }

    /// Polls every millisecond until `host` answers `status`; returns when.
    async fn answers(&self, host: &str, status: u16, limit: Duration) -> Result<Instant> {
        let what = format!("{host} to answer {status} through Envoy");
        eventually(&what, limit, Duration::from_millis(1), || async {
            (self.status(host).await == status).then(Instant::now)
        })
        .await
        .with_context(|| format!("Envoy:\n{}", self.envoy.log_tail()))
    }

    /// Virtual hosts in the route configurations Envoy has accepted.
    async fn virtual_hosts(&self) -> Result<usize> {
        let dump: Value = serde_json::from_str(
            &self
                .envoy
                .admin_get("/config_dump?resource=dynamic_route_configs")
                .await?,
        )?;
        Ok(dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|config| config["route_config"]["virtual_hosts"].as_array())
            .map(Vec::len)
            .sum())
    }
}

/// Where the server's time between a tag change and Envoy holding the
/// routes goes, from its own histograms: each is a sum and a count, so
/// two readings give the mean per event in between.
struct PublishBreakdown {
    /// (label, sum of seconds, count) per step, in publication order.
    steps: Vec<(&'static str, f64, f64)>,
}

impl PublishBreakdown {
    const STEPS: [(&'static str, &'static str, Option<&'static str>); 5] = [
        (
            "rebuild (table + translation)",
            "consul_eds_gateway_rebuild_seconds",
            None,
        ),
        (
            "endpoints of new clusters cached",
            "consul_eds_gateway_publish_step_seconds",
            Some("step=\"endpoints_cached\""),
        ),
        (
            "clusters + endpoints acknowledged",
            "consul_eds_gateway_publish_step_seconds",
            Some("step=\"clusters_acknowledged\""),
        ),
        (
            "listeners + routes written",
            "consul_eds_gateway_publish_step_seconds",
            Some("step=\"routes_written\""),
        ),
        (
            "routes acknowledged, clusters removed",
            "consul_eds_gateway_publish_step_seconds",
            Some("step=\"clusters_removed\""),
        ),
    ];

    async fn read(server: &EdsServer) -> Result<Self> {
        let text = server.metrics().await?;
        let steps = Self::STEPS
            .iter()
            .map(|(label, metric, filter)| {
                (
                    *label,
                    metric_sum(&text, &format!("{metric}_sum"), *filter),
                    metric_sum(&text, &format!("{metric}_count"), *filter),
                )
            })
            .collect();
        Ok(Self { steps })
    }

    fn print_since(&self, before: &Self) {
        println!("  server side, mean per event over the samples (from its histograms):");
        for ((label, sum, count), (_, sum_before, count_before)) in
            self.steps.iter().zip(&before.steps)
        {
            let events = count - count_before;
            if events > 0.0 {
                let mean = Duration::from_secs_f64((sum - sum_before) / events);
                println!("    {label:<40} {:>9}  over {events} events", ms(mean));
            }
        }
    }
}

/// Registers `id` (service `id` too) with Consul at `backend`, with
/// a passing TTL check, the tag `edge.route=HOST/` and nothing else.
async fn register_routed(client: &Client, id: &str, backend: &Backend, host: &str) -> Result<()> {
    client
        .agent_service_register(&AgentServiceRegistration {
            id: Some(id.to_owned()),
            name: id.to_owned(),
            address: backend.addr().ip().to_string(),
            port: backend.addr().port(),
            tags: vec![format!("edge.route={host}/")],
            checks: vec![
                AgentCheck::ttl("ttl", Duration::from_secs(3600))
                    .with_id(format!("ttl:{id}"))
                    .with_initial_status(CheckStatus::Passing),
            ],
            ..AgentServiceRegistration::default()
        })
        .await?;
    Ok(())
}

/// The floor: a blocking query on `/v1/catalog/services`, the endpoint that
/// tells the server which services carry tags, already waiting when the
/// next registration lands; resolves to the moment Consul answered it.
async fn catalog_services_woken(
    client: &Client,
) -> Result<tokio::task::JoinHandle<Result<Instant, consul_client::Error>>> {
    let index = client
        .catalog_services(&QueryOptions::default())
        .await?
        .meta
        .index
        .unwrap_or(1);
    let client = client.clone();
    let blocking = tokio::spawn(async move {
        let options = QueryOptions {
            index,
            wait: Some(Duration::from_secs(30)),
            ..QueryOptions::default()
        };
        client
            .catalog_services(&options)
            .await
            .map(|_| Instant::now())
    });
    // Lets the query reach Consul and block before the change is made.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(blocking)
}

async fn latency(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    println!(
        "== gateway latency: {} routed services registered one at a time ({} xDS)",
        args.samples,
        protocol(args)
    );
    let consul = ConsulAgent::start().await?;
    let client = consul_client(&consul, 64)?;
    let backend = Backend::start("latency").await?;
    let gateway = Gateway::start(args, &consul).await?;
    // The first route also brings the listener: wait for it outside the samples.
    register_routed(&client, "warm", &backend, "warm.test").await?;
    gateway
        .answers("warm.test", 200, Duration::from_secs(30))
        .await?;

    let before = PublishBreakdown::read(&gateway.server).await?;
    let mut floor = Vec::new();
    let mut total = Vec::new();
    for n in 0..args.samples {
        let id = format!("lat-{n}");
        let host = format!("{id}.test");
        let blocking = catalog_services_woken(&client).await?;
        let registered = Instant::now();
        register_routed(&client, &id, &backend, &host).await?;
        let served = gateway.answers(&host, 200, Duration::from_secs(10)).await?;
        let woken = blocking.await??;
        floor.push(woken.saturating_duration_since(registered));
        total.push(served.saturating_duration_since(registered));
    }
    floor.sort();
    total.sort();
    let (f50, f99) = (quantile(&floor, 0.5), quantile(&floor, 0.99));
    let (t50, t99) = (quantile(&total, 0.5), quantile(&total, 0.99));
    println!(
        "  raw blocking query on /v1/catalog/services (floor)  p50 {}  p99 {}",
        ms(f50),
        ms(f99)
    );
    println!(
        "  first 200 through Envoy on the new route (total)   p50 {}  p99 {}",
        ms(t50),
        ms(t99)
    );
    println!(
        "  total - floor                                      p50 {}  p99 {}",
        ms(t50.saturating_sub(f50)),
        ms(t99.saturating_sub(f99))
    );
    println!("  (clocked from the start of the registration; Envoy is asked every 1 ms)");
    let after = PublishBreakdown::read(&gateway.server).await?;
    after.print_since(&before);
    let samples = args.samples;
    rows.push(Row {
        scenario: "latency",
        measurement: format!("floor p50 / p99 ({samples} samples)"),
        figure: format!("{} / {}", ms(f50), ms(f99)),
        target: "",
    });
    rows.push(Row {
        scenario: "latency",
        measurement: "tag -> first 200 p50 / p99".to_owned(),
        figure: format!("{} / {}", ms(t50), ms(t99)),
        target: "",
    });
    rows.push(Row {
        scenario: "latency",
        measurement: "total - floor p50 / p99".to_owned(),
        figure: format!(
            "{} / {}",
            ms(t50.saturating_sub(f50)),
            ms(t99.saturating_sub(f99))
        ),
        target: "",
    });
    Ok(())
}

/// Counters of what the server and Envoy exchanged, read at one moment.
struct WireCounters {
    route_pushes: f64,
    pushes: f64,
    pushed_resources: f64,
    /// Bytes Envoy received from the control plane (gRPC and HTTP/2 framing
    /// included): the server exports no byte counter of its own.
    envoy_rx_bytes: u64,
}

impl WireCounters {
    async fn read(gateway: &Gateway) -> Result<Self> {
        let metrics = gateway.server.metrics().await?;
        Ok(Self {
            route_pushes: metric_sum(&metrics, "xds_pushes_total", Some("type=\"route\"")),
            pushes: metric_sum(&metrics, "xds_pushes_total", None),
            pushed_resources: metric_sum(&metrics, "xds_pushed_resources_total", None),
            envoy_rx_bytes: gateway
                .envoy
                .stat("cluster.xds.upstream_cx_rx_bytes_total")
                .await?
                .unwrap_or(0),
        })
    }
}

async fn scale(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let routes = args.services;
    let total = args.services * args.instances;
    println!(
        "== gateway scale: {} routed services x {} instances = {total} instances, one Envoy ({} xDS)",
        args.services,
        args.instances,
        protocol(args)
    );
    let consul = ConsulAgent::start().await?;
    let client = consul_client(&consul, 64)?;
    let fleet = Fleet {
        services: args.services,
        instances: args.instances,
    };
    let started = Instant::now();
    fleet
        .register_all(&client, |s| {
            vec![format!("edge.route={}.test/", Fleet::service_name(s))]
        })
        .await?;
    // The service whose route moves: the fleet's addresses are made up, so
    // only a real backend can show a route working through Envoy.
    let probe = Backend::start("probe").await?;
    register_routed(&client, "probe", &probe, "probe-0.test").await?;
    println!(
        "  registered {total} instances in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let sync_started = Instant::now();
    let gateway = Gateway::start(args, &consul).await?;
    let pid = gateway.server.process.pid();
    // Every service's cluster (the fleet's and the probe's) beside the
    // static control-plane cluster, then every instance, then every route.
    let clusters = routes as u64 + 2;
    eventually(
        "Envoy to have every cluster",
        Duration::from_secs(900),
        Duration::from_millis(200),
        || async {
            gateway
                .envoy
                .stat("cluster_manager.active_clusters")
                .await
                .ok()
                .flatten()
                .filter(|n| *n == clusters)
        },
    )
    .await?;
    let expected_endpoints = total as u64;
    eventually(
        "Envoy to have every instance",
        Duration::from_secs(900),
        Duration::from_millis(200),
        || async {
            envoy_stat_sum(&gateway.envoy, "^cluster\\.svc-.*\\.membership_total$")
                .await
                .ok()
                .filter(|n| *n == expected_endpoints)
        },
    )
    .await?;
    let expected_hosts = routes + 1;
    eventually(
        "Envoy to have every route",
        Duration::from_secs(900),
        Duration::from_millis(200),
        || async {
            gateway
                .virtual_hosts()
                .await
                .ok()
                .filter(|n| *n == expected_hosts)
        },
    )
    .await?;
    let sync = sync_started.elapsed();
    let rss_after_sync = rss_kib(pid).unwrap_or(0) / 1024;
    println!(
        "  initial sync (server start -> Envoy has all {expected_hosts} routes, {clusters} clusters, {expected_endpoints} fleet endpoints): {:.1} s",
        sync.as_secs_f64()
    );
    println!("  consul-eds-server RSS after sync: {rss_after_sync} MiB");
    gateway
        .answers("probe-0.test", 200, Duration::from_secs(30))
        .await?;

    let before = WireCounters::read(&gateway).await?;
    let cpu_before = cpu_time(pid).unwrap_or_default();
    let mut floor = Vec::new();
    let mut visible = Vec::new();
    for n in 1..=args.changes {
        let host = format!("probe-{n}.test");
        let blocking = catalog_services_woken(&client).await?;
        let changed = Instant::now();
        register_routed(&client, "probe", &probe, &host).await?;
        let served = gateway.answers(&host, 200, Duration::from_secs(60)).await?;
        let woken = blocking.await??;
        floor.push(woken.saturating_duration_since(changed));
        visible.push(served.saturating_duration_since(changed));
    }
    let change_cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu_before);
    // Envoy's ACKs and any push still in flight are counted before the reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = WireCounters::read(&gateway).await?;
    floor.sort();
    visible.sort();
    let changes = args.changes as f64;
    let (f50, f99) = (quantile(&floor, 0.5), quantile(&floor, 0.99));
    let (v50, v99) = (quantile(&visible, 0.5), quantile(&visible, 0.99));
    let bytes_per_change =
        after.envoy_rx_bytes.saturating_sub(before.envoy_rx_bytes) as f64 / changes;
    let route_pushes = (after.route_pushes - before.route_pushes) / changes;
    let pushes = (after.pushes - before.pushes) / changes;
    let resources = (after.pushed_resources - before.pushed_resources) / changes;
    let peak = peak_rss_kib(pid).unwrap_or(0) / 1024;
    println!(
        "  one route moved -> its new host answers 200 through Envoy, {} changes: p50 {}  p99 {}",
        args.changes,
        ms(v50),
        ms(v99)
    );
    println!(
        "  the same changes seen by a blocking query on /v1/catalog/services (floor): p50 {}  p99 {}",
        ms(f50),
        ms(f99)
    );
    println!(
        "  consul-eds-server CPU over the {} changes: {:.2} s",
        args.changes,
        change_cpu.as_secs_f64()
    );
    println!(
        "  per route change: {bytes_per_change:.0} bytes received by Envoy from the server; {pushes:.1} responses ({route_pushes:.1} RDS) carrying {resources:.1} resources"
    );
    println!(
        "  consul-eds-server peak RSS (VmHWM) over the run: {peak} MiB (target < {PEAK_RSS_TARGET_MIB} MiB)"
    );
    let shape = format!("{}x{}", args.services, args.instances);
    rows.push(Row {
        scenario: "scale",
        measurement: format!("initial sync ({shape})"),
        figure: format!("{:.1} s", sync.as_secs_f64()),
        target: "",
    });
    rows.push(Row {
        scenario: "scale",
        measurement: format!(
            "route change -> in Envoy p50 / p99 ({} changes)",
            args.changes
        ),
        figure: format!("{} / {}", ms(v50), ms(v99)),
        target: "",
    });
    rows.push(Row {
        scenario: "scale",
        measurement: "the same changes, floor p50 / p99".to_owned(),
        figure: format!("{} / {}", ms(f50), ms(f99)),
        target: "",
    });
    rows.push(Row {
        scenario: "scale",
        measurement: "bytes to Envoy per route change".to_owned(),
        figure: format!("{bytes_per_change:.0} B"),
        target: "",
    });
    rows.push(Row {
        scenario: "scale",
        measurement: "server RSS after sync / peak (VmHWM)".to_owned(),
        figure: format!("{rss_after_sync} / {peak} MiB"),
        target: "peak < 200 MiB",
    });
    Ok(())
}

async fn churn(args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    println!(
        "== gateway churn: one route added or removed per second for {} s, {} req/s on two stable routes ({} xDS)",
        args.seconds,
        args.requests_per_second,
        protocol(args)
    );
    let consul = ConsulAgent::start().await?;
    let client = consul_client(&consul, 64)?;
    let gateway = Gateway::start(args, &consul).await?;
    // The load generator names its target by URL, so the stable routes'
    // host is the one that resolves to the listener; two paths, two services.
    let stable_a = Backend::start("stable-a").await?;
    let stable_b = Backend::start("stable-b").await?;
    for (id, backend, path) in [("stable-a", &stable_a, "/a"), ("stable-b", &stable_b, "/b")] {
        client
            .agent_service_register(&AgentServiceRegistration {
                id: Some(id.to_owned()),
                name: id.to_owned(),
                address: backend.addr().ip().to_string(),
                port: backend.addr().port(),
                tags: vec![format!("edge.route=localhost{path}")],
                checks: vec![
                    AgentCheck::ttl("ttl", Duration::from_secs(3600))
                        .with_id(format!("ttl:{id}"))
                        .with_initial_status(CheckStatus::Passing),
                ],
                ..AgentServiceRegistration::default()
            })
            .await?;
    }
    let churned = Backend::start("churned").await?;
    // A few churned routes from the start, so that every removal has one.
    let mut live = std::collections::VecDeque::new();
    let mut next = 0usize;
    for _ in 0..3 {
        let id = format!("churn-{next}");
        register_routed(&client, &id, &churned, &format!("{id}.test")).await?;
        live.push_back(id);
        next += 1;
    }
    let port = gateway.listener.port();
    for path in ["/a", "/b"] {
        eventually(
            "a stable route",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async {
                http_request(
                    "GET",
                    gateway.listener,
                    path,
                    &[("host", "localhost")],
                    Vec::new(),
                )
                .await
                .ok()
                .filter(|r| r.status == 200)
            },
        )
        .await?;
    }
    gateway
        .answers("churn-2.test", 200, Duration::from_secs(30))
        .await?;

    let duration = Duration::from_secs(args.seconds);
    let per_route = (args.requests_per_second / 2).max(1);
    let load = |path: &str| -> Result<tokio::task::JoinHandle<LoadReport>> {
        Ok(tokio::spawn(run_load(LoadPlan {
            url: format!("http://localhost:{port}{path}").parse()?,
            requests_per_second: per_route,
            duration,
            max_in_flight: 128,
            timeout: Duration::from_secs(5),
        })))
    };
    let load_a = load("/a")?;
    let load_b = load("/b")?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut added, mut removed) = (0usize, 0usize);
    let mut last_removed = None;
    for second in 0..args.seconds {
        ticker.tick().await;
        if second % 2 == 0 {
            let id = format!("churn-{next}");
            register_routed(&client, &id, &churned, &format!("{id}.test")).await?;
            live.push_back(id);
            next += 1;
            added += 1;
        } else if let Some(id) = live.pop_front() {
            client.agent_service_deregister(&id).await?;
            last_removed = Some(id);
            removed += 1;
        }
    }
    let report_a = load_a.await?;
    let report_b = load_b.await?;
    // The churn must have reached Envoy too, or the stable routes were
    // never disturbed at all.
    let newest = live.back().context("a churned route is live")?;
    gateway
        .answers(&format!("{newest}.test"), 200, Duration::from_secs(10))
        .await?;
    if let Some(id) = &last_removed {
        gateway
            .answers(&format!("{id}.test"), 404, Duration::from_secs(10))
            .await?;
    }
    let failed = report_a.failed() + report_b.failed();
    let sent = report_a.sent + report_b.sent;
    let rate = sent as f64 / duration.as_secs_f64();
    println!(
        "  {added} routes added, {removed} removed; Envoy serves the last added and 404s the last removed"
    );
    println!("  localhost/a: {}", report_a.summary());
    println!("  localhost/b: {}", report_b.summary());
    println!(
        "  failed requests on the stable routes: {failed} of {sent} ({rate:.0} req/s sent; target 0)"
    );
    rows.push(Row {
        scenario: "churn",
        measurement: format!(
            "failed on stable routes ({added} adds, {removed} removes, {} s)",
            args.seconds
        ),
        figure: format!("{failed} of {sent}"),
        target: "0",
    });
    Ok(())
}

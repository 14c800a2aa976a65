//! The whole demo on one machine, started by `cargo xtask demo`: Consul,
//! knot (DNS with RFC 2136), pebble (ACME), envoy-acme-sds, consul-eds-server
//! in gateway mode, churning demo backends that declare their routes in
//! tags, Envoy as the gateway (HTTP and HTTPS) from a bootstrap holding only
//! the control-plane clusters, Prometheus, and load. Prints where to look,
//! the route table and a live summary; stops on Ctrl-C or after
//! `--duration`. Every process dies with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use demo::load::{LoadPlan, run as run_load};
use service_support::shutdown;
use test_support::bootstrap::control_plane_cluster;
use test_support::{
    ConsulAgent, Envoy, Knot, ManagedProcess, Pebble, PebbleOptions, eventually, free_port,
    http_get,
};

#[derive(Debug, Parser)]
#[command(name = "demo-stack", about = "Runs the whole demo locally")]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Requests per second sent through the gateway.
    #[arg(long, default_value_t = 50)]
    rps: u32,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 5)]
    report_secs: u64,
    /// Write the ports and URLs here as JSON once everything is up (for tests).
    #[arg(long)]
    state_file: Option<PathBuf>,
}

const ZONE: &str = "demo.test";

/// The demo's services and the routes their tags declare (docs/gateway.md):
/// `web` serves demo.test over TLS (plain HTTP answers 308) and any other
/// host on the plain listener, with a circuit breaker and retries of
/// connection failures; `api` takes demo.test/api, stripped. Backends churn,
/// so the routes meet instances coming and going.
const BACKENDS: &[(&str, &[&str])] = &[
    (
        "web",
        &[
            "edge.route=/ retries=2 retry_on=connect-failure,reset,refused-stream",
            "edge.http.routes.site.host=demo.test",
            "edge.http.routes.site.path=/",
            "edge.http.routes.site.tls=true",
            "edge.http.routes.site.retries=2",
            "edge.http.routes.site.retry_on=connect-failure,reset,refused-stream",
            "edge.cluster.max_connections=512",
            "edge.cluster.max_pending_requests=256",
            "edge.cluster.max_requests=512",
        ],
    ),
    (
        "api",
        &["edge.route=demo.test/api strip=/api tls=true timeout=5s"],
    ),
];

/// A host a service declares during the run, with no certificate configured
/// for it: envoy-acme-sds (`--follow-routes`) orders one of its own, since
/// `*.demo.test` covers one label only, and the summary says when HTTPS for
/// it first answered.
const NEW_HOST: &str = "shop.apps.demo.test";

/// A started part, named for error messages.
struct Part {
    name: String,
    process: ManagedProcess,
}

impl Part {
    fn ensure_running(&mut self) -> Result<()> {
        self.process
            .ensure_running()
            .with_context(|| format!("{} stopped", self.name))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    service_support::logging::init(service_support::logging::LogFormat::Pretty);
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no directory for the demo binaries")?
        .to_owned();
    let work = tempfile::Builder::new().prefix("demo-").tempdir()?;

    let knot = step(
        "knot (DNS)",
        Knot::start(ZONE, &["@ A 127.0.0.1", "* A 127.0.0.1"]),
    )
    .await?;
    let pebble = step(
        "pebble (ACME CA)",
        Pebble::start(PebbleOptions {
            dns_server: Some(knot.addr()),
            ..PebbleOptions::default()
        }),
    )
    .await?;
    let consul = step("consul", ConsulAgent::start()).await?;

    let tsig_file = work.path().join("tsig.key");
    let tsig = knot.tsig();
    write_private(
        &tsig_file,
        &format!(
            "{}:{}:{}\n",
            tsig.name.trim_end_matches('.'),
            tsig.algorithm,
            tsig.secret_base64
        ),
    )?;
    let acme_ca = work.path().join("pebble-listener-ca.pem");
    std::fs::write(&acme_ca, pebble.listener_ca_pem())?;
    // Private keys in Consul KV are sealed: a fresh random key per demo run,
    // readable by its owner only, like any key file an operator keeps.
    let encryption_key = work.path().join("encryption.key");
    let key_hex: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    write_private(&encryption_key, &format!("{key_hex}\n"))?;

    let sds = loopback();
    let sds_admin = loopback();
    let mut parts = vec![Part {
        name: "envoy-acme-sds".to_owned(),
        process: spawn(
            &bin_dir,
            "envoy-acme-sds",
            &[
                "--acme-directory",
                &pebble.directory_url(),
                "--acme-ca-file",
                &acme_ca.display().to_string(),
                "--email",
                "ops@demo.test",
                "--cert",
                "demo.test,*.demo.test",
                "--challenge",
                "dns-01",
                "--rfc2136-server",
                &knot.addr().to_string(),
                "--tsig-key-file",
                &tsig_file.display().to_string(),
                "--storage",
                "consul:envoy-acme-sds/demo",
                "--encryption-key-file",
                &encryption_key.display().to_string(),
                "--consul-addr",
                &consul.http_url(),
                "--sds-listen",
                &sds.to_string(),
                "--admin-listen",
                &sds_admin.to_string(),
                "--follow-routes",
                "--allowed-domains",
                ZONE,
            ],
            work.path(),
        )?,
    }];
    let eds = loopback();
    let eds_admin = loopback();
    let http = loopback();
    let https = loopback();
    parts.push(Part {
        name: "consul-eds-server".to_owned(),
        process: spawn(
            &bin_dir,
            "consul-eds-server",
            &[
                "--consul-addr",
                &consul.http_url(),
                "--xds-listen",
                &eds.to_string(),
                "--admin-listen",
                &eds_admin.to_string(),
                "--gateway",
                "--listener",
                &format!("web={http}"),
                "--listener",
                &format!("websecure={https},tls"),
            ],
            work.path(),
        )?,
    });
    let consul_url = consul.http_url();
    for (service, tags) in BACKENDS {
        let mut args = vec!["--consul-addr", consul_url.as_str(), "--service", service];
        for tag in *tags {
            args.extend(["--tag", tag]);
        }
        parts.push(Part {
            name: format!("demo-backend ({service})"),
            process: spawn_named(&bin_dir, "demo-backend", service, &args, work.path())?,
        });
    }
    wait_ready("consul-eds-server", eds_admin, "/readyz", &mut parts).await?;
    wait_ready("envoy-acme-sds", sds_admin, "/readyz", &mut parts).await?;

    let envoy = step(
        "envoy (gateway)",
        Envoy::start(&gateway_bootstrap(eds, sds)),
    )
    .await?;

    let prometheus_addr = loopback();
    let prometheus = start_prometheus(
        work.path(),
        prometheus_addr,
        &[
            ("envoy", envoy.admin_addr(), "/stats/prometheus"),
            ("consul-eds-server", eds_admin, "/metrics"),
            ("envoy-acme-sds", sds_admin, "/metrics"),
        ],
    )
    .await?;
    parts.push(Part {
        name: "prometheus".to_owned(),
        process: prometheus,
    });

    let root_pem = pebble.issuing_root_pem().await?;
    let root_file = work.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root_pem)?;
    println!("demo running:");
    println!("  gateway HTTP     http://{http}/            (any Host but demo.test: web)");
    println!(
        "  gateway HTTPS    https://demo.test:{}/ and /api/ (resolve demo.test to 127.0.0.1; CA: {})",
        https.port(),
        root_file.display()
    );
    println!("  Envoy admin      {}/", envoy.admin_url());
    println!(
        "  EDS status       http://{eds_admin}/        snapshot: http://{eds_admin}/debug/snapshot"
    );
    println!("  SDS status       http://{sds_admin}/debug/certificates");
    println!("  Consul UI        {}/ui/", consul.http_url());
    println!("  Prometheus       http://{prometheus_addr}/");
    println!("  route table      http://{eds_admin}/ (JSON: http://{eds_admin}/debug/routes)");
    print_routes(eds_admin).await;
    if let Some(path) = &args.state_file {
        let state = serde_json::json!({
            "http": http.to_string(),
            "https": https.to_string(),
            "envoy_admin": envoy.admin_addr().to_string(),
            "eds_admin": eds_admin.to_string(),
            "sds_admin": sds_admin.to_string(),
            "consul": consul.http_url(),
            "prometheus": prometheus_addr.to_string(),
            "root_pem_file": root_file.display().to_string(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&state)?)?;
    }

    // A new TLS host during the run: its service registers, and nothing
    // else is done for it.
    let new_host_tag = format!("edge.route={NEW_HOST}/ tls=true");
    parts.push(Part {
        name: "demo-backend (shop)".to_owned(),
        process: spawn_named(
            &bin_dir,
            "demo-backend",
            "shop",
            &[
                "--consul-addr",
                consul_url.as_str(),
                "--service",
                "shop",
                "--tag",
                &new_host_tag,
                "--error-percent",
                "0",
            ],
            work.path(),
        )?,
    });
    let new_host_https = watch_first_https(https, NEW_HOST, root_pem.clone());

    let stop = shutdown::on_signal();
    let started = Instant::now();
    let mut new_host_reported = false;
    let deadline = args.duration_secs.map(|s| started + Duration::from_secs(s));
    let url = format!("http://{http}/").parse()?;
    loop {
        for part in &mut parts {
            part.ensure_running()?;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let window = Duration::from_secs(args.report_secs.max(1));
        let report = tokio::select! {
            () = stop.cancelled() => break,
            report = run_load(LoadPlan {
                url: Clone::clone(&url),
                requests_per_second: args.rps,
                duration: window,
                max_in_flight: 256,
                timeout: Duration::from_secs(5),
            }) => report,
        };
        let endpoints = envoy
            .stat("cluster.web.membership_healthy")
            .await
            .ok()
            .flatten();
        let expiry = certificate_expiry(sds_admin).await;
        if !new_host_reported && let Some(after) = *new_host_https.borrow() {
            println!(
                "  new host {NEW_HOST}: HTTPS verified {} ms after its service registered \
                 (its own certificate, ordered by envoy-acme-sds --follow-routes)",
                after.as_millis()
            );
            new_host_reported = true;
        }
        println!(
            "[{:>4}s] {:.0} req/s, ok {}, deliberate 500 {}, other failures {}, p99 {:?} | web endpoints {} | cert {}",
            started.elapsed().as_secs(),
            report.sent as f64 / window.as_secs_f64(),
            report.ok,
            report.deliberate_errors,
            report.failed(),
            report.latency_quantile(0.99).unwrap_or_default(),
            endpoints.map_or("?".to_owned(), |n| n.to_string()),
            expiry,
        );
    }
    println!("stopping");
    drop(parts);
    Ok(())
}

/// Polls HTTPS for `host` through the gateway every 50 ms, verified
/// against `root_pem`, and tells how long after the call the first 200 came.
fn watch_first_https(
    listener: SocketAddr,
    host: &'static str,
    root_pem: String,
) -> tokio::sync::watch::Receiver<Option<Duration>> {
    let (sender, receiver) = tokio::sync::watch::channel(None);
    let since = Instant::now();
    tokio::spawn(async move {
        loop {
            if test_support::https_get(listener, host, &root_pem, "/")
                .await
                .is_ok_and(|(response, _)| response.status == 200)
            {
                sender.send_replace(Some(since.elapsed()));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    receiver
}

async fn step<T, F: Future<Output = test_support::Result<T>>>(name: &str, start: F) -> Result<T> {
    let value = start
        .await
        .with_context(|| format!("{name} failed to start"))?;
    println!("  started {name}");
    Ok(value)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn spawn(bin_dir: &Path, name: &str, args: &[&str], work: &Path) -> Result<ManagedProcess> {
    spawn_named(bin_dir, name, name, args, work)
}

/// Spawns `program`, logging to `<log_name>.log` (several processes may run
/// one program).
fn spawn_named(
    bin_dir: &Path,
    program: &str,
    log_name: &str,
    args: &[&str],
    work: &Path,
) -> Result<ManagedProcess> {
    let name = program;
    let binary = bin_dir.join(name);
    if !binary.exists() {
        bail!(
            "{} is missing: build it first (cargo xtask demo does)",
            binary.display()
        );
    }
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let log = work.join(format!("{log_name}.log"));
    let process = ManagedProcess::spawn(
        name,
        &binary,
        &args,
        &[("RUST_LOG".to_owned(), "info".to_owned())],
        &log,
    )
    .with_context(|| format!("{name} failed to start"))?;
    println!("  started {name} (log: {})", log.display());
    Ok(process)
}

async fn wait_ready(name: &str, admin: SocketAddr, path: &str, parts: &mut [Part]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for part in parts.iter_mut() {
            if let Err(error) = part.ensure_running() {
                bail!("{error:#}\n{}", part.process.log_tail());
            }
        }
        if http_get(admin, path).await.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tail = parts
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.process.log_tail())
                .unwrap_or_default();
            bail!("{name} not ready after 60 s:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    Ok(())
}

async fn certificate_expiry(admin: SocketAddr) -> String {
    let Ok(response) = http_get(admin, "/debug/certificates").await else {
        return "?".to_owned();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&response.body) else {
        return "?".to_owned();
    };
    json.pointer("/certificates/0/not_after")
        .or_else(|| json.pointer("/0/not_after"))
        .and_then(|v| v.as_str())
        .map_or("?".to_owned(), |s| format!("expires {s}"))
}

async fn start_prometheus(
    work: &Path,
    listen: SocketAddr,
    targets: &[(&str, SocketAddr, &str)],
) -> Result<ManagedProcess> {
    let mut config = String::from("global:\n  scrape_interval: 5s\nscrape_configs:\n");
    for (job, addr, path) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ));
    }
    let config_path = work.join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let data = work.join("prometheus-data");
    let args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address={listen}"),
    ];
    let mut process = ManagedProcess::spawn(
        "prometheus",
        &test_support::tool("prometheus")?,
        &args,
        &[],
        &work.join("prometheus.log"),
    )
    .context("prometheus failed to start")?;
    let ready = eventually(
        "prometheus",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            http_get(listen, "/-/ready")
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await;
    if ready.is_err() {
        process.ensure_running()?;
        bail!("prometheus not ready after 30 s:\n{}", process.log_tail());
    }
    println!("  started prometheus");
    Ok(process)
}

/// The route table as the server shows it, one line per route: what an
/// operator sees on the status page, for the terminal.
async fn print_routes(eds_admin: SocketAddr) {
    let table = eventually(
        "the route table",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let body = http_get(eds_admin, "/debug/routes").await.ok()?.body;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            let routes = route_lines(&json);
            // Both services' routes are in once each has been read.
            (routes.iter().any(|l| l.contains("-> api"))
                && routes.iter().any(|l| l.contains("-> web")))
            .then_some(routes)
        },
    )
    .await;
    match table {
        Ok(lines) => {
            println!("  routes (from the services' tags):");
            for line in lines {
                println!("    {line}");
            }
        }
        Err(error) => println!("  routes: not read ({error})"),
    }
}

fn route_lines(routes: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    for listener in routes["listeners"].as_array().into_iter().flatten() {
        let name = listener["listener"]["name"].as_str().unwrap_or("?");
        for vhost in listener["virtual_hosts"].as_array().into_iter().flatten() {
            let host = vhost["host"]["name"].as_str().unwrap_or("*");
            for route in vhost["routes"].as_array().into_iter().flatten() {
                let path = route["path"]["value"].as_str().unwrap_or("?");
                let target = match route["action"]["kind"].as_str() {
                    Some("forward") => route["action"]["backends"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|b| b["service"].as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    Some("redirect_to_https") => "308 to https".to_owned(),
                    Some(other) => other.to_owned(),
                    None => "?".to_owned(),
                };
                let arrow = if route["action"]["kind"] == "forward" {
                    "-> "
                } else {
                    ""
                };
                lines.push(format!("{name:<10} {host:<12} {path:<8} {arrow}{target}"));
            }
        }
    }
    lines
}

/// The gateway's bootstrap: only the node and the two control-plane
/// clusters (docs/envoy/gateway.yaml). Listeners, routes and clusters come
/// from consul-eds-server over ADS; certificates from envoy-acme-sds.
fn gateway_bootstrap(eds: SocketAddr, sds: SocketAddr) -> String {
    format!(
        r#"node: {{ id: demo-gateway, cluster: demo-gateway }}
dynamic_resources:
  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
  cds_config: {{ resource_api_version: V3, ads: {{}} }}
  lds_config: {{ resource_api_version: V3, ads: {{}} }}
static_resources:
  clusters:
{xds_cluster}{sds_cluster}"#,
        xds_cluster = control_plane_cluster("xds", eds, ""),
        sds_cluster = control_plane_cluster("sds", sds, ""),
    )
}

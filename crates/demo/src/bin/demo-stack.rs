//! The whole demo on one machine, started by `cargo xtask demo`: Consul,
//! knot (DNS with RFC 2136), pebble (ACME), envoy-acme-sds, consul-eds-server,
//! churning demo backends, Envoy as the gateway (HTTP and HTTPS), Prometheus,
//! and load. Prints where to look and a live summary; stops on Ctrl-C or
//! after `--duration`. Every process dies with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use demo::load::{LoadPlan, run as run_load};
use service_support::shutdown;
use test_support::bootstrap::{control_plane_cluster, sds_tls_listener};
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

/// A started part, named for error messages.
struct Part {
    name: &'static str,
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
        name: "envoy-acme-sds",
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
            ],
            work.path(),
        )?,
    }];
    let eds = loopback();
    let eds_admin = loopback();
    parts.push(Part {
        name: "consul-eds-server",
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
            ],
            work.path(),
        )?,
    });
    parts.push(Part {
        name: "demo-backend",
        process: spawn(
            &bin_dir,
            "demo-backend",
            &["--consul-addr", &consul.http_url(), "--service", "web"],
            work.path(),
        )?,
    });
    wait_ready("consul-eds-server", eds_admin, "/readyz", &mut parts).await?;
    wait_ready("envoy-acme-sds", sds_admin, "/readyz", &mut parts).await?;

    let http = loopback();
    let https = loopback();
    let envoy = step(
        "envoy (gateway)",
        Envoy::start(&gateway_bootstrap(eds, sds, http, https)),
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
        name: "prometheus",
        process: prometheus,
    });

    let root_pem = pebble.issuing_root_pem().await?;
    let root_file = work.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root_pem)?;
    println!("demo running:");
    println!("  gateway HTTP     http://{http}/            (Host: web)");
    println!(
        "  gateway HTTPS    https://demo.test:{}/ (resolve demo.test to 127.0.0.1; CA: {})",
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

    let stop = shutdown::on_signal();
    let started = Instant::now();
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
    let binary = bin_dir.join(name);
    if !binary.exists() {
        bail!(
            "{} is missing: build it first (cargo xtask demo does)",
            binary.display()
        );
    }
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let log = work.join(format!("{name}.log"));
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

/// The gateway: HTTP to the `web` cluster (EDS), HTTPS with the demo
/// certificate (SDS) to the same cluster.
fn gateway_bootstrap(
    eds: SocketAddr,
    sds: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
) -> String {
    let grpc = |cluster: &str| {
        format!(
            "{{ resource_api_version: V3, api_config_source: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: {cluster} }} }}] }} }}"
        )
    };
    let xds_cluster = |name: &str, addr: SocketAddr| control_plane_cluster(name, addr, "");
    let hcm = |prefix: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          route_config:
            virtual_hosts:
            - name: web
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: web, retry_policy: {{ retry_on: "connect-failure,reset,refused-stream", num_retries: 3 }} }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        )
    };
    format!(
        r#"node: {{ id: demo-gateway, cluster: demo-gateway }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: {http_ip}, port_value: {http_port} }} }}
    filter_chains:
    - filters:
{http_hcm}{https_listener}{https_hcm}  clusters:
  - name: web
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: {{ eds_config: {eds_source} }}
{eds_cluster}{sds_cluster}"#,
        http_ip = http.ip(),
        http_port = http.port(),
        https_listener = sds_tls_listener("https", https, "demo.test", &grpc("sds")),
        http_hcm = hcm("http"),
        https_hcm = hcm("https"),
        eds_source = grpc("eds"),
        eds_cluster = xds_cluster("eds", eds),
        sds_cluster = xds_cluster("sds", sds),
    )
}

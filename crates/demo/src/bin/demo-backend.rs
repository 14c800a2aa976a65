//! A demo service: several instances that register themselves in Consul,
//! one added or removed every `--churn-every`, some answers slow or 500.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use consul_client::{Client, ClientConfig};
use demo::backend::Behaviour;
use demo::churn::{ChurnPlan, Churner};
use demo::consul::ConsulRegistrar;
use service_support::{logging, shutdown};

#[derive(Debug, Parser)]
#[command(
    name = "demo-backend",
    version,
    about = "Churning, misbehaving demo backends registered in Consul"
)]
struct Args {
    /// Consul agent address.
    #[arg(
        long,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    consul_addr: String,
    /// Consul service name the instances register under.
    #[arg(long, env = "DEMO_SERVICE", default_value = "web")]
    service: String,
    /// A tag every instance carries (repeatable; route tags hold commas, so
    /// the environment variable separates tags with `;`).
    #[arg(long = "tag", env = "DEMO_TAGS", value_delimiter = ';')]
    tags: Vec<String>,
    /// Address the instances listen on (each on its own free port).
    #[arg(long, env = "DEMO_IP", default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Fewest instances running.
    #[arg(long, env = "DEMO_MIN_INSTANCES", default_value_t = 2)]
    min_instances: usize,
    /// Most instances running.
    #[arg(long, env = "DEMO_MAX_INSTANCES", default_value_t = 6)]
    max_instances: usize,
    /// One instance is added or removed this often, in milliseconds (0: never).
    #[arg(long, env = "DEMO_CHURN_EVERY_MS", default_value_t = 1000)]
    churn_every_ms: u64,
    /// Percentage of answers that are deliberate 500s.
    #[arg(long, env = "DEMO_ERROR_PERCENT", default_value_t = 2.0)]
    error_percent: f64,
    /// Percentage of answers delayed by --slow-ms.
    #[arg(long, env = "DEMO_SLOW_PERCENT", default_value_t = 5.0)]
    slow_percent: f64,
    /// Delay of slow answers, in milliseconds.
    #[arg(long, env = "DEMO_SLOW_MS", default_value_t = 200)]
    slow_ms: u64,
    /// How long a deregistered instance keeps serving, in milliseconds.
    #[arg(long, env = "DEMO_DRAIN_MS", default_value_t = 2000)]
    drain_ms: u64,
    /// Log format.
    #[arg(long, env = "DEMO_LOG_FORMAT", value_enum, default_value_t = logging::LogFormat::Pretty)]
    log_format: logging::LogFormat,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    logging::init(args.log_format);
    anyhow::ensure!(
        (0.0..=100.0).contains(&args.error_percent) && (0.0..=100.0).contains(&args.slow_percent),
        "--error-percent and --slow-percent must be between 0 and 100"
    );
    anyhow::ensure!(
        args.min_instances >= 1 && args.min_instances <= args.max_instances,
        "need 1 <= --min-instances <= --max-instances"
    );
    let mut config = ClientConfig::from_env().context("reading CONSUL_* variables")?;
    config.address = args
        .consul_addr
        .parse()
        .with_context(|| format!("--consul-addr `{}`", args.consul_addr))?;
    let client = Client::new(config).context("building the Consul client")?;
    // A folded YAML value leaves spaces around the `;` of DEMO_TAGS.
    let tags: Vec<String> = args
        .tags
        .iter()
        .map(|tag| tag.trim().to_owned())
        .filter(|tag| !tag.is_empty())
        .collect();
    let registrar = ConsulRegistrar::new(client, args.service.clone()).with_tags(tags);
    let mut churner = Churner::new(
        ChurnPlan {
            id_prefix: args.service.clone(),
            ip: args.ip,
            min_instances: args.min_instances,
            max_instances: args.max_instances,
            behaviour: Behaviour {
                error_ratio: args.error_percent / 100.0,
                slow_ratio: args.slow_percent / 100.0,
                slow_delay: Duration::from_millis(args.slow_ms),
            },
            drain: Duration::from_millis(args.drain_ms),
        },
        registrar,
    );
    churner
        .start()
        .await
        .context("starting the first instances")?;
    tracing::info!(instances = churner.live().len(), service = %args.service, "demo backends up");
    let stop = shutdown::on_signal();
    let churn_every = Duration::from_millis(args.churn_every_ms);
    let mut ticker = tokio::time::interval(churn_every.max(Duration::from_millis(10)));
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick(), if !churn_every.is_zero() => {
                if let Err(error) = churner.step().await {
                    tracing::warn!(%error, "churn step failed; trying again next tick");
                }
            }
        }
    }
    churner.shutdown().await;
    Ok(())
}

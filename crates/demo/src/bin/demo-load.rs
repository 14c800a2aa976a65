//! Sends a constant rate of requests and prints one line per interval:
//! successes, deliberate 500s, and failures of any other kind.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use demo::load::{LoadPlan, run};

#[derive(Debug, Parser)]
#[command(
    name = "demo-load",
    version,
    about = "Constant-rate HTTP load that tells deliberate errors from failures"
)]
struct Args {
    /// Target URL.
    #[arg(long, env = "DEMO_LOAD_URL", default_value = "http://127.0.0.1:10000/")]
    url: String,
    /// Requests per second.
    #[arg(long, env = "DEMO_LOAD_RPS", default_value_t = 50)]
    rps: u32,
    /// Seconds per report line.
    #[arg(long, env = "DEMO_LOAD_REPORT_SECS", default_value_t = 5)]
    report_secs: u64,
    /// Stop after this many seconds (0: run until killed).
    #[arg(long, env = "DEMO_LOAD_DURATION_SECS", default_value_t = 0)]
    duration_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = args
        .url
        .parse()
        .with_context(|| format!("--url `{}` is not a URL", args.url))?;
    let mut elapsed = 0;
    loop {
        let report = run(LoadPlan {
            url: Clone::clone(&url),
            requests_per_second: args.rps,
            duration: Duration::from_secs(args.report_secs.max(1)),
            max_in_flight: 256,
            timeout: Duration::from_secs(5),
        })
        .await;
        elapsed += args.report_secs.max(1);
        println!("load: {}", report.summary());
        if args.duration_secs != 0 && elapsed >= args.duration_secs {
            return Ok(());
        }
    }
}

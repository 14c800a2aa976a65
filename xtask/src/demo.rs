//! `cargo xtask demo`: the local demo, without Docker.
//!
//! Installs the tools, builds the services in release mode and runs
//! `demo-stack`, which starts every part, prints where to look and a live
//! summary, and stops everything on Ctrl-C or after `--duration`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::{process, tools};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (e.g. `30s`, `5m`); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Requests per second sent through the gateway.
    #[arg(long, default_value_t = 50)]
    rps: u32,
    /// Write the demo's addresses as JSON to this file once it is up.
    #[arg(long)]
    state_file: Option<std::path::PathBuf>,
}

pub fn run(root: &Path, args: DemoArgs) -> Result<()> {
    let tools = tools::install(root)?;
    process::step("build (release)", || {
        process::run(
            root,
            "cargo",
            &[
                "build",
                "--release",
                "-p",
                "consul-eds-server",
                "-p",
                "envoy-acme-sds",
                "-p",
                "demo",
            ],
        )
    })?;
    let mut argv = vec!["--rps".to_owned(), args.rps.to_string()];
    if let Some(duration) = args.duration {
        argv.extend(["--duration-secs".to_owned(), duration.as_secs().to_string()]);
    }
    if let Some(path) = &args.state_file {
        argv.extend(["--state-file".to_owned(), path.display().to_string()]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    process::step("demo", || {
        process::run_with_env(
            root,
            &root.join("target/release/demo-stack").display().to_string(),
            &argv,
            &tools.test_env(),
        )
    })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        _ => Err(format!("`{text}`: unknown unit `{unit}` (use s, m or h)")),
    }
}

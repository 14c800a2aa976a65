//! `cargo xtask demo`: the local demo, without Docker.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::tools;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (e.g. `30s`, `5m`); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

/// Kills the child when dropped, so an early error leaves no process behind.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("    stopped {}", self.name);
    }
}

pub fn run(root: &Path, args: DemoArgs) -> Result<()> {
    let tools = tools::install(root)?;
    let consul_http = 8500;
    let consul = Command::new(tools.bin("consul"))
        .args([
            "agent",
            "-dev",
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            "-dns-port=-1",
            "-grpc-port=-1",
            "-log-level=warn",
        ])
        .arg(format!("-http-port={consul_http}"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting consul")?;
    let mut consul = Guard {
        name: "consul",
        child: consul,
    };
    wait_for_port(consul_http, Duration::from_secs(10))
        .context("consul did not start listening")?;
    eprintln!("demo running:");
    eprintln!("    Consul UI      http://127.0.0.1:{consul_http}/ui/");
    let started = Instant::now();
    loop {
        if let Some(status) = consul.child.try_wait()? {
            bail!("consul exited unexpectedly: {status}");
        }
        if args
            .duration
            .is_some_and(|limit| started.elapsed() >= limit)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_port(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {limit:?}")
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        "ms" => Ok(Duration::from_millis(value)),
        _ => Err(format!(
            "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
        )),
    }
}

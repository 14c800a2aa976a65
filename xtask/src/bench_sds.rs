//! `cargo xtask bench sds [--debug] [--scenario issuance|propagation|routed]
//! [--runs N] [--rotations N] [--hosts N]`: certificate issuance time,
//! renewal propagation, and the time from a routed host's registration to
//! its first verified HTTPS response, of envoy-acme-sds against real
//! pebble, knot, Consul, consul-eds-server and Envoy.
//!
//! Builds the service, consul-eds-server (the routed scenario's gateway)
//! and the benchmark program (`crates/envoy-acme-sds/examples/bench_sds.rs`),
//! release profile unless `--debug`, then runs the program, which prints
//! Markdown tables.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bench_xds::target_dir;

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let debug = args.iter().any(|arg| arg == "--debug");
    let passed: Vec<&String> = args.iter().filter(|arg| *arg != "--debug").collect();
    let mut build = Command::new("cargo");
    build.current_dir(root).args([
        "build",
        "-p",
        "envoy-acme-sds",
        "--bin",
        "envoy-acme-sds",
        "--example",
        "bench_sds",
        "-p",
        "consul-eds-server",
        "--bin",
        "consul-eds-server",
    ]);
    if !debug {
        build.arg("--release");
    }
    eprintln!("==> building envoy-acme-sds, consul-eds-server and the benchmark");
    let status = build.status().context("could not start `cargo build`")?;
    if !status.success() {
        bail!("`cargo build` of the benchmark exited with {status}");
    }

    // Where cargo put them: CARGO_TARGET_DIR when set, as for the build above.
    let profile_dir = target_dir(root).join(if debug { "debug" } else { "release" });
    let program = profile_dir.join("examples").join("bench_sds");
    let binary = profile_dir.join("envoy-acme-sds");
    let eds_binary = profile_dir.join("consul-eds-server");
    eprintln!("==> running {}", program.display());
    let status = Command::new(&program)
        .current_dir(root)
        .arg("--binary")
        .arg(&binary)
        .arg("--eds-binary")
        .arg(&eds_binary)
        .args(passed)
        .status()
        .with_context(|| format!("could not start {}", program.display()))?;
    if !status.success() {
        bail!("the sds benchmark exited with {status}");
    }
    Ok(())
}

//! `cargo xtask bench sds [--debug] [--runs N] [--rotations N]`: certificate
//! issuance time and renewal propagation of envoy-acme-sds, against real
//! pebble, knot, Consul and Envoy.
//!
//! Builds the service and its benchmark program
//! (`crates/envoy-acme-sds/examples/bench_sds.rs`, release profile unless
//! `--debug`), then runs the program, which prints a Markdown table.

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
    ]);
    if !debug {
        build.arg("--release");
    }
    eprintln!("==> building envoy-acme-sds and its benchmark");
    let status = build.status().context("could not start `cargo build`")?;
    if !status.success() {
        bail!("`cargo build` of the benchmark exited with {status}");
    }

    // Where cargo put them: CARGO_TARGET_DIR when set, as for the build above.
    let profile_dir = target_dir(root).join(if debug { "debug" } else { "release" });
    let program = profile_dir.join("examples").join("bench_sds");
    let binary = profile_dir.join("envoy-acme-sds");
    eprintln!("==> running {}", program.display());
    let status = Command::new(&program)
        .current_dir(root)
        .arg("--binary")
        .arg(&binary)
        .args(passed)
        .status()
        .with_context(|| format!("could not start {}", program.display()))?;
    if !status.success() {
        bail!("the sds benchmark exited with {status}");
    }
    Ok(())
}

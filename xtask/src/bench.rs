//! `cargo xtask bench <name>`: benchmarks that print figures.
//!
//! Benchmarks are programs, not tests: they report numbers (ideally beside a
//! baseline measured in the same run) and never fail on timing. Each builds
//! what it measures in release mode first.

use std::path::Path;

use anyhow::{Result, bail};

use crate::bench_xds::target_dir;
use crate::{process, tools};

pub fn run(root: &Path, name: &str, args: &[String]) -> Result<()> {
    let tools = tools::install(root)?;
    match name {
        "eds" => eds(root, &tools, args),
        "sds" => crate::bench_sds::run(root, args),
        "xds" => crate::bench_xds::run(root, args),
        "gateway" => gateway(root, &tools, args),
        other => bail!("unknown benchmark `{other}`; known: eds, gateway, sds, xds"),
    }
}

/// consul-eds-server: convergence (from Consul, and from Nomad's registry
/// in its stand-in), scale, and versus nginx reloads.
/// Parts can be chosen: `cargo xtask bench eds convergence reload`.
fn eds(root: &Path, tools: &tools::Tools, args: &[String]) -> Result<()> {
    run_against_server(root, tools, "bench-eds", args)
}

/// consul-eds-server's gateway mode: latency, scale and churn of routes.
/// Parts can be chosen: `cargo xtask bench gateway scale --services 500`.
fn gateway(root: &Path, tools: &tools::Tools, args: &[String]) -> Result<()> {
    run_against_server(root, tools, "bench-gateway", args)
}

/// Builds consul-eds-server and the bench programs in release mode, then
/// runs `program` with the server's path and `args`.
fn run_against_server(
    root: &Path,
    tools: &tools::Tools,
    program: &str,
    args: &[String],
) -> Result<()> {
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
                "benches",
            ],
        )
    })?;
    let release = target_dir(root).join("release");
    let eds = release.join("consul-eds-server");
    let mut argv = vec!["--eds-binary".to_owned(), eds.display().to_string()];
    argv.extend(args.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    process::run_with_env(
        root,
        &release.join(program).display().to_string(),
        &argv,
        &tools.test_env(),
    )
}

//! `cargo xtask bench <name>`: benchmarks that print figures.
//!
//! Benchmarks are programs, not tests: they report numbers (ideally beside a
//! baseline measured in the same run) and never fail on timing. Each builds
//! what it measures in release mode first.

use std::path::Path;

use anyhow::{Result, bail};

use crate::{process, tools};

pub fn run(root: &Path, name: &str, args: &[String]) -> Result<()> {
    let tools = tools::install(root)?;
    match name {
        "eds" => eds(root, &tools, args),
        "sds" => crate::bench_sds::run(root, args),
        "xds" => crate::bench_xds::run(root, args),
        other => bail!("unknown benchmark `{other}`; known: eds, sds, xds"),
    }
}

/// consul-eds-server: convergence, scale, and versus nginx reloads.
/// Parts can be chosen: `cargo xtask bench eds convergence reload`.
fn eds(root: &Path, tools: &tools::Tools, args: &[String]) -> Result<()> {
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
    let eds = root.join("target/release/consul-eds-server");
    let mut argv = vec!["--eds-binary".to_owned(), eds.display().to_string()];
    argv.extend(args.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    process::run_with_env(
        root,
        &root.join("target/release/bench-eds").display().to_string(),
        &argv,
        &tools.test_env(),
    )
}

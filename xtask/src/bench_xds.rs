//! `cargo xtask bench xds [options]`: the xDS server under a fleet's load.
//!
//! Builds xds-core's load client (`crates/xds-core/examples/xds-load.rs`)
//! in release mode and runs it. The client starts the server as a child
//! process, opens 1,000 ADS streams (one connection each) subscribed to
//! 1,000 clusters of 10 endpoints, pushes one-cluster and every-cluster
//! changes, and prints the time from the cache write to each stream's
//! receipt (p50/p99), pushes per second, and the server's RSS and CPU.
//!
//! Options go to the client: `--streams N`, `--clusters N`, `--endpoints N`,
//! `--one-cluster-rounds N`, `--all-cluster-rounds N`, `--delta`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::process;

pub fn run(root: &Path, sh_args: &[String]) -> Result<()> {
    process::step("build the xDS load client (release)", || {
        process::run(
            root,
            "cargo",
            &[
                "build",
                "--release",
                "-p",
                "xds-core",
                "--example",
                "xds-load",
            ],
        )
    })?;
    let client = target_dir(root).join("release/examples/xds-load");
    let mut argv = vec!["run"];
    argv.extend(sh_args.iter().map(String::as_str));
    process::step("xds load", || {
        process::run(root, &client.display().to_string(), &argv)
    })
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` if set, else `target/`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

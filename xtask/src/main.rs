//! Project automation, reachable as `cargo xtask <command>`.
//!
//! Everything a fresh clone needs goes through here, so that CI (which runs
//! `cargo xtask test` on a clean machine) exercises the same install steps a
//! new contributor does. Real components are installed into `.tools/`
//! (git-ignored) and never into the system, except Debian packages, which
//! only apt can install.

mod bench;
mod bench_sds;
mod bench_xds;
mod compose;
mod demo;
mod deny;
mod docs;
mod process;
mod tools;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install Envoy, Consul, pebble, knot and Prometheus into `.tools/` (idempotent).
    Tools,
    /// Install tools, then run fmt, clippy, cargo-deny and every test (end-to-end included).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run the local demo: Consul, both services, Envoy and churning backends.
    Demo(demo::DemoArgs),
    /// Regenerate docs/configuration.md from the services' `--help`.
    Docs,
    /// Run a benchmark and print its figures (`eds`, `gateway`, `sds`, `xds`).
    Bench {
        /// Which benchmark to run.
        name: String,
        /// Arguments passed to the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Tools => tools::install(&root).map(|_| ()),
        Command::Test { cargo_test_args } => test(&root, &cargo_test_args),
        Command::Demo(args) => demo::run(&root, args),
        Command::Docs => docs::generate(&root),
        Command::Bench { name, args } => bench::run(&root, &name, &args),
    }
}

/// The workspace root: xtask's manifest lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

fn test(root: &Path, cargo_test_args: &[String]) -> Result<()> {
    let tools = tools::install(root)?;
    process::step("cargo fmt --check", || {
        process::run(root, "cargo", &["fmt", "--all", "--", "--check"])
    })?;
    process::step("cargo clippy", || {
        process::run(
            root,
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    process::step("cargo deny", || deny::check(root))?;
    process::step("docker, Envoy and Prometheus files", || {
        compose::validate(root, &tools.bin("docker-compose"))
    })?;
    process::step("cargo test", || {
        let mut args = vec!["test", "--workspace"];
        args.extend(cargo_test_args.iter().map(String::as_str));
        process::run_with_env(root, "cargo", &args, &tools.test_env())
    })
}

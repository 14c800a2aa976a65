//! Running external commands with errors that name what failed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs one named step, announcing it and naming it in any error.
pub fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("==> {name}");
    f().with_context(|| format!("step `{name}` failed"))
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    run_with_env::<&str, &str>(dir, program, args, &[])
}

pub fn run_with_env<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(K, V)],
) -> Result<()> {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    let status = command
        .status()
        .with_context(|| format!("could not start `{program}`"))?;
    if !status.success() {
        bail!("`{program} {}` exited with {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a command and captures its output; a non-zero exit is an error that
/// includes the command's stderr, so the reason is visible without a rerun.
pub fn output(dir: &Path, program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("could not start `{program}`"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// The first non-blank line a command prints (stdout, else stderr), for version reports.
pub fn first_line(dir: &Path, program: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("could not start `{}`", program.display()))?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default()
        .to_owned())
}

/// Whether `program` is found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

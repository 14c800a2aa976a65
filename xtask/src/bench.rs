//! `cargo xtask bench <name>`: benchmarks that print figures.
//!
//! Benchmarks are programs, not tests: they report numbers (ideally as a
//! ratio to a baseline measured in the same run) and never fail on timing.

use std::path::Path;

use anyhow::{Result, bail};

pub fn run(_root: &Path, name: &str, _args: &[String]) -> Result<()> {
    bail!("unknown benchmark `{name}`; none is defined yet")
}

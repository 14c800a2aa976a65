//! `cargo deny check`, offline against the team's RustSec snapshot when present.
//!
//! Machines without internet access cannot fetch the advisory database, so a
//! snapshot is kept beside the repository (`../shared/advisory-db`). cargo-deny
//! wants a git checkout in `<db-path>/advisory-db-<hash of the URL>` and reads
//! its HEAD commit time to judge staleness, so the snapshot is copied into
//! such a checkout with a commit dated like the snapshot. Where the snapshot is
//! absent (a user's machine), cargo-deny fetches the live database as usual.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::process;

const CARGO_DENY_VERSION: &str = "0.20.2";
/// The directory name cargo-deny derives from the default advisory-db URL.
const DB_DIR_NAME: &str = "advisory-db-3157b0e258782691";

pub fn check(root: &Path) -> Result<()> {
    ensure_cargo_deny(root)?;
    let snapshot = root.join("../shared/advisory-db");
    if snapshot.join("crates").is_dir() {
        let db_path = root.join("target/advisory-dbs");
        prepare_offline_db(root, &snapshot, &db_path)?;
        process::run(root, "cargo", &["fetch", "--quiet"])?;
        process::run_with_env(
            root,
            "cargo",
            &["deny", "--offline", "check"],
            &[("ADVISORY_DB_PATH", db_path.display().to_string())],
        )
    } else {
        process::run(root, "cargo", &["deny", "check"])
    }
}

fn ensure_cargo_deny(root: &Path) -> Result<()> {
    if process::output(root, "cargo", &["deny", "--version"]).is_ok() {
        return Ok(());
    }
    eprintln!("    installing cargo-deny {CARGO_DENY_VERSION} (a few minutes)");
    process::run(
        root,
        "cargo",
        &[
            "install",
            "cargo-deny",
            "--locked",
            "--version",
            CARGO_DENY_VERSION,
        ],
    )
}

fn prepare_offline_db(root: &Path, snapshot: &Path, db_path: &Path) -> Result<()> {
    let checkout = db_path.join(DB_DIR_NAME);
    let stamp = checkout.join(".snapshot-source");
    let snapshot_id = fs::read_to_string(snapshot.join("SNAPSHOT")).unwrap_or_default();
    if fs::read_to_string(&stamp).is_ok_and(|id| id == snapshot_id) {
        return Ok(());
    }
    if checkout.exists() {
        fs::remove_dir_all(&checkout)?;
    }
    fs::create_dir_all(&checkout)?;
    process::run(
        root,
        "cp",
        &[
            "-R",
            &snapshot.join("crates").display().to_string(),
            &checkout.display().to_string(),
        ],
    )?;
    // The copy of a read-only tree is read-only too; git needs to write.
    process::run(
        root,
        "chmod",
        &["-R", "u+w", &checkout.display().to_string()],
    )?;
    let date = snapshot_date(&snapshot_id).unwrap_or("2026-08-21");
    let timestamp = format!("{date}T00:00:00Z");
    let git = |args: &[&str]| -> Result<()> {
        let mut full = vec![
            "-c",
            "user.name=advisory-snapshot",
            "-c",
            "user.email=advisory-snapshot@localhost",
            "-c",
            "commit.gpgsign=false",
        ];
        full.extend_from_slice(args);
        process::run_with_env(
            &checkout,
            "git",
            &full,
            &[
                ("GIT_AUTHOR_DATE", timestamp.as_str()),
                ("GIT_COMMITTER_DATE", timestamp.as_str()),
            ],
        )
    };
    git(&["init", "--quiet"])?;
    git(&["add", "-A"])?;
    git(&["commit", "--quiet", "-m", "RustSec advisory snapshot"])?;
    fs::write(&stamp, snapshot_id).context("stamping the advisory snapshot")?;
    Ok(())
}

/// The snapshot file names its commit date as `(YYYY-MM-DD)`.
fn snapshot_date(snapshot_id: &str) -> Option<&str> {
    snapshot_id.split(['(', ')']).find(|part| {
        part.len() == 10
            && part.char_indices().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            })
    })
}

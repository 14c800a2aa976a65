//! A real Envoy with a test-provided bootstrap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ManagedProcess;
use crate::{HarnessError, HttpResponse, Result, http_get, tool};

/// An Envoy process; killed on drop.
///
/// The bootstrap must not contain an `admin` section: the harness adds one on
/// port 0 and reads the bound address back from `--admin-address-path`, so
/// no port can collide.
#[derive(Debug)]
pub struct Envoy {
    process: ManagedProcess,
    admin: SocketAddr,
    _dir: TempDir,
}

static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy and waits until `/ready` says LIVE (initial xDS fetches done).
    pub async fn start(bootstrap_yaml: &str) -> Result<Self> {
        let mut envoy = Self::start_no_wait(bootstrap_yaml).await?;
        let admin = envoy.admin;
        envoy
            .process
            .wait_ready(Duration::from_secs(30), || async move {
                http_get(admin, "/ready")
                    .await
                    .is_ok_and(|r| r.status == 200)
            })
            .await?;
        Ok(envoy)
    }

    /// Starts Envoy and returns once its admin API answers, initialised or not.
    pub async fn start_no_wait(bootstrap_yaml: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("envoy-")
            .tempdir()
            .map_err(HarnessError::io("temporary directory"))?;
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap, bootstrap_yaml).map_err(HarnessError::io(&bootstrap))?;
        let admin_path = dir.path().join("admin-address");
        // A unique base id per process and per Envoy keeps shared-memory
        // names apart when tests run in parallel.
        let base_id = std::process::id() * 100 + NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed);
        let args = vec![
            "-c".to_owned(),
            bootstrap.display().to_string(),
            "--config-yaml".to_owned(),
            "{admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}}".to_owned(),
            "--admin-address-path".to_owned(),
            admin_path.display().to_string(),
            "--disable-hot-restart".to_owned(),
            "--base-id".to_owned(),
            base_id.to_string(),
            "--concurrency".to_owned(),
            "1".to_owned(),
            "--log-level".to_owned(),
            "warning".to_owned(),
        ];
        let log = dir.path().join("envoy.log");
        let mut process = ManagedProcess::spawn("envoy", &tool("envoy")?, &args, &[], &log)?;
        let mut admin = None;
        process
            .wait_ready(Duration::from_secs(30), || {
                let found = read_admin_address(&admin_path);
                let ready = found.is_some();
                if found.is_some() {
                    admin = found;
                }
                async move { ready }
            })
            .await?;
        let admin = admin.ok_or_else(|| HarnessError::NotReady {
            name: "envoy".to_owned(),
            after: Duration::from_secs(30),
            log_tail: process.log_tail(),
        })?;
        Ok(Self {
            process,
            admin,
            _dir: dir,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The body of an admin endpoint, e.g. `/clusters?format=json`.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let response = http_get(self.admin, path).await?;
        if response.status != 200 {
            return Err(HarnessError::Http {
                url: format!("{}{path}", self.admin_url()),
                reason: format!("status {}: {}", response.status, response.body),
            });
        }
        Ok(response.body)
    }

    /// The full response of an admin endpoint, whatever its status.
    pub async fn admin_response(&self, path: &str) -> Result<HttpResponse> {
        http_get(self.admin, path).await
    }

    /// The value of one counter or gauge from `/stats`, if Envoy has it.
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        let body = self
            .admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))
            .await?;
        Ok(body.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        }))
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn read_admin_address(path: &std::path::Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn regex_escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let escape = matches!(c, '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '^' | '$');
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

//! Running the real `envoy-acme-sds` binary, Envoys that take their
//! certificate from it over SDS, and reading what they present.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_support::{HttpResponse, ManagedProcess, free_port, http_get};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_envoy-acme-sds"))
}

/// A running `envoy-acme-sds`; killed on drop. Its stderr goes to a file,
/// so tests can read every line it logged.
#[derive(Debug)]
pub struct SdsService {
    process: ManagedProcess,
    pub sds: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl SdsService {
    /// Starts the binary with `args` plus its listeners on free loopback ports.
    pub fn start(name: &str, log_dir: &Path, args: &[String]) -> Self {
        let sds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut all = vec![
            "--sds-listen".to_owned(),
            sds.to_string(),
            "--admin-listen".to_owned(),
            admin.to_string(),
        ];
        all.extend_from_slice(args);
        let log = log_dir.join(format!("{name}.log"));
        let env = [("RUST_LOG".to_owned(), "debug".to_owned())];
        let process = ManagedProcess::spawn(name, &binary(), &all, &env, &log)
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            process,
            sds,
            admin,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub async fn admin(&self, path: &str) -> Option<HttpResponse> {
        http_get(self.admin, path).await.ok()
    }

    /// Waits for `/readyz` to answer 200, failing with the log if the process dies.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(response) = self.admin("/readyz").await
                && response.status == 200
            {
                return;
            }
            assert!(
                self.process.is_running(),
                "envoy-acme-sds exited:\n{}",
                self.process.log_tail()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "envoy-acme-sds not ready within {limit:?}:\n{}",
                self.process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric line, e.g.
    /// `envoy_acme_sds_renewals_total{secret="a",result="ok"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = self
            .admin("/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        body.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// `/debug/certificates` as JSON.
    pub async fn debug_certificates(&self) -> serde_json::Value {
        let body = self
            .admin("/debug/certificates")
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// The serial this instance serves for `secret`, if any.
    pub async fn served_serial(&self, secret: &str) -> Option<String> {
        let page = self.debug_certificates().await;
        page["certificates"]
            .as_array()?
            .iter()
            .find(|c| c["secret"] == secret)
            .and_then(|c| c["serial"].as_str().map(str::to_owned))
    }
}

/// What a TLS server presented: serial (lowercase hex) and DNS SANs, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub serial: String,
    pub names: Vec<String>,
}

pub fn describe_certificate(der: &[u8]) -> Presented {
    let (_, certificate) = X509Certificate::from_der(der).expect("presented certificate parses");
    let mut names: Vec<String> = certificate
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Presented {
        serial: certificate
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        names,
    }
}

/// Connects to `listener` as `host`, verifying against `root_pem`, and
/// returns what was presented (`None` while the handshake fails).
pub async fn presented(listener: SocketAddr, host: &str, root_pem: &str) -> Option<Presented> {
    let (response, der) = test_support::https_get(listener, host, root_pem, "/")
        .await
        .ok()?;
    (response.status == 200).then(|| describe_certificate(&der))
}

/// Asserts that no 24-character window of `secret` occurs in `logs`.
pub fn assert_absent(logs: &str, secret: &str, what: &str) {
    assert!(secret.len() >= 24, "{what} too short to check");
    let bytes = secret.as_bytes();
    for start in 0..=bytes.len() - 24 {
        let window = String::from_utf8_lossy(&bytes[start..start + 24]);
        assert!(
            !logs.contains(window.as_ref()),
            "{what} (or part of it) appears in the logs"
        );
    }
}

/// The base64 body of a PEM private key, without its armour lines.
pub fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

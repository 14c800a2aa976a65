//! A real pebble ACME test CA.

use std::net::SocketAddr;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ManagedProcess;
use crate::tls::{TestCa, https_get};
use crate::{HarnessError, Result, free_port, tool};

/// How pebble is started.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// DNS server pebble resolves challenge names with (e.g. a test's knot).
    pub dns_server: Option<SocketAddr>,
    /// Port pebble connects to for HTTP-01 validation (default: a free port).
    pub http01_port: Option<u16>,
    /// `PEBBLE_VA_ALWAYS_VALID=1`: skip validation where it is not under test.
    pub always_valid: bool,
    /// Percentage of nonces rejected as badNonce (pebble's default is 5).
    pub nonce_reject_percent: Option<u8>,
    /// Names pebble refuses to order for (`domainBlocklist`: a new order
    /// naming one, or a name under one, is answered `rejectedIdentifier`).
    pub domain_blocklist: Vec<String>,
    /// Any further environment variables (`PEBBLE_AUTHZREUSE`, ...).
    pub extra_env: Vec<(String, String)>,
}

/// A pebble process; killed on drop. Its issuing roots change at every start.
#[derive(Debug)]
pub struct Pebble {
    _process: ManagedProcess,
    listen: SocketAddr,
    management: SocketAddr,
    http01_port: u16,
    listener_ca_pem: String,
    _dir: TempDir,
}

impl Pebble {
    pub async fn start(options: PebbleOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("pebble-")
            .tempdir()
            .map_err(HarnessError::io("temporary directory"))?;
        // Pebble ships no certificate for its own HTTPS listener.
        let ca = TestCa::new("pebble listener test CA")?;
        let leaf = ca.leaf(&["localhost", "127.0.0.1"])?;
        let cert_path = dir.path().join("listener.pem");
        let key_path = dir.path().join("listener.key");
        std::fs::write(&cert_path, &leaf.cert_pem).map_err(HarnessError::io(&cert_path))?;
        std::fs::write(&key_path, &leaf.key_pem).map_err(HarnessError::io(&key_path))?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http01_port = options.http01_port.unwrap_or_else(free_port);
        let tls_port = free_port();
        let config = format!(
            r#"{{"pebble": {{
  "listenAddress": "{listen}",
  "managementListenAddress": "{management}",
  "certificate": "{cert}",
  "privateKey": "{key}",
  "httpPort": {http01_port},
  "tlsPort": {tls_port},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "domainBlocklist": {blocklist}
}}}}"#,
            cert = cert_path.display(),
            key = key_path.display(),
            blocklist = serde_json::Value::from(options.domain_blocklist.clone()),
        );
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config).map_err(HarnessError::io(&config_path))?;
        let mut args = vec!["-config".to_owned(), config_path.display().to_string()];
        if let Some(dns) = options.dns_server {
            args.extend(["-dnsserver".to_owned(), dns.to_string()]);
        }
        let mut env = vec![("PEBBLE_VA_NOSLEEP".to_owned(), "1".to_owned())];
        if options.always_valid {
            env.push(("PEBBLE_VA_ALWAYS_VALID".to_owned(), "1".to_owned()));
        }
        if let Some(percent) = options.nonce_reject_percent {
            env.push(("PEBBLE_WFE_NONCEREJECT".to_owned(), percent.to_string()));
        }
        env.extend(options.extra_env);
        let log = dir.path().join("pebble.log");
        let mut process = ManagedProcess::spawn("pebble", &tool("pebble")?, &args, &env, &log)?;
        let ca_pem = ca.cert_pem().to_owned();
        process
            .wait_ready(Duration::from_secs(20), || {
                let ca_pem = ca_pem.clone();
                async move {
                    https_get(listen, "localhost", &ca_pem, "/dir")
                        .await
                        .is_ok_and(|(r, _)| r.status == 200)
                }
            })
            .await?;
        Ok(Self {
            _process: process,
            listen,
            management,
            http01_port,
            listener_ca_pem: ca_pem,
            _dir: dir,
        })
    }

    /// The ACME directory URL, `https://localhost:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.listen.port())
    }

    /// The root that signed pebble's own HTTPS listener certificate (not the
    /// issuing root of the certificates it hands out).
    pub fn listener_ca_pem(&self) -> &str {
        &self.listener_ca_pem
    }

    /// The port pebble's validator connects to for HTTP-01 challenges.
    pub fn http01_port(&self) -> u16 {
        self.http01_port
    }

    /// The root of the chains pebble issues (new at every pebble start).
    pub async fn issuing_root_pem(&self) -> Result<String> {
        let (response, _) = https_get(
            self.management,
            "localhost",
            &self.listener_ca_pem,
            "/roots/0",
        )
        .await?;
        if response.status != 200 {
            return Err(HarnessError::Http {
                url: format!("https://{}/roots/0", self.management),
                reason: format!("status {}", response.status),
            });
        }
        Ok(response.body)
    }

    pub fn management_addr(&self) -> SocketAddr {
        self.management
    }
}

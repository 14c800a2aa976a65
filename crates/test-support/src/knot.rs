//! A real knot authoritative DNS server accepting TSIG-signed RFC 2136 updates.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use tempfile::TempDir;

use crate::process::ManagedProcess;
use crate::{HarnessError, Result, free_port, tool};

/// The TSIG key knot accepts updates with.
#[derive(Clone)]
pub struct TsigKey {
    /// Key name, e.g. `update-key.`.
    pub name: String,
    /// Always `hmac-sha256` here.
    pub algorithm: String,
    /// The shared secret, base64 as in knot's and BIND's key files.
    pub secret_base64: String,
}

impl std::fmt::Debug for TsigKey {
    // A secret never lands in test output, even a failing test's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret_base64", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// The key as `knsupdate -y` takes it: `algorithm:name:secret`.
    pub fn knsupdate_arg(&self) -> String {
        format!(
            "{}:{}:{}",
            self.algorithm,
            self.name.trim_end_matches('.'),
            self.secret_base64
        )
    }

    /// The key as a BIND-style key file, as an operator writes it for
    /// `--tsig-key-file`.
    pub fn bind_key_file(&self) -> String {
        format!(
            "key \"{}\" {{\n  algorithm {};\n  secret \"{}\";\n}};\n",
            self.name.trim_end_matches('.'),
            self.algorithm,
            self.secret_base64
        )
    }
}

/// A knotd serving one zone; killed on drop.
#[derive(Debug)]
pub struct Knot {
    _process: ManagedProcess,
    addr: SocketAddr,
    zone: String,
    tsig: TsigKey,
    _dir: TempDir,
}

impl Knot {
    /// Serves `zone` (e.g. `demo.test`) with an SOA, an NS and `records`,
    /// given in zone-file syntax relative to the zone (`"@ A 127.0.0.1"`,
    /// `"* A 127.0.0.1"`).
    pub async fn start(zone: &str, records: &[&str]) -> Result<Self> {
        let zone = zone.trim_end_matches('.').to_owned();
        let dir = tempfile::Builder::new()
            .prefix("knot-")
            .tempdir()
            .map_err(HarnessError::io("temporary directory"))?;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let tsig = TsigKey {
            name: "update-key.".to_owned(),
            algorithm: "hmac-sha256".to_owned(),
            secret_base64: base64::engine::general_purpose::STANDARD.encode(secret),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let zone_file = dir.path().join(format!("{zone}.zone"));
        let mut zone_text = format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ NS ns.{zone}.\nns A 127.0.0.1\n"
        );
        for record in records {
            zone_text.push_str(record);
            zone_text.push('\n');
        }
        std::fs::write(&zone_file, zone_text).map_err(HarnessError::io(&zone_file))?;
        // knot keeps its journal and timers here and refuses updates if it is missing.
        let db = dir.path().join("db");
        std::fs::create_dir(&db).map_err(HarnessError::io(&db))?;
        let d = dir.path().display();
        let config = format!(
            r#"server:
    listen: {ip}@{port}
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
database:
    storage: "{d}/db"
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: info
key:
  - id: {key_id}
    algorithm: {algorithm}
    secret: {secret}
acl:
  - id: update
    key: {key_id}
    action: update
zone:
  - domain: {zone}
    storage: "{d}"
    file: "{zone}.zone"
    acl: update
    zonefile-sync: -1
    journal-content: changes
"#,
            ip = addr.ip(),
            port = addr.port(),
            key_id = tsig.name.trim_end_matches('.'),
            algorithm = tsig.algorithm,
            secret = tsig.secret_base64,
        );
        let config_path = dir.path().join("knot.conf");
        std::fs::write(&config_path, config).map_err(HarnessError::io(&config_path))?;
        let log = dir.path().join("knot.log");
        let args = vec!["-c".to_owned(), config_path.display().to_string()];
        let mut process = ManagedProcess::spawn("knotd", &tool("knotd")?, &args, &[], &log)?;
        // knotd listens on TCP and UDP; TCP accepting means it loaded the zone.
        process
            .wait_ready(Duration::from_secs(20), || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await?;
        Ok(Self {
            _process: process,
            addr,
            zone,
            tsig,
            _dir: dir,
        })
    }

    /// Where knot answers queries and updates (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone's name without the trailing dot.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn tsig(&self) -> &TsigKey {
        &self.tsig
    }
}

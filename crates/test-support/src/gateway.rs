//! A routed-host world: what a certificate for a host named only by a
//! service's route tag goes through, with every part real.
//!
//! knot serves the zone (and answers RFC 2136 updates), Consul 1.8.7 holds
//! the catalog, pebble validates HTTP-01 on the gateway's plain listener and
//! DNS-01 through knot, consul-eds-server in `--gateway` mode turns the
//! route tags into Envoy's listeners, and an Envoy takes those listeners
//! from it and its certificates over SDS from envoy-acme-sds. The world
//! starts the CA side ([`GatewayWorld::start`]) and the edge
//! ([`GatewayWorld::edge`]); envoy-acme-sds is the caller's to start, with
//! the arguments [`GatewayWorld::follow_routes_args`] gives, so a test can
//! keep its own handle on it.
//!
//! Services are registered through Consul's HTTP API with this crate's own
//! client: the Consul client crate's tests depend on this crate. A gateway
//! reading another registry ([`GatewayWorld::edge_reading`], e.g. the
//! [`crate::nomad_api::FakeNomad`] with `--sources nomad`) takes its
//! services from there instead; the world's Consul then holds none.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::acme_ari::AriFront;
use crate::bootstrap::{ads_only_bootstrap, control_plane_cluster};
use crate::{
    Backend, ConsulAgent, Envoy, HarnessError, Knot, ManagedProcess, Pebble, PebbleOptions, Result,
    eventually, free_port, http_get, http_request, https_get,
};

/// How often a wait for HTTPS tries again: each figure the benchmark takes
/// is up to this late.
const HTTPS_POLL: Duration = Duration::from_millis(10);

/// The consul-eds-server binary built beside `binary` (a test's
/// `CARGO_BIN_EXE_*`, in the same target directory), or the one
/// `CONSUL_EDS_SERVER_BIN` names.
///
/// # Panics
/// When neither exists: the test cannot run without it.
pub fn eds_binary_beside(binary: &Path) -> PathBuf {
    if let Ok(path) = std::env::var("CONSUL_EDS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let path = binary.with_file_name("consul-eds-server");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p consul-eds-server) or set CONSUL_EDS_SERVER_BIN",
        path.display()
    );
    path
}

/// What the world is made of.
#[derive(Debug, Clone)]
pub struct GatewayWorldOptions {
    /// The consul-eds-server binary (run with `--gateway`).
    pub eds_binary: PathBuf,
    /// The zone knot serves, e.g. `demo.test`.
    pub zone: String,
    /// knot's records, relative to the zone (`"@ A 127.0.0.1"`): pebble
    /// resolves HTTP-01 hosts with them.
    pub records: Vec<String>,
    /// Names pebble refuses to order for.
    pub ca_blocklist: Vec<String>,
    /// Puts the [`AriFront`] between envoy-acme-sds and pebble, so every
    /// new order is counted at the CA's door (one proxy hop more per ACME
    /// request).
    pub count_orders: bool,
}

impl GatewayWorldOptions {
    pub fn new(eds_binary: impl Into<PathBuf>, zone: &str) -> Self {
        Self {
            eds_binary: eds_binary.into(),
            zone: zone.to_owned(),
            records: Vec::new(),
            ca_blocklist: Vec::new(),
            count_orders: false,
        }
    }
}

/// How envoy-acme-sds proves control of a routed host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// TXT records sent to knot with RFC 2136.
    Dns01,
    /// Tokens served by envoy-acme-sds's responder on `responder`, which
    /// pebble reaches through the gateway's plain listener.
    Http01 { responder: SocketAddr },
}

/// knot, Consul, pebble (optionally behind the order-counting front),
/// pebble's issuing root, and the files envoy-acme-sds reads; each process
/// is killed on drop.
#[derive(Debug)]
pub struct GatewayWorld {
    pub knot: Knot,
    pub consul: ConsulAgent,
    pub pebble: Pebble,
    /// Present with [`GatewayWorldOptions::count_orders`].
    pub front: Option<AriFront>,
    /// The root every certificate pebble issues verifies against.
    pub root: String,
    /// A directory that lives as long as the world, for stores and logs.
    pub dir: TempDir,
    zone: String,
    ca_file: PathBuf,
    tsig_file: PathBuf,
    challenge_port: u16,
    eds_binary: PathBuf,
}

impl GatewayWorld {
    pub async fn start(options: GatewayWorldOptions) -> Result<Self> {
        let records: Vec<&str> = options.records.iter().map(String::as_str).collect();
        let knot = Knot::start(&options.zone, &records).await?;
        let consul = ConsulAgent::start().await?;
        // The first edge's plain listener: where pebble validates HTTP-01.
        let challenge_port = free_port();
        // No nonce rejections: every new order is one request, so a count
        // at the front is exact and no sample pays for a retry.
        let pebble = Pebble::start(PebbleOptions {
            dns_server: Some(knot.addr()),
            http01_port: Some(challenge_port),
            nonce_reject_percent: Some(0),
            domain_blocklist: options.ca_blocklist.clone(),
            ..PebbleOptions::default()
        })
        .await?;
        let front = if options.count_orders {
            Some(AriFront::start(&pebble.directory_url(), pebble.listener_ca_pem()).await?)
        } else {
            None
        };
        let root = pebble.issuing_root_pem().await?;
        let dir = tempfile::Builder::new()
            .prefix("gateway-world-")
            .tempdir()
            .map_err(HarnessError::io("temporary directory"))?;
        let ca_file = dir.path().join("acme-ca.pem");
        let ca_pem = front
            .as_ref()
            .map_or(pebble.listener_ca_pem(), AriFront::ca_pem);
        std::fs::write(&ca_file, ca_pem).map_err(HarnessError::io(&ca_file))?;
        let tsig_file = dir.path().join("tsig.key");
        std::fs::write(&tsig_file, knot.tsig().bind_key_file())
            .map_err(HarnessError::io(&tsig_file))?;
        Ok(Self {
            zone: knot.zone().to_owned(),
            knot,
            consul,
            pebble,
            front,
            root,
            dir,
            ca_file,
            tsig_file,
            challenge_port,
            eds_binary: options.eds_binary,
        })
    }

    /// The ACME directory envoy-acme-sds orders from: the front's when
    /// orders are counted, else pebble's.
    pub fn acme_directory_url(&self) -> String {
        self.front
            .as_ref()
            .map_or_else(|| self.pebble.directory_url(), AriFront::directory_url)
    }

    /// The root of that directory's HTTPS listener, as a file.
    pub fn acme_ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// knot's TSIG key as a BIND-style key file.
    pub fn tsig_file(&self) -> &Path {
        &self.tsig_file
    }

    /// The arguments of an envoy-acme-sds following the gateway's routes
    /// under the zone (`--allowed-domains`), proving control by
    /// `challenge`, storing at `storage` (`disk:<dir>`, `consul:<prefix>`),
    /// with `certs` configured besides (`--cert`, e.g. a wildcard). Its
    /// SDS and admin listeners are the caller's to add.
    pub fn follow_routes_args(
        &self,
        challenge: Challenge,
        storage: &str,
        certs: &[&str],
    ) -> Vec<String> {
        let mut args = vec![
            "--acme-directory".to_owned(),
            self.acme_directory_url(),
            "--acme-ca-file".to_owned(),
            self.ca_file.display().to_string(),
        ];
        match challenge {
            Challenge::Dns01 => args.extend([
                "--challenge".to_owned(),
                "dns-01".to_owned(),
                "--rfc2136-server".to_owned(),
                self.knot.addr().to_string(),
                "--tsig-key-file".to_owned(),
                self.tsig_file.display().to_string(),
                "--rfc2136-zone".to_owned(),
                self.zone.clone(),
            ]),
            Challenge::Http01 { responder } => args.extend([
                "--challenge".to_owned(),
                "http-01".to_owned(),
                "--http01-listen".to_owned(),
                responder.to_string(),
            ]),
        }
        for cert in certs {
            args.extend(["--cert".to_owned(), (*cert).to_owned()]);
        }
        args.extend([
            "--storage".to_owned(),
            storage.to_owned(),
            "--consul-addr".to_owned(),
            self.consul.http_url(),
            "--follow-routes".to_owned(),
            "--allowed-domains".to_owned(),
            self.zone.clone(),
        ]);
        args
    }

    /// The gateway and an Envoy taking its listeners from it and its
    /// certificates from the SDS server at `sds`, the plain listener on the
    /// port pebble validates HTTP-01 on.
    pub async fn edge(&self, sds: SocketAddr) -> Result<Edge> {
        self.edge_on(sds, self.challenge_port).await
    }

    /// As [`Self::edge`], the plain listener on `plain` (a second edge
    /// cannot share the first one's port; pebble does not validate there).
    pub async fn edge_on(&self, sds: SocketAddr, plain: u16) -> Result<Edge> {
        self.edge_with(sds, plain, &[]).await
    }

    /// As [`Self::edge`], the gateway started with `gateway_args` besides
    /// its own, e.g. `--sources nomad --nomad-addr ...` for a gateway
    /// reading Nomad's registry instead of the world's Consul.
    pub async fn edge_reading(&self, sds: SocketAddr, gateway_args: &[String]) -> Result<Edge> {
        self.edge_with(sds, self.challenge_port, gateway_args).await
    }

    async fn edge_with(
        &self,
        sds: SocketAddr,
        plain: u16,
        gateway_args: &[String],
    ) -> Result<Edge> {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let secure = free_port();
        let gateway = start_gateway(
            &self.eds_binary,
            &self.consul,
            (xds, plain, secure),
            gateway_args,
        )
        .await?;
        let bootstrap = format!(
            "{}{}",
            ads_only_bootstrap(&format!("gw-{secure}"), xds, false),
            control_plane_cluster("sds", sds, "")
        );
        let envoy = Envoy::start(&bootstrap).await?;
        Ok(Edge {
            gateway,
            envoy,
            tls: SocketAddr::from(([127, 0, 0, 1], secure)),
            plain: SocketAddr::from(([127, 0, 0, 1], plain)),
        })
    }

    /// Registers `backend` as an instance of `service` (its name as the
    /// instance ID) with `tags` and a passing TTL check.
    pub async fn register(&self, service: &str, backend: &Backend, tags: &[&str]) -> Result<()> {
        let registration = serde_json::json!({
            "ID": backend.name(),
            "Name": service,
            "Address": backend.addr().ip().to_string(),
            "Port": backend.addr().port(),
            "Tags": tags,
            "Checks": [{
                "CheckID": format!("ttl:{}", backend.name()),
                "Name": "ttl",
                "TTL": "600s",
                "Status": "passing",
            }],
        });
        self.agent_put("/v1/agent/service/register", registration.to_string())
            .await
    }

    /// Registers `service` (also its ID) at `addr`, which is not a test
    /// backend, with `tags` and no check.
    pub async fn register_at(&self, service: &str, addr: SocketAddr, tags: &[&str]) -> Result<()> {
        let registration = serde_json::json!({
            "ID": service,
            "Name": service,
            "Address": addr.ip().to_string(),
            "Port": addr.port(),
            "Tags": tags,
        });
        self.agent_put("/v1/agent/service/register", registration.to_string())
            .await
    }

    /// Removes the service instance `id` from the catalog.
    pub async fn deregister(&self, id: &str) -> Result<()> {
        self.agent_put(&format!("/v1/agent/service/deregister/{id}"), String::new())
            .await
    }

    async fn agent_put(&self, path: &str, body: String) -> Result<()> {
        let response = http_request(
            "PUT",
            self.consul.http_addr(),
            path,
            &[("content-type", "application/json")],
            body.into_bytes(),
        )
        .await?;
        if response.status == 200 {
            Ok(())
        } else {
            Err(HarnessError::Http {
                url: format!("{}{path}", self.consul.http_url()),
                reason: format!("status {}: {}", response.status, response.body),
            })
        }
    }

    /// Registers `backend` as `service` with a TLS route for `host`, then
    /// waits up to `limit` for the first HTTPS 200 through `edge` with that
    /// SNI, verified against pebble's root; clocked from just before the
    /// registration.
    pub async fn route_tls_host(
        &self,
        edge: &Edge,
        service: &str,
        backend: &Backend,
        host: &str,
        limit: Duration,
    ) -> Result<VerifiedHttps> {
        let registered = Instant::now();
        self.register(service, backend, &[&format!("edge.route={host}/ tls=true")])
            .await?;
        let mut answer = self.wait_for_https(edge, host, limit).await?;
        answer.elapsed = registered.elapsed();
        Ok(answer)
    }

    /// Waits up to `limit` for the first HTTPS 200 through `edge` for
    /// `host`, verified against pebble's root.
    pub async fn wait_for_https(
        &self,
        edge: &Edge,
        host: &str,
        limit: Duration,
    ) -> Result<VerifiedHttps> {
        let started = Instant::now();
        let what = format!("HTTPS to {host} through Envoy, verified against pebble's root");
        let (certificate_der, body) =
            eventually(&what, limit, HTTPS_POLL, || edge.https(host, &self.root)).await?;
        Ok(VerifiedHttps {
            certificate_der,
            body,
            elapsed: started.elapsed(),
        })
    }

    /// Routes ACME challenge paths of every host to envoy-acme-sds's
    /// HTTP-01 responder at `responder`, declared the way any service
    /// declares a route (an empty-host route tag), and waits until `edge`'s
    /// plain listener forwards them: the responder answers a POST for
    /// `probe_host` with 405, where Envoy without the route answers 404.
    pub async fn route_challenges_to(
        &self,
        edge: &Edge,
        responder: SocketAddr,
        probe_host: &str,
    ) -> Result<()> {
        self.register_at(
            "envoy-acme-sds-http01",
            responder,
            &["edge.route=/.well-known/acme-challenge/"],
        )
        .await?;
        self.wait_for_challenge_route(edge, probe_host).await
    }

    /// Waits until `edge`'s plain listener forwards ACME challenge paths
    /// to envoy-acme-sds's HTTP-01 responder, however its route was
    /// declared (in Consul by [`Self::route_challenges_to`], or in another
    /// registry the gateway reads): the responder answers a POST for
    /// `probe_host` with 405, where Envoy without the route answers 404.
    pub async fn wait_for_challenge_route(&self, edge: &Edge, probe_host: &str) -> Result<()> {
        eventually(
            "the gateway routes challenges to the responder",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async {
                http_request(
                    "POST",
                    edge.plain,
                    "/.well-known/acme-challenge/probe",
                    &[("host", probe_host)],
                    Vec::new(),
                )
                .await
                .ok()
                .filter(|r| r.status == 405)
            },
        )
        .await
        .map(|_| ())
    }
}

/// The first verified HTTPS 200 for a host.
#[derive(Debug, Clone)]
pub struct VerifiedHttps {
    /// The leaf Envoy presented.
    pub certificate_der: Vec<u8>,
    /// The backend's answer (a [`Backend`] answers with its name).
    pub body: String,
    /// From the start of the wait (or the registration) to this answer.
    pub elapsed: Duration,
}

/// consul-eds-server in gateway mode and the Envoy it configures; both
/// killed on drop.
#[derive(Debug)]
pub struct Edge {
    gateway: Gateway,
    pub envoy: Envoy,
    /// Envoy's TLS listener.
    pub tls: SocketAddr,
    /// Envoy's plain listener (redirects to HTTPS, forwards challenges).
    pub plain: SocketAddr,
}

impl Edge {
    /// One HTTPS request to `/` with SNI `host`, verified against `root`:
    /// the leaf presented and the body, when the handshake succeeds and
    /// the answer is 200.
    pub async fn https(&self, host: &str, root: &str) -> Option<(Vec<u8>, String)> {
        let (response, der) = https_get(self.tls, host, root, "/").await.ok()?;
        (response.status == 200).then_some((der, response.body))
    }

    /// The end of the gateway's log, for failure messages.
    pub fn gateway_log_tail(&self) -> String {
        self.gateway.process.log_tail()
    }

    /// The gateway's admin listener (`/metrics`, `/debug/routes`).
    pub fn gateway_admin(&self) -> SocketAddr {
        self.gateway.admin
    }
}

#[derive(Debug)]
struct Gateway {
    process: ManagedProcess,
    admin: SocketAddr,
    _dir: TempDir,
}

/// The gateway serving xDS on `xds`, its listeners on the `plain` and
/// `secure` ports, reading the world's Consul unless `extra` (appended to
/// its arguments) says otherwise.
async fn start_gateway(
    binary: &Path,
    consul: &ConsulAgent,
    (xds, plain, secure): (SocketAddr, u16, u16),
    extra: &[String],
) -> Result<Gateway> {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::Builder::new()
        .prefix("gateway-")
        .tempdir()
        .map_err(HarnessError::io("temporary directory"))?;
    let args: Vec<String> = [
        "--consul-addr",
        &consul.http_url(),
        "--xds-listen",
        &xds.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--gateway",
        "--listener",
        &format!("web=127.0.0.1:{plain}"),
        "--listener",
        &format!("secure=127.0.0.1:{secure},tls"),
        "--sds-cluster",
        "sds",
        "--coalesce",
        "20ms",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(extra.iter().cloned())
    .collect();
    let mut process = ManagedProcess::spawn(
        "consul-eds-server",
        binary,
        &args,
        &[("RUST_LOG".to_owned(), "info".to_owned())],
        &dir.path().join("eds.log"),
    )?;
    process
        .wait_ready(Duration::from_secs(20), || async move {
            http_get(admin, "/healthz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await?;
    Ok(Gateway {
        process,
        admin,
        _dir: dir,
    })
}

//! Shared set-up for end-to-end tests: the real `consul-eds-server` binary
//! between a real Consul agent and a real Envoy.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use consul_client::{AgentCheck, AgentServiceRegistration, CheckStatus, Client, ClientConfig};
use serde_json::Value;
use test_support::bootstrap::{EdsTransport, GatewayBootstrap};
use test_support::{ConsulAgent, Envoy, ManagedProcess, eventually, free_port, http_get};

/// A running `consul-eds-server` process.
pub struct EdsServer {
    pub process: ManagedProcess,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl EdsServer {
    pub async fn start(consul: &ConsulAgent, extra: &[&str]) -> Self {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start_on(consul, xds, extra).await
    }

    pub async fn start_on(consul: &ConsulAgent, xds: SocketAddr, extra: &[&str]) -> Self {
        Self::start_reading(&consul.http_url(), xds, extra).await
    }

    /// Reads Consul at `consul_url`, which may be a proxy in front of it.
    pub async fn start_reading(consul_url: &str, xds: SocketAddr, extra: &[&str]) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "--consul-addr".to_owned(),
            consul_url.to_owned(),
            "--xds-listen".to_owned(),
            xds.to_string(),
            "--admin-listen".to_owned(),
            admin.to_string(),
            "--reset-grace".to_owned(),
            "3s".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = ManagedProcess::spawn(
            "consul-eds-server",
            Path::new(env!("CARGO_BIN_EXE_consul-eds-server")),
            &args,
            &[(
                "RUST_LOG".to_owned(),
                std::env::var("EDS_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )],
            &dir.path().join("eds.log"),
        )
        .expect("consul-eds-server starts");
        let server = Self {
            process,
            xds,
            admin,
            _dir: dir,
        };
        eventually(
            "consul-eds-server admin",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async {
                http_get(admin, "/healthz")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.process.log_tail()));
        server
    }

    pub async fn readyz(&self) -> (u16, String) {
        let response = http_get(self.admin, "/readyz").await.expect("readyz");
        (response.status, response.body)
    }
}

/// Envoy as a gateway whose clusters come from the EDS server.
pub async fn gateway(
    xds: SocketAddr,
    clusters: &[&str],
    transport: EdsTransport,
) -> (Envoy, SocketAddr) {
    let listener_port = free_port();
    let yaml = GatewayBootstrap {
        node_id: format!("gateway-{listener_port}"),
        xds,
        transport,
        clusters: clusters.iter().map(|c| (*c).to_owned()).collect(),
        listener_port,
        retries: true,
    }
    .yaml();
    let envoy = Envoy::start(&yaml).await.expect("envoy starts");
    (envoy, SocketAddr::from(([127, 0, 0, 1], listener_port)))
}

pub fn consul_client(consul: &ConsulAgent) -> Client {
    let address: consul_client::config::Address = consul.http_url().parse().expect("address");
    Client::new(ClientConfig::new(address)).expect("client")
}

/// A Consul agent with one passing instance `web-1` of service `web`,
/// backed by a real HTTP backend.
pub async fn consul_with_one_web_instance() -> (ConsulAgent, Client, test_support::Backend) {
    let consul = ConsulAgent::start().await.expect("consul");
    let client = consul_client(&consul);
    let web = test_support::Backend::start("web-1")
        .await
        .expect("backend");
    register_passing(&client, "web", &web).await;
    (consul, client, web)
}

/// Registers `backend` as a passing instance of `service`, under its name.
pub async fn register_passing(client: &Client, service: &str, backend: &test_support::Backend) {
    register(
        client,
        service,
        backend.name(),
        backend.addr(),
        CheckStatus::Passing,
        None,
    )
    .await;
}

/// Registers an instance with a TTL check (the test sets its state).
pub async fn register(
    client: &Client,
    service: &str,
    id: &str,
    addr: SocketAddr,
    status: CheckStatus,
    weights: Option<(u32, u32)>,
) {
    let registration = AgentServiceRegistration {
        id: Some(id.to_owned()),
        name: service.to_owned(),
        address: addr.ip().to_string(),
        port: addr.port(),
        weights: weights.map(|(passing, warning)| consul_client::Weights { passing, warning }),
        checks: vec![
            AgentCheck::ttl("ttl", Duration::from_secs(600))
                .with_id(check_id(id))
                .with_initial_status(status),
        ],
        ..AgentServiceRegistration::default()
    };
    client
        .agent_service_register(&registration)
        .await
        .expect("register");
}

/// Registers `backend` as an instance of `service` with `tags`, passing,
/// its ID the backend's name.
pub async fn register_tagged(
    client: &Client,
    service: &str,
    backend: &test_support::Backend,
    tags: &[&str],
) {
    let registration = AgentServiceRegistration {
        id: Some(backend.name().to_owned()),
        name: service.to_owned(),
        address: backend.addr().ip().to_string(),
        port: backend.addr().port(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        checks: vec![
            AgentCheck::ttl("ttl", Duration::from_secs(600))
                .with_id(check_id(backend.name()))
                .with_initial_status(CheckStatus::Passing),
        ],
        ..AgentServiceRegistration::default()
    };
    client
        .agent_service_register(&registration)
        .await
        .expect("register");
}

pub fn check_id(instance: &str) -> String {
    format!("ttl:{instance}")
}

/// One host of a cluster as Envoy's admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub port: u16,
    pub hostname: String,
    pub eds_health: String,
    pub weight: u64,
    /// Envoy's priority level: 0 for the local datacenter, 1.. for failover.
    pub priority: u64,
}

/// The hosts Envoy has for `cluster`, from `/clusters?format=json`.
pub async fn hosts(envoy: &Envoy, cluster: &str) -> Vec<Host> {
    let body = envoy
        .admin_get("/clusters?format=json")
        .await
        .expect("clusters");
    let json: Value = serde_json::from_str(&body).expect("clusters json");
    let mut hosts = Vec::new();
    for status in json["cluster_statuses"].as_array().into_iter().flatten() {
        if status["name"] != cluster {
            continue;
        }
        for host in status["host_statuses"].as_array().into_iter().flatten() {
            hosts.push(Host {
                port: host["address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap_or_default() as u16,
                hostname: host["hostname"].as_str().unwrap_or_default().to_owned(),
                eds_health: host["health_status"]["eds_health_status"]
                    .as_str()
                    .unwrap_or("HEALTHY")
                    .to_owned(),
                weight: host["weight"].as_u64().unwrap_or(1),
                // Envoy's JSON leaves out a priority of 0, as proto3 does.
                priority: host["priority"].as_u64().unwrap_or(0),
            });
        }
    }
    hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    hosts
}

/// Waits until Envoy's hosts for `cluster` satisfy `condition`.
pub async fn wait_for_hosts(
    envoy: &Envoy,
    cluster: &str,
    what: &str,
    limit: Duration,
    condition: impl Fn(&[Host]) -> bool,
) -> Vec<Host> {
    let result = eventually(what, limit, Duration::from_millis(10), || async {
        let hosts = hosts(envoy, cluster).await;
        condition(&hosts).then_some(hosts)
    })
    .await;
    match result {
        Ok(hosts) => hosts,
        Err(error) => panic!(
            "{error}; Envoy has {:?}\nEnvoy log:\n{}",
            hosts(envoy, cluster).await,
            envoy.log_tail()
        ),
    }
}

/// Waits until Envoy's hosts for `cluster` are exactly `expected`, by name.
pub async fn wait_for_hostnames(
    envoy: &Envoy,
    cluster: &str,
    expected: &[&str],
    limit: Duration,
) -> Vec<Host> {
    let what = format!("{cluster} hosts to be {expected:?}");
    wait_for_hosts(envoy, cluster, &what, limit, |h| hostnames(h) == expected).await
}

pub fn hostnames(hosts: &[Host]) -> Vec<&str> {
    hosts.iter().map(|h| h.hostname.as_str()).collect()
}

//! A real Consul dev agent (in-memory state) on free loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ManagedProcess;
use crate::{HarnessError, Result, free_port, http_request, tool};

/// How the agent is configured.
#[derive(Debug, Clone, Default)]
pub struct ConsulOptions {
    /// Enables ACLs with `default_policy = "deny"` and this master token, so
    /// tests can see real 403s.
    pub acl_master_token: Option<String>,
    /// The datacenter; Consul's own default (`dc1`) when `None`.
    pub datacenter: Option<String>,
    /// The serf WAN address of a Consul in another datacenter, joined at
    /// start, so that each answers (and forwards) queries for the other's.
    pub join_wan: Option<SocketAddr>,
}

#[derive(Debug)]
struct Ports {
    http: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            http: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            server: free_port(),
        }
    }
}

/// A `consul agent -dev`; killed on drop.
#[derive(Debug)]
pub struct ConsulAgent {
    process: Option<ManagedProcess>,
    ports: Ports,
    options: ConsulOptions,
    dir: TempDir,
}

impl ConsulAgent {
    pub async fn start() -> Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    pub async fn start_with(options: ConsulOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("consul-")
            .tempdir()
            .map_err(HarnessError::io("temporary directory"))?;
        let mut agent = Self {
            process: None,
            ports: Ports::free(),
            options,
            dir,
        };
        // A free port is only free until someone else binds it: with many
        // tests starting servers at once, one of the agent's four ports is
        // sometimes taken before Consul binds it. Such a start is retried on
        // new ports; any other failure is reported as it is.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match agent.launch().await {
                Err(HarnessError::ExitedEarly { log_tail, .. })
                    if attempts < 3 && log_tail.contains("address already in use") =>
                {
                    agent.ports = Ports::free();
                }
                result => return result.map(|()| agent),
            }
        }
    }

    async fn launch(&mut self) -> Result<()> {
        let config = self.dir.path().join("agent.hcl");
        let mut hcl = String::from("telemetry { prometheus_retention_time = \"60s\" }\n");
        if let Some(token) = &self.options.acl_master_token {
            hcl.push_str(&format!(
                "acl {{\n  enabled = true\n  default_policy = \"deny\"\n  tokens {{ master = \"{token}\" }}\n}}\n"
            ));
        }
        std::fs::write(&config, hcl).map_err(HarnessError::io(&config))?;
        let mut args = vec![
            "agent".to_owned(),
            "-dev".to_owned(),
            "-bind=127.0.0.1".to_owned(),
            "-client=127.0.0.1".to_owned(),
            "-log-level=warn".to_owned(),
            "-dns-port=-1".to_owned(),
            "-grpc-port=-1".to_owned(),
            format!("-http-port={}", self.ports.http),
            format!("-serf-lan-port={}", self.ports.serf_lan),
            format!("-serf-wan-port={}", self.ports.serf_wan),
            format!("-server-port={}", self.ports.server),
            format!("-config-file={}", config.display()),
        ];
        if let Some(datacenter) = &self.options.datacenter {
            args.push(format!("-datacenter={datacenter}"));
            // Dev mode names every node after the host; a distinct name per
            // datacenter keeps the WAN pool's member names readable in logs.
            args.push(format!("-node=consul-{datacenter}"));
        }
        if let Some(peer) = self.options.join_wan {
            args.push(format!("-join-wan={peer}"));
        }
        let log = self.dir.path().join("consul.log");
        let mut process = ManagedProcess::spawn("consul", &tool("consul")?, &args, &[], &log)?;
        let addr = self.http_addr();
        let token = self.options.acl_master_token.clone();
        // Ready means: a leader is elected and the agent's own node is in the
        // catalog with its `serfHealth` check, so registrations, health
        // queries and sessions behave normally (a session checks
        // `serfHealth` by default, and is refused with a 500 until the node
        // has it: the node can be listed a moment before its check is).
        process
            .wait_ready(Duration::from_secs(30), || {
                let token = token.clone();
                async move {
                    let headers: Vec<(&str, &str)> = token
                        .as_deref()
                        .map(|t| vec![("x-consul-token", t)])
                        .unwrap_or_default();
                    let leader = http_request("GET", addr, "/v1/status/leader", &headers, vec![])
                        .await
                        .is_ok_and(|r| r.status == 200 && r.body.trim().len() > 2);
                    leader
                        && http_request("GET", addr, "/v1/catalog/nodes", &headers, vec![])
                            .await
                            .is_ok_and(|r| r.status == 200 && r.body.contains("\"Node\""))
                        && http_request("GET", addr, "/v1/health/state/any", &headers, vec![])
                            .await
                            .is_ok_and(|r| r.status == 200 && r.body.contains("\"serfHealth\""))
                }
            })
            .await?;
        self.process = Some(process);
        Ok(())
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// Where the serf WAN pool listens: the address a Consul in another
    /// datacenter joins (`ConsulOptions::join_wan`).
    pub fn serf_wan_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.serf_wan))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    pub fn acl_master_token(&self) -> Option<&str> {
        self.options.acl_master_token.as_deref()
    }

    /// SIGKILLs the agent: clients see refused connections from now on.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the agent again on the same ports. A dev agent keeps its state
    /// in memory, so the catalog comes back empty and indexes start low:
    /// exactly the "index went backwards" case clients must handle.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch().await
    }

    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(ManagedProcess::is_running)
    }

    pub fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(ManagedProcess::log_tail)
            .unwrap_or_default()
    }
}

//! Command-line flags (each also an environment variable), parsed once at start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use service_support::consul::ConsulArgs;
use service_support::duration::parse_duration;
use service_support::listener::{AdminArgs, AdminFlags, Flag, ServerArgs, ServerFlags};
use service_support::logging::LogFormat;

use crate::health::{CriticalPolicy, HealthPolicy, WarningPolicy};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "consul-eds-server",
    version,
    about = "Serves Envoy EDS from Consul's catalog and health"
)]
pub struct Config {
    #[command(flatten)]
    pub consul: ConsulArgs,

    /// Datacenter to read (default: the agent's own).
    #[arg(long, env = "CONSUL_EDS_DATACENTER")]
    pub datacenter: Option<String>,

    /// Further datacenters, in order, served as lower priorities for failover.
    #[arg(
        long = "failover-dc",
        env = "CONSUL_EDS_FAILOVER_DCS",
        value_delimiter = ','
    )]
    pub failover_dcs: Vec<String>,

    /// Read from any Consul server, not only the leader (`?stale`).
    #[arg(long, env = "CONSUL_EDS_STALE")]
    pub stale: bool,

    #[command(flatten)]
    pub xds: ServerArgs<XdsListener>,

    #[command(flatten)]
    pub admin: AdminArgs<AdminListener>,

    /// Only these services are served (comma-separated); default: any a client asks for.
    #[arg(long, env = "CONSUL_EDS_SERVICES", value_delimiter = ',')]
    pub services: Vec<String>,

    /// Cluster name for a service: `{service}`, `{dc}` are replaced.
    #[arg(
        long,
        env = "CONSUL_EDS_CLUSTER_NAME_TEMPLATE",
        default_value = "{service}"
    )]
    pub cluster_name_template: String,

    /// How instances whose worst check is `warning` are served.
    #[arg(long, env = "CONSUL_EDS_WARNING", value_enum, default_value_t = WarningPolicy::Healthy)]
    pub warning: WarningPolicy,

    /// How instances whose worst check is `critical` are served.
    #[arg(long, env = "CONSUL_EDS_CRITICAL", value_enum, default_value_t = CriticalPolicy::Remove)]
    pub critical: CriticalPolicy,

    /// Which address Envoy connects to.
    #[arg(long, env = "CONSUL_EDS_ADDRESS", value_enum, default_value_t = AddressSource::Service)]
    pub address: AddressSource,

    /// Node meta key giving an instance's zone (Envoy locality).
    #[arg(long, env = "CONSUL_EDS_ZONE_META", default_value = "zone")]
    pub zone_meta_key: String,

    /// Most blocking queries held open against the agent at once (Consul allows
    /// 200 connections per client IP by default).
    #[arg(long, env = "CONSUL_EDS_MAX_BLOCKING_QUERIES", default_value_t = 64)]
    pub max_blocking_queries: usize,

    /// In the DC-wide mode (services beyond the blocking-query budget), how
    /// often at most all covered services are re-read to catch instances
    /// registered without checks.
    #[arg(long, env = "CONSUL_EDS_DC_WIDE_SWEEP", value_parser = parse_duration, default_value = "10s")]
    pub dc_wide_sweep: Duration,

    /// After Consul's index goes backwards (a restored or restarted server),
    /// how long an empty answer is not believed while the agents re-register.
    #[arg(long, env = "CONSUL_EDS_RESET_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub reset_grace: Duration,

    /// How long bursts of changes are gathered before one push.
    #[arg(long, env = "CONSUL_EDS_COALESCE", value_parser = parse_duration, default_value = "5ms")]
    pub coalesce: Duration,

    /// Log format.
    #[arg(long, env = "CONSUL_EDS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// How long SIGTERM waits for xDS streams to finish before closing them.
    #[arg(long, env = "CONSUL_EDS_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,
}

/// The names of the xDS listener flags.
#[derive(Debug, Clone, Copy)]
pub struct XdsListener;

impl ServerFlags for XdsListener {
    const LISTEN: Flag = Flag {
        long: "xds-listen",
        env: "CONSUL_EDS_XDS_LISTEN",
        value_name: "XDS_LISTEN",
        help: "Where Envoy connects for xDS: host:port or unix:/path",
    };
    const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
    const TLS_CERT: Flag = Flag {
        long: "xds-tls-cert",
        env: "CONSUL_EDS_XDS_TLS_CERT",
        value_name: "XDS_TLS_CERT",
        help: "PEM certificate chain for TLS on the xDS listener (with --xds-tls-key)",
    };
    const TLS_KEY: Flag = Flag {
        long: "xds-tls-key",
        env: "CONSUL_EDS_XDS_TLS_KEY",
        value_name: "XDS_TLS_KEY",
        help: "PEM private key for --xds-tls-cert",
    };
    const TLS_CLIENT_CA: Flag = Flag {
        long: "xds-tls-client-ca",
        env: "CONSUL_EDS_XDS_TLS_CLIENT_CA",
        value_name: "XDS_TLS_CLIENT_CA",
        help: "PEM CA that Envoys' client certificates must chain to (mTLS)",
    };
}

/// The name of the admin listener flag.
#[derive(Debug, Clone, Copy)]
pub struct AdminListener;

impl AdminFlags for AdminListener {
    const LISTEN: Flag = Flag {
        long: "admin-listen",
        env: "CONSUL_EDS_ADMIN_LISTEN",
        value_name: "ADMIN_LISTEN",
        help: "Admin HTTP listener (/metrics, /healthz, /readyz, /debug/snapshot)",
    };
    const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9102);
}

/// The address Envoy is given for an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum AddressSource {
    /// The service's address, else its node's (Consul's own rule).
    #[default]
    Service,
    /// Always the node's address.
    Node,
    /// The node's `lan` tagged address, else its address.
    Lan,
    /// The node's `wan` tagged address, else its address.
    Wan,
}

impl Config {
    /// Services watched one blocking query each; the rest share the DC-wide
    /// view (see [`crate::source::per_service_watch_limit`]).
    pub fn per_service_watch_limit(&self) -> usize {
        crate::source::per_service_watch_limit(
            self.max_blocking_queries,
            1 + self.failover_dcs.len(),
        )
    }

    pub fn health_policy(&self) -> HealthPolicy {
        HealthPolicy {
            warning: self.warning,
            critical: self.critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed_layout() {
        let config = Config::try_parse_from(["consul-eds-server"]).expect("defaults parse");
        assert_eq!(
            config.xds.listen(),
            xds_core::Listen::Tcp("127.0.0.1:15000".parse().expect("addr"))
        );
        assert_eq!(config.admin.listen().to_string(), "127.0.0.1:9102");
        assert_eq!(config.max_blocking_queries, 64);
        assert_eq!(config.coalesce, Duration::from_millis(5));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let error = Config::try_parse_from(["consul-eds-server", "--coalesce", "soon"])
            .expect_err("rejected");
        assert!(error.to_string().contains("--coalesce"), "{error}");
        let error = Config::try_parse_from(["consul-eds-server", "--warning", "maybe"])
            .expect_err("rejected");
        assert!(error.to_string().contains("--warning"), "{error}");
        let error = Config::try_parse_from(["consul-eds-server", "--xds-listen", "unix:"])
            .expect_err("rejected");
        assert!(error.to_string().contains("--xds-listen"), "{error}");
        assert!(error.to_string().contains("socket path"), "{error}");
    }

    #[test]
    fn token_and_token_file_conflict() {
        let error = Config::try_parse_from([
            "consul-eds-server",
            "--consul-token",
            "t",
            "--consul-token-file",
            "/f",
        ])
        .expect_err("rejected");
        assert!(error.to_string().contains("--consul-token"), "{error}");
    }
}

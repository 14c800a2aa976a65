//! Command-line flags (each also an environment variable), parsed once at start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use nomad_client::NomadConfig;

use clap::{Parser, ValueEnum};
use route_tags::{ListenerSpec, TagPrefix};

use service_support::consul::ConsulArgs;
use service_support::duration::parse_duration;
use service_support::listener::{AdminArgs, AdminFlags, Flag, ServerArgs, ServerFlags};
use service_support::logging::LogFormat;

use crate::engine::SourceSelection;
use crate::health::{CriticalPolicy, HealthPolicy, WarningPolicy};
use crate::model::SourceKind;

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

    /// Cluster name for a service: `{service}`, `{dc}`, `{source}` (consul
    /// or nomad) and `{namespace}` (Nomad's) are replaced.
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

    /// Most blocking queries held open against the agent at once. Other requests
    /// take at most 24 more, so by default at most 64 connections to the agent
    /// (Consul allows 200 per client IP, shared by every client on the node).
    #[arg(long, env = "CONSUL_EDS_MAX_BLOCKING_QUERIES", default_value_t = 40)]
    pub max_blocking_queries: usize,

    /// In the DC-wide mode (services beyond the blocking-query budget), how
    /// often at most all covered services are re-read to catch changes the
    /// services' summaries do not show (an instance's port or address).
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

    #[command(flatten)]
    pub gateway: GatewayArgs,

    #[command(flatten)]
    pub nomad: NomadArgs,
}

/// Nomad's own service registry as a source (`--sources nomad` or
/// `consul,nomad`). The rest of the connection (token, TLS files, region)
/// comes from the `NOMAD_*` variables Nomad's CLI reads.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Nomad")]
pub struct NomadArgs {
    /// Where instances (and, in gateway mode, route tags) are read from:
    /// `consul`, `nomad` or `consul,nomad`. A service known to both is one
    /// cluster with the instances of both, unless
    /// --cluster-name-template has `{source}`.
    #[arg(
        long,
        env = "CONSUL_EDS_SOURCES",
        value_delimiter = ',',
        value_parser = parse_source,
        default_value = "consul"
    )]
    pub sources: Vec<SourceKind>,

    /// Nomad agent: http://host:port, https://host:port or unix:///path.
    #[arg(long, env = "NOMAD_ADDR", default_value = "http://127.0.0.1:4646")]
    pub nomad_addr: String,

    /// File holding the Nomad ACL token (wins over NOMAD_TOKEN).
    #[arg(long, env = "CONSUL_EDS_NOMAD_TOKEN_FILE")]
    pub nomad_token_file: Option<PathBuf>,

    /// Nomad namespaces read (comma-separated), or `*` alone: every
    /// namespace the token can read, a namespace that vanishes from the
    /// listing read directly before it is believed gone. A cluster name
    /// template with `{namespace}` may name others.
    #[arg(
        long,
        env = "NOMAD_NAMESPACE",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub nomad_namespace: Vec<String>,

    /// How often each Nomad allocation's check results are read
    /// (`/v1/client/allocation/:id/checks`); 0s: never, every registration
    /// is served as passing.
    #[arg(long, env = "CONSUL_EDS_NOMAD_CHECK_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub nomad_check_interval: Duration,
}

fn parse_source(value: &str) -> Result<SourceKind, String> {
    SourceKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == value.trim())
        .ok_or_else(|| {
            format!(
                "`{value}` is not a registry this server reads: use consul, nomad or consul,nomad"
            )
        })
}

/// A sources configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourcesConfigError {
    #[error("--sources names `{0}` twice")]
    Repeated(SourceKind),
    #[error("--nomad-namespace is empty; name at least one namespace (Nomad's own is `default`)")]
    NoNamespace,
    #[error(
        "--nomad-namespace `*` already reads every namespace the token can read; give it alone or list names without it"
    )]
    WildcardWithNames,
}

impl NomadArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), SourcesConfigError> {
        for (i, kind) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(kind) {
                return Err(SourcesConfigError::Repeated(*kind));
            }
        }
        if !self.reads(SourceKind::Nomad) {
            return Ok(());
        }
        let namespaces: Vec<&str> = self
            .nomad_namespace
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .collect();
        if namespaces.is_empty() {
            return Err(SourcesConfigError::NoNamespace);
        }
        let distinct: std::collections::BTreeSet<&str> = namespaces.iter().copied().collect();
        if distinct.len() > 1 && distinct.contains(nomad_client::ALL_NAMESPACES) {
            return Err(SourcesConfigError::WildcardWithNames);
        }
        Ok(())
    }

    pub fn reads(&self, kind: SourceKind) -> bool {
        self.sources.contains(&kind)
    }

    /// What the engine feeds clusters from.
    pub fn selection(&self) -> SourceSelection {
        SourceSelection {
            consul: self.reads(SourceKind::Consul),
            nomad_namespaces: if self.reads(SourceKind::Nomad) {
                let mut namespaces: Vec<String> = self
                    .nomad_namespace
                    .iter()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect();
                namespaces.dedup();
                namespaces
            } else {
                Vec::new()
            },
        }
    }

    /// The Nomad client's configuration: the `NOMAD_*` variables, with the
    /// address and token file from the flags.
    pub fn client_config(&self) -> Result<NomadConfig, nomad_client::ConfigError> {
        let mut config = NomadConfig::from_env()?;
        config.address = self.nomad_addr.parse().map_err(|source| {
            nomad_client::ConfigError::InvalidAddress {
                name: "--nomad-addr",
                source,
            }
        })?;
        if let Some(path) = &self.nomad_token_file {
            config = config.with_token_file(path)?;
        }
        Ok(config)
    }
}

/// Gateway mode: listeners, routes and clusters from the services' tags.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Gateway mode")]
pub struct GatewayArgs {
    /// Serve Envoy's whole gateway (CDS, LDS, RDS besides EDS) from the
    /// route tags of Consul services.
    #[arg(long, env = "CONSUL_EDS_GATEWAY")]
    pub gateway: bool,

    /// An Envoy listener, `NAME=HOST:PORT` or `NAME=HOST:PORT,tls`
    /// (repeatable; routes pick listeners by NAME).
    #[arg(
        long = "listener",
        env = "CONSUL_EDS_LISTENERS",
        value_name = "NAME=HOST:PORT[,tls]",
        value_parser = parse_listener,
        value_delimiter = ';',
        requires = "gateway"
    )]
    pub listeners: Vec<ListenerSpec>,

    /// The prefix of route tags, without the dot (`edge` reads `edge.route=...`).
    #[arg(long, env = "CONSUL_EDS_TAG_PREFIX", value_parser = parse_prefix, default_value = TagPrefix::DEFAULT)]
    pub tag_prefix: TagPrefix,

    /// The cluster of Envoy's bootstrap that serves SDS: TLS filter chains
    /// ask it for each host's certificate.
    #[arg(long, env = "CONSUL_EDS_SDS_CLUSTER", default_value = "sds")]
    pub sds_cluster: String,

    /// Proxies in front of Envoy whose `X-Forwarded-For` entries are trusted
    /// (0: Envoy is the edge and the client's address is the peer's).
    #[arg(long, env = "CONSUL_EDS_TRUSTED_HOPS", default_value_t = 0)]
    pub trusted_hops: u32,
}

fn parse_listener(value: &str) -> Result<ListenerSpec, String> {
    value
        .parse::<ListenerSpec>()
        .map_err(|error| error.to_string())
}

fn parse_prefix(value: &str) -> Result<TagPrefix, String> {
    TagPrefix::new(value).map_err(|error| error.to_string())
}

/// A gateway configuration that cannot work, found before anything starts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayConfigError {
    #[error("--gateway needs at least one --listener NAME=HOST:PORT")]
    NoListener,
    #[error("--listener `{0}` is given twice; listener names must be unique")]
    DuplicateName(String),
    #[error("--listener `{first}` and `{second}` both bind {address}")]
    DuplicateAddress {
        first: String,
        second: String,
        address: String,
    },
    #[error("--sds-cluster must name a cluster of Envoy's bootstrap; it is empty")]
    EmptySdsCluster,
}

impl GatewayArgs {
    /// Checks what clap cannot: the listeners as a set.
    pub fn validate(&self) -> Result<(), GatewayConfigError> {
        if !self.gateway {
            return Ok(());
        }
        if self.listeners.is_empty() {
            return Err(GatewayConfigError::NoListener);
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            for earlier in &self.listeners[..i] {
                if earlier.name == listener.name {
                    return Err(GatewayConfigError::DuplicateName(listener.name.clone()));
                }
                if earlier.host == listener.host && earlier.port == listener.port {
                    return Err(GatewayConfigError::DuplicateAddress {
                        first: earlier.name.clone(),
                        second: listener.name.clone(),
                        address: format!("{}:{}", listener.host, listener.port),
                    });
                }
            }
        }
        if self.sds_cluster.trim().is_empty() {
            return Err(GatewayConfigError::EmptySdsCluster);
        }
        Ok(())
    }
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
        let limit = crate::source::per_service_watch_limit(
            self.max_blocking_queries,
            1 + self.failover_dcs.len(),
        );
        // Gateway mode holds one more blocking query: the catalog's service
        // list, which tells which services carry route tags.
        if self.gateway.gateway {
            limit.saturating_sub(1)
        } else {
            limit
        }
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
        assert_eq!(config.max_blocking_queries, 40);
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

    #[test]
    fn the_nomad_namespace_wildcard_is_read_alone_and_refused_beside_names() {
        let parse = |namespaces: &str| {
            Config::try_parse_from([
                "consul-eds-server",
                "--sources",
                "nomad",
                "--nomad-namespace",
                namespaces,
            ])
            .expect("parses")
        };
        let all = parse("*");
        assert_eq!(all.nomad.validate(), Ok(()));
        assert_eq!(all.nomad.selection().nomad_namespaces, ["*"]);
        assert_eq!(parse(" * , *").nomad.validate(), Ok(()));
        for mixed in ["*,prod", "default, *"] {
            let error = parse(mixed).nomad.validate().expect_err(mixed);
            assert_eq!(error, SourcesConfigError::WildcardWithNames);
            assert!(
                error.to_string().starts_with("--nomad-namespace `*`"),
                "{error}"
            );
        }
        assert_eq!(
            parse(" , ").nomad.validate(),
            Err(SourcesConfigError::NoNamespace)
        );
        let named = parse("default,prod");
        assert_eq!(
            named.nomad.selection().nomad_namespaces,
            ["default", "prod"]
        );
    }

    #[test]
    fn gateway_flags_are_spelled_as_documented() {
        let config = Config::try_parse_from([
            "consul-eds-server",
            "--gateway",
            "--listener",
            "web=0.0.0.0:8080",
            "--listener",
            "websecure=127.0.0.1:8443,tls",
            "--tag-prefix",
            "gw",
            "--sds-cluster",
            "certs",
            "--trusted-hops",
            "1",
        ])
        .expect("gateway flags parse");
        let gateway = &config.gateway;
        assert!(gateway.gateway);
        assert_eq!(gateway.listeners.len(), 2);
        assert_eq!(gateway.listeners[1].name, "websecure");
        assert!(gateway.listeners[1].tls);
        assert!(!gateway.listeners[0].tls);
        assert_eq!(gateway.tag_prefix.as_str(), "gw");
        assert_eq!(gateway.sds_cluster, "certs");
        assert_eq!(gateway.trusted_hops, 1);
        assert_eq!(gateway.validate(), Ok(()));
        // The catalog's service list takes one blocking query of the budget.
        let plain = Config::try_parse_from(["consul-eds-server"]).expect("defaults");
        assert_eq!(
            config.per_service_watch_limit() + 1,
            plain.per_service_watch_limit()
        );
        assert_eq!(plain.gateway.tag_prefix.as_str(), "edge");
        assert_eq!(plain.gateway.sds_cluster, "sds");
    }

    #[test]
    fn gateway_configurations_that_cannot_work_are_refused_by_name() {
        let parse = |args: &[&str]| {
            let mut all = vec!["consul-eds-server"];
            all.extend_from_slice(args);
            Config::try_parse_from(all)
        };
        let error = parse(&["--listener", "web=nowhere:80", "--gateway"]).expect_err("bad host");
        assert!(error.to_string().contains("nowhere"), "{error}");
        assert!(
            parse(&["--listener", "web=127.0.0.1:80"]).is_err(),
            "--listener needs --gateway"
        );
        let config = parse(&["--gateway"]).expect("parses");
        assert_eq!(
            config.gateway.validate(),
            Err(GatewayConfigError::NoListener)
        );
        let config = parse(&[
            "--gateway",
            "--listener",
            "web=127.0.0.1:80",
            "--listener",
            "web=127.0.0.1:81",
        ])
        .expect("parses");
        let error = config.gateway.validate().expect_err("twice");
        assert!(
            error.to_string().contains("`web` is given twice"),
            "{error}"
        );
        let config = parse(&[
            "--gateway",
            "--listener",
            "a=127.0.0.1:80",
            "--listener",
            "b=127.0.0.1:80",
        ])
        .expect("parses");
        assert!(matches!(
            config.gateway.validate(),
            Err(GatewayConfigError::DuplicateAddress { .. })
        ));
    }
}

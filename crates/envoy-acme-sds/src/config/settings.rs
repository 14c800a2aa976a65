//! The settings the service runs with, resolved and checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use consul_client::ClientConfig;
use nomad_client::NomadConfig;
use service_support::logging::LogFormat;
use xds_core::{Listen, TlsOptions};

use crate::acme::AcmeConfig;
use crate::challenge::ChallengeKind;
use crate::challenge::dns01::TsigKey;
use crate::keys::KeyType;
use crate::manager::CertificateSpec;
use crate::routed::policy::AllowedSuffix;
use crate::store::encryption::KeyEncryption;
use route_tags::TagPrefix;

/// Everything the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub acme: AcmeConfig,
    pub certificates: Vec<CertificateSettings>,
    pub challenge: ChallengeSettings,
    pub storage: StorageSettings,
    pub lock_delay: Duration,
    pub session_ttl: Duration,
    pub instance_name: String,
    pub sds_listen: Listen,
    pub sds_tls: Option<TlsOptions>,
    pub admin_listen: SocketAddr,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// Set with `--follow-routes`.
    pub routes: Option<RoutesSettings>,
}

/// Certificates for routed hosts (`--follow-routes`), resolved.
#[derive(Debug, Clone)]
pub struct RoutesSettings {
    pub prefix: TagPrefix,
    pub allowed: Vec<AllowedSuffix>,
    pub orders_per_hour: u32,
    pub unrouted_grace: Duration,
    /// With `--sources consul` (the default): the catalog is read from
    /// this Consul, whatever the storage.
    pub consul: Option<ClientConfig>,
    /// With `--sources nomad`: Nomad's service registry, in these namespaces.
    pub nomad: Option<NomadRoutes>,
    /// Of routed hosts' certificates: the configured defaults.
    pub key_type: KeyType,
    pub profile: Option<String>,
    /// `--rfc2136-zone`, if given: else each host's allowed suffix.
    pub zone: Option<String>,
}

/// Where Nomad's services are read from, resolved.
#[derive(Debug, Clone)]
pub struct NomadRoutes {
    pub client: NomadConfig,
    /// Each read with its own watch; never `*`, never empty.
    pub namespaces: Vec<String>,
}

/// Where certificates are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    Disk(PathBuf),
    Consul { prefix: String },
}

impl FromStr for StorageLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = text.strip_prefix("disk:") {
            if dir.is_empty() {
                return Err("disk: needs a directory, e.g. disk:/var/lib/envoy-acme-sds".to_owned());
            }
            Ok(Self::Disk(PathBuf::from(dir)))
        } else if let Some(prefix) = text.strip_prefix("consul:") {
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                return Err("consul: needs a KV prefix, e.g. consul:envoy-acme-sds".to_owned());
            }
            Ok(Self::Consul {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(format!(
                "`{text}` is neither disk:<dir> nor consul:<kv-prefix>"
            ))
        }
    }
}

impl std::fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(dir) => write!(f, "disk:{}", dir.display()),
            Self::Consul { prefix } => write!(f, "consul:{prefix}"),
        }
    }
}

/// Storage, resolved.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub location: StorageLocation,
    pub encryption: Option<Arc<KeyEncryption>>,
    /// The key before a rotation: opened, never sealed with.
    pub previous_encryption: Option<Arc<KeyEncryption>>,
    /// The operator allowed private keys in plaintext (`--allow-plaintext-keys`).
    pub plaintext_keys_allowed: bool,
    /// Set for Consul storage.
    pub consul: Option<ClientConfig>,
}

/// How challenges are answered, resolved.
#[derive(Debug, Clone)]
pub enum ChallengeSettings {
    Rfc2136 {
        server: SocketAddr,
        tsig: TsigKey,
    },
    Http01 {
        listen: SocketAddr,
    },
    Exec {
        program: PathBuf,
        kind: ChallengeKind,
    },
}

impl ChallengeSettings {
    /// Whether challenges are answered over HTTP, which cannot prove a wildcard.
    pub fn is_http01(&self) -> bool {
        matches!(
            self,
            Self::Http01 { .. }
                | Self::Exec {
                    kind: ChallengeKind::Http01,
                    ..
                }
        )
    }
}

/// One certificate, resolved.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub spec: CertificateSpec,
    pub validation_context: Option<String>,
    /// RFC 2136 zone (dns-01 through RFC 2136 only).
    pub zone: String,
}

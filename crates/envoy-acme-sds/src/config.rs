//! Configuration: command-line flags (each also an `ENVOY_ACME_SDS_*`
//! environment variable; the Consul connection flags read the `consul` CLI's
//! `CONSUL_*` variables, shared with consul-eds-server) and an optional TOML
//! file for many certificates, resolved once at start into [`Settings`].
//!
//! Precedence: a flag (or its variable) wins over the file, the file over
//! the defaults. Certificates add up: those of `--cert` and those of the
//! file's `[[certificate]]` tables. Every error names the flag or the field.
//!
//! ```toml
//! acme_directory = "https://acme-v02.api.letsencrypt.org/directory"
//! email = "ops@example.com"
//! challenge = "dns-01"
//! storage = "consul:envoy-acme-sds"
//!
//! [rfc2136]
//! server = "10.0.0.53:53"
//! tsig_key_file = "/secrets/tsig.key"
//!
//! [[certificate]]
//! name = "example"                       # SDS secret name; default: the first domain
//! domains = ["example.com", "*.example.com"]
//! key_type = "rsa2048"
//! validation_context_secret = "example-ca"
//! zone = "example.com"                   # RFC 2136 zone; default: the shortest domain
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use consul_client::ClientConfig;
use serde::Deserialize;
use service_support::consul::ConsulArgs;
pub use service_support::duration::parse_duration;
use service_support::logging::LogFormat;
use xds_core::{Listen, TlsOptions};

use crate::acme::{AcmeConfig, ExternalAccountBinding, LETS_ENCRYPT_STAGING};
use crate::challenge::ChallengeKind;
use crate::challenge::dns01::TsigKey;
use crate::challenge::tsig_file::{TsigFileError, read_tsig_key};
use crate::domain::NameSet;
use crate::election::MIN_SESSION_TTL;
use crate::keys::KeyType;
use crate::manager::CertificateSpec;
use crate::secret::Secret;
use crate::store::SecretName;
use crate::store::encryption::{EncryptionError, KeyEncryption};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    FileSyntax { path: PathBuf, message: String },
    /// `field` is the flag (`--cert`) or the file's field (`certificate[1].domains`).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: reading {path}: {source}")]
    ReadReferenced {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tsig(#[from] TsigFileError),
    #[error("--encryption-key-file: {0}")]
    Encryption(#[from] EncryptionError),
    #[error("Consul client: {0}")]
    Consul(#[from] consul_client::ConfigError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "envoy-acme-sds",
    version,
    about = "Obtains and renews ACME certificates and serves them to Envoy over SDS",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask for new certificates now, e.g. after a key compromise. The
    /// replica holding the renewal lock orders within a second (Consul
    /// storage); with disk storage, send the service SIGHUP afterwards.
    Renew(RenewArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// Secret name of a certificate to renew (repeatable).
    #[arg(long = "cert", value_name = "NAME", required = true)]
    pub certs: Vec<String>,
    /// TOML config file (for its storage settings).
    #[arg(long, env = "ENVOY_ACME_SDS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Where certificates are stored; shared by the service and `renew`.
#[derive(Debug, Clone, Default, Args)]
pub struct StorageArgs {
    /// Where certificates live: disk:<dir> or consul:<kv-prefix>.
    #[arg(
        long,
        env = "ENVOY_ACME_SDS_STORAGE",
        value_name = "disk:DIR|consul:PREFIX"
    )]
    pub storage: Option<String>,
    /// Encrypt private keys at rest with this key (32 bytes: raw, base64 or hex). No default.
    #[arg(long, env = "ENVOY_ACME_SDS_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Used with consul:<kv-prefix> storage only.
    #[command(flatten)]
    pub consul: ConsulArgs,
}

/// The service's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML config file, for many certificates (flags win over it).
    #[arg(long, env = "ENVOY_ACME_SDS_CONFIG")]
    pub config: Option<PathBuf>,
    /// ACME directory URL [default: Let's Encrypt staging].
    #[arg(long, env = "ENVOY_ACME_SDS_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Contact e-mail for the ACME account (repeatable).
    #[arg(long, env = "ENVOY_ACME_SDS_EMAIL", value_delimiter = ',')]
    pub email: Vec<String>,
    /// A certificate: comma-separated names, optionally `secret-name=` first (repeatable).
    #[arg(
        long = "cert",
        env = "ENVOY_ACME_SDS_CERT",
        value_name = "[NAME=]DOMAIN,...",
        value_delimiter = ';'
    )]
    pub certs: Vec<String>,
    /// ACME profile to order with (e.g. `tlsserver`, `shortlived`), if the CA offers profiles.
    #[arg(long, env = "ENVOY_ACME_SDS_ACME_PROFILE")]
    pub acme_profile: Option<String>,
    /// Private key type of new certificates [default: ecdsa-p256].
    #[arg(long, env = "ENVOY_ACME_SDS_KEY_TYPE", value_parser = parse_key_type, value_name = "ecdsa-p256|rsa2048")]
    pub key_type: Option<KeyType>,
    /// PEM root(s) to verify the ACME server with instead of the system's (private CAs).
    #[arg(long, env = "ENVOY_ACME_SDS_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// External Account Binding key id, for CAs that require one.
    #[arg(long, env = "ENVOY_ACME_SDS_EAB_KID", requires = "eab_hmac_key_file")]
    pub eab_kid: Option<String>,
    /// File holding the EAB HMAC key (base64url, as CAs hand it out).
    #[arg(long, env = "ENVOY_ACME_SDS_EAB_HMAC_KEY_FILE", requires = "eab_kid")]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// Challenge type [default: dns-01]; wildcards need dns-01.
    #[arg(long, env = "ENVOY_ACME_SDS_CHALLENGE", value_enum)]
    pub challenge: Option<ChallengeArg>,
    /// DNS server accepting RFC 2136 updates (host:port), for dns-01.
    #[arg(long, env = "ENVOY_ACME_SDS_RFC2136_SERVER")]
    pub rfc2136_server: Option<SocketAddr>,
    /// Zone to update [default: each certificate's shortest name].
    #[arg(long, env = "ENVOY_ACME_SDS_RFC2136_ZONE")]
    pub rfc2136_zone: Option<String>,
    /// TSIG key: `key "name" { algorithm ...; secret "..."; };` or `name:algorithm:secret`.
    #[arg(long, env = "ENVOY_ACME_SDS_TSIG_KEY_FILE")]
    pub tsig_key_file: Option<PathBuf>,
    /// Where to answer HTTP-01 challenges [default: 0.0.0.0:80].
    #[arg(long, env = "ENVOY_ACME_SDS_HTTP01_LISTEN")]
    pub http01_listen: Option<SocketAddr>,
    /// Program publishing challenges: `HOOK present|cleanup DOMAIN TOKEN VALUE` (also ACME_* variables).
    #[arg(
        long,
        env = "ENVOY_ACME_SDS_EXEC_HOOK",
        conflicts_with = "rfc2136_server"
    )]
    pub exec_hook: Option<PathBuf>,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Consul lock delay after the renewing replica's session is invalidated [default: 15s].
    #[arg(long, env = "ENVOY_ACME_SDS_LOCK_DELAY", value_parser = parse_duration)]
    pub lock_delay: Option<Duration>,
    /// TTL of the lock session, at least 10s [default: 15s].
    #[arg(long, env = "ENVOY_ACME_SDS_SESSION_TTL", value_parser = parse_duration)]
    pub session_ttl: Option<Duration>,
    /// Name of this replica, shown as the lock holder [default: the host name].
    #[arg(long, env = "ENVOY_ACME_SDS_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// Also serve the CA chain of the (single) --cert as a validation_context secret of this name.
    #[arg(long, env = "ENVOY_ACME_SDS_VALIDATION_CONTEXT_SECRET")]
    pub validation_context_secret: Option<String>,
    /// SDS listener: host:port or unix:/path [default: 127.0.0.1:20000].
    #[arg(long, env = "ENVOY_ACME_SDS_SDS_LISTEN")]
    pub sds_listen: Option<String>,
    /// Serve SDS over TLS with this certificate chain (PEM).
    #[arg(long, env = "ENVOY_ACME_SDS_SDS_TLS_CERT", requires = "sds_tls_key")]
    pub sds_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --sds-tls-cert.
    #[arg(long, env = "ENVOY_ACME_SDS_SDS_TLS_KEY", requires = "sds_tls_cert")]
    pub sds_tls_key: Option<PathBuf>,
    /// Require Envoy client certificates signed by this CA (mTLS).
    #[arg(long, env = "ENVOY_ACME_SDS_SDS_CLIENT_CA", requires = "sds_tls_cert")]
    pub sds_client_ca: Option<PathBuf>,
    /// Admin listener: /metrics, /healthz, /readyz, /debug/certificates [default: 127.0.0.1:9103].
    #[arg(long, env = "ENVOY_ACME_SDS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Log format [default: pretty].
    #[arg(long, env = "ENVOY_ACME_SDS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How long SIGTERM waits for SDS streams to finish [default: 5s].
    #[arg(long, env = "ENVOY_ACME_SDS_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
pub enum ChallengeArg {
    #[value(name = "dns-01")]
    #[serde(rename = "dns-01")]
    Dns01,
    #[value(name = "http-01")]
    #[serde(rename = "http-01")]
    Http01,
}

impl From<ChallengeArg> for ChallengeKind {
    fn from(value: ChallengeArg) -> Self {
        match value {
            ChallengeArg::Dns01 => Self::Dns01,
            ChallengeArg::Http01 => Self::Http01,
        }
    }
}

fn parse_key_type(text: &str) -> Result<KeyType, String> {
    KeyType::from_str(text).map_err(|e| e.to_string())
}

/// The TOML file. Unknown fields are errors, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub acme_directory: Option<String>,
    #[serde(default)]
    pub email: Vec<String>,
    pub acme_profile: Option<String>,
    pub key_type: Option<String>,
    pub acme_ca_file: Option<PathBuf>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key_file: Option<PathBuf>,
    pub challenge: Option<ChallengeArg>,
    pub rfc2136: Option<Rfc2136File>,
    pub http01_listen: Option<SocketAddr>,
    pub exec_hook: Option<PathBuf>,
    pub storage: Option<String>,
    pub encryption_key_file: Option<PathBuf>,
    pub consul_addr: Option<String>,
    pub consul_token_file: Option<PathBuf>,
    pub consul_cacert: Option<PathBuf>,
    pub consul_client_cert: Option<PathBuf>,
    pub consul_client_key: Option<PathBuf>,
    pub lock_delay: Option<String>,
    pub session_ttl: Option<String>,
    pub sds_listen: Option<String>,
    pub admin_listen: Option<SocketAddr>,
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertificateFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136File {
    pub server: Option<SocketAddr>,
    pub zone: Option<String>,
    pub tsig_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub name: Option<String>,
    pub domains: Vec<String>,
    pub key_type: Option<String>,
    pub profile: Option<String>,
    pub validation_context_secret: Option<String>,
    pub zone: Option<String>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| ConfigError::FileSyntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            ConfigError::FileSyntax {
                path: path.to_path_buf(),
                message: format!("field `{field}`: {}", error.into_inner().message().trim()),
            }
        })
    }
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

/// One certificate, resolved.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub spec: CertificateSpec,
    pub validation_context: Option<String>,
    /// RFC 2136 zone (dns-01 through RFC 2136 only).
    pub zone: String,
}

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
}

impl RunArgs {
    /// Reads the file (if any) and every referenced file, and checks it all.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let storage = resolve_storage(&self.storage, &file)?;
        let acme = self.resolve_acme(&file)?;
        let challenge = self.resolve_challenge(&file)?;
        let certificates = self.resolve_certificates(&file, &challenge)?;
        let lock_delay =
            pick_duration("--lock-delay", self.lock_delay, file.lock_delay.as_deref())?
                .unwrap_or(Duration::from_secs(15));
        let session_ttl = pick_duration(
            "--session-ttl",
            self.session_ttl,
            file.session_ttl.as_deref(),
        )?
        .unwrap_or(Duration::from_secs(15));
        if session_ttl < MIN_SESSION_TTL {
            return Err(invalid(
                "--session-ttl",
                "Consul refuses session TTLs under 10s",
            ));
        }
        let sds_listen_text = self
            .sds_listen
            .clone()
            .or(file.sds_listen.clone())
            .unwrap_or_else(|| "127.0.0.1:20000".to_owned());
        let sds_listen =
            parse_listen(&sds_listen_text).map_err(|reason| invalid("--sds-listen", reason))?;
        let sds_tls = match (&self.sds_tls_cert, &self.sds_tls_key) {
            (Some(cert), Some(key)) => Some(TlsOptions {
                certificate_chain_pem: read_text("--sds-tls-cert", cert)?,
                private_key_pem: read_text("--sds-tls-key", key)?,
                client_ca_pem: self
                    .sds_client_ca
                    .as_deref()
                    .map(|path| read_text("--sds-client-ca", path))
                    .transpose()?,
            }),
            _ => None,
        };
        Ok(Settings {
            acme,
            certificates,
            challenge,
            storage,
            lock_delay,
            session_ttl,
            instance_name: self.instance_name.clone().unwrap_or_else(host_name),
            sds_listen,
            sds_tls,
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9103))),
            log_format: self.log_format.unwrap_or_default(),
            shutdown_grace: self.shutdown_grace.unwrap_or(Duration::from_secs(5)),
        })
    }

    fn resolve_acme(&self, file: &FileConfig) -> Result<AcmeConfig, ConfigError> {
        let directory = self
            .acme_directory
            .clone()
            .or(file.acme_directory.clone())
            .unwrap_or_else(|| LETS_ENCRYPT_STAGING.to_owned());
        let url = url_like(&directory);
        if !url {
            return Err(invalid(
                "--acme-directory",
                format!("`{directory}` is not an https:// URL"),
            ));
        }
        let mut acme = AcmeConfig::new(directory);
        acme.contact = if self.email.is_empty() {
            file.email.clone()
        } else {
            self.email.clone()
        };
        if let Some(path) = self.acme_ca_file.as_ref().or(file.acme_ca_file.as_ref()) {
            acme.ca_root_pem = Some(read_text("--acme-ca-file", path)?);
        }
        let kid = self.eab_kid.clone().or(file.eab_kid.clone());
        let hmac_file = self
            .eab_hmac_key_file
            .clone()
            .or(file.eab_hmac_key_file.clone());
        acme.external_account = match (kid, hmac_file) {
            (Some(key_id), Some(path)) => {
                let text = Secret::new(read_text("--eab-hmac-key-file", &path)?);
                let hmac_key = decode_base64_any(text.expose().trim()).ok_or_else(|| {
                    invalid(
                        "--eab-hmac-key-file",
                        format!("{} does not hold a base64 or base64url key", path.display()),
                    )
                })?;
                Some(ExternalAccountBinding {
                    key_id,
                    hmac_key: Secret::new(hmac_key),
                })
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "--eab-kid",
                    "--eab-kid and --eab-hmac-key-file go together",
                ));
            }
        };
        Ok(acme)
    }

    fn resolve_challenge(&self, file: &FileConfig) -> Result<ChallengeSettings, ConfigError> {
        let kind: ChallengeKind = self
            .challenge
            .or(file.challenge)
            .unwrap_or(ChallengeArg::Dns01)
            .into();
        let rfc2136 = file.rfc2136.as_ref();
        let server = self.rfc2136_server.or(rfc2136.and_then(|r| r.server));
        if let Some(program) = self.exec_hook.clone().or(file.exec_hook.clone()) {
            if server.is_some() {
                return Err(invalid(
                    "--exec-hook",
                    "give either an exec hook or an RFC 2136 server, not both",
                ));
            }
            return Ok(ChallengeSettings::Exec { program, kind });
        }
        match kind {
            ChallengeKind::Http01 => Ok(ChallengeSettings::Http01 {
                listen: self
                    .http01_listen
                    .or(file.http01_listen)
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 80))),
            }),
            ChallengeKind::Dns01 => {
                let server = server.ok_or_else(|| {
                    invalid(
                        "--rfc2136-server",
                        "dns-01 needs a DNS server accepting updates (or an --exec-hook)",
                    )
                })?;
                let key_file = self
                    .tsig_key_file
                    .clone()
                    .or(rfc2136.and_then(|r| r.tsig_key_file.clone()))
                    .ok_or_else(|| {
                        invalid(
                            "--tsig-key-file",
                            "dns-01 through RFC 2136 needs a TSIG key",
                        )
                    })?;
                Ok(ChallengeSettings::Rfc2136 {
                    server,
                    tsig: read_tsig_key(&key_file)?,
                })
            }
        }
    }

    fn resolve_certificates(
        &self,
        file: &FileConfig,
        challenge: &ChallengeSettings,
    ) -> Result<Vec<CertificateSettings>, ConfigError> {
        let default_key_type = match &self.key_type {
            Some(key_type) => *key_type,
            None => match &file.key_type {
                Some(text) => {
                    KeyType::from_str(text).map_err(|e| invalid("key_type", e.to_string()))?
                }
                None => KeyType::default(),
            },
        };
        let default_profile = self.acme_profile.clone().or(file.acme_profile.clone());
        let default_zone = self
            .rfc2136_zone
            .clone()
            .or(file.rfc2136.as_ref().and_then(|r| r.zone.clone()));
        let mut certificates = Vec::new();
        for (index, text) in self.certs.iter().enumerate() {
            let field = format!("--cert #{} (`{text}`)", index + 1);
            let (name, domains) = match text.split_once('=') {
                Some((name, domains)) => (Some(name.trim().to_owned()), domains),
                None => (None, text.as_str()),
            };
            let domains: Vec<&str> = domains
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect();
            certificates.push(build_certificate(
                &field,
                name,
                &domains,
                default_key_type,
                default_profile.clone(),
                None,
                default_zone.clone(),
            )?);
        }
        if let Some(validation) = &self.validation_context_secret {
            match certificates.as_mut_slice() {
                [only] => only.validation_context = Some(validation.clone()),
                _ => {
                    return Err(invalid(
                        "--validation-context-secret",
                        "applies to exactly one --cert; give each certificate its own in the config file",
                    ));
                }
            }
        }
        for (index, entry) in file.certificates.iter().enumerate() {
            let field = format!("certificate[{index}]");
            let key_type = match &entry.key_type {
                Some(text) => KeyType::from_str(text)
                    .map_err(|e| invalid(format!("{field}.key_type"), e.to_string()))?,
                None => default_key_type,
            };
            let domains: Vec<&str> = entry.domains.iter().map(String::as_str).collect();
            certificates.push(build_certificate(
                &field,
                entry.name.clone(),
                &domains,
                key_type,
                entry.profile.clone().or(default_profile.clone()),
                entry.validation_context_secret.clone(),
                entry.zone.clone().or(default_zone.clone()),
            )?);
        }
        if certificates.is_empty() {
            return Err(invalid(
                "--cert",
                "no certificate configured (give --cert or [[certificate]] in --config)",
            ));
        }
        let mut seen = BTreeMap::new();
        for certificate in &certificates {
            let names = [
                Some(certificate.spec.secret_name.as_str().to_owned()),
                certificate.validation_context.clone(),
            ];
            for name in names.into_iter().flatten() {
                if seen.insert(name.clone(), ()).is_some() {
                    return Err(invalid(
                        "--cert",
                        format!("the secret name `{name}` is used twice"),
                    ));
                }
            }
        }
        let wildcards_need_dns = matches!(challenge, ChallengeSettings::Http01 { .. })
            || matches!(
                challenge,
                ChallengeSettings::Exec {
                    kind: ChallengeKind::Http01,
                    ..
                }
            );
        if wildcards_need_dns
            && let Some(certificate) = certificates
                .iter()
                .find(|c| c.spec.names.iter().any(|n| n.is_wildcard()))
        {
            return Err(invalid(
                "--challenge",
                format!(
                    "certificate `{}` has a wildcard name, which only dns-01 can validate",
                    certificate.spec.secret_name
                ),
            ));
        }
        Ok(certificates)
    }
}

fn build_certificate(
    field: &str,
    name: Option<String>,
    domains: &[&str],
    key_type: KeyType,
    profile: Option<String>,
    validation_context: Option<String>,
    zone: Option<String>,
) -> Result<CertificateSettings, ConfigError> {
    let names = NameSet::parse(domains).map_err(|e| invalid(field, e.to_string()))?;
    let mut spec = CertificateSpec::new(names).map_err(|e| invalid(field, e.to_string()))?;
    if let Some(name) = name {
        spec.secret_name = SecretName::new(name).map_err(|e| invalid(field, e.to_string()))?;
    }
    spec.key_type = key_type;
    spec.profile = profile;
    let zone = zone.unwrap_or_else(|| {
        // The shortest name's base: `example.com` for `example.com,*.example.com`.
        spec.names
            .iter()
            .map(|n| n.base().to_owned())
            .min_by_key(|base| base.split('.').count())
            .unwrap_or_default()
    });
    if let Some(validation) = &validation_context {
        SecretName::new(validation.clone())
            .map_err(|e| invalid(format!("{field} validation context"), e.to_string()))?;
    }
    Ok(CertificateSettings {
        spec,
        validation_context,
        zone,
    })
}

/// Resolves the storage flags (also used by `renew`).
pub fn resolve_storage(
    args: &StorageArgs,
    file: &FileConfig,
) -> Result<StorageSettings, ConfigError> {
    let text = args
        .storage
        .clone()
        .or(file.storage.clone())
        .ok_or_else(|| invalid("--storage", "required: disk:<dir> or consul:<kv-prefix>"))?;
    let location = StorageLocation::from_str(&text).map_err(|r| invalid("--storage", r))?;
    let encryption = args
        .encryption_key_file
        .as_ref()
        .or(file.encryption_key_file.as_ref())
        .map(|path| KeyEncryption::from_key_file(path).map(Arc::new))
        .transpose()?;
    let consul = match &location {
        StorageLocation::Disk(_) => None,
        StorageLocation::Consul { .. } => {
            // The file names no token itself: secrets stay out of config files.
            let from_file = ConsulArgs {
                consul_addr: file.consul_addr.clone(),
                consul_token: None,
                consul_token_file: file.consul_token_file.clone(),
                consul_cacert: file.consul_cacert.clone(),
                consul_client_cert: file.consul_client_cert.clone(),
                consul_client_key: file.consul_client_key.clone(),
            };
            Some(args.consul.clone().or(from_file).client_config()?)
        }
    };
    Ok(StorageSettings {
        location,
        encryption,
        consul,
    })
}

impl RenewArgs {
    pub fn resolve(&self) -> Result<(StorageSettings, Vec<SecretName>), ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let storage = resolve_storage(&self.storage, &file)?;
        let names = self
            .certs
            .iter()
            .map(|name| SecretName::new(name.clone()).map_err(|e| invalid("--cert", e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok((storage, names))
    }
}

fn pick_duration(
    field: &str,
    flag: Option<Duration>,
    file: Option<&str>,
) -> Result<Option<Duration>, ConfigError> {
    match (flag, file) {
        (Some(duration), _) => Ok(Some(duration)),
        (None, Some(text)) => parse_duration(text)
            .map(Some)
            .map_err(|reason| invalid(field.trim_start_matches('-').replace('-', "_"), reason)),
        (None, None) => Ok(None),
    }
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path".to_owned());
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    text.parse::<SocketAddr>()
        .map(Listen::Tcp)
        .map_err(|_| format!("`{text}` is neither host:port nor unix:/path"))
}

fn read_text(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadReferenced {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn url_like(text: &str) -> bool {
    text.starts_with("https://") && text.len() > "https://".len()
}

fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| STANDARD.decode(text))
        .ok()
}

/// The host name, for the lock holder's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("envoy-acme-sds").chain(args.iter().copied()))
    }

    fn tsig_file(dir: &tempfile::TempDir) -> String {
        let path = dir.path().join("tsig.key");
        std::fs::write(
            &path,
            "key \"update-key\" { algorithm hmac-sha256; secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };",
        )
        .expect("write");
        path.display().to_string()
    }

    #[test]
    fn the_documented_command_line_resolves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tsig = tsig_file(&dir);
        let storage = format!("disk:{}", dir.path().display());
        let cli = parse(&[
            "--acme-directory",
            "https://ca.example/dir",
            "--email",
            "ops@example.com",
            "--cert",
            "example.com,*.example.com",
            "--cert",
            "api=api.example.com",
            "--challenge",
            "dns-01",
            "--rfc2136-server",
            "127.0.0.1:53",
            "--tsig-key-file",
            &tsig,
            "--storage",
            &storage,
            "--key-type",
            "rsa2048",
            "--lock-delay",
            "0s",
        ])
        .expect("parses");
        assert!(cli.command.is_none());
        let settings = cli.run.resolve().expect("resolves");
        assert_eq!(settings.acme.directory_url, "https://ca.example/dir");
        assert_eq!(settings.acme.contact, vec!["ops@example.com"]);
        assert_eq!(settings.certificates.len(), 2);
        let first = &settings.certificates[0];
        assert_eq!(first.spec.secret_name.as_str(), "example.com");
        assert_eq!(first.zone, "example.com");
        assert_eq!(first.spec.key_type, KeyType::Rsa2048);
        assert_eq!(settings.certificates[1].spec.secret_name.as_str(), "api");
        assert_eq!(settings.lock_delay, Duration::ZERO);
        assert_eq!(
            settings.sds_listen,
            Listen::Tcp("127.0.0.1:20000".parse().expect("addr"))
        );
        assert_eq!(settings.admin_listen.to_string(), "127.0.0.1:9103");
        assert!(matches!(
            settings.challenge,
            ChallengeSettings::Rfc2136 { .. }
        ));
        assert!(matches!(
            settings.storage.location,
            StorageLocation::Disk(_)
        ));
    }

    #[test]
    fn consul_connection_comes_from_flags_then_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            r#"
storage = "consul:certs"
consul_addr = "https://consul.internal:8501"
consul_cacert = "/etc/consul/ca.pem"
consul_client_cert = "/etc/consul/client.pem"
consul_client_key = "/etc/consul/client-key.pem"
"#,
        )
        .expect("write");
        let config_arg = config.display().to_string();
        let resolve = |extra: &[&str]| {
            let mut args = vec!["--config", &config_arg, "--cert", "example.org"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--challenge", "http-01"]);
            parse(&args)
                .expect("parses")
                .run
                .resolve()
                .expect("resolves")
                .storage
                .consul
                .expect("consul storage")
        };
        let from_file = resolve(&[]);
        assert_eq!(
            from_file.address.to_string(),
            "https://consul.internal:8501"
        );
        assert_eq!(
            from_file.tls.client_cert.as_deref(),
            Some(Path::new("/etc/consul/client.pem"))
        );
        let flag_wins = resolve(&["--consul-addr", "http://127.0.0.1:8500"]);
        assert_eq!(flag_wins.address.to_string(), "http://127.0.0.1:8500");
        assert_eq!(flag_wins.tls.ca_cert, from_file.tls.ca_cert);
    }

    #[test]
    fn file_certificates_add_to_flags_and_bad_fields_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tsig = tsig_file(&dir);
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"
storage = "consul:certs"
challenge = "dns-01"
[rfc2136]
server = "127.0.0.1:5353"
tsig_key_file = "{tsig}"
zone = "example.org"
[[certificate]]
name = "www"
domains = ["www.example.org"]
validation_context_secret = "www-ca"
"#
            ),
        )
        .expect("write");
        let config_arg = config.display().to_string();
        let cli = parse(&["--config", &config_arg, "--cert", "example.org"]).expect("parses");
        let settings = cli.run.resolve().expect("resolves");
        assert_eq!(settings.certificates.len(), 2);
        let www = &settings.certificates[1];
        assert_eq!(www.spec.secret_name.as_str(), "www");
        assert_eq!(www.validation_context.as_deref(), Some("www-ca"));
        assert_eq!(www.zone, "example.org");
        assert!(settings.storage.consul.is_some());

        std::fs::write(
            &config,
            "storage = \"disk:/x\"\n[[certificate]]\ndomains = [\"a.example\"]\nkey_typ = \"rsa\"\n",
        )
        .expect("write");
        let error = parse(&["--config", &config_arg])
            .expect("parses")
            .run
            .resolve()
            .expect_err("unknown field");
        assert!(error.to_string().contains("key_typ"), "{error}");

        std::fs::write(
            &config,
            "storage = \"disk:/x\"\n[[certificate]]\ndomains = \"a.example\"\n",
        )
        .expect("write");
        let error = parse(&["--config", &config_arg])
            .expect("parses")
            .run
            .resolve()
            .expect_err("wrong type");
        assert!(
            error.to_string().contains("certificate[0].domains"),
            "{error}"
        );

        std::fs::write(
            &config,
            "storage = \"disk:/x\"\n[[certificate]]\ndomains = [\"bad_name.example\"]\n",
        )
        .expect("write");
        let error = parse(&["--config", &config_arg, "--challenge", "http-01"])
            .expect("parses")
            .run
            .resolve()
            .expect_err("bad domain");
        assert!(error.to_string().contains("certificate[0]"), "{error}");
    }

    #[test]
    fn wildcards_with_http01_and_missing_pieces_are_refused() {
        let error = parse(&[
            "--storage",
            "disk:/x",
            "--challenge",
            "http-01",
            "--cert",
            "*.example.com",
        ])
        .expect("parses")
        .run
        .resolve()
        .expect_err("wildcard over http-01");
        assert!(error.to_string().contains("only dns-01"), "{error}");

        let error = parse(&["--storage", "disk:/x", "--cert", "example.com"])
            .expect("parses")
            .run
            .resolve()
            .expect_err("no DNS server");
        assert!(error.to_string().contains("--rfc2136-server"), "{error}");

        let error = parse(&["--storage", "s3:bucket", "--cert", "example.com"])
            .expect("parses")
            .run
            .resolve()
            .expect_err("bad storage");
        assert!(error.to_string().contains("--storage"), "{error}");

        let error = parse(&["--lock-delay", "soon"]).expect_err("bad duration");
        assert!(error.to_string().contains("--lock-delay"), "{error}");
    }

    #[test]
    fn renew_subcommand_takes_storage_and_names() {
        let cli = parse(&[
            "renew",
            "--cert",
            "example.com",
            "--storage",
            "consul:certs",
        ])
        .expect("parses");
        let Some(Command::Renew(args)) = cli.command else {
            panic!("not the renew subcommand");
        };
        let (storage, names) = args.resolve().expect("resolves");
        assert_eq!(names[0].as_str(), "example.com");
        assert_eq!(
            storage.location,
            StorageLocation::Consul {
                prefix: "certs".to_owned()
            }
        );
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1d").is_err());
    }
}

//! [`Layer`]: the service's settings as one layer, which is both the flag set
//! (clap) and the config file's schema (serde). The command line makes one
//! layer, the file another; [`Layer::or`] merges them, and resolution
//! (`resolve.rs`) applies the [`defaults`](super::defaults).
//!
//! A field the file must not hold is `#[serde(skip)]` (the file then refuses
//! it as unknown): the Consul token (secrets stay out of config files) and
//! settings read before the file is (`--log-format`). A field only the file
//! has is `#[arg(skip)]`: the `[[certificate]]` tables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Deserializer, de};
use service_support::consul::ConsulArgs;
use service_support::duration::{self, format_duration, parse_duration};
use service_support::listener::{
    AdminArgs, AdminFlags, Flag, ServerArgs, ServerFlags, help_with_default,
};
use service_support::logging::LogFormat;

use super::defaults;
use crate::challenge::ChallengeKind;
use crate::election::MIN_SESSION_TTL;
use crate::keys::KeyType;

/// One layer of settings: the command line, or the config file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// TOML config file, for many certificates (flags win over it).
    #[arg(long, env = "ENVOY_ACME_SDS_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_ACME_DIRECTORY",
        value_name = "URL",
        help = help_with_default("ACME directory URL", "Let's Encrypt staging")
    )]
    pub acme_directory: Option<String>,

    /// Contact e-mail for the ACME account (repeatable).
    #[arg(long, env = "ENVOY_ACME_SDS_EMAIL", value_delimiter = ',')]
    #[serde(default)]
    pub email: Vec<String>,

    /// A certificate: comma-separated names, optionally `secret-name=` first (repeatable).
    #[arg(
        long = "cert",
        env = "ENVOY_ACME_SDS_CERT",
        value_name = "[NAME=]DOMAIN,...",
        value_delimiter = ';'
    )]
    // The file lists certificates as `[[certificate]]` tables instead.
    #[serde(skip)]
    pub certs: Vec<String>,

    /// ACME profile to order with (e.g. `tlsserver`, `shortlived`), if the CA offers profiles.
    #[arg(long, env = "ENVOY_ACME_SDS_ACME_PROFILE")]
    pub acme_profile: Option<String>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_KEY_TYPE",
        value_parser = parse_key_type,
        value_name = "ecdsa-p256|rsa2048",
        help = help_with_default("Private key type of new certificates", KeyType::default())
    )]
    #[serde(default, deserialize_with = "from_text")]
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

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_CHALLENGE",
        value_enum,
        help = help_with_default("Challenge type; wildcards need dns-01", value_name(ChallengeArg::default()))
    )]
    pub challenge: Option<ChallengeArg>,

    /// The file's `[rfc2136]` table.
    #[command(flatten)]
    #[serde(default)]
    pub rfc2136: Rfc2136Layer,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_HTTP01_LISTEN",
        help = help_with_default("Where to answer HTTP-01 challenges", defaults::HTTP01_LISTEN)
    )]
    pub http01_listen: Option<SocketAddr>,

    /// Program publishing challenges: `HOOK present|cleanup DOMAIN TOKEN VALUE` (also ACME_* variables).
    #[arg(
        long,
        env = "ENVOY_ACME_SDS_EXEC_HOOK",
        conflicts_with = "rfc2136_server"
    )]
    pub exec_hook: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub storage: StorageArgs,

    /// Used with consul:<kv-prefix> storage only.
    #[command(flatten)]
    #[serde(flatten)]
    pub consul: ConsulArgs,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_LOCK_DELAY",
        value_parser = parse_duration,
        help = help_with_default(
            "Consul lock delay after the renewing replica's session is invalidated",
            format_duration(defaults::LOCK_DELAY),
        )
    )]
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub lock_delay: Option<Duration>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_SESSION_TTL",
        value_parser = parse_duration,
        help = help_with_default(
            &format!("TTL of the lock session, at least {}", format_duration(MIN_SESSION_TTL)),
            format_duration(defaults::SESSION_TTL),
        )
    )]
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub session_ttl: Option<Duration>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_INSTANCE_NAME",
        help = help_with_default("Name of this replica, shown as the lock holder", "the host name")
    )]
    #[serde(skip)]
    pub instance_name: Option<String>,

    /// Also serve the CA chain of the (single) --cert as a validation_context secret of this name.
    #[arg(long, env = "ENVOY_ACME_SDS_VALIDATION_CONTEXT_SECRET")]
    // The file gives each `[[certificate]]` its own.
    #[serde(skip)]
    pub validation_context_secret: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub sds: ServerArgs<SdsListener>,

    #[command(flatten)]
    #[serde(flatten)]
    pub admin: AdminArgs<AdminListener>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_LOG_FORMAT",
        value_enum,
        help = help_with_default("Log format", value_name(LogFormat::default()))
    )]
    // Logging starts before the file is read.
    #[serde(skip)]
    pub log_format: Option<LogFormat>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_SHUTDOWN_GRACE",
        value_parser = parse_duration,
        help = help_with_default(
            "How long SIGTERM waits for SDS streams to finish",
            format_duration(defaults::SHUTDOWN_GRACE),
        )
    )]
    #[serde(skip)]
    pub shutdown_grace: Option<Duration>,

    /// Also obtain a certificate for every TLS host routed by service tags in the registries --sources names.
    #[arg(long, env = "ENVOY_ACME_SDS_FOLLOW_ROUTES")]
    #[serde(default)]
    pub follow_routes: bool,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_TAG_PREFIX",
        help = help_with_default("Prefix of the route tags, as the gateway's", defaults::TAG_PREFIX)
    )]
    pub tag_prefix: Option<String>,

    /// Domains routed hosts may be ordered for: a host equal to a suffix or ending in `.SUFFIX`. Required with --follow-routes.
    #[arg(
        long,
        env = "ENVOY_ACME_SDS_ALLOWED_DOMAINS",
        value_name = "SUFFIX,...",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub allowed_domains: Vec<String>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_ORDERS_PER_HOUR",
        value_name = "N",
        help = help_with_default("Cap on new orders for routed hosts per hour", defaults::ORDERS_PER_HOUR)
    )]
    pub orders_per_hour: Option<u32>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_UNROUTED_GRACE",
        value_parser = parse_duration,
        help = help_with_default(
            "How long a host no longer routed keeps being renewed",
            format_duration(defaults::UNROUTED_GRACE),
        )
    )]
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub unrouted_grace: Option<Duration>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_SOURCES",
        value_enum,
        value_delimiter = ',',
        value_name = "consul|nomad|consul,nomad",
        help = help_with_default(
            "Registries whose service tags --follow-routes reads: consul, nomad or consul,nomad",
            "consul",
        )
    )]
    #[serde(default)]
    pub sources: Vec<RouteSource>,

    #[arg(
        long,
        env = "NOMAD_ADDR",
        value_name = "URL",
        help = help_with_default(
            "Nomad's HTTP API (with --sources nomad): http://host:port, https://host:port or unix:///path",
            defaults::NOMAD_ADDR,
        )
    )]
    pub nomad_addr: Option<String>,

    /// File holding the Nomad ACL token (wins over NOMAD_TOKEN), with --sources nomad.
    #[arg(long, env = "ENVOY_ACME_SDS_NOMAD_TOKEN_FILE")]
    pub nomad_token_file: Option<PathBuf>,

    #[arg(
        long,
        env = "NOMAD_NAMESPACE",
        value_delimiter = ',',
        value_name = "NAMESPACE,...",
        help = help_with_default(
            "Nomad namespaces whose services are read (with --sources nomad), or `*` alone: \
             every namespace the token can read, one that vanishes from the listing read \
             directly before its routes go",
            defaults::NOMAD_NAMESPACE,
        )
    )]
    #[serde(default)]
    pub nomad_namespace: Vec<String>,

    /// The file's `[[certificate]]` tables.
    #[arg(skip)]
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertificateFile>,
}

impl Layer {
    /// These settings, with what they leave unset taken from `fallback`.
    /// Certificates add up, this layer's first; e-mail contacts are a list
    /// that replaces the fallback's as a whole.
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        // Destructured without `..`: a new field does not compile until it
        // says how it merges.
        let Self {
            config,
            acme_directory,
            email,
            mut certs,
            acme_profile,
            key_type,
            acme_ca_file,
            eab_kid,
            eab_hmac_key_file,
            challenge,
            rfc2136,
            http01_listen,
            exec_hook,
            storage,
            consul,
            lock_delay,
            session_ttl,
            instance_name,
            validation_context_secret,
            sds,
            admin,
            log_format,
            shutdown_grace,
            follow_routes,
            tag_prefix,
            allowed_domains,
            orders_per_hour,
            unrouted_grace,
            sources,
            nomad_addr,
            nomad_token_file,
            nomad_namespace,
            mut certificates,
        } = self;
        certs.extend(fallback.certs);
        certificates.extend(fallback.certificates);
        Self {
            config: config.or(fallback.config),
            acme_directory: acme_directory.or(fallback.acme_directory),
            email: if email.is_empty() {
                fallback.email
            } else {
                email
            },
            certs,
            acme_profile: acme_profile.or(fallback.acme_profile),
            key_type: key_type.or(fallback.key_type),
            acme_ca_file: acme_ca_file.or(fallback.acme_ca_file),
            eab_kid: eab_kid.or(fallback.eab_kid),
            eab_hmac_key_file: eab_hmac_key_file.or(fallback.eab_hmac_key_file),
            challenge: challenge.or(fallback.challenge),
            rfc2136: rfc2136.or(fallback.rfc2136),
            http01_listen: http01_listen.or(fallback.http01_listen),
            exec_hook: exec_hook.or(fallback.exec_hook),
            storage: storage.or(fallback.storage),
            consul: consul.or(fallback.consul),
            lock_delay: lock_delay.or(fallback.lock_delay),
            session_ttl: session_ttl.or(fallback.session_ttl),
            instance_name: instance_name.or(fallback.instance_name),
            validation_context_secret: validation_context_secret
                .or(fallback.validation_context_secret),
            sds: sds.or(fallback.sds),
            admin: admin.or(fallback.admin),
            log_format: log_format.or(fallback.log_format),
            shutdown_grace: shutdown_grace.or(fallback.shutdown_grace),
            // A flag can only say yes; either layer saying it is enough.
            follow_routes: follow_routes || fallback.follow_routes,
            tag_prefix: tag_prefix.or(fallback.tag_prefix),
            // A list replaces the fallback's as a whole, as `email` does.
            allowed_domains: if allowed_domains.is_empty() {
                fallback.allowed_domains
            } else {
                allowed_domains
            },
            orders_per_hour: orders_per_hour.or(fallback.orders_per_hour),
            unrouted_grace: unrouted_grace.or(fallback.unrouted_grace),
            // Lists replace the fallback's as a whole, as `email` does.
            sources: if sources.is_empty() {
                fallback.sources
            } else {
                sources
            },
            nomad_addr: nomad_addr.or(fallback.nomad_addr),
            nomad_token_file: nomad_token_file.or(fallback.nomad_token_file),
            nomad_namespace: if nomad_namespace.is_empty() {
                fallback.nomad_namespace
            } else {
                nomad_namespace
            },
            certificates,
        }
    }
}

/// RFC 2136 (dynamic DNS update) settings: flat flags on the command line,
/// the `[rfc2136]` table in the file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Layer {
    /// DNS server accepting RFC 2136 updates (host:port), for dns-01.
    #[arg(long, env = "ENVOY_ACME_SDS_RFC2136_SERVER")]
    #[serde(rename = "server")]
    pub rfc2136_server: Option<SocketAddr>,

    #[arg(
        long,
        env = "ENVOY_ACME_SDS_RFC2136_ZONE",
        help = help_with_default("Zone to update", "each certificate's shortest name")
    )]
    #[serde(rename = "zone")]
    pub rfc2136_zone: Option<String>,

    /// TSIG key: `key "name" { algorithm ...; secret "..."; };` or `name:algorithm:secret`.
    #[arg(long, env = "ENVOY_ACME_SDS_TSIG_KEY_FILE")]
    pub tsig_key_file: Option<PathBuf>,
}

impl Rfc2136Layer {
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        Self {
            rfc2136_server: self.rfc2136_server.or(fallback.rfc2136_server),
            rfc2136_zone: self.rfc2136_zone.or(fallback.rfc2136_zone),
            tsig_key_file: self.tsig_key_file.or(fallback.tsig_key_file),
        }
    }
}

/// Where certificates are stored; shared by the service and `renew`.
#[derive(Debug, Clone, Default, Args, Deserialize)]
pub struct StorageArgs {
    /// Where certificates live: disk:<dir> or consul:<kv-prefix>.
    #[arg(
        long,
        env = "ENVOY_ACME_SDS_STORAGE",
        value_name = "disk:DIR|consul:PREFIX"
    )]
    // Text until resolution, whose error names `--storage`.
    pub storage: Option<String>,
    /// Encrypt private keys at rest with this key (32 bytes: raw, base64 or hex). No default; required with consul: storage unless --allow-plaintext-keys.
    #[arg(long, env = "ENVOY_ACME_SDS_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// The key before a rotation: what it sealed stays readable and is resealed with --encryption-key-file at start.
    #[arg(long, env = "ENVOY_ACME_SDS_PREVIOUS_ENCRYPTION_KEY_FILE")]
    pub previous_encryption_key_file: Option<PathBuf>,
    /// Store private keys in Consul KV in plaintext, readable by anyone with KV read on the prefix.
    #[arg(long, env = "ENVOY_ACME_SDS_ALLOW_PLAINTEXT_KEYS")]
    #[serde(default)]
    pub allow_plaintext_keys: bool,
}

impl StorageArgs {
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        Self {
            storage: self.storage.or(fallback.storage),
            encryption_key_file: self.encryption_key_file.or(fallback.encryption_key_file),
            previous_encryption_key_file: self
                .previous_encryption_key_file
                .or(fallback.previous_encryption_key_file),
            // A flag can only say yes; either layer saying it is enough.
            allow_plaintext_keys: self.allow_plaintext_keys || fallback.allow_plaintext_keys,
        }
    }
}

/// One `[[certificate]]` table of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub name: Option<String>,
    pub domains: Vec<String>,
    #[serde(default, deserialize_with = "from_text")]
    pub key_type: Option<KeyType>,
    pub profile: Option<String>,
    pub validation_context_secret: Option<String>,
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
pub enum ChallengeArg {
    #[default]
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

/// A registry whose service tags `--follow-routes` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSource {
    Consul,
    Nomad,
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Consul => "consul",
            Self::Nomad => "nomad",
        })
    }
}

/// The names of the SDS listener flags.
#[derive(Debug, Clone, Copy)]
pub struct SdsListener;

impl ServerFlags for SdsListener {
    const LISTEN: Flag = Flag {
        long: "sds-listen",
        env: "ENVOY_ACME_SDS_SDS_LISTEN",
        value_name: "SDS_LISTEN",
        help: "SDS listener: host:port or unix:/path",
    };
    const DEFAULT_LISTEN: SocketAddr = defaults::SDS_LISTEN;
    const TLS_CERT: Flag = Flag {
        long: "sds-tls-cert",
        env: "ENVOY_ACME_SDS_SDS_TLS_CERT",
        value_name: "SDS_TLS_CERT",
        help: "Serve SDS over TLS with this certificate chain (PEM)",
    };
    const TLS_KEY: Flag = Flag {
        long: "sds-tls-key",
        env: "ENVOY_ACME_SDS_SDS_TLS_KEY",
        value_name: "SDS_TLS_KEY",
        help: "Private key (PEM) of --sds-tls-cert",
    };
    const TLS_CLIENT_CA: Flag = Flag {
        long: "sds-client-ca",
        env: "ENVOY_ACME_SDS_SDS_CLIENT_CA",
        value_name: "SDS_CLIENT_CA",
        help: "Require Envoy client certificates signed by this CA (mTLS)",
    };
    const FILE_KEYS: &'static [&'static str] = &["sds_listen"];
}

/// The name of the admin listener flag.
#[derive(Debug, Clone, Copy)]
pub struct AdminListener;

impl AdminFlags for AdminListener {
    const LISTEN: Flag = Flag {
        long: "admin-listen",
        env: "ENVOY_ACME_SDS_ADMIN_LISTEN",
        value_name: "ADMIN_LISTEN",
        help: "Admin listener: /metrics, /healthz, /readyz, /debug/certificates",
    };
    const DEFAULT_LISTEN: SocketAddr = defaults::ADMIN_LISTEN;
    const FILE_KEYS: &'static [&'static str] = &["admin_listen"];
}

fn parse_key_type(text: &str) -> Result<KeyType, String> {
    KeyType::from_str(text).map_err(|e| e.to_string())
}

/// A file value read by the type's `FromStr`, as its flag is.
fn from_text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(de::Error::custom)
}

/// How `--help` spells a value of `T`.
fn value_name<T: ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_default()
}

//! Configuration: command-line flags (each also an `ENVOY_ACME_SDS_*`
//! environment variable; the Consul connection flags read the `consul` CLI's
//! `CONSUL_*` variables, shared with consul-eds-server) and an optional TOML
//! file for many certificates, resolved once at start into [`Settings`].
//!
//! One type, [`Layer`], is both the flag set and the file's schema, so a
//! setting is parsed the same way wherever it is written. Precedence: a flag
//! (or its variable) wins over the file, the file over the defaults
//! ([`defaults`]); [`Layer::or`] is the one merge. Certificates add up: those
//! of `--cert` and those of the file's `[[certificate]]` tables (none at all
//! only with `--follow-routes`). Rules across settings (wildcards need
//! dns-01, secret names are unique, `--follow-routes` needs
//! `--allowed-domains`, ...) live in
//! [`rules`]. Every error names the flag or the field.
//!
//! ```toml
//! acme_directory = "https://acme-v02.api.letsencrypt.org/directory"
//! email = "ops@example.com"
//! challenge = "dns-01"
//! storage = "consul:envoy-acme-sds"
//!
//! # Certificates for the TLS hosts service tags route (optional)
//! follow_routes = true
//! allowed_domains = ["example.com"]      # required with follow_routes
//! tag_prefix = "edge"
//! orders_per_hour = 20
//! unrouted_grace = "168h"                # a week
//! sources = ["consul", "nomad"]          # whose service tags are read; default ["consul"]
//! nomad_addr = "http://127.0.0.1:4646"
//! nomad_namespace = ["default"]
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

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use service_support::consul::ConsulArgs;
pub use service_support::duration::parse_duration;

use crate::challenge::tsig_file::TsigFileError;
use crate::store::SecretName;
use crate::store::encryption::EncryptionError;

pub mod defaults;
mod file;
mod layer;
mod resolve;
pub mod rules;
mod settings;

pub use layer::{
    AdminListener, CertificateFile, ChallengeArg, Layer, Rfc2136Layer, RouteSource, SdsListener,
    StorageArgs,
};
pub use resolve::resolve_storage;
pub use settings::{
    CertificateSettings, ChallengeSettings, NomadRoutes, RoutesSettings, Settings, StorageLocation,
    StorageSettings,
};

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
    #[error("--previous-encryption-key-file: {0}")]
    PreviousEncryption(#[source] EncryptionError),
    #[error("Consul client: {0}")]
    Consul(#[from] consul_client::ConfigError),
    #[error("Nomad client: {0}")]
    Nomad(#[from] nomad_client::ConfigError),
    #[error(transparent)]
    Listener(#[from] service_support::listener::ListenerError),
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
    pub run: Layer,
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
    /// Used with consul:<kv-prefix> storage only.
    #[command(flatten)]
    pub consul: ConsulArgs,
}

impl RenewArgs {
    pub fn resolve(&self) -> Result<(StorageSettings, Vec<SecretName>), ConfigError> {
        let file = match &self.config {
            Some(path) => Layer::read_file(path)?,
            None => Layer::default(),
        };
        let storage = resolve_storage(
            self.storage.clone().or(file.storage),
            self.consul.clone().or(file.consul),
        )?;
        let names = self
            .certs
            .iter()
            .map(|name| SecretName::new(name.clone()).map_err(|e| invalid("--cert", e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok((storage, names))
    }
}

#[cfg(test)]
mod tests;

//! The Consul connection flags both services take, with the variables the
//! `consul` CLI reads, so an operator sets them once for every tool.

use std::path::PathBuf;

use clap::Args;
use consul_client::config::{Address, Token};
use consul_client::{ClientConfig, ConfigError};
use serde::Deserialize;

/// Where the Consul agent is and how to authenticate to it.
///
/// Every field is optional so that a caller can fill gaps from elsewhere
/// (envoy-acme-sds's config file, see [`ConsulArgs::or`]) before
/// [`ConsulArgs::client_config`] applies the defaults.
///
/// It is also the `consul_*` keys of a config file, less the token: secrets
/// stay out of config files (`consul_token_file` names where one is).
#[derive(Clone, Default, PartialEq, Eq, Args, Deserialize)]
// Without these, clap makes this doc comment the about text of whichever
// command flattens the struct.
#[command(about = None, long_about = None)]
pub struct ConsulArgs {
    /// Consul agent: http://host:port, https://host:port or unix:///path [default: http://127.0.0.1:8500].
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    pub consul_addr: Option<String>,

    /// Consul ACL token (prefer --consul-token-file: a flag shows in `ps`).
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub consul_token: Option<String>,

    /// File holding the Consul ACL token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE", conflicts_with = "consul_token")]
    pub consul_token_file: Option<PathBuf>,

    /// CA certificate (PEM) to verify an https:// Consul address.
    #[arg(long, env = "CONSUL_CACERT")]
    pub consul_cacert: Option<PathBuf>,

    /// Client certificate (PEM) for Consul's verify_incoming.
    #[arg(long, env = "CONSUL_CLIENT_CERT", requires = "consul_client_key")]
    pub consul_client_cert: Option<PathBuf>,

    /// Client key (PEM) for --consul-client-cert.
    #[arg(long, env = "CONSUL_CLIENT_KEY", requires = "consul_client_cert")]
    pub consul_client_key: Option<PathBuf>,
}

// By hand, so that no `{:?}` of the flags can print the token.
impl std::fmt::Debug for ConsulArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulArgs")
            .field("consul_addr", &self.consul_addr)
            .field(
                "consul_token",
                &self.consul_token.as_ref().map(|_| "<redacted>"),
            )
            .field("consul_token_file", &self.consul_token_file)
            .field("consul_cacert", &self.consul_cacert)
            .field("consul_client_cert", &self.consul_client_cert)
            .field("consul_client_key", &self.consul_client_key)
            .finish()
    }
}

/// The agent address when none is given, as for the `consul` CLI.
pub const DEFAULT_CONSUL_ADDR: &str = "http://127.0.0.1:8500";

impl ConsulArgs {
    /// These settings, with what they leave unset taken from `fallback`.
    /// A token given here (either way) wins over both of `fallback`'s, so a
    /// flag never combines with a file's token source.
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        let has_token = self.consul_token.is_some() || self.consul_token_file.is_some();
        let has_client_identity = self.consul_client_cert.is_some();
        Self {
            consul_addr: self.consul_addr.or(fallback.consul_addr),
            consul_token: if has_token {
                self.consul_token
            } else {
                fallback.consul_token
            },
            consul_token_file: if has_token {
                self.consul_token_file
            } else {
                fallback.consul_token_file
            },
            consul_cacert: self.consul_cacert.or(fallback.consul_cacert),
            consul_client_cert: if has_client_identity {
                self.consul_client_cert
            } else {
                fallback.consul_client_cert
            },
            consul_client_key: if has_client_identity {
                self.consul_client_key
            } else {
                fallback.consul_client_key
            },
        }
    }

    /// The address in effect.
    pub fn address(&self) -> &str {
        self.consul_addr.as_deref().unwrap_or(DEFAULT_CONSUL_ADDR)
    }

    /// A client configuration: the address parsed, the token read from its
    /// file, TLS files named (read when the client is built).
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let address: Address = self.address().parse()?;
        let mut config = ClientConfig::new(address);
        config.token = match (&self.consul_token, &self.consul_token_file) {
            (Some(secret), _) => Some(Token::new(secret.clone())?),
            (None, Some(path)) => Some(Token::from_file(path)?),
            (None, None) => None,
        };
        config.tls.ca_cert = self.consul_cacert.clone();
        config.tls.client_cert = self.consul_client_cert.clone();
        config.tls.client_key = self.consul_client_key.clone();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        consul: ConsulArgs,
    }

    #[test]
    fn defaults_to_the_local_agent_without_a_token() {
        let cli = Cli::try_parse_from(["test"]).expect("parses");
        let config = cli.consul.client_config().expect("config");
        assert_eq!(cli.consul.address(), DEFAULT_CONSUL_ADDR);
        assert!(config.token.is_none());
    }

    #[test]
    fn token_file_is_read_and_never_shown() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "s3cr3t-token").expect("write");
        let cli = Cli::try_parse_from([
            "test",
            "--consul-token-file",
            file.path().to_str().expect("utf8"),
        ])
        .expect("parses");
        let config = cli.consul.client_config().expect("config");
        assert!(config.token.is_some());
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let args = ConsulArgs {
            consul_token: Some("s3cr3t-token".to_owned()),
            ..ConsulArgs::default()
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("consul_token"), "{shown}");
    }

    #[test]
    fn bad_input_names_the_fault() {
        let error =
            Cli::try_parse_from(["test", "--consul-token", "a", "--consul-token-file", "f"])
                .expect_err("conflict");
        assert!(error.to_string().contains("--consul-token"), "{error}");
        let error = Cli::try_parse_from(["test", "--consul-client-cert", "c.pem"])
            .expect_err("key missing");
        assert!(error.to_string().contains("--consul-client-key"), "{error}");
        let args = ConsulArgs {
            consul_addr: Some("ftp://consul:8500".to_owned()),
            ..ConsulArgs::default()
        };
        let error = args.client_config().expect_err("bad scheme");
        assert!(error.to_string().contains("ftp://consul:8500"), "{error}");
        let args = ConsulArgs {
            consul_token_file: Some("/nonexistent/token".into()),
            ..ConsulArgs::default()
        };
        let error = args.client_config().expect_err("no token file");
        assert!(error.to_string().contains("/nonexistent/token"), "{error}");
    }

    #[test]
    fn fallback_fills_gaps_but_never_mixes_token_sources() {
        let flags = ConsulArgs {
            consul_token: Some("from-flag".to_owned()),
            ..ConsulArgs::default()
        };
        let file = ConsulArgs {
            consul_addr: Some("https://consul:8501".to_owned()),
            consul_token_file: Some("/etc/token".into()),
            consul_cacert: Some("/etc/ca.pem".into()),
            ..ConsulArgs::default()
        };
        let merged = flags.or(file.clone());
        assert_eq!(merged.address(), "https://consul:8501");
        assert_eq!(merged.consul_token.as_deref(), Some("from-flag"));
        assert_eq!(merged.consul_token_file, None);
        assert_eq!(merged.consul_cacert, file.consul_cacert);
        assert_eq!(ConsulArgs::default().or(file.clone()), file);
    }
}

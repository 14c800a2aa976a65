//! What a [`Client`](crate::Client) connects to and how, including the
//! environment variables Consul's own CLI reads, so an operator configures
//! this client exactly as they configure `consul`.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use blocking_query::{Address, Token};
use blocking_query::{AddressError, TlsConfig, TlsError, TokenError};
use http::uri::Authority;

/// `CONSUL_HTTP_ADDR`: `host:port`, `http://…`, `https://…` or `unix:///path`.
pub const ENV_HTTP_ADDR: &str = "CONSUL_HTTP_ADDR";
/// `CONSUL_HTTP_TOKEN`: the ACL token itself.
pub const ENV_HTTP_TOKEN: &str = "CONSUL_HTTP_TOKEN";
/// `CONSUL_HTTP_TOKEN_FILE`: a file holding the ACL token; wins over `CONSUL_HTTP_TOKEN`.
pub const ENV_HTTP_TOKEN_FILE: &str = "CONSUL_HTTP_TOKEN_FILE";
/// `CONSUL_HTTP_SSL`: `true` makes a scheme-less address `https`.
pub const ENV_HTTP_SSL: &str = "CONSUL_HTTP_SSL";
/// `CONSUL_HTTP_SSL_VERIFY`: `false` is refused (see [`ConfigError::InsecureTls`]).
pub const ENV_HTTP_SSL_VERIFY: &str = "CONSUL_HTTP_SSL_VERIFY";
pub const ENV_CACERT: &str = "CONSUL_CACERT";
pub const ENV_CAPATH: &str = "CONSUL_CAPATH";
pub const ENV_CLIENT_CERT: &str = "CONSUL_CLIENT_CERT";
pub const ENV_CLIENT_KEY: &str = "CONSUL_CLIENT_KEY";
pub const ENV_TLS_SERVER_NAME: &str = "CONSUL_TLS_SERVER_NAME";

/// Consul's CLI default.
const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid Consul address `{address}`: {reason}")]
    InvalidAddress { address: String, reason: String },

    #[error("reading the Consul token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The token's text is deliberately not part of the message.
    #[error("the Consul ACL token cannot be sent as an HTTP header: {reason}")]
    InvalidToken { reason: String },

    #[error("invalid {name}=`{value}`: {reason}")]
    InvalidEnv {
        name: &'static str,
        value: String,
        reason: String,
    },

    #[error(
        "{ENV_HTTP_SSL_VERIFY}=false is not supported: give the server's CA with {ENV_CACERT} instead"
    )]
    InsecureTls,

    #[error("{name} must be at least 1")]
    ZeroLimit { name: &'static str },

    #[error("TLS ({ENV_CACERT}, {ENV_CAPATH}, {ENV_CLIENT_CERT}, {ENV_CLIENT_KEY}): {0}")]
    Tls(#[from] TlsError),
}

impl From<AddressError> for ConfigError {
    fn from(error: AddressError) -> Self {
        Self::InvalidAddress {
            address: error.address,
            reason: error.reason,
        }
    }
}

impl From<TokenError> for ConfigError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::File { path, source } => Self::TokenFile { path, source },
            TokenError::Invalid { reason } => Self::InvalidToken { reason },
            other => Self::InvalidToken {
                reason: other.to_string(),
            },
        }
    }
}

/// Everything a [`Client`](crate::Client) needs. `Debug` never shows the token.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub address: Address,
    pub token: Option<Token>,
    /// Sent as `?dc=` on every request unless a call names another.
    pub datacenter: Option<String>,
    /// Used for `https` addresses only.
    pub tls: TlsConfig,
    /// Blocking queries held open against the agent at once; the rest queue
    /// in FIFO order. Consul allows each client IP `http_max_conns_per_client`
    /// (200) connections and every in-flight blocking query over HTTP/1 holds
    /// one.
    pub max_blocking_queries: usize,
    /// Other (quick) requests in flight at once. A separate budget, so reads
    /// and writes never wait behind watches.
    pub max_concurrent_requests: usize,
    /// Deadline of a non-blocking request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Added to a blocking query's `wait * 17/16` (Consul adds up to `wait/16`
    /// of jitter) to make its deadline.
    pub blocking_timeout_margin: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            address: Address::Http(Authority::from_static(DEFAULT_ADDRESS)),
            token: None,
            datacenter: None,
            tls: TlsConfig::default(),
            max_blocking_queries: 64,
            max_concurrent_requests: 32,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            blocking_timeout_margin: Duration::from_secs(5),
        }
    }
}

impl ClientConfig {
    /// Defaults for everything but the address.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            ..Self::default()
        }
    }

    /// Reads the `CONSUL_*` variables of Consul's CLI from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let https = match get(ENV_HTTP_SSL) {
            Some(value) => parse_go_bool(ENV_HTTP_SSL, &value)?,
            None => false,
        };
        if let Some(value) = get(ENV_HTTP_SSL_VERIFY)
            && !parse_go_bool(ENV_HTTP_SSL_VERIFY, &value)?
        {
            return Err(ConfigError::InsecureTls);
        }
        let address = Address::parse_with_default(
            get(ENV_HTTP_ADDR).as_deref().unwrap_or(DEFAULT_ADDRESS),
            https,
        )?;
        // Consul's CLI: a non-empty token file wins over the variable.
        let token = match get(ENV_HTTP_TOKEN_FILE) {
            Some(path) => Some(Token::from_file(Path::new(&path))?),
            None => get(ENV_HTTP_TOKEN)
                .map(Token::new)
                .transpose()
                .map_err(ConfigError::from)?,
        };
        let tls = TlsConfig {
            ca_cert: get(ENV_CACERT).map(PathBuf::from),
            ca_path: get(ENV_CAPATH).map(PathBuf::from),
            client_cert: get(ENV_CLIENT_CERT).map(PathBuf::from),
            client_key: get(ENV_CLIENT_KEY).map(PathBuf::from),
            server_name: get(ENV_TLS_SERVER_NAME),
        };
        Ok(Self {
            address,
            token,
            tls,
            ..Self::default()
        })
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_blocking_queries == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "max_blocking_queries",
            });
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "max_concurrent_requests",
            });
        }
        Ok(())
    }
}

/// Go's `strconv.ParseBool`, which Consul's CLI uses for its variables.
fn parse_go_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(ConfigError::InvalidEnv {
            name,
            value: other.to_owned(),
            reason: "expected true or false".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from_vars(vars: &[(&str, &str)]) -> Result<ClientConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ClientConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn environment_like_consuls_cli() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-file\n").expect("write token");

        let config = from_vars(&[
            (ENV_HTTP_ADDR, "consul.example:8501"),
            (ENV_HTTP_SSL, "true"),
            (ENV_HTTP_TOKEN, "from-env"),
            (
                ENV_HTTP_TOKEN_FILE,
                token_file.to_str().expect("utf-8 path"),
            ),
            (ENV_CACERT, "/etc/consul/ca.pem"),
            (ENV_CLIENT_CERT, "/etc/consul/cli.pem"),
            (ENV_CLIENT_KEY, "/etc/consul/cli-key.pem"),
            (ENV_TLS_SERVER_NAME, "server.dc1.consul"),
        ])
        .expect("valid environment");
        assert_eq!(
            config.address,
            Address::Https(Authority::from_static("consul.example:8501"))
        );
        assert_eq!(config.token, Some(Token::new("from-file").expect("token")));
        assert_eq!(
            config.tls.ca_cert,
            Some(PathBuf::from("/etc/consul/ca.pem"))
        );
        assert_eq!(
            config.tls.client_cert,
            Some(PathBuf::from("/etc/consul/cli.pem"))
        );
        assert_eq!(
            config.tls.client_key,
            Some(PathBuf::from("/etc/consul/cli-key.pem"))
        );
        assert_eq!(config.tls.server_name.as_deref(), Some("server.dc1.consul"));

        let config = from_vars(&[(ENV_HTTP_TOKEN, "from-env")]).expect("valid");
        assert_eq!(config.token, Some(Token::new("from-env").expect("token")));
        assert_eq!(config.address.to_string(), "http://127.0.0.1:8500");
    }

    #[test]
    fn environment_errors() {
        assert!(matches!(
            from_vars(&[(ENV_HTTP_SSL_VERIFY, "false")]),
            Err(ConfigError::InsecureTls)
        ));
        assert!(matches!(
            from_vars(&[(ENV_HTTP_SSL, "yes please")]),
            Err(ConfigError::InvalidEnv {
                name: ENV_HTTP_SSL,
                ..
            })
        ));
        assert!(matches!(
            from_vars(&[(ENV_HTTP_TOKEN_FILE, "/nonexistent/token")]),
            Err(ConfigError::TokenFile { .. })
        ));
    }

    #[test]
    fn token_never_shows_in_debug_or_errors() {
        let secret = "2f3a0c1e-secret-token";
        let config = ClientConfig {
            token: Some(Token::new(secret).expect("valid")),
            ..ClientConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");

        let error = Token::new("bad\ntoken-secret").expect_err("newline is rejected");
        assert!(!error.to_string().contains("token-secret"), "{error}");
    }
}

//! What a [`NomadClient`](crate::NomadClient) connects to and how, read
//! from the environment variables Nomad's own CLI reads, so an operator
//! configures this client exactly as they configure `nomad`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use blocking_query::{Address, AddressError, TlsConfig, TlsError, Token, TokenError};
use http::uri::Authority;

/// `NOMAD_ADDR`: `http://host:port`, `https://host:port` or `unix:///path`.
pub const ENV_ADDR: &str = "NOMAD_ADDR";
/// `NOMAD_TOKEN`: the ACL token's secret ID.
pub const ENV_TOKEN: &str = "NOMAD_TOKEN";
/// `NOMAD_REGION`: sent as `?region=`; the agent's own region when unset.
pub const ENV_REGION: &str = "NOMAD_REGION";
/// `NOMAD_NAMESPACE`: the namespace calls default to (`default` when unset).
pub const ENV_NAMESPACE: &str = "NOMAD_NAMESPACE";
pub const ENV_CACERT: &str = "NOMAD_CACERT";
pub const ENV_CAPATH: &str = "NOMAD_CAPATH";
pub const ENV_CLIENT_CERT: &str = "NOMAD_CLIENT_CERT";
pub const ENV_CLIENT_KEY: &str = "NOMAD_CLIENT_KEY";
pub const ENV_TLS_SERVER_NAME: &str = "NOMAD_TLS_SERVER_NAME";
/// `NOMAD_SKIP_VERIFY`: `true` is refused (see [`ConfigError::InsecureTls`]).
pub const ENV_SKIP_VERIFY: &str = "NOMAD_SKIP_VERIFY";

/// Nomad's CLI default, `http://127.0.0.1:4646`.
const DEFAULT_AUTHORITY: &str = "127.0.0.1:4646";
/// Nomad's namespace when none is named.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a configuration cannot be used. Each variant names the variable or
/// file at fault; none quotes a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{name}: {source}")]
    InvalidAddress {
        name: &'static str,
        #[source]
        source: AddressError,
    },

    #[error("invalid {name}=`{value}`: {reason}")]
    InvalidEnv {
        name: &'static str,
        value: String,
        reason: String,
    },

    #[error("reading the Nomad token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `origin` is the variable or the file the token came from; the
    /// token's text is deliberately not part of the message.
    #[error("the Nomad ACL token from {origin} cannot be sent as an HTTP header: {reason}")]
    InvalidToken { origin: String, reason: String },

    #[error(
        "{ENV_SKIP_VERIFY}=true is not supported: give the agent's CA with {ENV_CACERT} instead"
    )]
    InsecureTls,

    #[error(
        "a client certificate needs its key and a key its certificate: set both {ENV_CLIENT_CERT} and {ENV_CLIENT_KEY}"
    )]
    IncompleteClientIdentity,

    #[error("{name} must be at least 1")]
    ZeroLimit { name: &'static str },

    #[error("TLS ({ENV_CACERT}, {ENV_CAPATH}, {ENV_CLIENT_CERT}, {ENV_CLIENT_KEY}): {0}")]
    Tls(#[from] TlsError),
}

impl ConfigError {
    fn token(origin: String, error: TokenError) -> Self {
        match error {
            TokenError::File { path, source } => Self::TokenFile { path, source },
            TokenError::Invalid { reason } => Self::InvalidToken { origin, reason },
            other => Self::InvalidToken {
                origin,
                reason: other.to_string(),
            },
        }
    }
}

/// Everything a [`NomadClient`](crate::NomadClient) needs. `Debug` never
/// shows the token.
#[derive(Debug, Clone)]
pub struct NomadConfig {
    pub address: Address,
    /// Sent only as `X-Nomad-Token`.
    pub token: Option<Token>,
    /// `?region=` on every request; the agent's own region when `None`.
    pub region: Option<String>,
    /// The namespace [`NomadClient::namespace`](crate::NomadClient::namespace)
    /// reports, for callers that take it from the environment.
    pub namespace: String,
    /// Used for `https` addresses only.
    pub tls: TlsConfig,
    /// Blocking queries held open against the agent at once; the rest queue
    /// in FIFO order. Nomad allows each client IP
    /// `limits.http_max_conns_per_client` (100) connections, and every
    /// in-flight blocking query over HTTP/1 holds one.
    pub max_blocking_queries: usize,
    /// Other (quick) requests in flight at once; a separate budget.
    pub max_concurrent_requests: usize,
    /// Deadline of a non-blocking request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Added to a blocking query's `wait * 17/16` (Nomad adds up to
    /// `wait/16` of jitter) to make its deadline.
    pub blocking_timeout_margin: Duration,
}

impl Default for NomadConfig {
    fn default() -> Self {
        Self {
            address: Address::Http(Authority::from_static(DEFAULT_AUTHORITY)),
            token: None,
            region: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            tls: TlsConfig::default(),
            max_blocking_queries: 48,
            max_concurrent_requests: 16,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            blocking_timeout_margin: Duration::from_secs(5),
        }
    }
}

impl NomadConfig {
    /// Defaults for everything but the address.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            ..Self::default()
        }
    }

    /// Reads the `NOMAD_*` variables of Nomad's CLI from the process
    /// environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if let Some(value) = get(ENV_SKIP_VERIFY)
            && parse_go_bool(ENV_SKIP_VERIFY, &value)?
        {
            return Err(ConfigError::InsecureTls);
        }
        let address = match get(ENV_ADDR) {
            Some(raw) => raw.parse().map_err(|source| ConfigError::InvalidAddress {
                name: ENV_ADDR,
                source,
            })?,
            None => Self::default().address,
        };
        let token = get(ENV_TOKEN)
            .map(|secret| {
                Token::new(secret).map_err(|e| ConfigError::token(ENV_TOKEN.to_owned(), e))
            })
            .transpose()?;
        let tls = TlsConfig {
            ca_cert: get(ENV_CACERT).map(PathBuf::from),
            ca_path: get(ENV_CAPATH).map(PathBuf::from),
            client_cert: get(ENV_CLIENT_CERT).map(PathBuf::from),
            client_key: get(ENV_CLIENT_KEY).map(PathBuf::from),
            server_name: get(ENV_TLS_SERVER_NAME),
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(ConfigError::IncompleteClientIdentity);
        }
        Ok(Self {
            address,
            token,
            region: get(ENV_REGION),
            namespace: get(ENV_NAMESPACE).unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            tls,
            ..Self::default()
        })
    }

    /// Takes the token from `path` instead, as the service's
    /// `--nomad-token-file` flag asks: a file wins over `NOMAD_TOKEN`, as
    /// Consul's CLI lets its token file win over its token variable.
    pub fn with_token_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let token = Token::from_file(path)
            .map_err(|e| ConfigError::token(format!("the token file {}", path.display()), e))?;
        self.token = Some(token);
        Ok(self)
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
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(ConfigError::IncompleteClientIdentity);
        }
        Ok(())
    }
}

/// Go's `strconv.ParseBool`, which Nomad's CLI uses for its variables.
fn parse_go_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(ConfigError::InvalidEnv {
            name,
            value: other.to_owned(),
            reason: "expected true or false".to_owned(),
        }),
    }
}

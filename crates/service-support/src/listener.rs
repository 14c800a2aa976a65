//! The listener flags both services take: the gRPC server Envoy connects to
//! (xDS or SDS, optionally over TLS) and the admin HTTP server.
//!
//! The shape, the parsing and the reading of the TLS files are shared; each
//! service names its flags (`--xds-listen`, `--sds-listen`, their variables
//! and help) through [`ServerFlags`] and [`AdminFlags`], so its command line
//! stays the one its operators know. Like [`crate::consul::ConsulArgs`],
//! every value is optional, so a service with a config file can fill gaps
//! from it (see [`ServerArgs::or`]) before the defaults apply.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use serde::de::{self, Deserializer, MapAccess};
use xds_core::{Listen, TlsOptions};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("unix: needs a socket path, e.g. unix:/run/envoy/xds.sock")]
    EmptyUnixPath,
    #[error("`{0}` is neither host:port nor unix:/path")]
    NotAnAddress(String),
    #[error("{flag} {}: {source}", path.display())]
    ReadTlsFile {
        flag: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How one flag is spelled on the command line, in the environment and in `--help`.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// Without the leading `--`.
    pub long: &'static str,
    pub env: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
}

/// A service's names for its gRPC listener flags.
pub trait ServerFlags: Send + Sync + 'static {
    const LISTEN: Flag;
    /// Where the server listens when nothing says otherwise; shown in `--help`.
    const DEFAULT_LISTEN: SocketAddr;
    const TLS_CERT: Flag;
    const TLS_KEY: Flag;
    const TLS_CLIENT_CA: Flag;
    /// The listener's key in the service's config file: empty without a file,
    /// else the one key (TLS files are flags only).
    const FILE_KEYS: &'static [&'static str] = &[];
}

/// A service's names for its admin listener flag.
pub trait AdminFlags: Send + Sync + 'static {
    const LISTEN: Flag;
    /// Where the admin server listens when nothing says otherwise; shown in `--help`.
    const DEFAULT_LISTEN: SocketAddr;
    /// As [`ServerFlags::FILE_KEYS`].
    const FILE_KEYS: &'static [&'static str] = &[];
}

/// `help` with its default, the one way both services show defaults.
pub fn help_with_default(help: &str, default: impl fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// `host:port` or `unix:/path` (`unix:///path` too, as in a URL). An empty
/// socket path is refused: it would bind nothing an Envoy could reach.
pub fn parse_listen(text: &str) -> Result<Listen, ListenerError> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(ListenerError::EmptyUnixPath);
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    text.parse::<SocketAddr>()
        .map(Listen::Tcp)
        .map_err(|_| ListenerError::NotAnAddress(text.to_owned()))
}

/// The gRPC server's listener and TLS files.
#[derive(Debug, Clone, Args)]
// Without these, clap makes this doc comment the about text of whichever
// command flattens the struct.
#[command(about = None, long_about = None)]
pub struct ServerArgs<F: ServerFlags> {
    #[arg(
        long = F::LISTEN.long,
        env = F::LISTEN.env,
        value_name = F::LISTEN.value_name,
        help = help_with_default(F::LISTEN.help, F::DEFAULT_LISTEN),
        value_parser = parse_listen,
    )]
    pub listen: Option<Listen>,

    #[arg(
        long = F::TLS_CERT.long,
        env = F::TLS_CERT.env,
        value_name = F::TLS_CERT.value_name,
        help = F::TLS_CERT.help,
        requires = "tls_key",
    )]
    pub tls_cert: Option<PathBuf>,

    #[arg(
        long = F::TLS_KEY.long,
        env = F::TLS_KEY.env,
        value_name = F::TLS_KEY.value_name,
        help = F::TLS_KEY.help,
        requires = "tls_cert",
    )]
    pub tls_key: Option<PathBuf>,

    #[arg(
        long = F::TLS_CLIENT_CA.long,
        env = F::TLS_CLIENT_CA.env,
        value_name = F::TLS_CLIENT_CA.value_name,
        help = F::TLS_CLIENT_CA.help,
        requires = "tls_cert",
    )]
    pub tls_client_ca: Option<PathBuf>,

    #[arg(skip)]
    names: PhantomData<F>,
}

impl<F: ServerFlags> Default for ServerArgs<F> {
    fn default() -> Self {
        Self {
            listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            names: PhantomData,
        }
    }
}

impl<F: ServerFlags> ServerArgs<F> {
    /// These settings, with what they leave unset taken from `fallback`.
    /// The TLS files go as one: a certificate never pairs with another
    /// layer's key.
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        let (tls_cert, tls_key, tls_client_ca) = if self.tls_cert.is_some() {
            (self.tls_cert, self.tls_key, self.tls_client_ca)
        } else {
            (fallback.tls_cert, fallback.tls_key, fallback.tls_client_ca)
        };
        Self {
            listen: self.listen.or(fallback.listen),
            tls_cert,
            tls_key,
            tls_client_ca,
            names: PhantomData,
        }
    }

    /// The listener in effect.
    pub fn listen(&self) -> Listen {
        self.listen
            .clone()
            .unwrap_or(Listen::Tcp(F::DEFAULT_LISTEN))
    }

    /// The TLS files read, or `None` for plaintext. Errors name the flag.
    pub fn tls_options(&self) -> Result<Option<TlsOptions>, ListenerError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(TlsOptions {
            certificate_chain_pem: read_tls_file(F::TLS_CERT, cert)?,
            private_key_pem: read_tls_file(F::TLS_KEY, key)?,
            client_ca_pem: self
                .tls_client_ca
                .as_deref()
                .map(|path| read_tls_file(F::TLS_CLIENT_CA, path))
                .transpose()?,
        }))
    }
}

/// The admin HTTP server's listener.
#[derive(Debug, Clone, Args)]
#[command(about = None, long_about = None)]
pub struct AdminArgs<F: AdminFlags> {
    #[arg(
        long = F::LISTEN.long,
        env = F::LISTEN.env,
        value_name = F::LISTEN.value_name,
        help = help_with_default(F::LISTEN.help, F::DEFAULT_LISTEN),
    )]
    pub admin_listen: Option<SocketAddr>,

    #[arg(skip)]
    names: PhantomData<F>,
}

impl<F: AdminFlags> Default for AdminArgs<F> {
    fn default() -> Self {
        Self {
            admin_listen: None,
            names: PhantomData,
        }
    }
}

impl<F: AdminFlags> AdminArgs<F> {
    /// These settings, with what they leave unset taken from `fallback`.
    #[must_use]
    pub fn or(self, fallback: Self) -> Self {
        Self {
            admin_listen: self.admin_listen.or(fallback.admin_listen),
            names: PhantomData,
        }
    }

    /// The listener in effect.
    pub fn listen(&self) -> SocketAddr {
        self.admin_listen.unwrap_or(F::DEFAULT_LISTEN)
    }
}

fn read_tls_file(flag: Flag, path: &Path) -> Result<String, ListenerError> {
    std::fs::read_to_string(path).map_err(|source| ListenerError::ReadTlsFile {
        flag: format!("--{}", flag.long),
        path: path.to_path_buf(),
        source,
    })
}

// The config file side: a hand-written `Deserialize`, because the file key
// is the service's (`sds_listen`) and serde's field names must be literals.
// `deserialize_struct` with the key list matters: a flattening parent then
// takes the key off its unknown-field check.

impl<'de, F: ServerFlags> serde::Deserialize<'de> for ServerArgs<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let listen = deserialize_one_key(deserializer, F::FILE_KEYS, |text| {
            parse_listen(text).map_err(|e| e.to_string())
        })?;
        Ok(Self {
            listen,
            ..Self::default()
        })
    }
}

impl<'de, F: AdminFlags> serde::Deserialize<'de> for AdminArgs<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let admin_listen = deserialize_one_key(deserializer, F::FILE_KEYS, |text| {
            SocketAddr::from_str(text).map_err(|_| format!("`{text}` is not host:port"))
        })?;
        Ok(Self {
            admin_listen,
            ..Self::default()
        })
    }
}

/// A struct of at most one key, its text value parsed by `parse`; an error
/// names the key, since a flattening parent cannot.
fn deserialize_one_key<'de, D, T>(
    deserializer: D,
    keys: &'static [&'static str],
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct OneKey<T> {
        keys: &'static [&'static str],
        parse: fn(&str) -> Result<T, String>,
    }

    impl<'de, T> de::Visitor<'de> for OneKey<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a table with the keys {:?}", self.keys)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut value = None;
            while let Some(key) = map.next_key::<String>()? {
                if !self.keys.contains(&key.as_str()) {
                    return Err(de::Error::unknown_field(&key, self.keys));
                }
                let text: String = map
                    .next_value()
                    .map_err(|e| de::Error::custom(format!("{key}: {e}")))?;
                value = Some(
                    (self.parse)(&text).map_err(|e| de::Error::custom(format!("{key}: {e}")))?,
                );
            }
            Ok(value)
        }
    }

    deserializer.deserialize_struct("listener", keys, OneKey { keys, parse })
}

#[cfg(test)]
mod tests;

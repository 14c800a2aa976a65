//! Where an agent listens, in the forms Consul's and Nomad's CLIs accept.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use http::uri::Authority;

/// Why an address cannot be used; the clients wrap it in their own
/// configuration errors, which name the variable it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address `{address}`: {reason}")]
pub struct AddressError {
    pub address: String,
    pub reason: String,
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Http(Authority),
    Https(Authority),
    /// A Unix domain socket (Consul's `addresses { http = "unix:///…" }`,
    /// Nomad's `unix://` addresses).
    Unix(PathBuf),
}

impl Address {
    /// Parses `raw`, taking a scheme-less `host:port` as `https` when
    /// `default_https` (Consul's `CONSUL_HTTP_SSL=true`), else `http`.
    pub fn parse_with_default(raw: &str, default_https: bool) -> Result<Self, AddressError> {
        let invalid = |reason: &str| AddressError {
            address: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = raw.trim();
        if let Some(path) = trimmed.strip_prefix("unix://") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(invalid(
                    "a unix socket needs an absolute path: unix:///path",
                ));
            }
            return Ok(Self::Unix(path.to_path_buf()));
        }
        let (https, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (false, rest)
        } else if trimmed.contains("://") {
            return Err(invalid("the scheme must be http, https or unix"));
        } else {
            (default_https, trimmed)
        };
        // The API lives under /v1 at the root; a path would be silently lost.
        let authority_text = rest.strip_suffix('/').unwrap_or(rest);
        if authority_text.is_empty() {
            return Err(invalid("no host"));
        }
        if authority_text.contains('/') || authority_text.contains('?') {
            return Err(invalid("expected host:port with no path"));
        }
        let authority = Authority::from_str(authority_text).map_err(|e| invalid(&e.to_string()))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "credentials in the address are not supported; use a token",
            ));
        }
        Ok(if https {
            Self::Https(authority)
        } else {
            Self::Http(authority)
        })
    }

    /// The base URL of the API: `http://authority/`, `https://authority/`
    /// or, for a Unix socket, `http://localhost/` (the connector ignores
    /// the authority).
    pub fn base_url(&self) -> String {
        match self {
            Self::Http(authority) => format!("http://{authority}/"),
            Self::Https(authority) => format!("https://{authority}/"),
            Self::Unix(_) => "http://localhost/".to_owned(),
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse_with_default(raw, false)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(authority) => write!(f, "http://{authority}"),
            Self::Https(authority) => write!(f, "https://{authority}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        assert_eq!(
            "127.0.0.1:8500".parse::<Address>().expect("valid"),
            Address::Http(Authority::from_static("127.0.0.1:8500"))
        );
        assert_eq!(
            "https://consul.service:8501/"
                .parse::<Address>()
                .expect("valid"),
            Address::Https(Authority::from_static("consul.service:8501"))
        );
        assert_eq!(
            "unix:///run/consul/http.sock"
                .parse::<Address>()
                .expect("valid"),
            Address::Unix(PathBuf::from("/run/consul/http.sock"))
        );
        assert_eq!(
            Address::parse_with_default("10.0.0.1:8501", true).expect("valid"),
            Address::Https(Authority::from_static("10.0.0.1:8501"))
        );
        for bad in [
            "ftp://h:1",
            "http://",
            "http://h:8500/v1",
            "unix://relative.sock",
            "http://user:pw@h:1",
        ] {
            let error = bad.parse::<Address>().expect_err(bad);
            assert_eq!(error.address, bad, "the error names the address");
        }
    }

    #[test]
    fn base_urls_end_in_a_slash_for_v1_to_follow() {
        let urls: Vec<String> = ["10.0.0.1:4646", "https://nomad:4646", "unix:///run/n.sock"]
            .iter()
            .map(|raw| raw.parse::<Address>().expect("valid").base_url())
            .collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.1:4646/",
                "https://nomad:4646/",
                "http://localhost/"
            ]
        );
    }
}

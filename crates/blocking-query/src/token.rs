//! An ACL token: a secret that only ever travels in a request header.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a token cannot be used. Never quotes the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("reading the token file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token's text is deliberately not part of the message.
    #[error("the ACL token cannot be sent as an HTTP header: {reason}")]
    Invalid { reason: String },
}

/// An ACL token (Consul's `X-Consul-Token`, Nomad's `X-Nomad-Token`). Its
/// `Debug` is redacted and it has no `Display`, so it cannot end up in a log
/// line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Surrounding whitespace is dropped (token files end with a newline).
    pub fn new(secret: impl Into<String>) -> Result<Self, TokenError> {
        let secret = secret.into().trim().to_owned();
        if secret.is_empty() {
            return Err(TokenError::Invalid {
                reason: "it is empty".to_owned(),
            });
        }
        http::HeaderValue::from_str(&secret).map_err(|_| not_a_header())?;
        Ok(Self(secret))
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(text)
    }

    /// The header value, marked sensitive so HTTP/2's HPACK never indexes
    /// it and `HeaderValue`'s own `Debug` hides it.
    pub fn header_value(&self) -> Result<http::HeaderValue, TokenError> {
        let mut value = http::HeaderValue::from_str(&self.0).map_err(|_| not_a_header())?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn not_a_header() -> TokenError {
    TokenError::Invalid {
        reason: "it contains control or non-ASCII characters".to_owned(),
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows_in_debug_or_errors() {
        let token = Token::new(" 2f3a0c1e-secret\n").expect("valid");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        let header = token.header_value().expect("a header");
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().expect("ascii"), "2f3a0c1e-secret");

        let error = Token::new("bad\ntoken-secret").expect_err("newline is rejected");
        assert!(!error.to_string().contains("token-secret"), "{error}");
        assert!(matches!(Token::new("  "), Err(TokenError::Invalid { .. })));
    }

    #[test]
    fn a_missing_token_file_is_named() {
        let error = Token::from_file(Path::new("/nonexistent/token")).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/token"), "{error}");
    }
}

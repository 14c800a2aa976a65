//! The one error type of every request this crate makes.
//!
//! Variants tell apart what a caller reacts to differently: an ACL refusal
//! (fix the token), a missing object, another HTTP status, no answer in
//! time, a broken connection, and an answer that is not what Nomad
//! documents. Every variant names the endpoint (`METHOD /path`, never the
//! query string) so a log line alone says which call failed; the token is
//! never part of either.

use std::time::Duration;

/// Why a request to Nomad failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// HTTP 403 (`Permission denied`, `ACL token not found`): the token is
    /// missing, unknown, or may not read the namespace; or a `*` listing
    /// the token may read no namespace of (see [`crate::NomadClient::services`]).
    #[error("{endpoint}: permission denied by Nomad's ACLs: {message}")]
    PermissionDenied { endpoint: String, message: String },

    /// HTTP 404: e.g. `Unknown allocation "…"` from the checks endpoint.
    #[error("{endpoint}: not found: {message}")]
    NotFound { endpoint: String, message: String },

    /// Any other non-success HTTP status (500 `No path to region`, 400
    /// `Invalid index`, ...).
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },

    /// No complete answer within the request's deadline.
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },

    /// The connection failed: refused, reset, TLS handshake, broken body.
    #[error("{endpoint}: connection failed: {reason}")]
    Transport { endpoint: String, reason: String },

    /// The body (or a header) is not what Nomad documents; `path` says
    /// where, e.g. `[0].Port` or `header X-Nomad-Index`.
    #[error("{endpoint}: malformed answer at `{path}`: {message}")]
    Decode {
        endpoint: String,
        path: String,
        message: String,
    },

    /// The request could not be built, or would not mean what it seems to
    /// (`*` as the namespace of `/v1/service/:name`).
    #[error("{endpoint}: invalid request: {reason}")]
    InvalidRequest { endpoint: String, reason: String },
}

/// The variant of an [`Error`] without its data: a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    PermissionDenied,
    NotFound,
    Status,
    Timeout,
    Transport,
    Decode,
    InvalidRequest,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::Decode => "decode",
            Self::InvalidRequest => "invalid_request",
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Status { .. } => ErrorKind::Status,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Transport { .. } => ErrorKind::Transport,
            Self::Decode { .. } => ErrorKind::Decode,
            Self::InvalidRequest { .. } => ErrorKind::InvalidRequest,
        }
    }

    /// `METHOD /path` of the failed request.
    pub fn endpoint(&self) -> &str {
        match self {
            Self::PermissionDenied { endpoint, .. }
            | Self::NotFound { endpoint, .. }
            | Self::Status { endpoint, .. }
            | Self::Timeout { endpoint, .. }
            | Self::Transport { endpoint, .. }
            | Self::Decode { endpoint, .. }
            | Self::InvalidRequest { endpoint, .. } => endpoint,
        }
    }

    /// The HTTP status Nomad answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::PermissionDenied { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

//! Proving control of a name to the CA: the [`ChallengeSolver`] trait and its
//! implementations.
//!
//! - [`dns01::Rfc2136Solver`]: DNS-01 through RFC 2136 dynamic updates signed
//!   with TSIG, for any authoritative server that accepts them (BIND, knot,
//!   PowerDNS...). The only way to get wildcard certificates.
//! - [`http01::Http01Solver`]: HTTP-01, answered by this service's own listener
//!   from a [`http01::TokenStore`]; [`consul_tokens::ConsulTokenStore`]
//!   shares the tokens between replicas.
//! - [`exec::ExecHookSolver`]: a `present`/`cleanup` program, for DNS providers
//!   that only have an HTTP API.
//!
//! A solver receives all challenges of one order at once, so it can batch
//! them: an apex and its wildcard share one TXT record name, and one UPDATE
//! for both avoids a second round trip and a second zone-serial bump.

pub mod consul_tokens;
pub mod dns01;
pub mod exec;
pub mod http01;
pub mod tsig_file;

use std::fmt;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::DomainName;

/// The ACME challenge types this service can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    Http01,
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
        }
    }

    pub(crate) fn to_acme(self) -> instant_acme::ChallengeType {
        match self {
            Self::Http01 => instant_acme::ChallengeType::Http01,
            Self::Dns01 => instant_acme::ChallengeType::Dns01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One challenge to satisfy: the name, the CA's token and the key
/// authorization derived from it and the account key.
///
/// None of it is secret (the CA publishes the token and reads the response
/// over plain DNS or HTTP), but none of it is worth a log line either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    identifier: DomainName,
    token: String,
    key_authorization: String,
}

impl Challenge {
    pub fn new(identifier: DomainName, token: String, key_authorization: String) -> Self {
        Self {
            identifier,
            token,
            key_authorization,
        }
    }

    /// The name as ordered, `*.example.com` for a wildcard.
    pub fn identifier(&self) -> &DomainName {
        &self.identifier
    }

    /// The name the CA validates: the identifier without its wildcard label.
    pub fn domain(&self) -> &str {
        self.identifier.base()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The HTTP-01 response body (`token.thumbprint`).
    pub fn key_authorization(&self) -> &str {
        &self.key_authorization
    }

    /// The DNS-01 TXT record name, `_acme-challenge.<domain>`.
    pub fn dns01_record_name(&self) -> String {
        self.identifier.dns01_record_name()
    }

    /// The DNS-01 TXT value: base64url(SHA-256(key authorization)), RFC 8555 §8.4.
    pub fn dns01_value(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.key_authorization.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }
}

/// Why a solver could not publish or withdraw a challenge response.
#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error("DNS-01 via RFC 2136: {0}")]
    Dns01(#[from] dns01::Dns01Error),
    #[error("HTTP-01: {0}")]
    Http01(#[from] http01::Http01Error),
    #[error("exec hook: {0}")]
    Exec(#[from] exec::ExecError),
}

/// Publishes challenge responses where the CA will look for them, and
/// withdraws them afterwards.
#[async_trait]
pub trait ChallengeSolver: Send + Sync + fmt::Debug {
    /// The challenge type this solver answers.
    fn kind(&self) -> ChallengeKind;

    /// Publishes the responses of all `challenges`. They may not be visible
    /// to the CA yet: [`ChallengeSolver::await_visible`] says when they are.
    async fn present(&self, challenges: &[Challenge]) -> Result<(), SolverError>;

    /// Returns once the CA can see the responses [`ChallengeSolver::present`]
    /// published (for DNS-01: the records are served by the check server).
    /// A separate step so that an issuance can tell publishing from
    /// propagation; solvers whose responses are visible once published keep
    /// this default.
    async fn await_visible(&self, _challenges: &[Challenge]) -> Result<(), SolverError> {
        Ok(())
    }

    /// Withdraws the responses. Called after validation whether it succeeded
    /// or not; must tolerate responses that were never (fully) published.
    async fn cleanup(&self, challenges: &[Challenge]) -> Result<(), SolverError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns01_value_is_base64url_sha256_of_the_key_authorization() {
        let challenge = Challenge::new(
            DomainName::parse("*.example.com").expect("valid"),
            "token".to_owned(),
            "token.thumb".to_owned(),
        );
        // Computed independently: base64url(sha256(b"token.thumb")), unpadded.
        assert_eq!(
            challenge.dns01_value(),
            "lCdftpJCXapaZHkBGIZbcubeKW8RmA0jSG_aZN01zbU"
        );
        assert_eq!(challenge.dns01_record_name(), "_acme-challenge.example.com");
        assert_eq!(challenge.domain(), "example.com");
    }
}

//! The ACME conversation (RFC 8555) through `instant-acme` (see ADR 0003),
//! in three parts, each with its own errors:
//! - `account`: the account, loaded from or created into the
//!   [`CertificateStore`], so replicas and restarts reuse one account;
//! - `order`: one order from creation to certificate, with ACME profiles
//!   and `replaces` (RFC 9773);
//! - `poll`: when to ask again about an order the CA is working on: from
//!   50 ms up to 2 s, or when its `Retry-After` says;
//! - `http`: the HTTPS transport: the configured private root, the time to
//!   each response, and the CA's `Retry-After` on a refusal, carried in the
//!   error of the call that received it ([`AcmeError::retry_after`]), or
//!   with an order it is working on, kept for that order's next poll.
//!
//! Here they are tied into [`AcmeClient`], which also asks for renewal
//! information (RFC 9773). Throughout, `badNonce` rejections are retried
//! beyond the library's own three attempts (CAs may reject any nonce;
//! pebble rejects 5 % by default).

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, CertificateIdentifier};
use tokio_util::task::TaskTracker;

use crate::challenge::ChallengeSolver;
use crate::domain::NameSet;
use crate::keys::KeyType;
use crate::policy::AriWindow;
use crate::secret::Secret;
use crate::store::CertificateStore;
use crate::timings::IssuanceTimings;

/// Awaits the future `$step` evaluates to, evaluating and awaiting it again
/// while the CA rejects its nonce. A request refused for its nonce was not
/// processed (RFC 8555 §6.5), so repeating it is safe.
///
/// A macro rather than a function taking an async closure: the futures of
/// async closures borrowing an `Order` are not provably `Send`, and the
/// certificate manager runs on a multi-threaded runtime. Defined before the
/// modules so that `account` and `order` can use it.
macro_rules! retry_bad_nonce {
    ($step:expr) => {{
        let mut round = 0;
        loop {
            match $step.await {
                Err(error)
                    if $crate::acme::CaFailure::is_bad_nonce(&error)
                        && round < $crate::acme::BAD_NONCE_ROUNDS =>
                {
                    round += 1;
                    ::tracing::debug!(round, "ACME request rejected for its nonce; retrying");
                }
                result => break result,
            }
        }
    }};
}

mod account;
mod http;
mod order;
mod poll;
#[cfg(test)]
mod tests;

pub use account::AccountError;
pub use http::{HttpError, Throttled};
pub use order::OrderError;

pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Extra rounds on a `badNonce` after the library's own three attempts.
const BAD_NONCE_ROUNDS: u32 = 10;
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// An error that may hold the library's error for an exchange with the CA,
/// for the checks that read what the CA said.
trait CaFailure {
    fn ca_error(&self) -> Option<&instant_acme::Error>;

    fn is_bad_nonce(&self) -> bool {
        matches!(self.ca_error(), Some(instant_acme::Error::Api(problem))
            if problem.r#type.as_deref() == Some(BAD_NONCE))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("fetching renewal information: {0}")]
    RenewalInfo(#[source] instant_acme::Error),
}

impl AcmeError {
    /// How long the CA asked to wait, as it said in answer to the call
    /// that failed with this error: the `Retry-After` of its refusal, or of
    /// the order it was still processing when polling gave up.
    pub fn retry_after(&self) -> Option<Duration> {
        let ca_error = match self {
            Self::Account(error) => error.ca_error(),
            Self::Order(error) => error.ca_error(),
            Self::RenewalInfo(source) => Some(source),
        };
        http::retry_after(ca_error?)
    }
}

/// An External Account Binding (RFC 8555 §7.3.4), required by some CAs.
#[derive(Debug, Clone)]
pub struct ExternalAccountBinding {
    pub key_id: String,
    /// The HMAC key, decoded (CAs usually hand it out base64url-encoded).
    pub hmac_key: Secret<Vec<u8>>,
}

/// Which CA to talk to and as whom.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Let's Encrypt staging unless production is asked for explicitly.
    pub directory_url: String,
    /// Contact addresses; `mailto:` is added to bare e-mail addresses.
    pub contact: Vec<String>,
    pub external_account: Option<ExternalAccountBinding>,
    /// PEM root(s) the CA's HTTPS endpoint is verified against instead of
    /// the system store: for private CAs (step-ca, pebble).
    pub ca_root_pem: Option<String>,
    /// How long to wait for the CA to validate all challenges.
    pub validation_timeout: Duration,
    /// How long to wait for the certificate after finalizing.
    pub issuance_timeout: Duration,
    /// Where the time to each response from the CA is recorded.
    pub request_duration: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Where challenge withdrawals that failed are counted.
    pub withdrawal_failures: Option<prometheus_client::metrics::counter::Counter>,
    /// Runs the withdrawals of challenge responses, which go on after the
    /// order returned its certificate; the binary waits for them at
    /// shutdown. Clones share it.
    pub withdrawals: TaskTracker,
}

impl AcmeConfig {
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            contact: Vec::new(),
            external_account: None,
            ca_root_pem: None,
            validation_timeout: Duration::from_secs(300),
            issuance_timeout: Duration::from_secs(300),
            request_duration: None,
            withdrawal_failures: None,
            withdrawals: TaskTracker::new(),
        }
    }
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self::new(LETS_ENCRYPT_STAGING)
    }
}

/// What to order.
#[derive(Debug, Clone)]
pub struct OrderRequest<'a> {
    pub names: &'a NameSet,
    pub key_type: KeyType,
    /// An ACME profile (`shortlived`, `tlsserver`, ...), if the CA offers them.
    pub profile: Option<&'a str>,
    /// The certificate this one replaces (ARI), if the CA supports ARI.
    pub replaces: Option<CertificateIdentifier<'static>>,
}

/// A certificate fresh from the CA with the key it was ordered for.
#[derive(Debug)]
pub struct IssuedCertificate {
    pub chain_pem: String,
    pub key_pem: Secret<String>,
    pub order_url: String,
    /// Where the order's time went, step by step.
    pub timings: IssuanceTimings,
}

/// The CA's renewal window for one certificate.
#[derive(Debug, Clone)]
pub struct RenewalInfo {
    pub window: AriWindow,
    /// When the CA wants to be asked again.
    pub retry_after: Duration,
    pub explanation_url: Option<String>,
}

/// A logged-in ACME account.
pub struct AcmeClient {
    account: Account,
    config: AcmeConfig,
    replaces: order::ReplacesSupport,
    poll_hints: Arc<http::PollHints>,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory_url", &self.config.directory_url)
            .field("account", &self.account.id())
            .finish_non_exhaustive()
    }
}

impl AcmeClient {
    /// Loads the account for `config.directory_url` from `store`, or creates
    /// it at the CA and stores it.
    pub async fn connect(
        config: AcmeConfig,
        store: &dyn CertificateStore,
    ) -> Result<Self, AcmeError> {
        let poll_hints = Arc::default();
        let account = account::load_or_create(&config, store, &poll_hints).await?;
        Ok(Self {
            account,
            config,
            replaces: order::ReplacesSupport::default(),
            poll_hints,
        })
    }

    pub fn directory_url(&self) -> &str {
        &self.config.directory_url
    }

    /// The account URL at the CA (not a secret).
    pub fn account_id(&self) -> &str {
        self.account.id()
    }

    /// Profiles the CA's directory advertises.
    pub fn profiles(&self) -> Vec<String> {
        account::profiles(&self.account)
    }

    /// The CA's suggested renewal window, `None` when it does not offer ARI.
    pub async fn renewal_info(
        &self,
        certificate: &CertificateIdentifier<'_>,
    ) -> Result<Option<RenewalInfo>, AcmeError> {
        match self.account.renewal_info(certificate).await {
            Ok((info, retry_after)) => Ok(Some(RenewalInfo {
                window: AriWindow {
                    start: info.suggested_window.start,
                    end: info.suggested_window.end,
                },
                retry_after,
                explanation_url: info.explanation_url,
            })),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(source) => Err(AcmeError::RenewalInfo(source)),
        }
    }

    /// Runs one order to completion: challenges through `solver`, a fresh
    /// key, finalization and the certificate chain.
    pub async fn issue(
        &self,
        request: &OrderRequest<'_>,
        solver: &Arc<dyn ChallengeSolver>,
    ) -> Result<IssuedCertificate, AcmeError> {
        let orders = order::Orders {
            account: &self.account,
            config: &self.config,
            replaces: &self.replaces,
            poll_hints: &self.poll_hints,
        };
        Ok(orders.issue(request, solver).await?)
    }
}

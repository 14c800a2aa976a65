//! The ACME conversation (RFC 8555) through `instant-acme` (see ADR 0003):
//! the account, one order from creation to certificate, and renewal
//! information (RFC 9773).
//!
//! What this layer adds to the library:
//! - the account is loaded from, or created into, the [`CertificateStore`],
//!   so replicas and restarts reuse one account;
//! - `badNonce` rejections are retried beyond the library's own three
//!   attempts (CAs may reject any nonce; pebble rejects 5 % by default);
//! - the HTTPS client trusts a configured private root and records the CA's
//!   `Retry-After` on error responses, for the backoff policy;
//! - validation is polled from 50 ms up instead of sleeping seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse,
    CertificateIdentifier, ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use tracing::{debug, info, warn};

use crate::challenge::{Challenge, ChallengeKind, ChallengeSolver, SolverError};
use crate::domain::{DomainName, NameSet};
use crate::keys::{CertificateKey, KeyError, KeyType};
use crate::pem::parse_certificate_chain;
use crate::policy::AriWindow;
use crate::secret::Secret;
use crate::store::{AccountId, CertificateStore, StoreError, StoredAccount};

/// Awaits the future `$step` evaluates to, evaluating and awaiting it again
/// while the CA rejects its nonce. A request refused for its nonce was not
/// processed (RFC 8555 §6.5), so repeating it is safe.
///
/// A macro rather than a function taking an async closure: the futures of
/// async closures borrowing an `Order` are not provably `Send`, and the
/// certificate manager runs on a multi-threaded runtime.
macro_rules! retry_bad_nonce {
    ($step:expr) => {{
        let mut round = 0;
        loop {
            match $step.await {
                Err(error) if is_bad_nonce(&error) && round < BAD_NONCE_ROUNDS => {
                    round += 1;
                    debug!(round, "ACME request rejected for its nonce; retrying");
                }
                result => break result,
            }
        }
    }};
}

pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Extra rounds on a `badNonce` after the library's own three attempts.
const BAD_NONCE_ROUNDS: u32 = 10;
/// Upper bound for one HTTP exchange with the CA.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME HTTPS client: {0}")]
    HttpClient(String),
    #[error("ACME account at {directory}: {source}")]
    Account {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("stored ACME account for {directory} is unusable: {reason}")]
    CorruptAccount { directory: String, reason: String },
    #[error("account storage: {0}")]
    Store(#[from] StoreError),
    #[error("{step}: {source}")]
    Api {
        step: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA offers no {wanted} challenge for {identifier} (offered: {offered:?})")]
    UnsupportedChallenge {
        identifier: String,
        wanted: ChallengeKind,
        offered: Vec<String>,
    },
    #[error("authorization for {identifier} is {status}: {detail}")]
    AuthorizationFailed {
        identifier: String,
        status: String,
        detail: String,
    },
    #[error("the order ended {status:?} instead of ready: {detail}")]
    OrderFailed { status: OrderStatus, detail: String },
    #[error("the CA sent an unusable certificate chain: {0}")]
    BadChain(String),
    #[error("the CA returned identifier `{0}`, which is not a DNS name")]
    BadIdentifier(String),
    #[error(
        "the CA offers no ACME profile `{profile}` (offered: {}); check --acme-profile",
        if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
    )]
    UnsupportedProfile {
        profile: String,
        offered: Vec<String>,
    },
    #[error(transparent)]
    Solver(#[from] SolverError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl AcmeError {
    fn api(step: &'static str) -> impl FnOnce(instant_acme::Error) -> Self {
        move |source| Self::Api { step, source }
    }

    /// A `Retry-After` the library surfaced with this error (order polling).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api {
                source: instant_acme::Error::Timeout(Some(at)),
                ..
            } => Some(at.saturating_duration_since(std::time::Instant::now())),
            _ => None,
        }
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
        }
    }

    fn contact_uris(&self) -> Vec<String> {
        self.contact
            .iter()
            .map(|c| {
                if c.contains(':') {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect()
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
    retry_after: Arc<Mutex<Option<SystemTime>>>,
    /// Set once the CA has shown it does not honour `replaces` (it did not
    /// reflect it, or refused it as malformed): later orders go without it
    /// at once, rather than each placing a refused or abandoned order first.
    replaces_unsupported: AtomicBool,
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
        let retry_after = Arc::new(Mutex::new(None));
        let id = AccountId::for_directory(&config.directory_url);
        let directory = config.directory_url.clone();
        let account_error = |source| AcmeError::Account {
            directory: directory.clone(),
            source,
        };
        let account = match store.load_account(&id).await? {
            Some(stored) => {
                // Never echo the parse error: it could quote the key.
                let credentials: AccountCredentials =
                    serde_json::from_str(stored.credentials_json.expose()).map_err(|e| {
                        AcmeError::CorruptAccount {
                            directory: directory.clone(),
                            reason: format!("credentials JSON invalid ({:?})", e.classify()),
                        }
                    })?;
                let http = AcmeHttpClient::new(&config, &retry_after)?;
                let account = Account::builder_with_http(Box::new(http))
                    .from_credentials(credentials)
                    .await
                    .map_err(account_error)?;
                debug!(account = account.id(), "ACME account loaded from storage");
                account
            }
            None => {
                let contact = config.contact_uris();
                let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new_account = NewAccount {
                    contact: &contact_refs,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let eab = config
                    .external_account
                    .as_ref()
                    .map(|eab| ExternalAccountKey::new(eab.key_id.clone(), eab.hmac_key.expose()));
                let (account, credentials) = retry_bad_nonce!(async {
                    let http = AcmeHttpClient::new(&config, &retry_after)?;
                    Account::builder_with_http(Box::new(http))
                        .create(&new_account, directory.clone(), eab.as_ref())
                        .await
                        .map_err(account_error)
                })?;
                let credentials_json =
                    serde_json::to_string(&credentials).map_err(|e| AcmeError::CorruptAccount {
                        directory: directory.clone(),
                        reason: format!("cannot serialize credentials ({:?})", e.classify()),
                    })?;
                store
                    .save_account(
                        &id,
                        &StoredAccount {
                            directory_url: directory.clone(),
                            contact,
                            credentials_json: Secret::new(credentials_json),
                        },
                    )
                    .await?;
                info!(account = account.id(), directory = %directory, "ACME account created");
                account
            }
        };
        Ok(Self {
            account,
            config,
            retry_after,
            replaces_unsupported: AtomicBool::new(false),
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
        let mut names: Vec<String> = self.account.profiles().map(|p| p.name.to_owned()).collect();
        names.sort();
        names
    }

    /// The last `Retry-After` the CA sent on an error response, consumed.
    pub fn take_retry_after(&self) -> Option<Duration> {
        let at = self.retry_after.lock().ok()?.take()?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
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
            Err(source) => Err(AcmeError::Api {
                step: "fetching renewal information",
                source,
            }),
        }
    }

    /// Runs one order to completion: challenges through `solver`, a fresh
    /// key, finalization and the certificate chain.
    pub async fn issue(
        &self,
        request: &OrderRequest<'_>,
        solver: &dyn ChallengeSolver,
    ) -> Result<IssuedCertificate, AcmeError> {
        let mut order = self.new_order(request).await?;
        let order_url = order.url().to_owned();
        info!(order = %order_url, names = %request.names, "ACME order created");

        let challenges = retry_bad_nonce!(pending_challenges(&mut order, solver.kind()))?;
        if !challenges.is_empty() {
            let presented = solver.present(&challenges).await;
            let validated = match presented {
                Ok(()) => self.validate(&mut order, solver.kind()).await,
                Err(e) => Err(e.into()),
            };
            // Whatever happened, do not leave records or tokens behind.
            if let Err(error) = solver.cleanup(&challenges).await {
                warn!(%error, "challenge cleanup failed");
            }
            validated?;
        }

        let policy = poll_policy(self.config.validation_timeout);
        let status = retry_bad_nonce!(async {
            order
                .poll_ready(&policy)
                .await
                .map_err(AcmeError::api("waiting for the order to become ready"))
        })?;
        if status != OrderStatus::Ready {
            let detail = retry_bad_nonce!(failure_details(&mut order))?;
            return Err(AcmeError::OrderFailed { status, detail });
        }

        let key = CertificateKey::generate(request.key_type)?;
        let csr = key.csr_der(request.names)?;
        retry_bad_nonce!(async {
            order
                .finalize_csr(&csr)
                .await
                .map_err(AcmeError::api("finalizing the order"))
        })?;
        let policy = poll_policy(self.config.issuance_timeout);
        let chain_pem = retry_bad_nonce!(async {
            order
                .poll_certificate(&policy)
                .await
                .map_err(AcmeError::api("downloading the certificate"))
        })?;
        parse_certificate_chain(&chain_pem).map_err(|e| AcmeError::BadChain(e.to_string()))?;
        info!(order = %order_url, "certificate issued");
        Ok(IssuedCertificate {
            chain_pem,
            key_pem: key.private_key_pem(),
            order_url,
        })
    }

    async fn new_order(&self, request: &OrderRequest<'_>) -> Result<Order, AcmeError> {
        // Checked here rather than left to the CA: one that does not know
        // profiles may ignore the field and issue its default certificate,
        // which would then never match the configuration and be re-ordered.
        if let Some(profile) = request.profile {
            let offered = self.profiles();
            if !offered.iter().any(|name| name == profile) {
                return Err(AcmeError::UnsupportedProfile {
                    profile: profile.to_owned(),
                    offered,
                });
            }
        }
        let identifiers: Vec<Identifier> = request
            .names
            .iter()
            .map(|name| Identifier::Dns(name.as_str().to_owned()))
            .collect();
        let build = |replaces: Option<CertificateIdentifier<'static>>| {
            let mut new_order = NewOrder::new(&identifiers);
            if let Some(profile) = request.profile {
                new_order = new_order.profile(profile);
            }
            if let Some(replaces) = replaces {
                new_order = new_order.replaces(replaces);
            }
            new_order
        };
        if let Some(replaces) = &request.replaces
            && !self.replaces_unsupported.load(Ordering::Relaxed)
        {
            let with_replaces = build(Some(replaces.clone()));
            match retry_bad_nonce!(self.place(&with_replaces)) {
                Ok(order) => return Ok(order),
                Err(error) => match replaces_refusal(&error) {
                    // `replaces` is a courtesy to the CA: when the CA turns
                    // down that field, a plain order still renews.
                    Some(refusal) => {
                        if refusal == ReplacesRefusal::Unsupported {
                            self.replaces_unsupported.store(true, Ordering::Relaxed);
                        }
                        warn!(%error, "the CA refused `replaces`; ordering without it");
                    }
                    // Anything else (rate limit, outage, network) would fail
                    // the plain order too, or double it: back off instead.
                    None => return Err(error),
                },
            }
        }
        let plain = build(None);
        retry_bad_nonce!(self.place(&plain))
    }

    async fn place(&self, new_order: &NewOrder<'_>) -> Result<Order, AcmeError> {
        self.account
            .new_order(new_order)
            .await
            .map_err(AcmeError::api("creating the order"))
    }

    /// Tells the CA the challenges are ready, then waits for their verdict.
    async fn validate(&self, order: &mut Order, kind: ChallengeKind) -> Result<(), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(AcmeError::api("reading authorizations"))?;
            if authorization.status != AuthorizationStatus::Pending {
                continue;
            }
            let identifier = authorization.identifier().to_string();
            let Some(mut challenge) = authorization.challenge(kind.to_acme()) else {
                return Err(AcmeError::UnsupportedChallenge {
                    identifier,
                    wanted: kind,
                    offered: Vec::new(),
                });
            };
            retry_bad_nonce!(async {
                challenge
                    .set_ready()
                    .await
                    .map_err(AcmeError::api("marking the challenge ready"))
            })?;
        }
        let policy = poll_policy(self.config.validation_timeout);
        let status = retry_bad_nonce!(async {
            order
                .poll_ready(&policy)
                .await
                .map_err(AcmeError::api("waiting for validation"))
        })?;
        if status == OrderStatus::Invalid {
            let detail = retry_bad_nonce!(failure_details(order))?;
            return Err(AcmeError::OrderFailed { status, detail });
        }
        Ok(())
    }
}

/// The challenges of `kind` for every pending authorization of `order`.
async fn pending_challenges(
    order: &mut Order,
    kind: ChallengeKind,
) -> Result<Vec<Challenge>, AcmeError> {
    let mut challenges = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(AcmeError::api("reading authorizations"))?;
        let identifier_text = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order: nothing to prove.
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::AuthorizationFailed {
                    identifier: identifier_text,
                    status: format!("{status:?}"),
                    detail: "not pending at order creation".to_owned(),
                });
            }
        }
        let identifier = DomainName::parse(&identifier_text)
            .map_err(|_| AcmeError::BadIdentifier(identifier_text.clone()))?;
        let offered: Vec<String> = authorization
            .challenges
            .iter()
            .map(|c| format!("{:?}", c.r#type))
            .collect();
        let Some(challenge) = authorization.challenge(kind.to_acme()) else {
            return Err(AcmeError::UnsupportedChallenge {
                identifier: identifier_text,
                wanted: kind,
                offered,
            });
        };
        challenges.push(Challenge::new(
            identifier,
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_owned(),
        ));
    }
    Ok(challenges)
}

/// Why an order failed, from its authorizations' challenge errors.
async fn failure_details(order: &mut Order) -> Result<String, AcmeError> {
    let mut details = Vec::new();
    if let Some(problem) = &order.state().error {
        details.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(AcmeError::api("reading authorizations"))?;
        let state = authorization
            .refresh()
            .await
            .map_err(AcmeError::api("reading authorizations"))?;
        let identifier = state.identifier().to_string();
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                details.push(format!("{identifier}: {problem}"));
            }
        }
    }
    Ok(if details.is_empty() {
        "no details from the CA".to_owned()
    } else {
        details.join("; ")
    })
}

/// Polls from 50 ms, growing by half each time: validation against a nearby
/// CA takes well under a second, against a public one a few seconds.
fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .backoff(1.5)
        .timeout(timeout)
}

fn is_bad_nonce(error: &AcmeError) -> bool {
    let source = match error {
        AcmeError::Api { source, .. } | AcmeError::Account { source, .. } => source,
        _ => return false,
    };
    matches!(source, instant_acme::Error::Api(problem)
        if problem.r#type.as_deref() == Some(BAD_NONCE))
}

/// The HTTPS client `instant-acme` sends requests through.
struct AcmeHttpClient {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
    request_duration: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl AcmeHttpClient {
    fn new(
        config: &AcmeConfig,
        retry_after: &Arc<Mutex<Option<SystemTime>>>,
    ) -> Result<Self, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        match config.ca_root_pem.as_deref() {
            Some(pem) => {
                let certificates = parse_certificate_chain(pem)
                    .map_err(|e| AcmeError::HttpClient(format!("CA root PEM: {e}")))?;
                for certificate in certificates {
                    roots
                        .add(certificate)
                        .map_err(|e| AcmeError::HttpClient(format!("CA root: {e}")))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    debug!(%error, "skipping unreadable system root certificates");
                }
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(AcmeError::HttpClient(
                        "no system root certificates found; install them or configure a CA root"
                            .to_owned(),
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::HttpClient(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            retry_after: Arc::clone(retry_after),
            request_duration: config.request_duration.clone(),
        })
    }
}

impl HttpClient for AcmeHttpClient {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.inner.request(request);
        let retry_after = Arc::clone(&self.retry_after);
        let request_duration = self.request_duration.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let response = tokio::time::timeout(HTTP_TIMEOUT, response)
                .await
                .map_err(|_| instant_acme::Error::Str("ACME server did not answer within 30 s"))?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            if let Some(histogram) = &request_duration {
                histogram.observe(started.elapsed().as_secs_f64());
            }
            if is_throttling(response.status())
                && let Some(at) = parse_retry_after(response.headers(), SystemTime::now())
                && let Ok(mut slot) = retry_after.lock()
            {
                *slot = Some(at);
            }
            Ok(BytesResponse::from(response))
        })
    }
}

fn is_throttling(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (RFC 9110 §10.2.3).
fn parse_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(now + Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// How a CA turned down an order's `replaces` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplacesRefusal {
    /// For this certificate only: it was replaced already (RFC 9773 §5).
    ThisCertificate,
    /// The CA does not honour the field at all: it ignored it (the order
    /// was created without reflecting it), or rejects it as malformed.
    Unsupported,
}

/// Whether `error` from placing an order with `replaces` is about that
/// field, so the same order without it may succeed. Rate limits, server
/// errors and network failures are not: they need the backoff.
fn replaces_refusal(error: &AcmeError) -> Option<ReplacesRefusal> {
    let AcmeError::Api { source, .. } = error else {
        return None;
    };
    match source {
        instant_acme::Error::Api(problem) => match problem.r#type.as_deref() {
            Some("urn:ietf:params:acme:error:alreadyReplaced") => {
                Some(ReplacesRefusal::ThisCertificate)
            }
            Some("urn:ietf:params:acme:error:malformed")
                if problem
                    .detail
                    .as_deref()
                    .is_some_and(|detail| detail.to_ascii_lowercase().contains("replaces")) =>
            {
                Some(ReplacesRefusal::Unsupported)
            }
            _ => None,
        },
        // The library checks that the CA reflected the field (RFC 9773 §5);
        // a CA that accepts the order but drops the field does not honour it.
        instant_acme::Error::Other(inner) if inner.to_string().contains("replaces field") => {
            Some(ReplacesRefusal::Unsupported)
        }
        instant_acme::Error::Unsupported(_) => Some(ReplacesRefusal::Unsupported),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, detail: &str) -> AcmeError {
        let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": kind, "detail": detail, "status": 400
        }))
        .expect("problem document");
        AcmeError::Api {
            step: "creating the order",
            source: instant_acme::Error::Api(problem),
        }
    }

    #[test]
    fn only_refusals_of_replaces_itself_allow_a_plain_order() {
        assert_eq!(
            replaces_refusal(&problem(
                "urn:ietf:params:acme:error:alreadyReplaced",
                "certificate already replaced"
            )),
            Some(ReplacesRefusal::ThisCertificate)
        );
        assert_eq!(
            replaces_refusal(&problem(
                "urn:ietf:params:acme:error:malformed",
                "unknown field \"replaces\""
            )),
            Some(ReplacesRefusal::Unsupported)
        );
        let ignored = AcmeError::Api {
            step: "creating the order",
            source: instant_acme::Error::Other(
                "replaces field mismatch: expected Some(..), found None".into(),
            ),
        };
        assert_eq!(
            replaces_refusal(&ignored),
            Some(ReplacesRefusal::Unsupported)
        );
        // A rate limit or an outage would hit the plain order too.
        for refused in [
            problem("urn:ietf:params:acme:error:rateLimited", "too many orders"),
            problem("urn:ietf:params:acme:error:serverInternal", "oops"),
            problem("urn:ietf:params:acme:error:malformed", "bad CSR"),
        ] {
            assert_eq!(replaces_refusal(&refused), None, "{refused}");
        }
        assert_eq!(
            replaces_refusal(&AcmeError::Api {
                step: "creating the order",
                source: instant_acme::Error::Timeout(None),
            }),
            None
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("120"),
        );
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(now + Duration::from_secs(120))
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("soon"),
        );
        assert_eq!(parse_retry_after(&headers, now), None);
    }

    #[test]
    fn contacts_become_mailto_uris() {
        let config = AcmeConfig {
            contact: vec![
                "ops@example.com".to_owned(),
                "mailto:a@example.com".to_owned(),
            ],
            ..AcmeConfig::default()
        };
        assert_eq!(
            config.contact_uris(),
            vec!["mailto:ops@example.com", "mailto:a@example.com"]
        );
        assert_eq!(config.directory_url, LETS_ENCRYPT_STAGING);
    }

    #[tokio::test]
    async fn bad_nonce_is_retried_and_other_errors_are_not() {
        let bad_nonce = || {
            let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
                "type": BAD_NONCE, "detail": "stale", "status": 400
            }))
            .expect("problem");
            AcmeError::Api {
                step: "test",
                source: instant_acme::Error::Api(problem),
            }
        };
        let mut calls = 0;
        let result = retry_bad_nonce!(async {
            calls += 1;
            if calls < 4 {
                Err(bad_nonce())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.expect("succeeds on the fourth call"), 4);

        let mut calls = 0;
        let result: Result<(), _> = retry_bad_nonce!(async {
            calls += 1;
            Err(AcmeError::BadIdentifier("x".to_owned()))
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let result: Result<(), _> = retry_bad_nonce!(async {
            calls += 1;
            Err(bad_nonce())
        });
        assert!(result.is_err());
        assert_eq!(calls, 1 + BAD_NONCE_ROUNDS);
    }
}

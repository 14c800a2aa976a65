//! One order (RFC 8555 §7.4), from creation to certificate: the challenges
//! through a solver, validation and issuance polled from 50 ms up (see
//! `poll`) instead of sleeping seconds, finalization with a fresh key made
//! meanwhile, and the chain. Also what this
//! project asks of an order beyond RFC 8555: an ACME profile, checked
//! against the directory first, and `replaces` (RFC 9773 §5), dropped when
//! the CA turns it down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, Order, OrderStatus,
};
use prometheus_client::metrics::counter::Counter;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::http::PollHints;
use super::poll::poll_delay;
use super::{AcmeConfig, CaFailure, IssuedCertificate, OrderRequest, account, http};
use crate::challenge::{Challenge, ChallengeKind, ChallengeSolver, SolverError};
use crate::domain::DomainName;
use crate::keys::{CertificateKey, KeyError};
use crate::pem::parse_certificate_chain;
use crate::timings::{IssuanceStep, Stopwatch};

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
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
    #[error("the order ended {status:?} instead of {wanted}: {detail}")]
    OrderFailed {
        status: OrderStatus,
        /// `ready` after validation, `valid` after finalization.
        wanted: &'static str,
        detail: String,
    },
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

impl OrderError {
    fn api(step: &'static str) -> impl FnOnce(instant_acme::Error) -> Self {
        move |source| Self::Api { step, source }
    }
}

impl CaFailure for OrderError {
    fn ca_error(&self) -> Option<&instant_acme::Error> {
        match self {
            Self::Api { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whether orders still carry `replaces`: not once the CA has shown it does
/// not honour the field (it did not reflect it, or refused it as
/// malformed), so later orders go without it at once, rather than each
/// placing a refused or abandoned order first.
#[derive(Debug, Default)]
pub(super) struct ReplacesSupport {
    unsupported: AtomicBool,
}

impl ReplacesSupport {
    fn honoured(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed)
    }

    fn refused(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }
}

/// Orders placed through one account.
pub(super) struct Orders<'a> {
    pub(super) account: &'a Account,
    pub(super) config: &'a AcmeConfig,
    pub(super) replaces: &'a ReplacesSupport,
    pub(super) poll_hints: &'a PollHints,
}

impl Orders<'_> {
    /// Runs one order to completion: challenges through `solver`, a fresh
    /// key, finalization and the certificate chain.
    ///
    /// Nothing on the way sleeps a fixed time: the CA is polled from 50 ms
    /// up (see [`poll_delay`]), the key is made while the CA validates, and
    /// the challenge responses are withdrawn once the CA has judged them,
    /// without the certificate waiting for that.
    pub(super) async fn issue(
        &self,
        request: &OrderRequest<'_>,
        solver: &Arc<dyn ChallengeSolver>,
    ) -> Result<IssuedCertificate, OrderError> {
        let mut watch = Stopwatch::start();
        let keying = generate_key(request);
        let mut order = self.new_order(request).await?;
        watch.lap(IssuanceStep::OrderCreated);
        let order_url = order.url().to_owned();
        info!(order = %order_url, names = %request.names, "ACME order created");

        let challenges = retry_bad_nonce!(pending_challenges(&mut order, solver.kind()))?;
        watch.lap(IssuanceStep::AuthorizationsFetched);
        if challenges.is_empty() {
            // Every authorization reused: the order is ready, or soon is.
            self.wait_until_ready(&mut order, "waiting for the order to become ready")
                .await?;
            watch.lap(IssuanceStep::Validated);
        } else {
            // Armed before presenting: a cleanup tolerates responses that
            // were never (fully) published.
            let presented = PresentedChallenges::new(Arc::clone(solver), challenges, self.config);
            let validated = async {
                solver.present(presented.challenges()).await?;
                watch.lap(IssuanceStep::ChallengesPublished);
                solver.await_visible(presented.challenges()).await?;
                watch.lap(IssuanceStep::ChallengesVisible);
                self.validate(&mut order, solver.kind(), &mut watch).await
            }
            .await;
            // The CA has judged the challenges (or the order failed): the
            // responses can go, but the certificate need not wait for that.
            presented.withdraw_in_background();
            validated?;
        }

        let (key, csr) = keying.await.map_err(|e| KeyError::Generate {
            key_type: request.key_type,
            reason: format!("the key generation task failed: {e}"),
        })??;
        watch.lap(IssuanceStep::KeyGenerated);
        let finalize_url = order.state().finalize.clone();
        retry_bad_nonce!(async {
            order
                .finalize_csr(&csr)
                .await
                .map_err(OrderError::api("finalizing the order"))
        })?;
        watch.lap(IssuanceStep::Finalized);
        let step = "waiting for the certificate";
        // The finalize answer may say when to look for the certificate.
        let hint = self.poll_hints.take(&finalize_url, SystemTime::now());
        let status = self
            .poll_until(
                &mut order,
                step,
                self.config.issuance_timeout,
                hint,
                |status| matches!(status, OrderStatus::Valid | OrderStatus::Invalid),
            )
            .await?;
        if status != OrderStatus::Valid {
            let detail = retry_bad_nonce!(failure_details(&mut order))?;
            return Err(OrderError::OrderFailed {
                status,
                wanted: "valid",
                detail,
            });
        }
        let chain_pem = retry_bad_nonce!(async {
            order
                .certificate()
                .await
                .map_err(OrderError::api("downloading the certificate"))
        })?
        .ok_or_else(|| {
            OrderError::BadChain("the order is valid but has no certificate".to_owned())
        })?;
        parse_certificate_chain(&chain_pem).map_err(|e| OrderError::BadChain(e.to_string()))?;
        watch.lap(IssuanceStep::CertificateDownloaded);
        info!(order = %order_url, "certificate issued");
        Ok(IssuedCertificate {
            chain_pem,
            key_pem: key.private_key_pem(),
            order_url,
            timings: watch.finish(),
        })
    }

    async fn new_order(&self, request: &OrderRequest<'_>) -> Result<Order, OrderError> {
        // Checked here rather than left to the CA: one that does not know
        // profiles may ignore the field and issue its default certificate,
        // which would then never match the configuration and be re-ordered.
        if let Some(profile) = request.profile {
            let offered = account::profiles(self.account);
            if !offered.iter().any(|name| name == profile) {
                return Err(OrderError::UnsupportedProfile {
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
            && self.replaces.honoured()
        {
            let with_replaces = build(Some(replaces.clone()));
            match retry_bad_nonce!(self.place(&with_replaces)) {
                Ok(order) => return Ok(order),
                Err(error) => match replaces_refusal(&error) {
                    // `replaces` is a courtesy to the CA: when the CA turns
                    // down that field, a plain order still renews.
                    Some(refusal) => {
                        if refusal == ReplacesRefusal::Unsupported {
                            self.replaces.refused();
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

    async fn place(&self, new_order: &NewOrder<'_>) -> Result<Order, OrderError> {
        self.account
            .new_order(new_order)
            .await
            .map_err(OrderError::api("creating the order"))
    }

    /// Tells the CA the challenges are ready, then waits for their verdict.
    async fn validate(
        &self,
        order: &mut Order,
        kind: ChallengeKind,
        watch: &mut Stopwatch,
    ) -> Result<(), OrderError> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(OrderError::api("reading authorizations"))?;
            if authorization.status != AuthorizationStatus::Pending {
                continue;
            }
            let identifier = authorization.identifier().to_string();
            let Some(mut challenge) = authorization.challenge(kind.to_acme()) else {
                return Err(OrderError::UnsupportedChallenge {
                    identifier,
                    wanted: kind,
                    offered: Vec::new(),
                });
            };
            retry_bad_nonce!(async {
                challenge
                    .set_ready()
                    .await
                    .map_err(OrderError::api("marking the challenge ready"))
            })?;
        }
        watch.lap(IssuanceStep::ChallengesReady);
        self.wait_until_ready(order, "waiting for validation")
            .await?;
        watch.lap(IssuanceStep::Validated);
        Ok(())
    }

    /// Polls `order` (within the validation timeout) until the CA has
    /// judged it: ready, or anything else, which fails with the CA's reasons.
    async fn wait_until_ready(
        &self,
        order: &mut Order,
        step: &'static str,
    ) -> Result<(), OrderError> {
        let status = self
            .poll_until(
                order,
                step,
                self.config.validation_timeout,
                None,
                |status| *status != OrderStatus::Pending,
            )
            .await?;
        if status != OrderStatus::Ready {
            let detail = retry_bad_nonce!(failure_details(order))?;
            return Err(OrderError::OrderFailed {
                status,
                wanted: "ready",
                detail,
            });
        }
        Ok(())
    }

    /// Polls `order` until `settled` holds for its status, as [`poll_delay`]
    /// schedules it, within `timeout`. The order's last answer is looked at
    /// first: one settled already costs no request. `hint` is a
    /// `Retry-After` received before the first poll.
    async fn poll_until(
        &self,
        order: &mut Order,
        step: &'static str,
        timeout: Duration,
        mut hint: Option<Duration>,
        settled: fn(&OrderStatus) -> bool,
    ) -> Result<OrderStatus, OrderError> {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0u32;
        loop {
            let state = order.state();
            if settled(&state.status) || state.status == OrderStatus::Invalid {
                return Ok(state.status);
            }
            if let Some(problem) = &state.error {
                return Err(OrderError::Api {
                    step,
                    source: instant_acme::Error::Api(problem.clone()),
                });
            }
            let said = self
                .poll_hints
                .take(order.url(), SystemTime::now())
                .or(hint.take());
            let delay = poll_delay(attempt, said);
            let next = Instant::now() + delay;
            if next > deadline {
                // When the CA said when to ask again, the error carries it,
                // and the renewal's backoff honours it.
                return Err(OrderError::Api {
                    step,
                    source: instant_acme::Error::Timeout(said.map(|_| next)),
                });
            }
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
            retry_bad_nonce!(async {
                order
                    .refresh()
                    .await
                    .map(|_| ())
                    .map_err(OrderError::api(step))
            })?;
            debug!(step, attempt, status = ?order.state().status, "ACME order polled");
        }
    }
}

/// Starts generating the key and CSR for `request` on a blocking thread, so
/// that it overlaps the ACME exchange (an RSA key takes up to a few hundred
/// milliseconds) and never stalls the runtime.
fn generate_key(
    request: &OrderRequest<'_>,
) -> tokio::task::JoinHandle<Result<(CertificateKey, Vec<u8>), KeyError>> {
    let key_type = request.key_type;
    let names = request.names.clone();
    tokio::task::spawn_blocking(move || {
        let key = CertificateKey::generate(key_type)?;
        let csr = key.csr_der(&names)?;
        Ok((key, csr))
    })
}

/// The challenges of `kind` for every pending authorization of `order`.
async fn pending_challenges(
    order: &mut Order,
    kind: ChallengeKind,
) -> Result<Vec<Challenge>, OrderError> {
    let mut challenges = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(OrderError::api("reading authorizations"))?;
        let identifier_text = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order: nothing to prove.
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(OrderError::AuthorizationFailed {
                    identifier: identifier_text,
                    status: format!("{status:?}"),
                    detail: "not pending at order creation".to_owned(),
                });
            }
        }
        let identifier = DomainName::parse(&identifier_text)
            .map_err(|_| OrderError::BadIdentifier(identifier_text.clone()))?;
        let offered: Vec<String> = authorization
            .challenges
            .iter()
            .map(|c| format!("{:?}", c.r#type))
            .collect();
        let Some(challenge) = authorization.challenge(kind.to_acme()) else {
            return Err(OrderError::UnsupportedChallenge {
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
async fn failure_details(order: &mut Order) -> Result<String, OrderError> {
    let mut details = Vec::new();
    if let Some(problem) = &order.state().error {
        details.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(OrderError::api("reading authorizations"))?;
        let state = authorization
            .refresh()
            .await
            .map_err(OrderError::api("reading authorizations"))?;
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
fn replaces_refusal(error: &OrderError) -> Option<ReplacesRefusal> {
    let OrderError::Api { source, .. } = error else {
        return None;
    };
    match source {
        // A throttled order needs the backoff, whatever its document says.
        source if http::throttled(source).is_some() => None,
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

/// Challenge responses published for an order, withdrawn however the order
/// ends: after validation, on an error, and also when the order is dropped
/// half-way (the renewal lock lost, SIGTERM), so that no `_acme-challenge`
/// record or HTTP-01 token outlives the order.
///
/// Withdrawals run on tasks of their own, tracked by
/// [`AcmeConfig::withdrawals`]: once the CA has judged the challenges
/// nothing needs to wait for them (a DNS server may hold an UPDATE for most
/// of a second; knot holds one until its next NOTIFY), yet each runs to the
/// end, and a failure is logged and counted.
struct PresentedChallenges {
    solver: Arc<dyn ChallengeSolver>,
    /// `None` once withdrawn.
    challenges: Option<Vec<Challenge>>,
    tasks: TaskTracker,
    failures: Option<Counter>,
}

impl PresentedChallenges {
    fn new(
        solver: Arc<dyn ChallengeSolver>,
        challenges: Vec<Challenge>,
        config: &AcmeConfig,
    ) -> Self {
        Self {
            solver,
            challenges: Some(challenges),
            tasks: config.withdrawals.clone(),
            failures: config.withdrawal_failures.clone(),
        }
    }

    fn challenges(&self) -> &[Challenge] {
        self.challenges.as_deref().unwrap_or_default()
    }

    fn withdraw_in_background(mut self) {
        self.spawn_withdrawal("challenge responses withdrawn");
    }

    fn spawn_withdrawal(&mut self, done: &'static str) {
        let Some(challenges) = self.challenges.take() else {
            return;
        };
        // Dropped without a runtime (the process ending): nothing can run.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let solver = Arc::clone(&self.solver);
        let failures = self.failures.clone();
        let withdrawal = async move {
            let started = Instant::now();
            match solver.cleanup(&challenges).await {
                Ok(()) => debug!(elapsed = ?started.elapsed(), "{done}"),
                Err(error) => {
                    warn!(%error, "challenge cleanup failed");
                    if let Some(failures) = failures {
                        failures.inc();
                    }
                }
            }
        };
        self.tasks.spawn_on(withdrawal, &runtime);
    }
}

impl Drop for PresentedChallenges {
    fn drop(&mut self) {
        // Dropped with the order's future: the cleanup cannot be awaited
        // here, so it runs on its own.
        self.spawn_withdrawal("challenges of a cancelled order withdrawn");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::BAD_NONCE_ROUNDS;

    fn problem(kind: &str, detail: &str) -> OrderError {
        let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": kind, "detail": detail, "status": 400
        }))
        .expect("problem document");
        OrderError::Api {
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
        let ignored = OrderError::Api {
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
            replaces_refusal(&OrderError::Api {
                step: "creating the order",
                source: instant_acme::Error::Timeout(None),
            }),
            None
        );
    }

    #[tokio::test]
    async fn bad_nonce_is_retried_and_other_errors_are_not() {
        let bad_nonce = || {
            let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
                "type": crate::acme::BAD_NONCE, "detail": "stale", "status": 400
            }))
            .expect("problem");
            OrderError::Api {
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
            Err(OrderError::BadIdentifier("x".to_owned()))
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

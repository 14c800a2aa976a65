//! When to renew, when to retry, and when to refuse to order: pure functions of
//! the certificate's dates, the CA's hints and the clock.
//!
//! Nothing here reads the clock or a random source: callers pass `now` and
//! the random draws, so every rule is unit-tested with exact numbers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::certificate::CertificateMetadata;
use crate::store::RenewalRequest;

/// Certificates shorter-lived than this renew at half their lifetime rather
/// than at two thirds: a 6-day certificate then still has 3 days of retries.
pub const SHORT_LIVED: time::Duration = time::Duration::days(10);

/// How often the CA's renewal information (RFC 9773) is fetched.
pub const ARI_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// Bounds applied to any `Retry-After` a CA sends.
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(60);
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Consecutive failures back off along this ladder, then stay on its last step.
pub const BACKOFF_STEPS: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(100 * 60),
    Duration::from_secs(24 * 3600),
];

/// Relative jitter applied to backoff delays (±10 %), so replicas and
/// certificates that failed together do not retry together.
pub const BACKOFF_JITTER: f64 = 0.1;

/// Certificates allowed per identical name set in [`ORDER_WINDOW`]; Let's
/// Encrypt refuses the sixth duplicate certificate in a week. Only orders
/// that issued (or whose outcome is unknown) count: failed ones do not, as
/// at the CA.
pub const ORDER_LIMIT: usize = 5;
pub const ORDER_WINDOW: time::Duration = time::Duration::days(7);

/// Failed orders allowed per name set in [`FAILURE_WINDOW`]; Let's Encrypt
/// allows 5 failed authorizations per identifier per hour. Failures pace
/// the retries this way but never stop them for longer than the window.
pub const FAILURE_LIMIT: usize = 5;
pub const FAILURE_WINDOW: time::Duration = time::Duration::hours(1);

/// New orders allowed per ACME account in [`ACCOUNT_ORDER_WINDOW`]: Let's
/// Encrypt's limit of 300 new orders per account per 3 hours. Counted over
/// every certificate this process orders for; like the failure budget it
/// paces orders (the next one waits for the oldest to leave the window) and
/// never stops them for longer than the window.
pub const ACCOUNT_ORDER_LIMIT: usize = 300;
pub const ACCOUNT_ORDER_WINDOW: time::Duration = time::Duration::hours(3);

/// When a certificate is due for renewal without ARI: once less than a third
/// of its lifetime remains (a half for certificates shorter than 10 days).
pub fn default_renewal_time(metadata: &CertificateMetadata) -> OffsetDateTime {
    let lifetime = metadata.lifetime();
    let remaining = if lifetime < SHORT_LIVED {
        lifetime / 2
    } else {
        lifetime / 3
    };
    metadata.not_after - remaining
}

/// The renewal window a CA suggested through ARI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriWindow {
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

impl AriWindow {
    /// A uniformly random point of the window (RFC 9773 §4.2), `draw` in
    /// `[0, 1)`. A window whose end is before its start collapses to its start.
    pub fn pick(&self, draw: f64) -> OffsetDateTime {
        let span = self.end - self.start;
        if span <= time::Duration::ZERO {
            return self.start;
        }
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.start + span * draw
    }
}

/// Why a certificate must be ordered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewReason {
    /// Nothing usable is stored.
    Missing,
    /// The stored certificate was ordered for other names, key type or profile.
    ConfigurationChanged,
    /// The stored certificate has expired.
    NotValid,
    /// Its renewal time by the lifetime rule has come.
    Due,
    /// The time picked in the CA's ARI window has come.
    AriWindow,
    /// An operator asked for a new certificate (`envoy-acme-sds renew`).
    Requested,
}

/// The outcome of the renewal rule for one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalDecision {
    RenewNow(RenewReason),
    /// Keep the current certificate; renew at this time.
    RenewAt(OffsetDateTime),
}

/// The renewal rule. `ari_time` is the point already picked in the CA's
/// window, if the CA offers ARI: the CA knows about revocations and incidents,
/// so its window takes precedence over the lifetime rule.
pub fn decide(
    stored: Option<&CertificateMetadata>,
    matches_configuration: bool,
    ari_time: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> RenewalDecision {
    let Some(metadata) = stored else {
        return RenewalDecision::RenewNow(RenewReason::Missing);
    };
    if !matches_configuration {
        return RenewalDecision::RenewNow(RenewReason::ConfigurationChanged);
    }
    // Expired only: a certificate whose start is still ahead (the CA's clock
    // runs ahead of ours and it does not backdate) becomes valid by itself;
    // ordering another would give the same and spend the weekly budget.
    if now >= metadata.not_after {
        return RenewalDecision::RenewNow(RenewReason::NotValid);
    }
    match ari_time {
        Some(at) if at <= now => RenewalDecision::RenewNow(RenewReason::AriWindow),
        Some(at) => RenewalDecision::RenewAt(at),
        None => {
            let at = default_renewal_time(metadata);
            if at <= now {
                RenewalDecision::RenewNow(RenewReason::Due)
            } else {
                RenewalDecision::RenewAt(at)
            }
        }
    }
}

/// Whether an operator's renewal request is still open: the stored
/// certificate is the one it asked to replace. A request is thus answered by
/// the first certificate stored after it, by any replica, and never needs
/// deleting; no clock takes part, so a requester's clock running ahead
/// cannot keep it open. A request of an older version names no serial: only
/// then is its time compared with the certificate's.
pub fn renewal_requested(stored: &CertificateMetadata, request: Option<&RenewalRequest>) -> bool {
    request.is_some_and(|request| match &request.replaces_serial {
        Some(serial) => *serial == stored.serial,
        None => stored.issued_at < request.requested_at,
    })
}

/// `Retry-After` bounded to [1 minute, 1 day]: a CA's hint is honoured, but a
/// zero would turn into a hot loop and a week into a missed renewal.
pub fn clamp_retry_after(retry_after: Duration) -> Duration {
    retry_after.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
}

/// The delay before the next attempt after `consecutive_failures` (≥ 1)
/// failed ones: 1 m, 10 m, 100 m, then daily, times `1 ± 10 %` from `jitter`
/// in `[-1, 1]`. A CA's `Retry-After` is honoured: the attempt never comes
/// before it (clamped), nor sooner than the backoff step.
pub fn failure_delay(
    consecutive_failures: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let step = usize::try_from(consecutive_failures.saturating_sub(1))
        .unwrap_or(usize::MAX)
        .min(BACKOFF_STEPS.len() - 1);
    let base = BACKOFF_STEPS[step];
    let jittered = base.mul_f64(1.0 + BACKOFF_JITTER * jitter.clamp(-1.0, 1.0));
    match retry_after {
        Some(hint) => jittered.max(clamp_retry_after(hint)),
        None => jittered,
    }
}

/// When to fetch the ARI window again: twice a day, or sooner if the CA's
/// `Retry-After` on the renewal-info response asks for it (clamped).
pub fn next_ari_check(retry_after: Option<Duration>) -> Duration {
    retry_after
        .map(clamp_retry_after)
        .map_or(ARI_CHECK_INTERVAL, |hint| hint.min(ARI_CHECK_INTERVAL))
}

/// Refusal to place another order for a name set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{count} {counted} for this exact set of names in the last {window} (limit {limit}); \
     not ordering again before {next_allowed}"
)]
pub struct OrderBudgetExhausted {
    pub count: usize,
    pub limit: usize,
    /// What was counted: "issued orders" or "failed orders".
    pub counted: &'static str,
    /// Over which span: "7 days" or "hour".
    pub window: &'static str,
    pub next_allowed: OffsetDateTime,
}

/// When orders were placed, and for which exact set of names: persisted with
/// the certificate so restarts and replicas count them too. Only orders for
/// the same set count against each other, as at the CA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHistory {
    #[serde(default)]
    orders: Vec<Order>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    /// [`crate::domain::NameSet::canonical_key`] of the order.
    names: String,
    /// Absent in records written before outcomes were kept: those count as
    /// placed, which is the safe reading.
    #[serde(default)]
    outcome: OrderOutcome,
}

/// How an order ended, as far as this service knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderOutcome {
    /// Placed, outcome not (yet) known: the process may have stopped after
    /// the CA issued, so it counts as issued.
    #[default]
    Placed,
    Issued,
    /// The CA refused it or a challenge failed: no certificate exists.
    Failed,
}

impl OrderHistory {
    /// Whether one more order for the name set `names` is allowed at `now`.
    pub fn check(&self, names: &str, now: OffsetDateTime) -> Result<(), OrderBudgetExhausted> {
        let issued = self.within(names, now, ORDER_WINDOW, |outcome| {
            outcome != OrderOutcome::Failed
        });
        budget(
            &issued,
            ORDER_LIMIT,
            ORDER_WINDOW,
            "issued orders",
            "7 days",
        )?;
        let failed = self.within(names, now, FAILURE_WINDOW, |outcome| {
            outcome == OrderOutcome::Failed
        });
        budget(
            &failed,
            FAILURE_LIMIT,
            FAILURE_WINDOW,
            "failed orders",
            "hour",
        )
    }

    /// Records an order for `names` placed at `now`, forgetting those out of the window.
    pub fn record(&mut self, names: &str, now: OffsetDateTime) {
        self.orders.retain(|order| order.at > now - ORDER_WINDOW);
        self.orders.push(Order {
            at: now,
            names: names.to_owned(),
            outcome: OrderOutcome::Placed,
        });
    }

    /// Notes how the last order placed for `names` ended.
    pub fn settle(&mut self, names: &str, outcome: OrderOutcome) {
        if let Some(order) = self
            .orders
            .iter_mut()
            .rev()
            .find(|order| order.names == names && order.outcome == OrderOutcome::Placed)
        {
            order.outcome = outcome;
        }
    }

    /// When orders for `names` whose outcome `counts` were placed within
    /// `window` before `now`.
    fn within(
        &self,
        names: &str,
        now: OffsetDateTime,
        window: time::Duration,
        counts: impl Fn(OrderOutcome) -> bool,
    ) -> Vec<OffsetDateTime> {
        self.orders
            .iter()
            .filter(|order| order.names == names && counts(order.outcome))
            .map(|order| order.at)
            .filter(|at| *at > now - window)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// How each recorded order ended, oldest first.
    pub fn outcomes(&self) -> Vec<OrderOutcome> {
        self.orders.iter().map(|order| order.outcome).collect()
    }
}

/// New orders placed with one ACME account, by every certificate of this
/// process: shared by the managers (see [`ACCOUNT_ORDER_LIMIT`]). Kept in
/// memory: only the replica holding the renewal lock orders, and a new
/// holder starts counting afresh, which at worst lets one window hold twice
/// the limit once, where the CA answers `rateLimited` and the manager backs
/// off as for any refusal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountOrders {
    placed: std::collections::VecDeque<OffsetDateTime>,
}

impl AccountOrders {
    /// Whether one more new order fits the account's budget at `now`.
    pub fn check(&self, now: OffsetDateTime) -> Result<(), OrderBudgetExhausted> {
        let recent: Vec<OffsetDateTime> = self
            .placed
            .iter()
            .copied()
            .filter(|at| *at > now - ACCOUNT_ORDER_WINDOW)
            .collect();
        budget(
            &recent,
            ACCOUNT_ORDER_LIMIT,
            ACCOUNT_ORDER_WINDOW,
            "new orders of the ACME account (every certificate)",
            "3 hours",
        )
    }

    /// Records a new order placed at `now`, forgetting those out of the window.
    pub fn record(&mut self, now: OffsetDateTime) {
        while self
            .placed
            .front()
            .is_some_and(|at| *at <= now - ACCOUNT_ORDER_WINDOW)
        {
            self.placed.pop_front();
        }
        self.placed.push_back(now);
    }
}

/// A cap on new orders in a sliding hour (`--orders-per-hour`), shared by
/// the managers of routed hosts: a burst of new tags (a job gone wrong,
/// a typo in a loop) cannot spend the account's budget at the CA. Kept in
/// memory, like [`AccountOrders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyOrderCap {
    limit: usize,
    placed: std::collections::VecDeque<OffsetDateTime>,
}

impl HourlyOrderCap {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            placed: std::collections::VecDeque::new(),
        }
    }

    /// Whether one more order fits at `now`.
    pub fn check(&self, now: OffsetDateTime) -> Result<(), OrderBudgetExhausted> {
        let recent: Vec<OffsetDateTime> = self
            .placed
            .iter()
            .copied()
            .filter(|at| *at > now - time::Duration::HOUR)
            .collect();
        budget(
            &recent,
            self.limit,
            time::Duration::HOUR,
            "new orders for routed hosts (--orders-per-hour)",
            "hour",
        )
    }

    pub fn record(&mut self, now: OffsetDateTime) {
        while self
            .placed
            .front()
            .is_some_and(|at| *at <= now - time::Duration::HOUR)
        {
            self.placed.pop_front();
        }
        self.placed.push_back(now);
    }
}

/// Refuses when `recent` already holds `limit` entries; the oldest must
/// leave the window before another fits.
fn budget(
    recent: &[OffsetDateTime],
    limit: usize,
    window: time::Duration,
    counted: &'static str,
    window_name: &'static str,
) -> Result<(), OrderBudgetExhausted> {
    if recent.len() < limit {
        return Ok(());
    }
    let oldest = recent
        .iter()
        .copied()
        .min()
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    Err(OrderBudgetExhausted {
        count: recent.len(),
        limit,
        counted,
        window: window_name,
        next_allowed: oldest + window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn metadata(not_before: OffsetDateTime, lifetime: time::Duration) -> CertificateMetadata {
        CertificateMetadata {
            names: Vec::new(),
            not_before,
            not_after: not_before + lifetime,
            serial: "01".to_owned(),
            issued_at: not_before,
            ari_cert_id: None,
            key_type: None,
            profile: None,
        }
    }

    const START: OffsetDateTime = datetime!(2025-03-01 00:00 UTC);
    const NAMES: &str = "*.example.com,example.com";

    #[test]
    fn ninety_day_certificate_renews_with_a_third_left() {
        let meta = metadata(START, time::Duration::days(90));
        assert_eq!(
            default_renewal_time(&meta),
            START + time::Duration::days(60)
        );
        assert_eq!(
            decide(Some(&meta), true, None, START + time::Duration::days(59)),
            RenewalDecision::RenewAt(START + time::Duration::days(60))
        );
        assert_eq!(
            decide(Some(&meta), true, None, START + time::Duration::days(60)),
            RenewalDecision::RenewNow(RenewReason::Due)
        );
    }

    #[test]
    fn six_day_certificate_renews_at_half_life() {
        let meta = metadata(START, time::Duration::days(6));
        assert_eq!(default_renewal_time(&meta), START + time::Duration::days(3));
        // A 45-day `tlsserver` certificate is not short-lived: a third remains.
        let meta45 = metadata(START, time::Duration::days(45));
        assert_eq!(
            default_renewal_time(&meta45),
            START + time::Duration::days(30)
        );
        // Just under the threshold is short-lived.
        let meta9 = metadata(START, time::Duration::days(9));
        assert_eq!(
            default_renewal_time(&meta9),
            START + time::Duration::hours(108)
        );
    }

    #[test]
    fn ari_window_takes_precedence_and_is_sampled_uniformly() {
        let meta = metadata(START, time::Duration::days(90));
        let window = AriWindow {
            start: START + time::Duration::days(10),
            end: START + time::Duration::days(12),
        };
        assert_eq!(window.pick(0.0), window.start);
        assert_eq!(window.pick(0.5), START + time::Duration::days(11));
        assert!(window.pick(0.999_999) < window.end);
        // An early window (e.g. revocation announced) overrides the 60-day rule.
        let at = window.pick(0.25);
        assert_eq!(
            decide(Some(&meta), true, Some(at), START + time::Duration::days(1)),
            RenewalDecision::RenewAt(START + time::Duration::hours(10 * 24 + 12))
        );
        // A window in the past means now.
        assert_eq!(
            decide(
                Some(&meta),
                true,
                Some(at),
                START + time::Duration::days(13)
            ),
            RenewalDecision::RenewNow(RenewReason::AriWindow)
        );
        let inverted = AriWindow {
            start: window.end,
            end: window.start,
        };
        assert_eq!(inverted.pick(0.7), window.end);
        assert_eq!(window.pick(f64::NAN), window.start);
    }

    #[test]
    fn missing_changed_or_expired_certificates_renew_now() {
        let meta = metadata(START, time::Duration::days(90));
        assert_eq!(
            decide(None, true, None, START),
            RenewalDecision::RenewNow(RenewReason::Missing)
        );
        assert_eq!(
            decide(Some(&meta), false, None, START + time::Duration::days(1)),
            RenewalDecision::RenewNow(RenewReason::ConfigurationChanged)
        );
        assert_eq!(
            decide(Some(&meta), true, None, START + time::Duration::days(91)),
            RenewalDecision::RenewNow(RenewReason::NotValid)
        );
    }

    #[test]
    fn a_certificate_starting_in_the_future_is_kept_not_reordered() {
        let meta = metadata(START, time::Duration::days(90));
        let before_start = START - time::Duration::seconds(30);
        assert_eq!(
            decide(Some(&meta), true, None, before_start),
            RenewalDecision::RenewAt(default_renewal_time(&meta))
        );
    }

    #[test]
    fn a_renewal_request_holds_until_another_certificate_is_stored() {
        let meta = metadata(START, time::Duration::days(90));
        assert!(!renewal_requested(&meta, None));
        // Stamped a year ahead of this clock: open only while `meta` is stored.
        let ahead = RenewalRequest::replacing(&meta, START + time::Duration::days(365));
        assert!(renewal_requested(&meta, Some(&ahead)));
        let mut renewed = meta.clone();
        renewed.serial = "0bad".to_owned();
        assert!(!renewal_requested(&renewed, Some(&ahead)));
    }

    #[test]
    fn a_request_naming_no_serial_is_compared_by_time() {
        let meta = metadata(START, time::Duration::days(90));
        let legacy = |at| RenewalRequest {
            requested_at: at,
            replaces_serial: None,
        };
        assert!(renewal_requested(
            &meta,
            Some(&legacy(START + time::Duration::days(1)))
        ));
        assert!(!renewal_requested(
            &meta,
            Some(&legacy(START - time::Duration::seconds(1)))
        ));
    }

    #[test]
    fn the_hourly_cap_on_routed_orders_slides() {
        let mut cap = HourlyOrderCap::new(2);
        cap.check(START).expect("first");
        cap.record(START);
        let minute = START + time::Duration::minutes(1);
        cap.check(minute).expect("second");
        cap.record(minute);
        let refused = cap.check(minute).expect_err("third in the hour");
        assert_eq!(refused.limit, 2);
        assert_eq!(refused.next_allowed, START + time::Duration::HOUR);
        assert!(
            refused.to_string().contains("--orders-per-hour"),
            "{refused}"
        );
        cap.check(START + time::Duration::HOUR + time::Duration::SECOND)
            .expect("the first left the hour");
        assert!(
            HourlyOrderCap::new(0).check(START).is_err(),
            "0 orders nothing"
        );
    }

    #[test]
    fn the_account_budget_paces_new_orders_and_never_stops_them() {
        let mut account = AccountOrders::default();
        // 300 orders, one a second from START: the 301st waits.
        for second in 0..ACCOUNT_ORDER_LIMIT as i64 {
            let at = START + time::Duration::seconds(second);
            account.check(at).expect("within the budget");
            account.record(at);
        }
        let later = START + time::Duration::minutes(30);
        let refused = account.check(later).expect_err("the 301st in 3 hours");
        assert_eq!(refused.count, ACCOUNT_ORDER_LIMIT);
        assert_eq!(refused.next_allowed, START + ACCOUNT_ORDER_WINDOW);
        assert!(refused.to_string().contains("ACME account"), "{refused}");
        // Once the first order leaves the window, one more fits, then the
        // next waits for the second: paced, one slot at a time.
        let reopened = refused.next_allowed;
        account.check(reopened).expect("a slot freed");
        account.record(reopened);
        let refused = account.check(reopened).expect_err("full again");
        assert_eq!(
            refused.next_allowed,
            START + time::Duration::seconds(1) + ACCOUNT_ORDER_WINDOW
        );
        // Never for days: after a window without orders the budget is whole.
        let quiet = reopened + ACCOUNT_ORDER_WINDOW;
        account.check(quiet).expect("a window later");
        account.record(quiet);
        assert_eq!(account.placed.len(), 1, "old orders forgotten");
    }

    #[test]
    fn backoff_ladder_is_1m_10m_100m_then_daily() {
        let minutes = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(failure_delay(1, 0.0, None), minutes(1));
        assert_eq!(failure_delay(2, 0.0, None), minutes(10));
        assert_eq!(failure_delay(3, 0.0, None), minutes(100));
        assert_eq!(failure_delay(4, 0.0, None), minutes(24 * 60));
        assert_eq!(failure_delay(40, 0.0, None), minutes(24 * 60));
        // Zero failures is treated as the first.
        assert_eq!(failure_delay(0, 0.0, None), minutes(1));
    }

    #[test]
    fn backoff_jitter_stays_within_ten_percent() {
        assert_eq!(failure_delay(2, 1.0, None), Duration::from_secs(660));
        assert_eq!(failure_delay(2, -1.0, None), Duration::from_secs(540));
        assert_eq!(failure_delay(2, 7.0, None), Duration::from_secs(660));
    }

    #[test]
    fn retry_after_is_clamped_and_honoured() {
        assert_eq!(clamp_retry_after(Duration::ZERO), Duration::from_secs(60));
        assert_eq!(
            clamp_retry_after(Duration::from_secs(90)),
            Duration::from_secs(90)
        );
        assert_eq!(
            clamp_retry_after(Duration::from_secs(30 * 24 * 3600)),
            Duration::from_secs(24 * 3600)
        );
        // A longer Retry-After than the backoff step wins...
        assert_eq!(
            failure_delay(1, 0.0, Some(Duration::from_secs(3 * 3600))),
            Duration::from_secs(3 * 3600)
        );
        // ...a shorter one does not make the retry hotter than the ladder...
        assert_eq!(
            failure_delay(3, 0.0, Some(Duration::from_secs(5))),
            Duration::from_secs(100 * 60)
        );
        // ...and a week-long one is cut to a day.
        assert_eq!(
            failure_delay(1, 0.0, Some(Duration::from_secs(7 * 24 * 3600))),
            Duration::from_secs(24 * 3600)
        );
    }

    #[test]
    fn ari_is_checked_twice_a_day_or_when_the_ca_asks() {
        assert_eq!(next_ari_check(None), Duration::from_secs(12 * 3600));
        assert_eq!(
            next_ari_check(Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
        assert_eq!(
            next_ari_check(Some(Duration::ZERO)),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_ari_check(Some(Duration::from_secs(5 * 24 * 3600))),
            Duration::from_secs(12 * 3600)
        );
    }

    #[test]
    fn sixth_order_in_a_week_is_refused_until_the_first_ages_out() {
        let mut history = OrderHistory::default();
        for day in 0..5 {
            let at = START + time::Duration::days(day);
            history.check(NAMES, at).expect("within budget");
            history.record(NAMES, at);
        }
        // Another name set has its own budget.
        history
            .check("other.example", START + time::Duration::days(5))
            .expect("other names unaffected");
        let refused = history
            .check(NAMES, START + time::Duration::days(5))
            .expect_err("sixth order refused");
        assert_eq!(refused.count, 5);
        assert_eq!(refused.next_allowed, START + time::Duration::days(7));
        assert!(refused.to_string().contains("limit 5"));
        history
            .check(
                NAMES,
                START + time::Duration::days(7) + time::Duration::seconds(1),
            )
            .expect("first order left the window");
        history.record(NAMES, START + time::Duration::days(8));
        assert_eq!(history.len(), 4, "orders older than a week are forgotten");
    }

    #[test]
    fn failed_orders_do_not_use_up_the_weekly_budget_but_pace_retries_within_an_hour() {
        let mut history = OrderHistory::default();
        // A day of a CA or DNS outage: an order every 10 minutes, all failing.
        for attempt in 0..144 {
            let at = START + time::Duration::minutes(10 * attempt);
            if history.check(NAMES, at).is_ok() {
                history.record(NAMES, at);
                history.settle(NAMES, OrderOutcome::Failed);
            }
        }
        let after_a_day = START + time::Duration::days(1);
        history
            .check(NAMES, after_a_day)
            .expect("a day of failures never stops ordering");
        // Five failures within an hour make the next wait for the first to age out.
        let mut burst = OrderHistory::default();
        for minute in 0..5 {
            let at = START + time::Duration::minutes(minute);
            burst.check(NAMES, at).expect("within the failure budget");
            burst.record(NAMES, at);
            burst.settle(NAMES, OrderOutcome::Failed);
        }
        let refused = burst
            .check(NAMES, START + time::Duration::minutes(5))
            .expect_err("sixth failure in an hour waits");
        assert_eq!(refused.next_allowed, START + time::Duration::hours(1));
        assert!(refused.to_string().contains("failed orders"), "{refused}");
        burst
            .check(
                NAMES,
                START + time::Duration::hours(1) + time::Duration::seconds(1),
            )
            .expect("the first failure left the hour");
    }

    #[test]
    fn orders_with_an_unknown_outcome_count_as_issued() {
        let mut history = OrderHistory::default();
        for day in 0..5 {
            // Placed, never settled: the process stopped mid-order.
            history.record(NAMES, START + time::Duration::days(day));
        }
        assert!(
            history
                .check(NAMES, START + time::Duration::days(5))
                .is_err()
        );
        // An old record without an outcome reads as placed.
        let old: OrderHistory = serde_json::from_str(
            r#"{"orders":[{"at":"2025-03-01T00:00:00Z","names":"*.example.com,example.com"}]}"#,
        )
        .expect("old record");
        assert_eq!(old.orders[0].outcome, OrderOutcome::Placed);
    }

    #[test]
    fn order_history_round_trips_through_json() {
        let mut history = OrderHistory::default();
        history.record(NAMES, START);
        let json = serde_json::to_string(&history).expect("serialize");
        let back: OrderHistory = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, history);
    }
}

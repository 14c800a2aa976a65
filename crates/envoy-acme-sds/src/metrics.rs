//! The service's own Prometheus metrics (xds-core and consul-client
//! register theirs beside them).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `envoy_acme_sds_certificate_not_after_timestamp_seconds` | gauge | `secret` |
//! | `envoy_acme_sds_certificate_renewal_in_seconds` | gauge (negative when overdue) | `secret` |
//! | `envoy_acme_sds_renewals_total` | counter | `secret`, `result` = `ok`/`failed` |
//! | `envoy_acme_sds_acme_request_duration_seconds` | histogram | |
//! | `envoy_acme_sds_issuance_duration_seconds` | histogram: history write to published certificate | |
//! | `envoy_acme_sds_issuance_step_duration_seconds` | histogram | `step` (see [`IssuanceStep`](crate::timings::IssuanceStep)) |
//! | `envoy_acme_sds_challenge_withdrawal_failures_total` | counter: challenge responses the solver failed to withdraw | |
//! | `envoy_acme_sds_lock_holder` | gauge, 1 while this replica holds the renewal lock | |
//! | `envoy_acme_sds_keys_resealed_total` | counter: stored secrets rewritten sealed with the current key | |
//! | `envoy_acme_sds_placeholder_secrets` | gauge: routed hosts served a self-signed placeholder | |
//! | `envoy_acme_sds_routed_hosts` | gauge: routed TLS hosts by plan | `plan` = `ordered`/`covered`/`refused` |
//! | `envoy_acme_sds_routed_refused_hosts` | gauge: refused routed hosts by reason | `reason` |
//! | `envoy_acme_sds_routed_renewing` | gauge: routed hosts whose certificate this replica keeps (lock holder: routed, or unrouted within the grace) | |
//!
//! The certificate gauges are computed at scrape time from what is served,
//! so "seconds to renewal" counts down without anything updating it. It
//! follows the lifetime rule, except on the replica that renews: there the
//! time picked in the CA's ARI window replaces it once the CA was asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

use crate::certificate::CertificateMetadata;
use crate::manager::{Outcome, RenewalObserver};
use crate::policy::default_renewal_time;
use crate::store::SecretName;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabel {
    secret: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabel {
    plan: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    secret: String,
    result: &'static str,
}

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    certificates: Arc<CertificateDates>,
    renewals: Family<RenewalLabels, Counter>,
    acme_request_duration: Histogram,
    issuance_duration: Histogram,
    issuance_steps: Family<StepLabel, Histogram>,
    withdrawal_failures: Counter,
    lock_holder: Gauge,
    keys_resealed: Counter,
    placeholders: Gauge,
    routed_hosts: Family<PlanLabel, Gauge>,
    refused_hosts: Family<ReasonLabel, Gauge>,
    routed_renewing: Gauge,
}

impl Default for ServiceMetrics {
    /// Unregistered metrics: they count, and export once [`ServiceMetrics::register`]ed.
    fn default() -> Self {
        Self {
            certificates: Arc::new(CertificateDates::default()),
            renewals: Family::default(),
            // 5 ms .. ~40 s.
            acme_request_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            // 10 ms .. ~80 s: a nearby CA issues in well under a second, a
            // public one with DNS propagation in tens of seconds.
            issuance_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            // 1 ms .. ~16 s.
            issuance_steps: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            withdrawal_failures: Counter::default(),
            lock_holder: Gauge::default(),
            keys_resealed: Counter::default(),
            placeholders: Gauge::default(),
            routed_hosts: Family::default(),
            refused_hosts: Family::default(),
            routed_renewing: Gauge::default(),
        }
    }
}

impl ServiceMetrics {
    /// Registers the metrics under `envoy_acme_sds_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("envoy_acme_sds");
        registry.register_collector(Box::new(Arc::clone(&self.certificates)));
        registry.register(
            "renewals",
            "Certificate renewals (orders) by outcome",
            self.renewals.clone(),
        );
        registry.register(
            "acme_request_duration_seconds",
            "Time to the ACME server's response headers, per HTTP request",
            self.acme_request_duration.clone(),
        );
        registry.register(
            "issuance_duration_seconds",
            "Time of each issuance, from recording the order to publishing the certificate",
            self.issuance_duration.clone(),
        );
        registry.register(
            "issuance_step_duration_seconds",
            "Time of each step of an issuance (their sum is the issuance's time)",
            self.issuance_steps.clone(),
        );
        registry.register(
            "challenge_withdrawal_failures",
            "Challenge responses (DNS-01 records, HTTP-01 tokens) the solver failed to withdraw after an order",
            self.withdrawal_failures.clone(),
        );
        registry.register(
            "lock_holder",
            "1 while this replica holds the renewal lock (always 1 with disk storage)",
            self.lock_holder.clone(),
        );
        registry.register(
            "keys_resealed",
            "Stored private keys rewritten sealed with the current encryption key (plaintext or previous key before)",
            self.keys_resealed.clone(),
        );
        registry.register(
            "placeholder_secrets",
            "Routed hosts served a self-signed placeholder (no certificate yet, or refused)",
            self.placeholders.clone(),
        );
        registry.register(
            "routed_hosts",
            "Routed TLS hosts by plan: ordered (own certificate), covered (by a configured one), refused",
            self.routed_hosts.clone(),
        );
        registry.register(
            "routed_refused_hosts",
            "Routed TLS hosts refused an order, by reason",
            self.refused_hosts.clone(),
        );
        registry.register(
            "routed_renewing",
            "Routed hosts whose certificate this replica keeps renewing (the lock holder: routed, or unrouted within --unrouted-grace)",
            self.routed_renewing.clone(),
        );
    }

    pub fn set_routed_renewing(&self, count: usize) {
        self.routed_renewing
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_placeholders(&self, count: usize) {
        self.placeholders
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the routed host counts; `plans` and `refusals` list every
    /// label with its count (zero included, so a cleared count shows 0).
    pub fn set_routed_hosts(
        &self,
        plans: &[(&'static str, usize)],
        refusals: &[(&'static str, usize)],
    ) {
        for (plan, count) in plans {
            self.routed_hosts
                .get_or_create(&PlanLabel { plan })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        for (reason, count) in refusals {
            self.refused_hosts
                .get_or_create(&ReasonLabel { reason })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    /// Counts stored secrets rewritten sealed with the current key.
    pub fn keys_resealed(&self, count: usize) {
        self.keys_resealed
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// The histogram the ACME client times its requests into.
    pub fn acme_request_duration(&self) -> Histogram {
        self.acme_request_duration.clone()
    }

    /// The counter the ACME client counts failed challenge withdrawals in.
    pub fn withdrawal_failures(&self) -> Counter {
        self.withdrawal_failures.clone()
    }

    pub fn set_lock_holder(&self, holds: bool) {
        self.lock_holder.set(i64::from(holds));
    }

    /// Records the dates of the certificate now served under `name`.
    pub fn certificate_served(&self, name: &SecretName, metadata: &CertificateMetadata) {
        self.certificates.set(
            name.as_str(),
            metadata.not_after,
            default_renewal_time(metadata),
        );
    }

    pub fn renewals(&self, name: &SecretName, result: &'static str) -> u64 {
        self.renewals
            .get_or_create(&RenewalLabels {
                secret: name.as_str().to_owned(),
                result,
            })
            .get()
    }
}

impl RenewalObserver for ServiceMetrics {
    fn observe(&self, name: &SecretName, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Issued { timings, .. } => {
                self.issuance_duration
                    .observe(timings.total().as_secs_f64());
                for (step, duration) in timings.steps() {
                    self.issuance_steps
                        .get_or_create(&StepLabel {
                            step: step.as_str(),
                        })
                        .observe(duration.as_secs_f64());
                }
                "ok"
            }
            Outcome::Failed { .. } => "failed",
            Outcome::Unchanged { renew_at, .. } => {
                // The renewing replica knows the CA's ARI window, which may
                // move renewal away from the lifetime rule used on serving.
                self.certificates.set_renew_at(name.as_str(), *renew_at);
                return;
            }
        };
        self.renewals
            .get_or_create(&RenewalLabels {
                secret: name.as_str().to_owned(),
                result,
            })
            .inc();
    }
}

/// Not-after and renewal time per served secret, turned into gauges at scrape time.
#[derive(Debug, Default)]
struct CertificateDates {
    dates: Mutex<BTreeMap<String, (OffsetDateTime, OffsetDateTime)>>,
}

impl CertificateDates {
    fn set(&self, name: &str, not_after: OffsetDateTime, renew_at: OffsetDateTime) {
        self.dates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (not_after, renew_at));
    }

    /// Updates the renewal time of a certificate already served.
    fn set_renew_at(&self, name: &str, renew_at: OffsetDateTime) {
        if let Some(dates) = self
            .dates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(name)
        {
            dates.1 = renew_at;
        }
    }
}

impl Collector for CertificateDates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let not_after = Family::<SecretLabel, Gauge>::default();
        let renewal_in = Family::<SecretLabel, Gauge>::default();
        let now = OffsetDateTime::now_utc();
        {
            let dates = self.dates.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, (expires, renew_at)) in dates.iter() {
                let label = SecretLabel {
                    secret: name.clone(),
                };
                not_after
                    .get_or_create(&label)
                    .set(expires.unix_timestamp());
                renewal_in
                    .get_or_create(&label)
                    .set((*renew_at - now).whole_seconds());
            }
        }
        not_after.encode(encoder.encode_descriptor(
            "certificate_not_after_timestamp_seconds",
            "Expiry (Unix time) of the certificate served under each secret name",
            None,
            not_after.metric_type(),
        )?)?;
        renewal_in.encode(encoder.encode_descriptor(
            "certificate_renewal_in_seconds",
            "Seconds until the served certificate is due for renewal (negative: overdue)",
            None,
            renewal_in.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::manager::ManagerError;
    use crate::store::StoreError;
    use crate::timings::{IssuanceStep, IssuanceTimings};

    /// The value of the (single) renewal gauge in `registry`'s exposition.
    fn renewal_in_seconds(registry: &Registry) -> i64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text.lines()
            .find(|l| l.starts_with("envoy_acme_sds_certificate_renewal_in_seconds{"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no renewal gauge in {text}"))
    }

    /// An issuance of two steps: 20 ms validating, 5 ms storing.
    fn issued_timings() -> IssuanceTimings {
        let mut watch = crate::timings::Stopwatch::start();
        watch.lap(IssuanceStep::Validated);
        watch.lap(IssuanceStep::Stored);
        let mut timings = watch.finish();
        timings.set_for_test(IssuanceStep::Validated, Duration::from_millis(20));
        timings.set_for_test(IssuanceStep::Stored, Duration::from_millis(5));
        timings
    }

    #[test]
    fn exposition_carries_dates_renewals_and_the_lock() {
        let mut registry = Registry::default();
        let metrics = ServiceMetrics::default();
        metrics.register(&mut registry);
        let name = SecretName::new("example.com").expect("name");
        let now = OffsetDateTime::now_utc();
        let metadata = CertificateMetadata {
            names: Vec::new(),
            not_before: now - time::Duration::days(10),
            not_after: now + time::Duration::days(80),
            serial: "01".to_owned(),
            issued_at: now,
            ari_cert_id: None,
            key_type: None,
            profile: None,
        };
        metrics.certificate_served(&name, &metadata);
        metrics.observe(
            &name,
            &Outcome::Issued {
                serial: "01".to_owned(),
                next_check: now,
                timings: issued_timings(),
            },
        );
        metrics.observe(
            &name,
            &Outcome::Failed {
                error: ManagerError::Store(StoreError::Io {
                    operation: "writing",
                    item: "orders/example.com".to_owned(),
                    source: std::io::Error::other("down"),
                }),
                consecutive_failures: 1,
                retry_at: now,
            },
        );
        metrics.set_lock_holder(true);
        metrics.acme_request_duration().observe(0.02);
        metrics.withdrawal_failures().inc();

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let expiry = format!(
            "envoy_acme_sds_certificate_not_after_timestamp_seconds{{secret=\"example.com\"}} {}",
            metadata.not_after.unix_timestamp()
        );
        assert!(text.contains(&expiry), "{text}");
        // Renewal at 60 of 90 days, i.e. in 50 days (give or take the test's runtime).
        let seconds = renewal_in_seconds(&registry);
        assert!(
            (50 * 86400 - 5..=50 * 86400).contains(&seconds),
            "{seconds}"
        );
        assert!(
            text.contains("envoy_acme_sds_renewals_total{secret=\"example.com\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "envoy_acme_sds_renewals_total{secret=\"example.com\",result=\"failed\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("envoy_acme_sds_lock_holder 1"), "{text}");
        assert!(
            text.contains("envoy_acme_sds_challenge_withdrawal_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("envoy_acme_sds_issuance_duration_seconds_sum 0.025"),
            "{text}"
        );
        assert!(
            text.contains(
                "envoy_acme_sds_issuance_step_duration_seconds_sum{step=\"validated\"} 0.02"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "envoy_acme_sds_issuance_step_duration_seconds_bucket{le=\"0.008\",step=\"stored\"} 1"
            ),
            "{text}"
        );

        // The renewing replica learns of an earlier ARI window.
        metrics.observe(
            &name,
            &Outcome::Unchanged {
                renew_at: now + time::Duration::days(10),
                next_check: now + time::Duration::hours(12),
            },
        );
        let seconds = renewal_in_seconds(&registry);
        assert!(
            (10 * 86400 - 5..=10 * 86400).contains(&seconds),
            "{seconds}"
        );
        assert!(
            text.contains("envoy_acme_sds_acme_request_duration_seconds_count 1"),
            "{text}"
        );
    }
}

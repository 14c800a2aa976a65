//! Where the time of one issuance goes: the duration of each step from the
//! order history's write to the published certificate, recorded by the
//! order and the manager, carried in [`Outcome::Issued`](crate::manager::Outcome)
//! and exported as a histogram per step (see [`metrics`](crate::metrics)).
//!
//! Steps are laps of one clock: their sum is the issuance's wall time. A
//! step that overlaps another (the key generated while the CA validates)
//! counts only the time the issuance waited for it.

use std::fmt;
use std::time::{Duration, Instant};

/// One step of an issuance, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuanceStep {
    /// The order recorded in the history before it is placed.
    HistoryRecorded,
    /// `newOrder` answered.
    OrderCreated,
    /// The order's authorizations read, their challenges picked.
    AuthorizationsFetched,
    /// The solver published the responses (DNS-01: the UPDATE answered).
    ChallengesPublished,
    /// The responses are visible where the CA looks (DNS-01: served by
    /// the check server).
    ChallengesVisible,
    /// Every challenge told ready.
    ChallengesReady,
    /// The CA validated every authorization: the order is ready.
    Validated,
    /// Waiting for the certificate key and CSR, generated concurrently.
    KeyGenerated,
    /// `finalize` answered.
    Finalized,
    /// The order valid and the chain downloaded.
    CertificateDownloaded,
    /// The chain checked against the key and the names.
    Checked,
    /// The certificate written to the store.
    Stored,
    /// The certificate handed to the SDS subscribers.
    Published,
    /// The order's outcome recorded in the history.
    HistorySettled,
}

impl IssuanceStep {
    pub const ALL: [Self; 14] = [
        Self::HistoryRecorded,
        Self::OrderCreated,
        Self::AuthorizationsFetched,
        Self::ChallengesPublished,
        Self::ChallengesVisible,
        Self::ChallengesReady,
        Self::Validated,
        Self::KeyGenerated,
        Self::Finalized,
        Self::CertificateDownloaded,
        Self::Checked,
        Self::Stored,
        Self::Published,
        Self::HistorySettled,
    ];

    /// The metric label and table row name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HistoryRecorded => "history_recorded",
            Self::OrderCreated => "order_created",
            Self::AuthorizationsFetched => "authorizations_fetched",
            Self::ChallengesPublished => "challenges_published",
            Self::ChallengesVisible => "challenges_visible",
            Self::ChallengesReady => "challenges_ready",
            Self::Validated => "validated",
            Self::KeyGenerated => "key_generated",
            Self::Finalized => "finalized",
            Self::CertificateDownloaded => "certificate_downloaded",
            Self::Checked => "checked",
            Self::Stored => "stored",
            Self::Published => "published",
            Self::HistorySettled => "history_settled",
        }
    }
}

impl fmt::Display for IssuanceStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The duration of each step of one issuance, in the order recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuanceTimings {
    steps: Vec<(IssuanceStep, Duration)>,
}

impl IssuanceTimings {
    pub fn steps(&self) -> &[(IssuanceStep, Duration)] {
        &self.steps
    }

    /// The time spent in `step`; `None` when the issuance skipped it (no
    /// challenge to solve when the CA reused the authorizations).
    pub fn get(&self, step: IssuanceStep) -> Option<Duration> {
        self.steps
            .iter()
            .filter(|(recorded, _)| *recorded == step)
            .map(|(_, duration)| *duration)
            .reduce(|a, b| a + b)
    }

    /// The wall time of the issuance: the sum of its laps.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|(_, duration)| *duration).sum()
    }

    /// Sets the duration of `step`'s laps, for tests of what reads them.
    #[cfg(test)]
    pub(crate) fn set_for_test(&mut self, step: IssuanceStep, duration: Duration) {
        for (recorded, recorded_duration) in &mut self.steps {
            if *recorded == step {
                *recorded_duration = duration;
            }
        }
    }

    /// These steps followed by `later`'s.
    pub(crate) fn extend(&mut self, later: IssuanceTimings) {
        self.steps.extend(later.steps);
    }
}

/// `order_created=12ms validated=140ms ...`, for the log.
impl fmt::Display for IssuanceTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (step, duration)) in self.steps.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{step}={}ms", duration.as_millis())?;
        }
        Ok(())
    }
}

/// Laps of one clock: each step lasts from the end of the previous one.
#[derive(Debug)]
pub(crate) struct Stopwatch {
    last: Instant,
    timings: IssuanceTimings,
}

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self {
            last: Instant::now(),
            timings: IssuanceTimings::default(),
        }
    }

    /// Ends `step` now.
    pub(crate) fn lap(&mut self, step: IssuanceStep) {
        let now = Instant::now();
        self.timings
            .steps
            .push((step, now.saturating_duration_since(self.last)));
        self.last = now;
    }

    /// Appends the steps another clock timed (the ACME order's) and
    /// carries on from now.
    pub(crate) fn append(&mut self, timed: IssuanceTimings) {
        self.timings.extend(timed);
        self.last = Instant::now();
    }

    pub(crate) fn finish(self) -> IssuanceTimings {
        self.timings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_to_the_wall_time() {
        let started = Instant::now();
        let mut watch = Stopwatch::start();
        std::thread::sleep(Duration::from_millis(5));
        watch.lap(IssuanceStep::OrderCreated);
        std::thread::sleep(Duration::from_millis(5));
        watch.lap(IssuanceStep::Validated);
        let timings = watch.finish();
        let wall = started.elapsed();
        assert!(
            timings.get(IssuanceStep::OrderCreated).expect("recorded") >= Duration::from_millis(5)
        );
        assert!(
            timings.get(IssuanceStep::Validated).expect("recorded") >= Duration::from_millis(5)
        );
        assert!(timings.total() <= wall, "{timings:?} vs {wall:?}");
        assert_eq!(timings.get(IssuanceStep::Stored), None);
        let order: Vec<_> = timings.steps().iter().map(|(step, _)| *step).collect();
        assert_eq!(order, [IssuanceStep::OrderCreated, IssuanceStep::Validated]);
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = IssuanceStep::ALL.iter().map(|s| s.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), IssuanceStep::ALL.len());
    }
}

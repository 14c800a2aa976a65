//! The per-service rule: how one watch's events change what its service
//! serves.
//!
//! No I/O and no clock here. The actor (`super`) hands every watch event and
//! every grace check to [`ServiceState::apply`] with the time, and acts on the
//! [`Change`] that comes out (logs, metrics, which clusters to build again,
//! a fresh read);
//! everything the engine decides about one service is decided here and is
//! tested without a runtime.
//!
//! The rule:
//! - A successful read is served as it is; it ends a degradation and a hold.
//! - An empty read right after an index reset, while instances are served, is
//!   held back: the last instances stay until the grace deadline. Agents
//!   re-register their services within seconds of a restored or restarted
//!   server, and serving nothing in between would be an outage caused by
//!   Consul, not by the backends. More empty reads during the hold keep it;
//!   a read with instances ends it. A hold still on at its deadline is
//!   released: the service serves nothing.
//! - An empty read that removes every instance of a service that had some,
//!   with no reset, is held the same way, degraded meanwhile, and at the
//!   deadline the service is read afresh and that read is believed, empty or
//!   not. Consul before 1.11 answers a read its token's ACLs filtered (a
//!   policy narrowed while the server runs) with 200 and `[]`, without
//!   moving the index and without saying so: such an answer cannot be told
//!   from every instance leaving at once, so it is not believed at once. The
//!   fresh read catches a policy restored meanwhile, which a blocking query
//!   on an unmoved index would not report. The price: a service whose
//!   instances really all go serves them `reset_grace` longer.
//! - An answer Consul says its ACLs filtered (Consul 1.11 and later) changes
//!   no instances and degrades the service, like a failing read.
//! - A failing read changes no instances: the service is degraded from the
//!   first failure until the next successful read, and the last good
//!   instances stay served (a hold keeps its deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SourceEvent;
use crate::model::ServiceInstance;
use crate::state::Freshness;

/// Why a service whose instances all vanished at once is degraded while
/// held.
pub(crate) const VANISHED: &str = "every instance vanished in one answer: kept for the reset \
grace, then read afresh (a token whose ACLs were narrowed gets such answers)";

/// Why a service whose answer Consul filtered is degraded.
pub(crate) const FILTERED: &str =
    "Consul filtered the answer by the token's ACLs (X-Consul-Results-Filtered-By-ACLs)";

/// The moment an input is applied: the monotonic instant times holds, the
/// wall clock dates a degradation for the admin API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) instant: Instant,
    pub(crate) unix_secs: u64,
}

/// What the rule is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// What the service's watch reported.
    Source(SourceEvent),
    /// The actor's periodic look at held answers.
    GraceCheck,
}

/// What one input did to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A read is served as it is (it may equal what was served before).
    Served,
    /// An empty read after an index reset: the last instances stay until
    /// `until`.
    HoldStarted { until: Instant },
    /// An empty read removing every instance, with no reset: the last
    /// instances stay until `until`, degraded, then the service is re-read.
    VanishedHeld { until: Instant },
    /// Another empty read during a hold: still held, at the read's index.
    StillHeld,
    /// Consul said its ACLs filtered the answer; the last instances stay.
    Filtered,
    /// Reads fail (this time with `error`); the last instances stay.
    Failing { error: String },
    /// The grace deadline passed with no instances back: none are served.
    Released,
    /// The grace deadline of vanished instances passed: the actor must read
    /// the service afresh, and the next read is believed.
    Reread,
    /// Nothing changed (a grace check with no hold due).
    Nothing,
}

impl Change {
    /// Whether the clusters fed by the service must be built again: every
    /// change but [`Change::Nothing`] moves the instances or the freshness,
    /// and freshness shows on the admin API even when endpoints stay the same.
    pub(crate) fn touches_clusters(&self) -> bool {
        !matches!(self, Self::Nothing)
    }
}

/// Why an empty read is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldCause {
    /// It came right after an index reset: released at the deadline.
    Reset,
    /// Every instance went in one answer: re-read at the deadline.
    Vanished,
}

/// Which instances the service serves.
#[derive(Debug, Clone, Default)]
enum Phase {
    /// Nothing read yet: nothing is known, so nothing is served.
    #[default]
    Unread,
    /// The last successful read's instances (possibly none).
    Read(Arc<Vec<ServiceInstance>>),
    /// An empty read is held back: `last` (never empty) is still served
    /// until `until`.
    Holding {
        last: Arc<Vec<ServiceInstance>>,
        until: Instant,
        cause: HoldCause,
    },
    /// A vanished hold ran out: `last` is served until the fresh read the
    /// actor started answers, and that answer is believed.
    Rereading { last: Arc<Vec<ServiceInstance>> },
}

/// One watched service: what it serves and how fresh that is.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceState {
    phase: Phase,
    freshness: Freshness,
}

impl ServiceState {
    /// The instances served, or `None` before the first successful read.
    pub(crate) fn instances(&self) -> Option<&Arc<Vec<ServiceInstance>>> {
        match &self.phase {
            Phase::Unread => None,
            Phase::Read(instances)
            | Phase::Holding {
                last: instances, ..
            }
            | Phase::Rereading { last: instances } => Some(instances),
        }
    }

    pub(crate) fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// When a held empty answer is released or re-read, while one is held.
    pub(crate) fn hold_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Holding { until, .. } => Some(until),
            Phase::Unread | Phase::Read(_) | Phase::Rereading { .. } => None,
        }
    }

    /// Applies one input at `now`; `reset_grace` is how long an empty answer
    /// is held.
    pub(crate) fn apply(&mut self, input: Input, now: Now, reset_grace: Duration) -> Change {
        match input {
            Input::Source(SourceEvent::Instances {
                instances,
                index,
                after_reset,
            }) => {
                let change = self.on_read(instances, after_reset, now.instant + reset_grace);
                if matches!(
                    self.phase,
                    Phase::Holding {
                        cause: HoldCause::Vanished,
                        ..
                    }
                ) {
                    // Held vanished instances stay degraded until a read
                    // with instances or the fresh read at the deadline.
                    self.degrade(VANISHED, now);
                } else {
                    self.freshness = Freshness::Synced { index };
                }
                change
            }
            Input::Source(SourceEvent::Filtered) => {
                self.degrade(FILTERED, now);
                Change::Filtered
            }
            Input::Source(SourceEvent::Failing { error }) => {
                self.degrade(&error, now);
                Change::Failing { error }
            }
            Input::GraceCheck => self.on_grace_check(now.instant),
        }
    }

    fn is_degraded(&self) -> bool {
        matches!(self.freshness, Freshness::Degraded { .. })
    }

    /// The first cause dates the degradation; later ones only confirm it.
    fn degrade(&mut self, error: &str, now: Now) {
        if !self.is_degraded() {
            self.freshness = Freshness::Degraded {
                error: error.to_owned(),
                since_unix: now.unix_secs,
            };
        }
    }

    fn on_read(
        &mut self,
        instances: Vec<ServiceInstance>,
        after_reset: bool,
        deadline: Instant,
    ) -> Change {
        let (phase, change) = match std::mem::take(&mut self.phase) {
            Phase::Holding { last, until, cause } if instances.is_empty() => {
                (Phase::Holding { last, until, cause }, Change::StillHeld)
            }
            Phase::Read(last) if instances.is_empty() && !last.is_empty() => {
                let (cause, change) = if after_reset {
                    (HoldCause::Reset, Change::HoldStarted { until: deadline })
                } else {
                    (
                        HoldCause::Vanished,
                        Change::VanishedHeld { until: deadline },
                    )
                };
                let until = deadline;
                (Phase::Holding { last, until, cause }, change)
            }
            Phase::Unread | Phase::Read(_) | Phase::Holding { .. } | Phase::Rereading { .. } => {
                (Phase::Read(Arc::new(instances)), Change::Served)
            }
        };
        self.phase = phase;
        change
    }

    fn on_grace_check(&mut self, now: Instant) -> Change {
        match std::mem::take(&mut self.phase) {
            Phase::Holding {
                until,
                cause: HoldCause::Reset,
                ..
            } if now >= until => {
                self.phase = Phase::Read(Arc::new(Vec::new()));
                Change::Released
            }
            Phase::Holding {
                last,
                until,
                cause: HoldCause::Vanished,
            } if now >= until => {
                self.phase = Phase::Rereading { last };
                Change::Reread
            }
            phase => {
                self.phase = phase;
                Change::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures;

    const GRACE: Duration = Duration::from_secs(10);

    fn read(ids: &[&str], index: u64) -> Input {
        Input::Source(fixtures::passing(ids, index))
    }

    fn empty_after_reset(index: u64) -> Input {
        Input::Source(fixtures::empty_after_reset(index))
    }

    fn failing(error: &str) -> Input {
        Input::Source(fixtures::failing(error))
    }

    fn failure(error: &str) -> Change {
        Change::Failing {
            error: error.to_owned(),
        }
    }

    /// One service under a 10 s reset grace, and a clock in milliseconds
    /// since the test began: each input is applied at a stated time.
    struct Service {
        start: Instant,
        state: ServiceState,
    }

    impl Service {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                state: ServiceState::default(),
            }
        }

        /// Serving `web-1`, read at index 50 at second 0.
        fn serving_web_1() -> Self {
            let mut service = Self::new();
            assert_eq!(service.at(0, read(&["web-1"], 50)), Change::Served);
            service
        }

        fn at(&mut self, secs: u64, input: Input) -> Change {
            self.at_ms(secs * 1000, input)
        }

        fn at_ms(&mut self, ms: u64, input: Input) -> Change {
            self.state.apply(input, self.now(ms), GRACE)
        }

        fn now(&self, ms: u64) -> Now {
            Now {
                instant: self.instant(ms),
                unix_secs: 1_700_000_000 + ms / 1000,
            }
        }

        fn instant(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }

        /// The instances served, by id.
        fn ids(&self) -> Option<Vec<&str>> {
            self.state
                .instances()
                .map(|list| list.iter().map(|i| &*i.id).collect())
        }

        fn freshness(&self) -> &Freshness {
            self.state.freshness()
        }

        fn degraded_since(&self, error: &str, secs: u64) -> Freshness {
            Freshness::Degraded {
                error: error.to_owned(),
                since_unix: self.now(secs * 1000).unix_secs,
            }
        }
    }

    #[test]
    fn before_the_first_read_nothing_is_known() {
        let service = Service::new();
        assert_eq!(service.ids(), None);
        assert_eq!(service.freshness(), &Freshness::Pending);
        assert_eq!(service.state.hold_until(), None);
    }

    #[test]
    fn a_read_is_served_as_it_is_at_its_index() {
        let mut service = Service::new();
        assert_eq!(service.at(0, read(&["web-1", "web-2"], 7)), Change::Served);
        assert_eq!(service.ids(), Some(vec!["web-1", "web-2"]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 7 });
    }

    #[test]
    fn an_empty_read_is_served_when_nothing_was_served() {
        let mut service = Service::new();
        assert_eq!(service.at(0, read(&[], 50)), Change::Served);
        assert_eq!(service.at(1, read(&[], 51)), Change::Served);
        assert_eq!(service.ids(), Some(vec![]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 51 });
    }

    #[test]
    fn fewer_instances_are_served_at_once_while_some_remain() {
        let mut service = Service::new();
        service.at(0, read(&["web-1", "web-2"], 50));
        assert_eq!(service.at(1, read(&["web-2"], 51)), Change::Served);
        assert_eq!(service.ids(), Some(vec!["web-2"]));
    }

    #[test]
    fn every_instance_vanishing_at_once_is_held_degraded_then_read_afresh() {
        // Consul 1.8.7 answers a token whose policy was narrowed with `[]`
        // at an index that moved for another reason: held, not believed.
        let mut service = Service::serving_web_1();
        let deadline = service.instant(12_000);
        assert_eq!(
            service.at(2, read(&[], 51)),
            Change::VanishedHeld { until: deadline }
        );
        assert_eq!(
            service.ids(),
            Some(vec!["web-1"]),
            "the last instances stay"
        );
        assert_eq!(service.freshness(), &service.degraded_since(VANISHED, 2));
        assert_eq!(service.at(5, read(&[], 52)), Change::StillHeld);
        assert_eq!(
            service.freshness(),
            &service.degraded_since(VANISHED, 2),
            "still degraded, since the first empty answer"
        );
        assert_eq!(service.at_ms(11_999, Input::GraceCheck), Change::Nothing);
        assert_eq!(service.at(12, Input::GraceCheck), Change::Reread);
        assert_eq!(
            service.ids(),
            Some(vec!["web-1"]),
            "kept until the fresh read"
        );
        assert_eq!(service.state.hold_until(), None);
        assert_eq!(service.at(13, Input::GraceCheck), Change::Nothing);
        // The fresh read is believed, empty or not.
        assert_eq!(service.at(14, read(&[], 52)), Change::Served);
        assert_eq!(service.ids(), Some(vec![]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 52 });
    }

    #[test]
    fn the_fresh_read_after_vanished_instances_brings_them_back() {
        let mut service = Service::serving_web_1();
        service.at(0, read(&[], 51));
        service.at(10, Input::GraceCheck);
        assert_eq!(service.at(11, read(&["web-1"], 51)), Change::Served);
        assert_eq!(service.ids(), Some(vec!["web-1"]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 51 });
    }

    #[test]
    fn instances_coming_back_during_a_vanished_hold_end_it_and_the_degradation() {
        let mut service = Service::serving_web_1();
        service.at(0, read(&[], 51));
        assert_eq!(service.at(3, read(&["web-2"], 52)), Change::Served);
        assert_eq!(service.ids(), Some(vec!["web-2"]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 52 });
        assert_eq!(service.at(11, Input::GraceCheck), Change::Nothing);
    }

    #[test]
    fn an_answer_filtered_by_acls_degrades_and_keeps_the_last_instances() {
        let mut service = Service::serving_web_1();
        assert_eq!(
            service.at(3, Input::Source(SourceEvent::Filtered)),
            Change::Filtered
        );
        assert_eq!(service.ids(), Some(vec!["web-1"]));
        assert_eq!(service.freshness(), &service.degraded_since(FILTERED, 3));
        assert_eq!(
            service.state.hold_until(),
            None,
            "no deadline: never believed"
        );
        assert_eq!(service.at(60, Input::GraceCheck), Change::Nothing);
        assert_eq!(service.ids(), Some(vec!["web-1"]));
        assert_eq!(
            service.at(61, read(&["web-1", "web-2"], 60)),
            Change::Served
        );
        assert_eq!(service.freshness(), &Freshness::Synced { index: 60 });
    }

    #[test]
    fn an_empty_read_after_a_reset_is_held_until_the_grace_deadline() {
        let mut service = Service::serving_web_1();
        let deadline = service.instant(13_000);
        assert_eq!(
            service.at(3, empty_after_reset(2)),
            Change::HoldStarted { until: deadline }
        );
        assert_eq!(
            service.ids(),
            Some(vec!["web-1"]),
            "the last instances stay"
        );
        assert_eq!(service.freshness(), &Freshness::Synced { index: 2 });
        assert_eq!(service.state.hold_until(), Some(deadline));
    }

    #[test]
    fn an_empty_read_after_a_reset_is_served_when_nothing_was_served() {
        let mut unread = Service::new();
        assert_eq!(unread.at(0, empty_after_reset(2)), Change::Served);
        assert_eq!(unread.ids(), Some(vec![]));

        let mut empty = Service::new();
        empty.at(0, read(&[], 50));
        assert_eq!(
            empty.at(1, empty_after_reset(2)),
            Change::Served,
            "nothing to hold"
        );
        assert_eq!(empty.state.hold_until(), None);
    }

    #[test]
    fn more_empty_reads_during_a_hold_keep_it_and_its_deadline() {
        let mut service = Service::serving_web_1();
        service.at(0, empty_after_reset(2));
        // The reads after the first one are no longer "after a reset".
        assert_eq!(service.at(5, read(&[], 3)), Change::StillHeld);
        assert_eq!(service.ids(), Some(vec!["web-1"]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 3 });
        assert_eq!(service.state.hold_until(), Some(service.instant(10_000)));
    }

    #[test]
    fn instances_coming_back_during_a_hold_end_it() {
        let mut service = Service::serving_web_1();
        service.at(0, empty_after_reset(2));
        assert_eq!(service.at(4, read(&["web-9"], 3)), Change::Served);
        assert_eq!(service.ids(), Some(vec!["web-9"]));
        assert_eq!(service.state.hold_until(), None);
        assert_eq!(
            service.at(11, Input::GraceCheck),
            Change::Nothing,
            "nothing empty follows"
        );
        assert_eq!(service.ids(), Some(vec!["web-9"]));
    }

    #[test]
    fn a_hold_is_released_at_its_deadline_and_not_before() {
        let mut service = Service::serving_web_1();
        service.at(0, empty_after_reset(2));
        assert_eq!(service.at_ms(9_999, Input::GraceCheck), Change::Nothing);
        assert_eq!(service.ids(), Some(vec!["web-1"]));
        assert_eq!(service.at(10, Input::GraceCheck), Change::Released);
        assert_eq!(service.ids(), Some(vec![]), "released: none are served");
        assert_eq!(service.state.hold_until(), None);
        assert_eq!(service.freshness(), &Freshness::Synced { index: 2 });
    }

    #[test]
    fn a_grace_check_without_a_hold_changes_nothing() {
        let mut unread = Service::new();
        assert_eq!(unread.at(60, Input::GraceCheck), Change::Nothing);
        assert_eq!(unread.ids(), None);
        let mut serving = Service::serving_web_1();
        assert_eq!(serving.at(60, Input::GraceCheck), Change::Nothing);
        assert_eq!(serving.ids(), Some(vec!["web-1"]));
    }

    #[test]
    fn a_failing_read_degrades_and_keeps_the_last_instances() {
        let mut service = Service::serving_web_1();
        assert_eq!(
            service.at(5, failing("connection refused")),
            failure("connection refused")
        );
        assert_eq!(
            service.ids(),
            Some(vec!["web-1"]),
            "an error changes no instances"
        );
        let expected = service.degraded_since("connection refused", 5);
        assert_eq!(service.freshness(), &expected);
    }

    #[test]
    fn a_failing_first_read_degrades_with_nothing_known() {
        let mut service = Service::new();
        service.at(0, failing("connection refused"));
        assert_eq!(service.ids(), None);
        let expected = service.degraded_since("connection refused", 0);
        assert_eq!(service.freshness(), &expected);
    }

    #[test]
    fn later_failures_keep_the_first_error_and_its_time() {
        let mut service = Service::serving_web_1();
        service.at(5, failing("connection refused"));
        assert_eq!(
            service.at(30, failing("timed out")),
            failure("timed out"),
            "each failure is reported"
        );
        let expected = service.degraded_since("connection refused", 5);
        assert_eq!(service.freshness(), &expected);
    }

    #[test]
    fn a_read_after_failures_recovers() {
        let mut service = Service::serving_web_1();
        service.at(5, failing("connection refused"));
        assert_eq!(service.at(6, read(&["web-2"], 51)), Change::Served);
        assert_eq!(service.ids(), Some(vec!["web-2"]));
        assert_eq!(service.freshness(), &Freshness::Synced { index: 51 });
    }

    #[test]
    fn failures_during_a_hold_keep_holding_until_the_same_deadline() {
        let mut service = Service::serving_web_1();
        service.at(0, empty_after_reset(2));
        service.at(4, failing("connection refused"));
        assert_eq!(service.ids(), Some(vec!["web-1"]));
        assert_eq!(service.state.hold_until(), Some(service.instant(10_000)));
        assert_eq!(service.at(10, Input::GraceCheck), Change::Released);
        let expected = service.degraded_since("connection refused", 4);
        assert_eq!(
            service.freshness(),
            &expected,
            "the release does not hide the failure"
        );
    }

    #[test]
    fn every_change_but_nothing_rebuilds_the_fed_clusters() {
        for change in [
            Change::Served,
            Change::HoldStarted {
                until: Instant::now(),
            },
            Change::VanishedHeld {
                until: Instant::now(),
            },
            Change::StillHeld,
            Change::Filtered,
            failure("connection refused"),
            Change::Released,
            Change::Reread,
        ] {
            assert!(change.touches_clusters(), "{change:?}");
        }
        assert!(!Change::Nothing.touches_clusters());
    }
}

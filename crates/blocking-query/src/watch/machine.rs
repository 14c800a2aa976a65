//! The watch as a state machine: a state, and one function that takes a
//! request's outcome to the next state and at most one event.
//!
//! No I/O here. The driver ([`super::watch`], in the parent module) sleeps
//! until [`State::next_request`] says, sends the request, and feeds the
//! outcome to [`State::step`]; everything the watch decides is decided here
//! and can be tested without a network or a clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::event::{Continuity, WatchEvent};
use super::index::IndexCursor;
use super::{Answer, WatchConfig};

/// Where a watch is between two requests.
#[derive(Debug)]
pub(crate) enum State<T> {
    /// Nothing asked yet: the next request is a plain read, sent now.
    Initial,
    /// The last request succeeded. The next blocks on the cursor's index,
    /// not before `not_before` (the rate limit). `last_started` is when the
    /// request that succeeded was sent: the rate limit counts from it.
    Healthy {
        value: Arc<T>,
        cursor: IndexCursor,
        not_before: Instant,
        last_started: Instant,
    },
    /// The last `failures` requests failed; the next, a plain read, is sent
    /// at `retry_at`. `last_good` is kept for the consumer, never replaced by
    /// nothing.
    Failing {
        last_good: Option<Arc<T>>,
        cursor: IndexCursor,
        failures: u32,
        retry_at: Instant,
    },
}

/// When and with which index the next request goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NextRequest {
    /// `None`: at once.
    pub(crate) not_before: Option<Instant>,
    pub(crate) index: u64,
}

/// When a request was sent and when its outcome arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) started: Instant,
    pub(crate) finished: Instant,
}

impl<T> State<T> {
    pub(crate) fn next_request(&self) -> NextRequest {
        match self {
            Self::Initial => NextRequest {
                not_before: None,
                index: 0,
            },
            Self::Healthy {
                cursor, not_before, ..
            } => NextRequest {
                not_before: Some(*not_before),
                index: cursor.request_index(),
            },
            // After a failure the agent may not be the one that issued our
            // index (restarted, replaced, restored): a blocking query on an
            // index it has not reached would hang for the whole `wait`. A
            // plain read answers at once, and its index tells the cursor
            // whether the data moved on, stayed, or went backwards.
            Self::Failing { retry_at, .. } => NextRequest {
                not_before: Some(*retry_at),
                index: 0,
            },
        }
    }

    /// Advances the watch by one request's outcome.
    ///
    /// `jitter` is a random number in `[0, 1]` for the backoff.
    pub(crate) fn step<E, M>(
        self,
        outcome: Result<Answer<T, M>, E>,
        timing: Timing,
        config: &WatchConfig,
        jitter: f64,
    ) -> (Self, Option<WatchEvent<T, E, M>>) {
        match outcome {
            Ok(response) => self.on_answer(response, timing, config),
            Err(error) => self.on_error(error, timing, config, jitter),
        }
    }

    fn on_answer<E, M>(
        self,
        response: Answer<T, M>,
        timing: Timing,
        config: &WatchConfig,
    ) -> (Self, Option<WatchEvent<T, E, M>>) {
        let (previous, mut cursor, recovering, earlier_start) = match self {
            Self::Initial => (None, IndexCursor::new(), false, None),
            Self::Healthy {
                value,
                cursor,
                last_started,
                ..
            } => (Some(value), cursor, false, Some(last_started)),
            // The failed attempts were spaced by the backoff already.
            Self::Failing {
                last_good, cursor, ..
            } => (last_good, cursor, true, None),
        };
        // After failures, the answer may come from a replaced agent or
        // server whose fresh state happens to carry the same index as the
        // old one (a restarted dev agent reaches the same raft index after
        // the same start-up writes): only the answer itself is trustworthy.
        let continuity = Continuity::of(cursor.observe(response.index), recovering);
        let value = match (previous, continuity) {
            (Some(previous), None) => previous,
            _ => Arc::new(response.value),
        };
        let index = cursor.last_seen().unwrap_or(1);
        // Rate limit: no three requests start within one `min_interval`.
        // The next request may follow this one at once, but must start
        // `min_interval` after the one before it. A single change, or two
        // in quick succession, is therefore followed up at once; only an
        // index that keeps moving (answers that return without blocking,
        // one after the other) is read at most twice per interval.
        //
        // Counting from this request's own start instead (the rule before)
        // delayed any change landing within `min_interval` of the previous
        // one: the catch-up read then returned at once, which delayed the
        // next change again, so changes a little more than `min_interval`
        // apart were each held back by most of the interval.
        let not_before = match earlier_start {
            Some(earlier) => earlier + config.min_interval,
            None => timing.started,
        };
        let event = continuity.map(|continuity| WatchEvent::Value {
            value: Arc::clone(&value),
            index,
            meta: response.meta,
            continuity,
        });
        (
            Self::Healthy {
                value,
                cursor,
                not_before,
                last_started: timing.started,
            },
            event,
        )
    }

    fn on_error<E, M>(
        self,
        error: E,
        timing: Timing,
        config: &WatchConfig,
        jitter: f64,
    ) -> (Self, Option<WatchEvent<T, E, M>>) {
        let (last_good, cursor, failures) = match self {
            Self::Initial => (None, IndexCursor::new(), 1),
            Self::Healthy { value, cursor, .. } => (Some(value), cursor, 1),
            Self::Failing {
                last_good,
                cursor,
                failures,
                ..
            } => (last_good, cursor, failures.saturating_add(1)),
        };
        let retry_in: Duration = config.backoff.delay(failures, jitter);
        let event = WatchEvent::Degraded {
            last_good: last_good.clone(),
            error,
            failures,
            retry_in,
        };
        (
            Self::Failing {
                last_good,
                cursor,
                failures,
                retry_at: timing.finished + retry_in,
            },
            Some(event),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Backoff;

    /// What a failed request says, for these tests: an HTTP status.
    #[derive(Debug, PartialEq, Eq)]
    struct Failure {
        status: u16,
    }

    type Outcome = Result<Answer<&'static str, ()>, Failure>;

    fn config() -> WatchConfig {
        WatchConfig {
            min_interval: Duration::from_millis(50),
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            ..WatchConfig::default()
        }
    }

    fn answer(value: &'static str, index: Option<u64>) -> Outcome {
        Ok(Answer {
            value,
            index,
            meta: (),
        })
    }

    fn failure() -> Outcome {
        Err(Failure { status: 500 })
    }

    fn at(start: Instant, ms: u64) -> Timing {
        Timing {
            started: start + Duration::from_millis(ms),
            finished: start + Duration::from_millis(ms + 1),
        }
    }

    #[test]
    fn a_healthy_watch_yields_only_changes() {
        let config = config();
        let t0 = Instant::now();
        let state = State::Initial;
        assert_eq!(state.next_request().index, 0);

        let (state, event) = state.step(answer("a", Some(5)), at(t0, 0), &config, 0.5);
        assert!(
            matches!(event, Some(WatchEvent::Value { index: 5, ref value, continuity: Continuity::Initial, .. }) if **value == "a")
        );
        // Only one request so far: the blocking query may follow at once.
        assert_eq!(
            state.next_request(),
            NextRequest {
                not_before: Some(t0),
                index: 5
            }
        );

        // The blocking query timed out: same index, nothing to say.
        let (state, event) = state.step(answer("a", Some(5)), at(t0, 60_000), &config, 0.5);
        assert!(event.is_none());
        // The request before it started long ago: no delay.
        assert_eq!(
            state.next_request().not_before,
            Some(t0 + Duration::from_millis(50))
        );

        let (_, event) = state.step(answer("b", Some(9)), at(t0, 60_100), &config, 0.5);
        assert!(
            matches!(event, Some(WatchEvent::Value { index: 9, ref value, continuity: Continuity::Advanced, .. }) if **value == "b")
        );
    }

    /// Drives the machine against a server whose index moves at the given
    /// instants (ms after `t0`, the initial read), the way the driver does:
    /// each request starts when the previous answer is in and the rate limit
    /// allows. A blocking query answers at the first change after it was sent,
    /// or at once if the index already moved. Returns, per request, when it
    /// started and when it was answered.
    fn simulate(changes_ms: &[u64], requests: usize) -> Vec<(u64, u64)> {
        let config = config();
        let t0 = Instant::now();
        let ms = |t: Instant| u64::try_from((t - t0).as_millis()).expect("small");
        let index_at = |t: u64| 1 + changes_ms.iter().filter(|c| **c <= t).count() as u64;
        let mut state = State::Initial;
        let mut finished = 0;
        let mut log = Vec::new();
        for _ in 0..requests {
            let next = state.next_request();
            let started = next.not_before.map_or(finished, |at| ms(at).max(finished));
            let answered = if next.index == 0 || index_at(started) > next.index {
                started
            } else {
                *changes_ms
                    .iter()
                    .find(|c| **c > started)
                    .expect("enough changes for the requests asked")
            };
            let timing = Timing {
                started: t0 + Duration::from_millis(started),
                finished: t0 + Duration::from_millis(answered),
            };
            state = state
                .step(answer("v", Some(index_at(answered))), timing, &config, 0.5)
                .0;
            finished = answered;
            log.push((started, answered));
        }
        log
    }

    #[test]
    fn changes_a_little_more_than_half_the_interval_apart_are_read_at_once() {
        // One change every 31 ms (about the pace of the convergence bench):
        // slower than two per 50 ms interval, so the watch must never make a
        // change wait. Counting the interval from each request's own start
        // held every change after the first back by about 19 ms.
        let changes: Vec<u64> = (1..=12).map(|k| 31 * k).collect();
        let log = simulate(&changes, 13);
        for ((started, answered), change) in log[1..].iter().zip(&changes) {
            assert_eq!(
                answered, change,
                "the change at {change} ms was read at {answered} ms (request sent at {started} ms)"
            );
        }
    }

    #[test]
    fn an_index_that_keeps_moving_is_read_at_most_twice_per_interval() {
        // The index moves every millisecond: every request is answered at
        // once, and only the rate limit paces the watch.
        let changes: Vec<u64> = (1..=1_000).collect();
        let starts: Vec<u64> = simulate(&changes, 8).iter().map(|(s, _)| *s).collect();
        assert_eq!(
            starts,
            [0, 0, 50, 50, 100, 100, 150, 150],
            "two requests per 50 ms interval, no more"
        );
    }

    #[test]
    fn a_burst_is_read_at_once_until_the_limit_applies() {
        // Quiet, then four changes 5 ms apart. The blocking query sent
        // during the quiet period reads the first; the next two requests go
        // out at once and each reads one change. A fourth request would be
        // the third start within 50 ms: it waits, and reads the last change
        // late.
        let log = simulate(&[1_000, 1_005, 1_010, 1_015, 60_000], 5);
        assert_eq!(
            log,
            [
                (0, 0),
                (0, 1_000),
                (1_000, 1_005),
                (1_005, 1_010),
                (1_050, 1_050)
            ],
            "(request sent, answered) in ms"
        );
    }

    #[test]
    fn failures_keep_the_last_value_back_off_and_recover() {
        let config = config();
        let t0 = Instant::now();
        let (state, _) = State::Initial.step(answer("a", Some(5)), at(t0, 0), &config, 0.0);

        let mut state = state;
        let mut delays = Vec::new();
        for attempt in 1..=4u32 {
            let timing = at(t0, 100 * u64::from(attempt));
            let (next, event) = state.step(failure(), timing, &config, 1.0);
            let retry_in = match event {
                Some(WatchEvent::Degraded {
                    last_good,
                    failures,
                    retry_in,
                    error,
                }) => {
                    assert_eq!(last_good.as_deref(), Some(&"a"));
                    assert_eq!(failures, attempt);
                    assert_eq!(error, Failure { status: 500 });
                    retry_in
                }
                other => panic!("expected Degraded, got {other:?}"),
            };
            delays.push(retry_in);
            // The next attempt waits out the backoff, and is a plain read.
            assert_eq!(
                next.next_request(),
                NextRequest {
                    not_before: Some(timing.finished + retry_in),
                    index: 0
                }
            );
            state = next;
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800].map(Duration::from_millis).to_vec()
        );

        // The server is back at the same index: one recovered value carrying what it
        // answered now, since a replaced agent can reach the same index with
        // other data.
        let (state, event) = state.step(answer("now", Some(5)), at(t0, 5_000), &config, 0.0);
        assert!(matches!(
            event,
            Some(WatchEvent::Value {
                continuity: Continuity::Recovered { index_moved: false },
                ref value,
                ..
            }) if **value == "now"
        ));
        assert_eq!(
            state.next_request().index,
            5,
            "blocking again on the same index"
        );
        // Healthy again: the failure count starts over.
        let (_, event) = state.step(failure(), at(t0, 6_000), &config, 1.0);
        assert!(matches!(
            event,
            Some(WatchEvent::Degraded { failures: 1, .. })
        ));
    }

    #[test]
    fn failing_before_any_answer_has_no_last_value() {
        let config = config();
        let t0 = Instant::now();
        let (state, event) = State::<&str>::Initial.step(failure(), at(t0, 0), &config, 0.0);
        assert!(matches!(
            event,
            Some(WatchEvent::Degraded {
                last_good: None,
                ..
            })
        ));
        assert_eq!(state.next_request().index, 0);
        let (_, event) = state.step(answer("a", Some(3)), at(t0, 100), &config, 0.0);
        assert!(matches!(
            event,
            Some(WatchEvent::Value {
                continuity: Continuity::Recovered { index_moved: true },
                index: 3,
                ..
            })
        ));
    }

    #[test]
    fn an_index_going_backwards_yields_the_new_data_and_resets() {
        let config = config();
        let t0 = Instant::now();
        let (state, _) = State::Initial.step(answer("a", Some(500)), at(t0, 0), &config, 0.0);
        let (state, event) = state.step(answer("fresh", Some(3)), at(t0, 10), &config, 0.0);
        assert!(matches!(
            event,
            Some(WatchEvent::Value {
                index: 3,
                continuity: Continuity::Reset,
                ..
            })
        ));
        assert_eq!(state.next_request().index, 0);
        let (state, event) = state.step(answer("fresh", Some(3)), at(t0, 20), &config, 0.0);
        assert!(event.is_none(), "the re-read after a reset is not a change");
        assert_eq!(state.next_request().index, 3);
    }
}

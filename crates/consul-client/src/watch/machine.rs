//! The watch as a state machine: a state, and one function that takes a
//! request's outcome to the next state and at most one event.
//!
//! No I/O here. The driver (`super::driver`) sleeps until
//! [`State::next_request`] says, sends the request, and feeds the outcome to
//! [`State::step`]; everything the watch decides is decided here and can be
//! tested without a network or a clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::WatchConfig;
use super::event::WatchEvent;
use super::index::IndexCursor;
use crate::{Error, QueryResponse};

/// Where a watch is between two requests.
#[derive(Debug)]
pub(crate) enum State<T> {
    /// Nothing asked yet: the next request is a plain read, sent now.
    Initial,
    /// The last request succeeded. The next blocks on the cursor's index,
    /// not before `not_before` (the rate limit).
    Healthy {
        value: Arc<T>,
        cursor: IndexCursor,
        not_before: Instant,
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
    pub(crate) fn step(
        self,
        outcome: Result<QueryResponse<T>, Error>,
        timing: Timing,
        config: &WatchConfig,
        jitter: f64,
    ) -> (Self, Option<WatchEvent<T>>) {
        match outcome {
            Ok(response) => self.on_answer(response, timing, config),
            Err(error) => self.on_error(error, timing, config, jitter),
        }
    }

    fn on_answer(
        self,
        response: QueryResponse<T>,
        timing: Timing,
        config: &WatchConfig,
    ) -> (Self, Option<WatchEvent<T>>) {
        let (previous, mut cursor, recovering) = match self {
            Self::Initial => (None, IndexCursor::new(), false),
            Self::Healthy { value, cursor, .. } => (Some(value), cursor, false),
            Self::Failing {
                last_good, cursor, ..
            } => (last_good, cursor, true),
        };
        // After failures, the answer may come from a replaced agent or
        // server whose fresh state happens to carry the same index as the
        // old one (a restarted dev agent reaches the same raft index after
        // the same start-up writes): only the answer itself is trustworthy.
        let changed = cursor.observe(response.meta.index).is_change();
        let value = match previous {
            Some(previous) if !changed && !recovering => previous,
            _ => Arc::new(response.value),
        };
        let index = cursor.last_seen().unwrap_or(1);
        // Rate limit: requests *start* at least `min_interval` apart. A query
        // that blocked through a quiet period started long ago, so the first
        // change after it is followed up at once; only back-to-back answers
        // (a fast-changing index) are slowed down.
        let not_before = timing.started + config.min_interval;
        let event = if recovering {
            Some(WatchEvent::Recovered {
                value: Arc::clone(&value),
                index,
                meta: response.meta,
                changed,
            })
        } else if changed {
            Some(WatchEvent::Changed {
                value: Arc::clone(&value),
                index,
                meta: response.meta,
            })
        } else {
            None
        };
        (
            Self::Healthy {
                value,
                cursor,
                not_before,
            },
            event,
        )
    }

    fn on_error(
        self,
        error: Error,
        timing: Timing,
        config: &WatchConfig,
        jitter: f64,
    ) -> (Self, Option<WatchEvent<T>>) {
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
    use crate::QueryMeta;
    use crate::watch::Backoff;

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

    fn answer(
        value: &'static str,
        index: Option<u64>,
    ) -> Result<QueryResponse<&'static str>, Error> {
        Ok(QueryResponse {
            value,
            meta: QueryMeta {
                index,
                ..QueryMeta::default()
            },
        })
    }

    fn failure() -> Result<QueryResponse<&'static str>, Error> {
        Err(Error::Status {
            endpoint: "GET /v1/health/service/web".to_owned(),
            status: 500,
            body: "boom".to_owned(),
        })
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
            matches!(event, Some(WatchEvent::Changed { index: 5, ref value, .. }) if **value == "a")
        );
        assert_eq!(
            state.next_request(),
            NextRequest {
                not_before: Some(t0 + Duration::from_millis(50)),
                index: 5
            }
        );

        // The blocking query timed out: same index, nothing to say.
        let (state, event) = state.step(answer("a", Some(5)), at(t0, 60_000), &config, 0.5);
        assert!(event.is_none());
        // It started long ago, so the next request is not delayed beyond now.
        assert_eq!(
            state.next_request().not_before,
            Some(t0 + Duration::from_millis(60_050))
        );

        let (_, event) = state.step(answer("b", Some(9)), at(t0, 60_100), &config, 0.5);
        assert!(
            matches!(event, Some(WatchEvent::Changed { index: 9, ref value, .. }) if **value == "b")
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
                    assert_eq!(error.status(), Some(500));
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

        // Consul is back at the same index: one Recovered carrying what it
        // answered now, since a replaced agent can reach the same index with
        // other data.
        let (state, event) = state.step(answer("now", Some(5)), at(t0, 5_000), &config, 0.0);
        assert!(matches!(
            event,
            Some(WatchEvent::Recovered { changed: false, ref value, .. }) if **value == "now"
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
            Some(WatchEvent::Recovered {
                changed: true,
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
        assert!(matches!(event, Some(WatchEvent::Changed { index: 3, .. })));
        assert_eq!(state.next_request().index, 0);
        let (state, event) = state.step(answer("fresh", Some(3)), at(t0, 20), &config, 0.0);
        assert!(event.is_none(), "the re-read after a reset is not a change");
        assert_eq!(state.next_request().index, 3);
    }
}

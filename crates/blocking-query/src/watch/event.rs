//! What a watch yields.

use std::sync::Arc;
use std::time::Duration;

use super::index::Observation;

/// One thing a watch has to say: values of type `T`, errors of type `E`,
/// answer metadata of type `M` (the client's headers type).
///
/// A healthy watch yields a `Value` each time the server's answer has a new
/// index (never for a blocking query that timed out unchanged). Each failed
/// request yields `Degraded`, carrying the last good value so the consumer
/// keeps serving it instead of nothing. The first answer after failures is
/// always a `Value`, whether or not the data changed meanwhile, and says so
/// in its [`Continuity`].
#[derive(Debug)]
pub enum WatchEvent<T, E, M> {
    /// The server answered with data the consumer has not been given yet.
    Value {
        value: Arc<T>,
        /// The sanitised index header (see [`super::index`]).
        index: u64,
        meta: M,
        /// How this answer relates to the one before it.
        continuity: Continuity,
    },
    Degraded {
        /// The last value the server gave; `None` if it never answered.
        last_good: Option<Arc<T>>,
        error: E,
        /// Consecutive failures so far, this one included.
        failures: u32,
        /// When the next attempt goes out.
        retry_in: Duration,
    },
}

/// How a [`WatchEvent::Value`] relates to the answer before it: whether it
/// follows on from what the consumer saw, or replaces it.
///
/// Consumers that hold on to what they have through short gaps (an empty
/// answer from a restarted agent whose services have not re-registered
/// yet) need to know which answers those are; the watch knows it from the
/// index, so it says it here rather than leaving each consumer to compare
/// indexes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The watch's first answer.
    Initial,
    /// The index moved forward: the data follows on from the last answer.
    Advanced,
    /// The index went backwards (a snapshot restore, a server that lost its
    /// state, a KV key deleted and recreated): the server's data was replaced,
    /// and nothing seen before says anything about this answer.
    Reset,
    /// The first answer after failed requests. Always the fresh value: after
    /// an outage, an unchanged index does not prove unchanged data (a
    /// replaced agent can reach the same index with other data).
    Recovered {
        /// Whether the index differs from the last good answer's (always
        /// true when there was none).
        index_moved: bool,
    },
}

impl Continuity {
    /// The continuity of an answer whose index `observation` describes;
    /// `None` for an answer with nothing new (same index, no failures
    /// before it). `after_failures`: the requests before it failed.
    pub fn of(observation: Observation, after_failures: bool) -> Option<Self> {
        if after_failures {
            return Some(Self::Recovered {
                index_moved: observation.is_change(),
            });
        }
        match observation {
            Observation::First => Some(Self::Initial),
            Observation::Advanced => Some(Self::Advanced),
            Observation::WentBackwards => Some(Self::Reset),
            Observation::Unchanged => None,
        }
    }

    /// Whether this answer may not follow on from what was seen before:
    /// the index went backwards, or the server was unreachable in between.
    pub fn breaks_continuity(self) -> bool {
        matches!(self, Self::Reset | Self::Recovered { .. })
    }
}

impl<T, E, M> WatchEvent<T, E, M> {
    /// The best value known after this event.
    pub fn value(&self) -> Option<&Arc<T>> {
        match self {
            Self::Value { value, .. } => Some(value),
            Self::Degraded { last_good, .. } => last_good.as_ref(),
        }
    }

    /// Whether the server answered (the watch is healthy after this event).
    pub fn is_healthy(&self) -> bool {
        !matches!(self, Self::Degraded { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_backwards_index_or_an_outage_breaks_continuity() {
        let healthy = [
            (Observation::First, Some(Continuity::Initial)),
            (Observation::Advanced, Some(Continuity::Advanced)),
            (Observation::WentBackwards, Some(Continuity::Reset)),
            (Observation::Unchanged, None),
        ];
        for (observation, expected) in healthy {
            assert_eq!(
                Continuity::of(observation, false),
                expected,
                "{observation:?}"
            );
        }
        for (observation, index_moved) in [
            (Observation::First, true),
            (Observation::Advanced, true),
            (Observation::WentBackwards, true),
            (Observation::Unchanged, false),
        ] {
            assert_eq!(
                Continuity::of(observation, true),
                Some(Continuity::Recovered { index_moved }),
                "after failures, every answer is fresh ({observation:?})"
            );
        }
        let breaking: Vec<Continuity> = [
            Continuity::Initial,
            Continuity::Advanced,
            Continuity::Reset,
            Continuity::Recovered { index_moved: false },
            Continuity::Recovered { index_moved: true },
        ]
        .into_iter()
        .filter(|c| c.breaks_continuity())
        .collect();
        assert_eq!(
            breaking,
            [
                Continuity::Reset,
                Continuity::Recovered { index_moved: false },
                Continuity::Recovered { index_moved: true }
            ]
        );
    }
}

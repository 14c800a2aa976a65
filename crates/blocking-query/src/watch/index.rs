//! The index rules of a blocking query, as Consul documents them ("Blocking
//! Queries: implementation details") and Nomad implements them too
//! (`blockingRPC`), in one pure type with property tests.
//!
//! 1. The server answers a blocking query when its data's index exceeds the
//!    request's `index`, or after `wait` with the same index: an unchanged
//!    index means no change.
//! 2. An index can go backwards (a snapshot restore, a server that lost its
//!    state, a KV key deleted and recreated): the client resets to 0, i.e.
//!    its next request is a plain read that re-establishes the index.
//! 3. An index of 0 — or none at all — must not be blocked on, since
//!    `index=0` returns at once and the client would spin: it is clamped to 1.

/// The index the server reported, made safe to block on: missing or 0 is 1.
pub fn sanitize(received: Option<u64>) -> u64 {
    received.unwrap_or(0).max(1)
}

/// What one answer's index says compared with the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The first answer.
    First,
    /// Same index: the blocking query timed out with no change.
    Unchanged,
    /// A higher index: the data may have changed.
    Advanced,
    /// A lower index: the data was replaced; the next request is a plain read.
    WentBackwards,
}

impl Observation {
    /// Whether the answer's data should be treated as new.
    pub fn is_change(self) -> bool {
        !matches!(self, Self::Unchanged)
    }
}

/// Where a watch stands: the last index seen and the one to send next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCursor {
    /// Sanitised, so 0 only before the first answer.
    last_seen: u64,
    /// 0 before the first answer and right after the index went backwards.
    next_request: u64,
}

impl IndexCursor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `?index=` for the next request (0: a plain, non-blocking read).
    pub fn request_index(&self) -> u64 {
        self.next_request
    }

    /// The last index an answer reported (sanitised); `None` before any.
    pub fn last_seen(&self) -> Option<u64> {
        (self.last_seen > 0).then_some(self.last_seen)
    }

    /// Takes in an answer's index header (`X-Consul-Index`, `X-Nomad-Index`).
    pub fn observe(&mut self, received: Option<u64>) -> Observation {
        let index = sanitize(received);
        let observation = if self.last_seen == 0 {
            Observation::First
        } else if index < self.last_seen {
            Observation::WentBackwards
        } else if index == self.last_seen {
            Observation::Unchanged
        } else {
            Observation::Advanced
        };
        self.last_seen = index;
        self.next_request = match observation {
            Observation::WentBackwards => 0,
            _ => index,
        };
        observation
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn missing_or_zero_index_is_clamped_to_one() {
        for received in [None, Some(0)] {
            let mut cursor = IndexCursor::new();
            assert_eq!(cursor.observe(received), Observation::First);
            assert_eq!(cursor.request_index(), 1);
        }
    }

    #[test]
    fn backwards_resets_to_zero_then_continues_from_the_new_index() {
        let mut cursor = IndexCursor::new();
        assert_eq!(cursor.request_index(), 0);
        assert_eq!(cursor.observe(Some(100)), Observation::First);
        assert_eq!(cursor.observe(Some(120)), Observation::Advanced);
        assert_eq!(cursor.observe(Some(7)), Observation::WentBackwards);
        assert_eq!(cursor.request_index(), 0);
        // The plain read after the reset reports the same new index: not a change.
        assert_eq!(cursor.observe(Some(7)), Observation::Unchanged);
        assert_eq!(cursor.request_index(), 7);
        assert_eq!(cursor.observe(Some(8)), Observation::Advanced);
        assert_eq!(cursor.request_index(), 8);
    }

    fn index() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(0)),
            8 => (0u64..50).prop_map(Some),
            1 => any::<u64>().prop_map(Some),
        ]
    }

    proptest! {
        #[test]
        fn sanitize_is_at_least_one_and_keeps_real_indexes(received in index()) {
            let index = sanitize(received);
            prop_assert!(index >= 1);
            if let Some(real) = received.filter(|i| *i >= 1) {
                prop_assert_eq!(index, real);
            }
        }

        #[test]
        fn never_blocks_on_zero_and_resets_only_when_going_backwards(
            answers in prop::collection::vec(index(), 1..64)
        ) {
            let mut cursor = IndexCursor::new();
            for received in answers {
                let before = cursor.last_seen();
                let observation = cursor.observe(received);
                let index = sanitize(received);
                prop_assert_eq!(cursor.last_seen(), Some(index));
                match before {
                    None => prop_assert_eq!(observation, Observation::First),
                    Some(previous) if index < previous => {
                        prop_assert_eq!(observation, Observation::WentBackwards);
                    }
                    Some(previous) if index == previous => {
                        prop_assert_eq!(observation, Observation::Unchanged);
                    }
                    Some(_) => prop_assert_eq!(observation, Observation::Advanced),
                }
                if observation == Observation::WentBackwards {
                    prop_assert_eq!(cursor.request_index(), 0);
                } else {
                    prop_assert!(cursor.request_index() >= 1);
                    prop_assert_eq!(cursor.request_index(), index);
                }
            }
        }

        #[test]
        fn a_rising_sequence_changes_once_per_distinct_index(
            mut answers in prop::collection::vec(1u64..1_000, 1..64)
        ) {
            answers.sort_unstable();
            let mut cursor = IndexCursor::new();
            let changes = answers
                .iter()
                .filter(|i| cursor.observe(Some(**i)).is_change())
                .count();
            let mut distinct = answers.clone();
            distinct.dedup();
            prop_assert_eq!(changes, distinct.len());
        }

        /// A lower index is only ever requested through a reset to 0: a
        /// client never blocks on an index below one it already saw.
        #[test]
        fn blocking_indexes_only_rise_between_resets(
            answers in prop::collection::vec(index(), 1..64)
        ) {
            let mut cursor = IndexCursor::new();
            let mut previous_request = cursor.request_index();
            for received in answers {
                cursor.observe(received);
                let request = cursor.request_index();
                if previous_request > 0 && request > 0 {
                    prop_assert!(request >= previous_request,
                        "blocked on {} after {}", request, previous_request);
                }
                previous_request = request;
            }
        }
    }
}

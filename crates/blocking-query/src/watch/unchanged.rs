//! The rule of [`Watch::skip_unchanged`](super::Watch::skip_unchanged), as
//! a pure filter over events.

use std::sync::Arc;

use super::event::{Continuity, WatchEvent};

/// Remembers the last value passed on, and refuses a value that merely
/// advanced the index without changing it.
#[derive(Debug)]
pub(crate) struct ContentFilter<T> {
    last: Option<Arc<T>>,
}

impl<T> Default for ContentFilter<T> {
    fn default() -> Self {
        Self { last: None }
    }
}

impl<T: PartialEq> ContentFilter<T> {
    /// Whether `event` goes to the consumer.
    pub(crate) fn admit<E, M>(&mut self, event: &WatchEvent<T, E, M>) -> bool {
        let WatchEvent::Value {
            value, continuity, ..
        } = event
        else {
            return true;
        };
        let same = self.last.as_ref().is_some_and(|last| **last == **value);
        if same && *continuity == Continuity::Advanced {
            return false;
        }
        self.last = Some(Arc::clone(value));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn value(content: &'static str, continuity: Continuity) -> WatchEvent<&'static str, (), ()> {
        WatchEvent::Value {
            value: Arc::new(content),
            index: 1,
            meta: (),
            continuity,
        }
    }

    fn degraded() -> WatchEvent<&'static str, (), ()> {
        WatchEvent::Degraded {
            last_good: Some(Arc::new("a")),
            error: (),
            failures: 1,
            retry_in: Duration::from_millis(10),
        }
    }

    #[test]
    fn only_an_unchanged_advance_is_dropped() {
        let mut filter = ContentFilter::default();
        let decisions: Vec<bool> = [
            value("a", Continuity::Initial),
            value("a", Continuity::Advanced),
            value("b", Continuity::Advanced),
            value("b", Continuity::Advanced),
            value("b", Continuity::Reset),
            degraded(),
            value("b", Continuity::Recovered { index_moved: true }),
            value("b", Continuity::Advanced),
            value("a", Continuity::Advanced),
        ]
        .iter()
        .map(|event| filter.admit(event))
        .collect();
        assert_eq!(
            decisions,
            [true, false, true, false, true, true, true, false, true]
        );
    }
}

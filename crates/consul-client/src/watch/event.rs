//! What a watch yields.

use std::sync::Arc;
use std::time::Duration;

use crate::{Error, QueryMeta};

/// One thing a watch has to say.
///
/// A healthy watch yields `Changed` each time Consul's answer has a new
/// index (never for a blocking query that timed out unchanged). Each failed
/// request yields `Degraded`, carrying the last good value so the consumer
/// keeps serving it instead of nothing. The first answer after failures
/// yields one `Recovered`, whether or not the data changed meanwhile.
#[derive(Debug)]
pub enum WatchEvent<T> {
    Changed {
        value: Arc<T>,
        /// The sanitised `X-Consul-Index` (see [`super::index`]).
        index: u64,
        meta: QueryMeta,
    },
    Degraded {
        /// The last value Consul gave; `None` if it never answered.
        last_good: Option<Arc<T>>,
        error: Error,
        /// Consecutive failures so far, this one included.
        failures: u32,
        /// When the next attempt goes out.
        retry_in: Duration,
    },
    Recovered {
        /// The value read on recovery. Always the fresh answer: after
        /// failures, an unchanged index does not prove unchanged data (the
        /// agent may have been replaced).
        value: Arc<T>,
        index: u64,
        meta: QueryMeta,
        /// Whether the index moved since the last good answer.
        changed: bool,
    },
}

impl<T> WatchEvent<T> {
    /// The best value known after this event.
    pub fn value(&self) -> Option<&Arc<T>> {
        match self {
            Self::Changed { value, .. } | Self::Recovered { value, .. } => Some(value),
            Self::Degraded { last_good, .. } => last_good.as_ref(),
        }
    }

    /// Whether Consul answered (the watch is healthy after this event).
    pub fn is_healthy(&self) -> bool {
        !matches!(self, Self::Degraded { .. })
    }
}

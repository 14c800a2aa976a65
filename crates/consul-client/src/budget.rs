//! The per-agent request budget.
//!
//! A Consul agent accepts `http_max_conns_per_client` (200 by default)
//! connections from one IP, and over HTTP/1 every in-flight blocking query
//! holds a connection for up to its `wait`. Blocking queries therefore take a
//! permit from a bounded FIFO queue (tokio's `Semaphore` is fair, so no watch
//! starves); other requests take one from a separate budget, so a write or
//! a read never queues behind long-polls.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which budget a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// `?index=N` with N > 0: Consul may hold it up to `wait`.
    Blocking,
    /// Everything else: answered at once.
    Other,
}

impl RequestClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocking => "blocking",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for RequestClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug)]
pub(crate) struct RequestBudget {
    blocking: Arc<Semaphore>,
    other: Arc<Semaphore>,
}

impl RequestBudget {
    pub(crate) fn new(max_blocking: usize, max_other: usize) -> Self {
        let bounded = |n: usize| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        Self {
            blocking: bounded(max_blocking),
            other: bounded(max_other),
        }
    }

    /// Waits, in FIFO order, for a slot of `class`'s budget.
    ///
    /// `None` only if the semaphore were closed, which never happens: this
    /// type owns both semaphores and never closes them.
    pub(crate) async fn admit(&self, class: RequestClass) -> Option<OwnedSemaphorePermit> {
        let semaphore = match class {
            RequestClass::Blocking => &self.blocking,
            RequestClass::Other => &self.other,
        };
        Arc::clone(semaphore).acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_budget_does_not_consume_the_other() {
        let budget = RequestBudget::new(1, 1);
        let _blocking = budget.admit(RequestClass::Blocking).await;
        // The blocking budget is exhausted; a quick request is still admitted.
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            budget.admit(RequestClass::Other),
        )
        .await
        .expect("the other budget is independent");
        assert!(other.is_some());
        // A second blocking query waits for the first.
        let second = budget.admit(RequestClass::Blocking);
        tokio::pin!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(_blocking);
        assert!(second.await.is_some());
    }
}

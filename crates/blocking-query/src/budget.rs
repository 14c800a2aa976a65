//! The per-agent request budget.
//!
//! A Consul agent accepts `http_max_conns_per_client` (200 by default)
//! connections from one IP, a Nomad agent `limits.http_max_conns_per_client`
//! (100 by default), and over HTTP/1 every in-flight blocking query holds a
//! connection for up to its `wait`. Blocking queries therefore take a
//! permit from a bounded FIFO queue (tokio's `Semaphore` is fair, so no watch
//! starves); other requests take one from a separate budget, so a write or
//! a read never queues behind long-polls. Session requests (Consul's
//! create, renew, destroy) have a budget of their own: a lock is lost when
//! its session's renewal comes late, so no flood of reads or writes may hold
//! one up.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which budget a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// `?index=N` with N > 0: the server may hold it up to `wait`.
    Blocking,
    /// Creating, renewing and destroying sessions: what keeps a lock.
    Session,
    /// Everything else: answered at once.
    Other,
}

impl RequestClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocking => "blocking",
            Self::Session => "session",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for RequestClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Session requests in flight at once. A process keeps a session or two
/// (one per lock), each renewed every few seconds: a handful of slots is
/// never the bottleneck, and keeps a runaway caller from opening hundreds.
const SESSION_REQUESTS: usize = 4;

/// The budgets of one agent: share it between everything that talks to it.
#[derive(Debug)]
pub struct RequestBudget {
    blocking: Arc<Semaphore>,
    session: Arc<Semaphore>,
    other: Arc<Semaphore>,
    max_in_flight: usize,
}

impl RequestBudget {
    /// At most `max_blocking` blocking queries and `max_other` other
    /// requests in flight (each at least 1).
    pub fn new(max_blocking: usize, max_other: usize) -> Self {
        let size = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        let bounded = |n: usize| Arc::new(Semaphore::new(size(n)));
        Self {
            blocking: bounded(max_blocking),
            session: bounded(SESSION_REQUESTS),
            other: bounded(max_other),
            max_in_flight: size(max_blocking) + size(max_other) + SESSION_REQUESTS,
        }
    }

    /// The most requests of every class in flight at once, so the most
    /// connections over HTTP/1: what the pool's connection cap is set to.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Waits, in FIFO order, for a slot of `class`'s budget.
    ///
    /// `None` only if the semaphore were closed, which never happens: this
    /// type owns both semaphores and never closes them.
    pub async fn admit(&self, class: RequestClass) -> Option<OwnedSemaphorePermit> {
        let semaphore = match class {
            RequestClass::Blocking => &self.blocking,
            RequestClass::Session => &self.session,
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

    #[tokio::test]
    async fn sessions_do_not_wait_for_the_other_budget() {
        let budget = RequestBudget::new(1, 1);
        let _other = budget.admit(RequestClass::Other).await;
        let session = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            budget.admit(RequestClass::Session),
        )
        .await
        .expect("the session budget is independent");
        assert!(session.is_some());
    }
}

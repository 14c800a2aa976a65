//! Read options every Consul read endpoint shares, and what comes back with
//! the body: the index a blocking query continues from, and how stale it is.

use std::time::Duration;

/// The longest `wait` Consul honours; longer values are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// Consul's own default `wait`.
pub const DEFAULT_WAIT: Duration = blocking_query::watch::DEFAULT_WAIT;

/// Options of a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// `?dc=`; `None` means the client's datacenter, else the agent's own.
    pub datacenter: Option<String>,
    /// `?stale`: any server may answer, not only the leader. Faster and
    /// spreads load, at the price of possibly old data (see
    /// [`QueryMeta::last_contact`]).
    pub stale: bool,
    /// `?index=`: when above 0, a blocking query that Consul answers once its
    /// data's index exceeds this, or after `wait`.
    pub index: u64,
    /// `?wait=` of a blocking query; [`DEFAULT_WAIT`] when `None`, at most [`MAX_WAIT`].
    pub wait: Option<Duration>,
}

impl QueryOptions {
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    pub fn stale(mut self) -> Self {
        self.stale = true;
        self
    }

    /// Makes this a blocking query on `index` for up to `wait`.
    pub fn blocking(mut self, index: u64, wait: Duration) -> Self {
        self.index = index;
        self.wait = Some(wait);
        self
    }

    /// The `wait` to send when this is a blocking query.
    pub(crate) fn blocking_wait(&self) -> Option<Duration> {
        (self.index > 0).then(|| self.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT))
    }
}

/// What Consul says about an answer besides its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`, as sent (see [`crate::watch::index`] for how a watch
    /// sanitises it).
    pub index: Option<u64>,
    /// `X-Consul-LastContact`: how long since the answering server heard
    /// from the leader (0 when the leader answered).
    pub last_contact: Option<Duration>,
    /// `X-Consul-KnownLeader`: whether the answering server knew a leader.
    pub known_leader: Option<bool>,
    /// `X-Consul-Results-Filtered-By-ACLs: true` (Consul 1.11 and later):
    /// the token's ACLs hid some of the answer, so it may lack entries that
    /// exist. Older versions never send it: false says nothing there.
    pub results_filtered_by_acls: bool,
}

/// A read's value with its [`QueryMeta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResponse<T> {
    pub value: T,
    pub meta: QueryMeta,
}

impl<T> QueryResponse<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> QueryResponse<U> {
        QueryResponse {
            value: f(self.value),
            meta: self.meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_positive_index_blocks_and_wait_is_capped() {
        assert_eq!(QueryOptions::default().blocking_wait(), None);
        assert_eq!(
            QueryOptions::default()
                .blocking(0, Duration::from_secs(1))
                .blocking_wait(),
            None
        );
        assert_eq!(
            QueryOptions {
                index: 7,
                ..QueryOptions::default()
            }
            .blocking_wait(),
            Some(DEFAULT_WAIT)
        );
        assert_eq!(
            QueryOptions::default()
                .blocking(7, Duration::from_secs(3600))
                .blocking_wait(),
            Some(MAX_WAIT)
        );
    }
}

//! What comes back with a body besides it: the index a blocking query
//! continues from, and how fresh the answering server was.

use std::time::Duration;

/// Nomad's `structs.MaxBlockingRPCQueryTime`: a longer `wait` is cut to it,
/// here before it is sent, so the request's deadline matches.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// What Nomad says about an answer besides its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Nomad-Index`, as sent. For both service endpoints it is the index
    /// of the whole registrations table: it moves when any service in any
    /// namespace changes.
    pub index: Option<u64>,
    /// `X-Nomad-LastContact`: how long since the answering server heard
    /// from the leader (0 when the leader answered).
    pub last_contact: Option<Duration>,
    /// `X-Nomad-KnownLeader`: whether the answering server knew a leader.
    pub known_leader: Option<bool>,
}

/// A read's value with its [`QueryMeta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NomadResponse<T> {
    pub value: T,
    pub meta: QueryMeta,
}

//! The blocking-query discipline of HashiCorp's HTTP APIs, shared by this
//! project's Consul and Nomad clients, and nothing specific to either.
//!
//! Consul and Nomad answer reads the same way: an index comes back with
//! every answer (`X-Consul-Index`, `X-Nomad-Index`), a read carrying
//! `?index=N&wait=D` is held until the data's index exceeds `N` or `D` has
//! passed, and an index can go backwards when the servers' state is
//! replaced. What a client has to get right about that lives here, once:
//!
//! - [`watch`]: the [`index`](watch::index) rules, the state machine, the
//!   [`Backoff`], the [`WatchEvent`]s (a failure never replaces the last good
//!   value by nothing) and the driver, generic over "a function that performs
//!   one query with an index and returns value + index"; and
//!   [`Watch::skip_unchanged`], for APIs whose index moves without the data
//!   (Nomad's registrations table has one index for every service).
//! - [`RequestBudget`]: at most N blocking queries in flight, FIFO, with
//!   separate budgets per [`RequestClass`], and [`RequestMetrics`] to see it.
//! - [`Transport`] over [`Address`] (`http`, `https` with [`TlsConfig`],
//!   `unix`), and the secret [`Token`] type that each client sends in its own
//!   header.
//!
//! The protocol clients (`consul-client`, `nomad-client`) own their URLs,
//! headers, query options, error types and endpoint types.
//!
//! ```
//! # async fn example() {
//! use futures::StreamExt;
//! use blocking_query::{Answer, WatchConfig, WatchEvent, watch};
//!
//! // One query with an index; here an API whose data never changes.
//! let fetch = |request: blocking_query::QueryIndex| async move {
//!     let _blocking = request.index > 0; // send ?index= and ?wait= when so
//!     Ok::<_, std::io::Error>(Answer { value: "data", index: Some(7), meta: () })
//! };
//! let mut events = watch(WatchConfig::default(), fetch).skip_unchanged();
//! match events.next().await {
//!     Some(WatchEvent::Value { value, index, .. }) => assert_eq!((*value, index), ("data", 7)),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```

mod address;
mod budget;
mod connection_cap;
mod metrics;
mod tls;
mod token;
mod transport;
pub mod watch;

pub use address::{Address, AddressError};
pub use budget::{RequestBudget, RequestClass};
pub use metrics::{GaugeGuard, RequestMetrics};
pub use tls::{TlsConfig, TlsError, root_store};
pub use token::{Token, TokenError};
pub use transport::{RequestBody, Transport, error_chain};
pub use watch::{Answer, Backoff, Continuity, QueryIndex, Watch, WatchConfig, WatchEvent, watch};

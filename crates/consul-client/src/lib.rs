//! An async client for the parts of Consul's HTTP API this project uses,
//! built on tokio, hyper 1 and rustls.
//!
//! Its centre is the blocking-query [`watch`]: a `Stream` that follows
//! Consul's index rules, rate-limits itself, backs off on errors and keeps
//! the last good value while Consul fails, saying so instead of yielding
//! nothing. That discipline, the request budget, the transport and the TLS
//! set-up live in the `blocking-query` crate, shared with `nomad-client`;
//! this crate re-exports what its users name ([`Watch`], [`WatchEvent`],
//! [`Backoff`], [`TlsConfig`], [`Address`], [`Token`], ...).
//!
//! Around it:
//! - [`ClientConfig`]: `http://`, `https://` (custom CA, client certificate)
//!   and `unix://` addresses, read from Consul's own `CONSUL_*` variables by
//!   [`ClientConfig::from_env`]. The ACL [`Token`] travels only in the
//!   `X-Consul-Token` header and is redacted from every `Debug`.
//! - A per-agent request budget: at most `max_blocking_queries` blocking
//!   queries in flight (FIFO queue for the rest), a separate budget for
//!   session requests (a renewal never waits behind reads), one for other
//!   requests, and HTTP/2 over TLS so queries share connections.
//! - The endpoints, as methods of [`Client`] grouped by module in [`api`]:
//!   catalog, health, KV, sessions and [`Lock`], transactions, agent.
//! - [`Error`], one enum naming the endpoint, telling ACL denials, missing
//!   objects, other statuses, timeouts, broken connections and malformed
//!   answers apart.
//! - [`ClientMetrics`], to register into a `prometheus-client` registry.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use consul_client::{Client, HealthFilter, QueryOptions};
//!
//! let client = Client::from_env()?;
//! let web = client.health_service("web", HealthFilter::PassingOnly, &QueryOptions::default()).await?;
//! for instance in &web.value {
//!     println!("{}:{}", instance.address(), instance.service.port);
//! }
//! # Ok(())
//! # }
//! ```

pub mod api;
mod client;
mod codec;
pub mod config;
mod endpoint;
mod error;
mod json_array;
mod metrics;
mod query;
pub mod watch;

pub use api::agent::{AgentCheck, AgentSelf, AgentServiceRegistration, Maintenance};
pub use api::catalog::{
    CatalogCheck, CatalogDeregistration, CatalogRegistration, CatalogService, ServiceTags,
};
pub use api::health::{
    CheckBrief, CheckStatus, HealthCheck, HealthFilter, HealthState, Node, Service, ServiceAddress,
    ServiceEntry, Weights,
};
pub use api::kv::{KvCondition, KvPair, KvWrite};
pub use api::lock::Lock;
pub use api::session::{SessionBehavior, SessionId, SessionInfo, SessionRequest};
pub use api::txn::{TxnOp, TxnOpError, TxnOutcome};
pub use api::ui::ServiceSummary;
pub use blocking_query::{RequestClass, TlsConfig, TlsError, root_store};
pub use client::Client;
pub use config::{Address, ClientConfig, ConfigError, Token};
pub use endpoint::EndpointKind;
pub use error::{Error, ErrorKind};
pub use metrics::ClientMetrics;
pub use query::{DEFAULT_WAIT, MAX_WAIT, QueryMeta, QueryOptions, QueryResponse};
pub use watch::{Backoff, Continuity, Watch, WatchConfig, WatchEvent};

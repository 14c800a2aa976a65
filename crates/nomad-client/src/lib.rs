//! An async client for Nomad's native service discovery (services with
//! `provider = "nomad"`, Nomad 1.3+) over its HTTP API, built on tokio,
//! hyper 1 and rustls, with the same discipline as `consul-client`.
//!
//! - [`NomadClient::services`] (`/v1/services`, one namespace or `*`),
//!   [`NomadClient::service`] (`/v1/service/:name`, one namespace; several
//!   through [`NomadClient::watch_service_in`]) and
//!   [`NomadClient::allocation_checks`] (`/v1/client/allocation/:id/checks`,
//!   Nomad 1.4+, the only place check results of native services exist).
//! - Blocking watches ([`NomadClient::watch_services`],
//!   [`NomadClient::watch_service`]) yielding the same [`WatchEvent`]s as
//!   `consul-client`, from the same state machine, index rules and backoff
//!   (the `blocking-query` crate). Nomad's index is the whole registrations
//!   table's, so the watches compare content and yield nothing when only
//!   another service changed. A failure yields `Degraded` with the last
//!   good value: a Nomad error never empties a cluster.
//! - [`NomadConfig::from_env`] reads Nomad's CLI variables (`NOMAD_ADDR`,
//!   `NOMAD_TOKEN`, `NOMAD_REGION`, `NOMAD_NAMESPACE`, `NOMAD_CACERT`,
//!   `NOMAD_CAPATH`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`,
//!   `NOMAD_TLS_SERVER_NAME`); [`NomadConfig::with_token_file`] takes the
//!   token from a file. The token travels only in the `X-Nomad-Token`
//!   header, never in a URL or a log line, and is redacted from `Debug`.
//! - The same per-agent request budget as `consul-client` (blocking queries
//!   FIFO within their own budget), HTTPS with a CA and client
//!   certificate, `?region=` on every request when configured.
//! - [`Error`], one enum naming the endpoint, telling a 403 from a 404, a
//!   500, a timeout, a broken connection and a malformed answer.
//! - [`NomadMetrics`], under `nomad_client_` in a `prometheus-client`
//!   registry.
//!
//! The `*` trap: a `*` listing silently leaves out the namespaces the token
//! cannot read; see [`NomadClient::services`] for what this client can and
//! cannot tell, [`NomadClient::watch_all_namespaces`] for a `*` watch that
//! reads a vanished namespace directly before believing it gone
//! ([`all_namespaces`]), and [`NomadClient::namespace_access`] for the
//! check of the namespaces an operator expects.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use nomad_client::{NomadClient, NomadConfig, WatchConfig, WatchEvent};
//!
//! let client = NomadClient::new(NomadConfig::from_env()?)?;
//! let web = client.service("web", client.namespace()).await?;
//! for registration in &web.value {
//!     println!("{}:{}", registration.address, registration.port);
//! }
//!
//! let mut watch = client.watch_service("web", "default", WatchConfig::default());
//! while let Some(event) = watch.next().await {
//!     match event {
//!         WatchEvent::Value { value, continuity, .. } => {
//!             println!("{} registrations ({continuity:?})", value.len());
//!         }
//!         WatchEvent::Degraded { error, last_good, .. } => {
//!             eprintln!("Nomad unavailable ({error}); keeping {:?}",
//!                 last_good.map(|v| v.len()));
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod all_namespaces;
pub mod api;
mod client;
pub mod config;
mod error;
mod metrics;
mod query;
mod watch;

pub use all_namespaces::CheckedListing;
pub use api::{
    CheckMode, CheckResult, CheckStatus, NamespaceServices, ServiceRegistration, ServiceSummary,
    tags_by_service,
};
pub use blocking_query::{
    Address, Backoff, Continuity, QueryIndex, RequestClass, TlsConfig, TlsError, Token, WatchConfig,
};
pub use client::{ALL_NAMESPACES, NamespaceAccess, NomadClient};
pub use config::{ConfigError, NomadConfig};
pub use error::{Error, ErrorKind};
pub use metrics::{EndpointKind, NomadMetrics};
pub use query::{MAX_WAIT, NomadResponse, QueryMeta};
pub use watch::{NamespacedEvent, NamespacedWatch, Watch, WatchEvent};

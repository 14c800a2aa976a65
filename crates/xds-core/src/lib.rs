//! Snapshot cache and gRPC xDS server for Envoy.
//!
//! The application puts typed Envoy resources into a [`SnapshotCache`]
//! under a node key; an [`XdsServer`] streams them to every Envoy whose
//! node maps to that key ([`NodeHash`]), over ADS or the per-type services
//! (CDS, EDS, LDS, RDS, SDS), in the state-of-the-world or delta protocol.
//! The crate knows nothing of where resources come from.
//!
//! ```no_run
//! # async fn run(assignments: Vec<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>) -> Result<(), Box<dyn std::error::Error>> {
//! use xds_core::{Listen, Metrics, SharedKey, SnapshotCache, XdsServer, ResourceType};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let cache = SnapshotCache::new(SharedKey("gateways".to_owned()));
//! let metrics = Metrics::default();
//! metrics.register(&mut registry);
//! let server = XdsServer::new(cache.clone()).with_metrics(metrics);
//! // What Envoys want: the application fetches exactly these.
//! let wanted = server.subscriptions().watch(ResourceType::Endpoint);
//! let bound = server.bind(Listen::Tcp("127.0.0.1:18000".parse()?)).await?;
//! cache.set_endpoints("gateways", &assignments)?;
//! bound.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # drop(wanted);
//! # Ok(()) }
//! ```
//!
//! Module map:
//! - [`resource`], [`version`]: resource types, encoded-once resources,
//!   content versions.
//! - [`node`]: which snapshot a node gets.
//! - [`cache`]: versioned snapshots per node key, watched by streams.
//! - [`subscription`]: per-stream subscriptions and their union.
//! - `tracker`: what each client holds, and the diff it needs next.
//! - `sotw`, `delta`: the two protocol state machines; `protocol`: what
//!   they share; `stream`: drives one gRPC stream.
//! - `codec`: responses written from shared bytes; `service`: the gRPC
//!   services; `incoming`, [`server`]: listeners, options, shutdown.
//! - [`metrics`], [`status`]: observability.

pub mod cache;
mod codec;
mod delta;
#[cfg(test)]
mod fixtures;
mod incoming;
pub mod metrics;
pub mod node;
mod protocol;
pub mod resource;
pub mod server;
mod service;
mod sotw;
pub mod status;
mod stream;
pub mod subscription;
mod tracker;
pub mod version;

pub use cache::{CacheError, Snapshot, SnapshotCache, SnapshotChanges};
pub use incoming::Listen;
pub use metrics::Metrics;
pub use node::{ByNodeCluster, ByNodeId, NodeHash, SharedKey};
pub use resource::{Resource, ResourceError, ResourceType, XdsResource};
pub use server::{BoundServer, ServerError, ServerOptions, TlsOptions, XdsServer};
pub use status::{ConnectedClients, Rejection, StatusChanges, StreamStatus, TypeStatus};
pub use subscription::SubscriptionRegistry;
pub use version::Version;

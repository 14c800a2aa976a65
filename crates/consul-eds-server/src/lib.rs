//! Serves Envoy EDS from Consul's catalog and health, and from Nomad's own
//! service registry.
//!
//! Data flows one way: Consul (`source`), Nomad, both together
//! (`registries`) -> domain model (`model`, `health`) -> Envoy resources
//! (`translate`) -> xDS streams (`xds-core`).

pub mod admin;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod model;
pub mod naming;
pub mod registries;
pub mod sink;
pub mod source;
pub mod state;
pub mod translate;

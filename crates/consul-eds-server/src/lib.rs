//! Serves Envoy EDS from Consul's catalog and health.
//!
//! Data flows one way: Consul (`source`) -> domain model (`model`, `health`)
//! -> Envoy resources (`translate`) -> xDS streams (`xds-core`).

pub mod admin;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod model;
pub mod naming;
pub mod sink;
pub mod source;
pub mod state;
pub mod translate;

//! The demo's moving parts: a backend that misbehaves on purpose and a load
//! generator that tells its deliberate failures from real ones.

pub mod backend;
pub mod churn;
pub mod consul;
pub mod load;

/// Header a backend sets on a 500 it returns on purpose, so load results can
/// separate the backend's own errors from failures of the gateway.
pub const DELIBERATE_ERROR_HEADER: &str = "x-demo-deliberate-error";

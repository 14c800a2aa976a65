//! Shared pieces of the benchmark programs in `src/bin/`.
//!
//! Benchmarks print figures, ideally beside a baseline measured in the same
//! run; they never fail on timing.

pub mod fleet;
pub mod nginx;
pub mod probe;
pub mod scale_probes;
pub mod server;
pub mod stats;

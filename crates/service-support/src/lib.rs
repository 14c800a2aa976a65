//! What both services share around their core: the admin HTTP server, the
//! Consul connection and listener flags, logging set-up and the shutdown
//! signal.
//!
//! Kept apart from `xds-core` (which knows only xDS) and from the services
//! (which know their domain), so each service's `main` reads as wiring.

pub mod admin;
pub mod consul;
pub mod duration;
pub mod listener;
pub mod logging;
pub mod shutdown;
pub mod time;

//! The route-tag schema: what a service's tags ask the gateway for.
//!
//! A service opts in with tags (`edge.route=shop.example.com/api strip=/api`,
//! or the long form `edge.http.routes.NAME.KEY=VALUE`), because tags are what
//! both Consul and Nomad's native services carry. This crate reads them into
//! domain types (`parse`) and merges every service's routes into one table
//! (`RouteTable::build` in `table`, whose module doc gives the rules); it knows
//! neither Consul's JSON nor Envoy's protobuf, so the server that serves the
//! routes and the one that obtains their certificates read the same rules.
//! `catalog` unions the service lists of several registries the same way
//! for both.

pub mod catalog;
mod duration;
pub mod model;
mod options;
pub mod parse;
mod syntax;
pub mod table;

pub use duration::DurationError;
pub use model::*;
pub use parse::{InstanceTags, ListenerSpecError, mentions_prefix, service_decl};
pub use table::ServiceInput;

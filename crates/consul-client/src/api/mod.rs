//! Consul's endpoints, one module per API area. Each adds its methods to
//! [`Client`](crate::Client) and defines the types of its JSON, in Rust
//! names; the wire names stay in `serde` attributes.

pub mod agent;
pub mod catalog;
pub mod health;
pub mod kv;
pub mod lock;
pub mod session;
pub mod txn;
pub mod ui;

/// Splits a KV key into URL path segments, so `/` stays a separator and
/// everything else is percent-encoded. Consul ignores a leading `/`.
pub(crate) fn key_segments<'a>(
    prefix: &'a [&'a str],
    key: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    prefix
        .iter()
        .copied()
        .chain(key.trim_start_matches('/').split('/'))
}

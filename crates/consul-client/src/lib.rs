//! Async Consul HTTP API client.

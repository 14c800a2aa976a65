//! ACME certificates for Envoy: the library half of `envoy-acme-sds`.
//!
//! | module | concern |
//! |---|---|
//! | [`domain`] | validated DNS names and the name set of one certificate |
//! | [`keys`] | private key generation (ECDSA P-256, RSA 2048) and CSRs |
//! | [`pem`] | PEM decoding of chains and keys |
//! | [`certificate`] | a chain + key known to match, and its metadata |
//! | [`policy`] | when to renew, back off, or refuse to order (pure) |
//! | [`challenge`] | the [`ChallengeSolver`](challenge::ChallengeSolver) trait: DNS-01 (RFC 2136), HTTP-01, exec hook |
//! | [`acme`] | the ACME account and one order, via `instant-acme` |
//! | [`store`] | the [`CertificateStore`](store::CertificateStore) trait, one typed store over raw-item backends (disk, Consul KV), item codec, encryption at rest |
//! | [`manager`] | one certificate's lifecycle, published on a watch channel |
//! | [`timings`] | where one issuance's time goes, step by step |
//! | [`secret`] | key material that never prints |
//! | [`election`] | the Consul session lock choosing the replica that renews |
//! | [`renewer`] | runs the managers while this replica may renew |
//! | [`kv_watch`] | every replica follows the Consul prefix and serves what it holds |
//! | [`storage_mode`] | where certificates are stored decides who renews and how they reach Envoy |
//! | [`routed`] | certificates for the hosts service tags route (`--follow-routes`) |
//! | [`sds`] | certificates in service, as Envoy SDS secrets in the xDS cache |
//! | [`metrics`] | Prometheus metrics of certificates, renewals, the ACME client and the lock |
//! | [`outcomes`] | each certificate's last reconciliation outcome, for the status page |
//! | [`admin`] | `/readyz` and `/debug/certificates` for the admin server |
//! | [`config`] | command line, environment and TOML file, resolved into [`config::Settings`] |

pub mod acme;
pub mod admin;
pub mod certificate;
pub mod challenge;
pub mod config;
pub mod domain;
pub mod election;
pub mod keys;
pub mod kv_watch;
pub mod manager;
pub mod metrics;
pub mod outcomes;
pub mod pem;
pub mod policy;
pub mod renewer;
pub mod routed;
pub mod sds;
pub mod secret;
pub mod storage_mode;
pub mod store;
pub mod timings;

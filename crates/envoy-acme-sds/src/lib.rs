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
//! | [`store`] | the [`CertificateStore`](store::CertificateStore) trait, item codec, encryption at rest, disk backend |
//! | [`manager`] | one certificate's lifecycle, published on a watch channel |
//! | [`secret`] | key material that never prints |

pub mod acme;
pub mod certificate;
pub mod challenge;
pub mod domain;
pub mod keys;
pub mod manager;
pub mod pem;
pub mod policy;
pub mod secret;
pub mod store;

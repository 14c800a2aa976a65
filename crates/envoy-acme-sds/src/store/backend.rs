//! The seam between the typed store and where bytes live: a backend knows
//! how to read and write one item, and how to replace a certificate's items
//! in one atomic step. It knows nothing of what the bytes mean; that is
//! [`super::codec`], shared by every backend through [`super::typed::Store`].
//!
//! Item names are the same in every backend (`orders/<name>`,
//! `certificates/<name>/key`, ...; see [`super::layout`]), so a backend only
//! maps them onto its own keys: files under a directory, keys under a KV
//! prefix.

use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::codec::{EncodedCertificate, StoredCertificate};
use super::{SecretName, StoreError};

/// Who a write comes from. A backend shared by replicas fences the renewing
/// replica's writes with its lock and lets an operator's request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The replica that renews: only the holder of the renewal lock may write.
    Renewer,
    /// An operator (`envoy-acme-sds renew`), from outside any replica: its
    /// request is input for whichever replica holds the lock.
    Operator,
}

/// Raw items of one storage location.
#[async_trait]
pub trait ItemBackend: Send + Sync + fmt::Debug {
    /// The bytes of one item; `None` when it does not exist.
    async fn read_item(&self, item: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;

    /// Replaces one item atomically: a reader sees the old bytes or the new.
    async fn write_item(
        &self,
        item: &str,
        bytes: Zeroizing<Vec<u8>>,
        writer: Writer,
    ) -> Result<(), StoreError>;

    /// The items of one certificate, all from the same write; nothing when
    /// none is stored.
    async fn read_certificate(&self, name: &SecretName) -> Result<StoredCertificate, StoreError>;

    /// Replaces a certificate's items together, or leaves them all as they
    /// were. Only the renewing replica writes certificates.
    async fn write_certificate(
        &self,
        name: &SecretName,
        encoded: EncodedCertificate,
    ) -> Result<(), StoreError>;
}

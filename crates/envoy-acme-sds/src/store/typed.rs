//! The one [`CertificateStore`]: typed values over any [`ItemBackend`].
//!
//! Every backend stores the same items with the same encoding, so the
//! mapping from certificates, order histories, accounts and renewal requests
//! to items is written once, here, and a backend only moves bytes.

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::backend::{ItemBackend, Writer};
use super::codec::Codec;
use super::encryption::KeyEncryption;
use super::layout::{ROUTED_HOSTS_ITEM, account_item, order_history_item, renewal_request_item};
use super::{
    AccountId, CertificateStore, LoadedRoutedHosts, RenewalRequest, RoutedHostsRecord, SecretName,
    StoreError, StoredAccount,
};
use crate::certificate::{CertificateBundle, CertificateMetadata};
use crate::policy::OrderHistory;

/// Certificates, order histories, accounts and renewal requests kept in `B`.
#[derive(Debug, Clone)]
pub struct Store<B> {
    backend: B,
    codec: Codec,
}

impl<B> Store<B> {
    /// Values encoded by `codec`, kept in `backend`.
    pub fn over(backend: B, codec: Codec) -> Self {
        Self { backend, codec }
    }

    /// Where the items live.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Also reads items sealed with `previous`, the key before a rotation.
    #[must_use]
    pub fn with_previous_key(mut self, previous: Option<Arc<KeyEncryption>>) -> Self {
        self.codec = self.codec.with_previous(previous);
        self
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The same codec over another backend (a fenced view of the same KV prefix).
    pub fn with_backend<C>(&self, backend: C) -> Store<C> {
        Store {
            backend,
            codec: self.codec.clone(),
        }
    }
}

#[async_trait]
impl<B: ItemBackend> CertificateStore for Store<B> {
    async fn load_certificate(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateBundle>, StoreError> {
        let stored = self.backend.read_certificate(name).await?;
        self.codec.decode_certificate(name, &stored)
    }

    async fn save_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<(), StoreError> {
        let encoded = self.codec.encode_certificate(name, bundle)?;
        self.backend.write_certificate(name, encoded).await
    }

    async fn load_certificate_metadata(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateMetadata>, StoreError> {
        let stored = self.backend.read_certificate(name).await?;
        self.codec.decode_metadata(name, &stored)
    }

    async fn load_order_history(&self, name: &SecretName) -> Result<OrderHistory, StoreError> {
        match self.backend.read_item(&order_history_item(name)).await? {
            Some(bytes) => self.codec.decode_order_history(name, &bytes),
            None => Ok(OrderHistory::default()),
        }
    }

    async fn save_order_history(
        &self,
        name: &SecretName,
        history: &OrderHistory,
    ) -> Result<(), StoreError> {
        let bytes = self.codec.encode_order_history(name, history)?;
        self.backend
            .write_item(&order_history_item(name), bytes, Writer::Renewer)
            .await
    }

    async fn load_account(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        match self.backend.read_item(&account_item(id)).await? {
            Some(bytes) => self.codec.decode_account(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn save_account(
        &self,
        id: &AccountId,
        account: &StoredAccount,
    ) -> Result<(), StoreError> {
        let bytes = self.codec.encode_account(id, account)?;
        self.backend
            .write_item(&account_item(id), bytes, Writer::Renewer)
            .await
    }

    async fn load_renewal_request(
        &self,
        name: &SecretName,
    ) -> Result<Option<RenewalRequest>, StoreError> {
        match self.backend.read_item(&renewal_request_item(name)).await? {
            Some(bytes) => self.codec.decode_renewal_request(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn request_renewal(
        &self,
        name: &SecretName,
        request: &RenewalRequest,
    ) -> Result<(), StoreError> {
        let bytes = self.codec.encode_renewal_request(name, request)?;
        self.backend
            .write_item(&renewal_request_item(name), bytes, Writer::Operator)
            .await
    }

    async fn load_routed_hosts(
        &self,
        now: OffsetDateTime,
    ) -> Result<LoadedRoutedHosts, StoreError> {
        match self.backend.read_item(ROUTED_HOSTS_ITEM).await? {
            Some(bytes) => self.codec.decode_routed_hosts(&bytes, now),
            None => Ok(LoadedRoutedHosts::default()),
        }
    }

    async fn save_routed_hosts(&self, hosts: &RoutedHostsRecord) -> Result<(), StoreError> {
        let bytes = self.codec.encode_routed_hosts(hosts)?;
        self.backend
            .write_item(ROUTED_HOSTS_ITEM, bytes, Writer::Renewer)
            .await
    }
}

//! Where certificates are stored decides who renews them and how a renewed
//! certificate reaches Envoy. [`StorageMode`] holds that decision, so the
//! binary wires one mode and never branches on the storage itself.
//!
//! | storage | who renews | what is served |
//! |---|---|---|
//! | `disk:<dir>` | this instance, always | each certificate this instance loads from or saves to its directory |
//! | `consul:<prefix>` | the holder of the renewal lock, its writes fenced by its session | what every replica, the holder included, reads from the prefix |
//!
//! Either way what is served is what the store holds: a certificate the
//! store refused is never served. On disk nothing else writes the
//! directory, so the instance's own loads and saves are all there is to
//! follow; with Consul the lock holder learns of its own renewal from the
//! prefix like every other replica ([`KvFollower`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consul_client::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::certificate::CertificateBundle;
use crate::config::StorageLocation;
use crate::election::{Election, ElectionConfig, Leadership, LockHolder};
use crate::kv_watch::KvFollower;
use crate::metrics::ServiceMetrics;
use crate::policy::OrderHistory;
use crate::renewer::Renewer;
use crate::sds::SecretPublisher;
use crate::store::codec::KeysAtRest;
use crate::store::consul::ConsulStore;
use crate::store::disk::DiskStore;
use crate::store::encryption::KeyEncryption;
use crate::store::{
    AccountId, CertificateStore, LoadedRoutedHosts, RenewalRequest, RoutedHostsRecord, SecretName,
    StoreError, StoredAccount,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StorageModeError {
    #[error("opening {location}")]
    Open {
        location: String,
        // Boxed: the error of a start-up step, not worth a large `Result`.
        #[source]
        source: Box<StoreError>,
    },
    #[error("{0} needs a Consul client, and none is configured")]
    NoConsulClient(String),
}

/// How this replica takes part in the election of the renewing replica
/// (shared storage only).
#[derive(Debug, Clone)]
pub struct LockSettings {
    /// Who holds the lock, as the lock key's value shows it.
    pub holder: String,
    pub session_ttl: Duration,
    pub lock_delay: Duration,
}

/// What a replica runs besides its SDS and admin servers.
#[derive(Debug)]
pub struct Replica {
    pub renewer: Renewer,
    pub publisher: Arc<SecretPublisher>,
    /// Marked changed to make every manager reconcile now (a renewal request).
    pub wake: watch::Sender<()>,
    pub metrics: ServiceMetrics,
    pub lock: LockSettings,
    /// Told how the stored secrets lie at rest, whenever the store changes
    /// (shared storage only: every replica follows the prefix).
    pub keys_at_rest: watch::Sender<Option<KeysAtRest>>,
}

/// The storage of this process, and with it who renews and who serves.
#[derive(Debug)]
pub enum StorageMode {
    /// One instance: it renews for good and serves what it stores.
    Disk(DiskStore),
    /// Replicas sharing a prefix: the lock holder renews, all serve the prefix.
    Consul(ConsulStore),
}

impl StorageMode {
    /// Opens the storage at `location`, sealing with `encryption` and also
    /// opening what `previous` sealed; `consul` is needed for Consul storage.
    pub fn open(
        location: &StorageLocation,
        encryption: Option<Arc<KeyEncryption>>,
        previous: Option<Arc<KeyEncryption>>,
        consul: Option<Client>,
    ) -> Result<Self, StorageModeError> {
        let opened = match location {
            StorageLocation::Disk(dir) => DiskStore::open(dir, encryption)
                .map(|store| Self::Disk(store.with_previous_key(previous))),
            StorageLocation::Consul { prefix } => {
                let client =
                    consul.ok_or_else(|| StorageModeError::NoConsulClient(location.to_string()))?;
                ConsulStore::new(client, prefix, encryption)
                    .map(|store| Self::Consul(store.with_previous_key(previous)))
            }
        };
        opened.map_err(|source| StorageModeError::Open {
            location: location.to_string(),
            source: Box::new(source),
        })
    }

    /// The store as an operator writes to it: renewal requests only, which
    /// are never fenced.
    pub fn store(&self) -> Arc<dyn CertificateStore> {
        match self {
            Self::Disk(store) => Arc::new(store.clone()),
            Self::Consul(store) => Arc::new(store.clone()),
        }
    }

    /// Whether a running instance learns of a renewal request only when
    /// told to (SIGHUP): nothing watches a directory.
    pub fn needs_a_signal_for_requests(&self) -> bool {
        matches!(self, Self::Disk(_))
    }

    /// Starts renewing and serving as this mode divides them, on `tasks`
    /// until `shutdown`. Returns the election's view with shared storage.
    pub async fn start(
        self,
        replica: Replica,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Option<ElectionView> {
        let Replica {
            renewer,
            publisher,
            wake,
            metrics,
            lock,
            keys_at_rest,
        } = replica;
        match self {
            Self::Disk(store) => {
                let served = Arc::new(ServedOnUse {
                    store,
                    publisher: Arc::clone(&publisher),
                });
                serve_stored(served.as_ref(), &publisher).await;
                metrics.set_lock_holder(true);
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    renewer
                        .run(served as Arc<dyn CertificateStore>, shutdown)
                        .await;
                });
                None
            }
            Self::Consul(store) => {
                let mut election_config = ElectionConfig::new(store.lock_key(), lock.holder);
                election_config.session_ttl = lock.session_ttl;
                election_config.lock_delay = lock.lock_delay;
                let election = Election::new(store.client().clone(), election_config);
                let leadership = election.subscribe();
                let holder = election.holder();
                tasks.spawn(election.run(shutdown.clone()));
                tasks.spawn(
                    KvFollower::new(store.clone(), publisher, wake)
                        .with_keys_at_rest(keys_at_rest)
                        .run(shutdown.clone()),
                );
                let leading = leadership.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    renewer
                        .run_while_leading(store, leading, metrics, shutdown)
                        .await;
                });
                Some(ElectionView { leadership, holder })
            }
        }
    }
}

/// What a replica sharing storage knows of the election.
#[derive(Debug)]
pub struct ElectionView {
    /// Whether this replica renews.
    pub leadership: watch::Receiver<Leadership>,
    /// Which replica holds the lock.
    pub holder: watch::Receiver<LockHolder>,
}

/// Serves what is stored at once, before any ACME traffic: a CA outage at
/// start must not keep valid certificates from Envoy.
async fn serve_stored(store: &dyn CertificateStore, publisher: &SecretPublisher) {
    for spec in publisher.wanted() {
        if let Err(error) = store.load_certificate(&spec.name).await {
            error!(secret = %spec.name, %error, "stored certificate unusable");
        }
    }
}

/// A store whose certificates are served as they are loaded or saved: with
/// one instance on disk, its own loads and saves are what the store holds.
#[derive(Debug)]
struct ServedOnUse {
    store: DiskStore,
    publisher: Arc<SecretPublisher>,
}

impl ServedOnUse {
    fn serve(&self, name: &SecretName, bundle: &CertificateBundle) {
        if let Err(error) = self.publisher.offer(name, Arc::new(bundle.clone())) {
            error!(secret = %name, %error, "cannot serve the stored certificate");
        }
    }
}

#[async_trait]
impl CertificateStore for ServedOnUse {
    async fn load_certificate(
        &self,
        name: &SecretName,
    ) -> Result<Option<CertificateBundle>, StoreError> {
        let loaded = self.store.load_certificate(name).await?;
        if let Some(bundle) = &loaded {
            self.serve(name, bundle);
        }
        Ok(loaded)
    }

    async fn save_certificate(
        &self,
        name: &SecretName,
        bundle: &CertificateBundle,
    ) -> Result<(), StoreError> {
        self.store.save_certificate(name, bundle).await?;
        self.serve(name, bundle);
        Ok(())
    }

    async fn load_order_history(&self, name: &SecretName) -> Result<OrderHistory, StoreError> {
        self.store.load_order_history(name).await
    }

    async fn save_order_history(
        &self,
        name: &SecretName,
        history: &OrderHistory,
    ) -> Result<(), StoreError> {
        self.store.save_order_history(name, history).await
    }

    async fn load_account(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        self.store.load_account(id).await
    }

    async fn save_account(
        &self,
        id: &AccountId,
        account: &StoredAccount,
    ) -> Result<(), StoreError> {
        self.store.save_account(id, account).await
    }

    async fn load_renewal_request(
        &self,
        name: &SecretName,
    ) -> Result<Option<RenewalRequest>, StoreError> {
        self.store.load_renewal_request(name).await
    }

    async fn request_renewal(
        &self,
        name: &SecretName,
        request: &RenewalRequest,
    ) -> Result<(), StoreError> {
        self.store.request_renewal(name, request).await
    }

    async fn load_routed_hosts(
        &self,
        now: OffsetDateTime,
    ) -> Result<LoadedRoutedHosts, StoreError> {
        self.store.load_routed_hosts(now).await
    }

    async fn save_routed_hosts(&self, hosts: &RoutedHostsRecord) -> Result<(), StoreError> {
        self.store.save_routed_hosts(hosts).await
    }
}

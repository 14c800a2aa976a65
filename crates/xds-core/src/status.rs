//! What each connected stream has been sent, and what it accepted or rejected.
//!
//! This is the server's view of its clients, for debug pages and tests:
//! which node is connected, which version of each type it was last sent,
//! which version it last acknowledged, and the last rejection with Envoy's
//! own error message.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::resource::ResourceType;

/// One connected stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    pub id: u64,
    /// `ads`, `cds`, `eds`, `lds`, `rds` or `sds`.
    pub service: &'static str,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    pub peer: Option<SocketAddr>,
    /// Empty until the first request names the node.
    pub node_id: String,
    pub node_key: String,
    pub types: BTreeMap<ResourceType, TypeStatus>,
}

/// One resource type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub wildcard: bool,
    /// Explicitly subscribed names.
    pub subscribed: usize,
    /// Version (SotW `version_info`, delta `system_version_info`) last sent.
    pub sent_version: Option<String>,
    /// Version the client last acknowledged (SotW: as it reported it).
    pub acked_version: Option<String>,
    /// The cache's version of this type the stream last compared with
    /// what it had sent and found nothing left to send (or sent what
    /// differed). Once it equals the cache's current version and the
    /// client acknowledged what it was sent, the client holds the cache's
    /// contents of the type: the test a make-before-break writer needs,
    /// which `sent_version` alone cannot give for a type whose streams
    /// subscribe to names (a write that touches none of them sends none
    /// of them anything).
    pub caught_up_version: Option<String>,
    pub pushes: u64,
    pub acks: u64,
    pub nacks: u64,
    pub last_rejection: Option<Rejection>,
}

/// A response the client rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The version of the rejected response.
    pub version: String,
    /// Envoy's explanation (`error_detail.message`).
    pub message: String,
}

/// The statuses of every connected stream of a server.
#[derive(Debug, Clone, Default)]
pub struct ConnectedClients {
    inner: Arc<ClientsInner>,
}

#[derive(Debug)]
struct ClientsInner {
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, StreamStatus>>,
    /// Ticks on every change of any stream's status, so a writer waiting
    /// for acknowledgements wakes when one arrives instead of polling.
    changes: watch::Sender<()>,
}

impl Default for ClientsInner {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(()),
        }
    }
}

/// Wakes on changes of the statuses of a server's streams: a stream
/// connecting, closing, being sent a response, or answering one.
#[derive(Debug)]
pub struct StatusChanges {
    receiver: watch::Receiver<()>,
}

impl StatusChanges {
    /// Resolves at the first change after this value was made or after
    /// the last call returned. A change made between reading the statuses
    /// and calling this is not missed.
    pub async fn changed(&mut self) {
        // Closed only once the server and every `ConnectedClients` clone
        // are gone: nothing can change any more, so wait rather than spin.
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ConnectedClients {
    /// Every connected stream, oldest first.
    pub fn streams(&self) -> Vec<StreamStatus> {
        let streams = self.lock();
        let mut all: Vec<StreamStatus> = streams.values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// A handle that wakes on every later change of any stream's status.
    /// Take it before reading the statuses it should wake a re-read of.
    pub fn changes(&self) -> StatusChanges {
        StatusChanges {
            receiver: self.inner.changes.subscribe(),
        }
    }

    /// The streams of one node id.
    pub fn of_node(&self, node_id: &str) -> Vec<StreamStatus> {
        let mut streams = self.streams();
        streams.retain(|s| s.node_id == node_id);
        streams
    }

    pub(crate) fn register(
        &self,
        service: &'static str,
        protocol: &'static str,
        peer: Option<SocketAddr>,
    ) -> StatusHandle {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.change(|streams| {
            streams.insert(
                id,
                StreamStatus {
                    id,
                    service,
                    protocol,
                    peer,
                    node_id: String::new(),
                    node_key: String::new(),
                    types: BTreeMap::new(),
                },
            );
        });
        StatusHandle {
            id,
            clients: self.clone(),
        }
    }

    /// Applies `change` to the statuses, then wakes every [`StatusChanges`].
    fn change(&self, change: impl FnOnce(&mut HashMap<u64, StreamStatus>)) {
        change(&mut self.lock());
        self.inner.changes.send_modify(|()| {});
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, StreamStatus>> {
        self.inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stream's entry; removed when dropped.
#[derive(Debug)]
pub(crate) struct StatusHandle {
    id: u64,
    clients: ConnectedClients,
}

impl StatusHandle {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut StreamStatus)) {
        self.clients.change(|streams| {
            if let Some(status) = streams.get_mut(&self.id) {
                change(status);
            }
        });
    }

    pub(crate) fn update_type(
        &self,
        resource_type: ResourceType,
        change: impl FnOnce(&mut TypeStatus),
    ) {
        self.update(|status| change(status.types.entry(resource_type).or_default()));
    }
}

impl Drop for StatusHandle {
    fn drop(&mut self) {
        self.clients.change(|streams| {
            streams.remove(&self.id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_appear_while_connected_and_vanish_when_dropped() {
        let clients = ConnectedClients::default();
        let handle = clients.register("ads", "sotw", None);
        handle.update(|s| s.node_id = "envoy-1".to_owned());
        handle.update_type(ResourceType::Endpoint, |t| t.acks += 1);
        let streams = clients.of_node("envoy-1");
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].types[&ResourceType::Endpoint].acks, 1);
        drop(handle);
        assert!(clients.streams().is_empty());
    }
}

//! Drives one gRPC stream: requests in, snapshot changes in, responses out.
//!
//! The driver is the response stream itself (no task per stream): tonic
//! polls it when the connection can take another message, and only then is
//! the next response computed from the latest snapshot. A slow Envoy thus
//! gets fewer, fresher responses instead of a growing queue, and a thousand
//! idle streams cost a thousand small structs, not a thousand tasks.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::cache::{Snapshot, SnapshotCache};
use crate::metrics::{Metrics, StreamLabel};
use crate::protocol::{Protocol, XdsRequest};
use crate::status::StatusHandle;

/// Everything a stream needs besides its protocol state.
#[derive(Debug)]
pub(crate) struct StreamParts {
    pub(crate) cache: SnapshotCache,
    pub(crate) drain: CancellationToken,
    pub(crate) metrics: Metrics,
    pub(crate) label: StreamLabel,
    /// Shares the stream's id with its status entry.
    pub(crate) status: Arc<StatusHandle>,
    pub(crate) span: tracing::Span,
}

struct Driver<P: Protocol> {
    protocol: P,
    requests: Streaming<P::Request>,
    parts: StreamParts,
    /// `None` until the first request names the node.
    watch: Option<watch::Receiver<Arc<Snapshot>>>,
    /// False once the cache dropped this node key (no more updates).
    watching: bool,
    snapshot: Arc<Snapshot>,
    finished: bool,
}

/// Turns a request stream into the response stream tonic sends.
pub(crate) fn serve<P: Protocol>(
    protocol: P,
    requests: Streaming<P::Request>,
    parts: StreamParts,
) -> impl Stream<Item = Result<P::Response, Status>> + Send + 'static {
    parts.metrics.stream_opened(&parts.label);
    parts.span.in_scope(|| tracing::info!("stream opened"));
    let driver = Driver {
        protocol,
        requests,
        parts,
        watch: None,
        watching: false,
        snapshot: Arc::new(Snapshot::empty()),
        finished: false,
    };
    futures::stream::unfold(driver, |mut driver| async move {
        let span = driver.parts.span.clone();
        let item = driver.next().instrument(span).await;
        item.map(|item| (item, driver))
    })
}

impl<P: Protocol> Driver<P> {
    async fn next(&mut self) -> Option<Result<P::Response, Status>> {
        loop {
            if self.finished {
                return None;
            }
            if self.parts.drain.is_cancelled() {
                self.finished = true;
                tracing::info!("closing stream: the server is shutting down");
                return Some(Err(Status::unavailable("the server is shutting down")));
            }
            if self.watch.is_some()
                && let Some(response) = self.protocol.next_response(&self.snapshot)
            {
                return Some(Ok(response));
            }
            let wake = self
                .protocol
                .next_wake()
                .map(tokio::time::Instant::from_std);
            // Biased, the wake last: a wake already due must never keep the
            // client's requests (its ACKs among them) from being read.
            tokio::select! {
                biased;
                () = self.parts.drain.cancelled() => {}
                request = self.requests.next() => match request {
                    Some(Ok(request)) => {
                        if let Err(status) = self.handle(request) {
                            tracing::warn!(%status, "closing stream: bad request");
                            self.finished = true;
                            return Some(Err(status));
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%status, "the client ended the stream");
                        return None;
                    }
                    None => return None,
                },
                changed = changed(self.watch.as_mut()), if self.watching => {
                    match changed {
                        Some(snapshot) => self.snapshot = snapshot,
                        None => {
                            tracing::info!("node key removed from the cache; no further updates");
                            self.watching = false;
                        }
                    }
                }
                () = sleep_until_opt(wake), if wake.is_some() => {}
            }
        }
    }

    fn handle(&mut self, request: P::Request) -> Result<(), Status> {
        if self.watch.is_none() {
            let node = request.node().ok_or_else(|| {
                Status::invalid_argument("the first request of a stream must identify its node")
            })?;
            let node_key = self.parts.cache.node_key(node);
            self.parts.span.record("node_id", node.id.as_str());
            self.parts.span.record("node_key", node_key.as_str());
            tracing::info!(node_cluster = %node.cluster, "node identified");
            let node_id = node.id.clone();
            let key = node_key.clone();
            self.parts.status.update(|status| {
                status.node_id = node_id;
                status.node_key = key;
            });
            let mut watch = self.parts.cache.watch(&node_key);
            self.snapshot = watch.borrow_and_update().clone();
            self.watch = Some(watch);
            self.watching = true;
        }
        self.protocol.on_request(request, &self.snapshot)
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next snapshot, or `None` once the cache dropped the key.
async fn changed(watch: Option<&mut watch::Receiver<Arc<Snapshot>>>) -> Option<Arc<Snapshot>> {
    let watch = watch?;
    watch.changed().await.ok()?;
    Some(watch.borrow_and_update().clone())
}

impl<P: Protocol> Drop for Driver<P> {
    fn drop(&mut self) {
        self.parts.metrics.stream_closed(&self.parts.label);
        self.parts.span.in_scope(|| tracing::info!("stream closed"));
    }
}

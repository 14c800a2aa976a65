//! A cap on the connections one pool holds open to its agent, whatever
//! the pool does.
//!
//! Why: the request budget bounds what is in flight, not what is open.
//! hyper's pool starts a connection for a request while it also waits for
//! an idle one, and when the idle one wins, finishes the new connection in
//! the background and keeps it: under churn the pool ends up with more
//! connections than requests (measured: 73 open with at most 64 in flight).
//! The agent's connections per client IP are shared with everything else
//! on the node, so the cap is kept where connections are made: a connection
//! holds a permit from its first byte to its close, and a connect waits for
//! one. A request never waits for that wait alone: the pool hands it the
//! first connection that falls idle meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// What hyper's client and the TLS connector take as a connector's error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a connector so that at most `max` of its connections are open at
/// once.
#[derive(Debug, Clone)]
pub struct CappedConnector<C> {
    inner: C,
    permits: Arc<Semaphore>,
}

impl<C> CappedConnector<C> {
    pub fn new(inner: C, max: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

impl<C> tower::Service<http::Uri> for CappedConnector<C>
where
    C: tower::Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Response: Send,
    C::Error: Into<BoxError>,
{
    type Response = CappedIo<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner connector is made ready in `call`, once a permit is held:
        // readiness of a connector that may not connect yet would mean nothing.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let inner = self.inner.clone();
        let permits = Arc::clone(&self.permits);
        Box::pin(async move {
            let permit = permits.acquire_owned().await.map_err(|_| {
                // This type owns the semaphore and never closes it.
                std::io::Error::other("the connection cap's semaphore was closed")
            })?;
            let io = inner.oneshot(uri).await.map_err(Into::into)?;
            Ok(CappedIo {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection that gives its permit back when it is closed (dropped).
#[derive(Debug)]
pub struct CappedIo<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: Read + Unpin> Read for CappedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CappedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, std::io::Error>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<Result<usize, std::io::Error>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for CappedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::address::Address;
    use crate::tls::TlsConfig;
    use crate::transport::Transport;

    /// Connections open now and the most ever open at once.
    #[derive(Default)]
    struct Open {
        now: AtomicUsize,
        peak: AtomicUsize,
        accepted: AtomicUsize,
    }

    /// An HTTP/1.1 server answering every request after `delay`, keeping
    /// connections alive unless `close`, counting them.
    async fn counting_server(delay: Duration, close: bool) -> (std::net::SocketAddr, Arc<Open>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Open::default());
        let counts = Arc::clone(&open);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
                counts.peak.fetch_max(now, Ordering::SeqCst);
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let answer: &[u8] = if close {
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if stream.write_all(answer).await.is_err() || close {
                                counts.now.fetch_sub(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    counts.now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, open)
    }

    async fn burst(transport: &Transport, addr: std::net::SocketAddr, requests: usize) {
        let sends = (0..requests).map(|_| {
            let request = http::Request::get(format!("http://{addr}/v1/status/leader"))
                .body(crate::transport::RequestBody::default())
                .unwrap();
            transport.send(request)
        });
        // A slot never given back would hang here: fail instead.
        let responses =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(sends))
                .await
                .expect("requests still waiting for a connection after 10 s");
        for response in responses {
            assert_eq!(response.expect("request failed").status(), 200);
        }
    }

    #[tokio::test]
    async fn never_more_connections_open_than_the_cap() {
        let (addr, open) = counting_server(Duration::from_millis(20), false).await;
        let address: Address = format!("http://{addr}").parse().unwrap();
        let transport =
            Transport::new(&address, &TlsConfig::default(), Duration::from_secs(5), 4).unwrap();
        // Eight times the cap at once, twice: every request is served, over
        // at most four connections, and the second burst reuses them.
        burst(&transport, addr, 32).await;
        burst(&transport, addr, 32).await;
        assert_eq!(open.peak.load(Ordering::SeqCst), 4);
        assert_eq!(open.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_closed_connection_frees_its_slot() {
        // The server closes every connection after one answer: with a cap
        // of one, each request can go out only once the last connection's
        // slot came back.
        let (addr, open) = counting_server(Duration::ZERO, true).await;
        let address: Address = format!("http://{addr}").parse().unwrap();
        let transport =
            Transport::new(&address, &TlsConfig::default(), Duration::from_secs(5), 1).unwrap();
        for _ in 0..3 {
            burst(&transport, addr, 2).await;
        }
        assert_eq!(open.accepted.load(Ordering::SeqCst), 6);
        assert_eq!(open.peak.load(Ordering::SeqCst), 1);
    }
}

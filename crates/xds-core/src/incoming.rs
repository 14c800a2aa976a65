//! Where connections come from: TCP or Unix listeners, and connections the
//! server can cut when the drain deadline passes.
//!
//! tonic's graceful shutdown waits for every connection to close, and an
//! xDS stream never closes by itself. Streams end themselves on drain, but
//! a client that stops reading can still hold its connection open; every
//! accepted connection is therefore wrapped so that the server can fail
//! its reads and writes once the deadline is over, which ends it at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address; port 0 picks a free port (see `BoundServer::local_addr`).
    Tcp(SocketAddr),
    /// A Unix socket path; a stale socket file there is replaced.
    Unix(PathBuf),
}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub(crate) async fn bind(listen: &Listen) -> io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(Self::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }
}

/// Removes a socket file left by a previous run; refuses to remove anything
/// that is not a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long to wait after a failed accept (e.g. out of file descriptors)
/// before trying again, so that the accept loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listener the accept loop can drive: TCP and Unix differ only in how
/// one connection is taken and prepared.
pub(crate) trait Accept: Send + 'static {
    type Io: Send + 'static;

    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept_io(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        // xDS responses are latency-sensitive and written whole.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;

    async fn accept_io(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.accept().await?;
        Ok(stream)
    }
}

/// Accepts forever, wrapping each connection so `abort` can cut it.
pub(crate) fn accept<L: Accept>(
    listener: L,
    abort: CancellationToken,
) -> impl Stream<Item = io::Result<AbortableIo<L::Io>>> {
    futures::stream::unfold(listener, move |listener| {
        let abort = abort.clone();
        async move {
            loop {
                match listener.accept_io().await {
                    Ok(stream) => return Some((Ok(AbortableIo::new(stream, abort)), listener)),
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        }
    })
}

/// A connection whose I/O fails once its token is cancelled.
pub(crate) struct AbortableIo<T> {
    inner: T,
    aborted: Pin<Box<WaitForCancellationFutureOwned>>,
    is_aborted: bool,
}

impl<T> AbortableIo<T> {
    fn new(inner: T, abort: CancellationToken) -> Self {
        Self {
            inner,
            aborted: Box::pin(abort.cancelled_owned()),
            is_aborted: false,
        }
    }

    /// Registers for the abort and reports whether it happened.
    fn check_aborted(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.is_aborted && self.aborted.as_mut().poll(cx).is_ready() {
            self.is_aborted = true;
        }
        if self.is_aborted {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the server after its drain deadline",
            ))
        } else {
            Ok(())
        }
    }
}

impl<T> std::fmt::Debug for AbortableIo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortableIo")
            .field("aborted", &self.is_aborted)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AbortableIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AbortableIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for AbortableIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_aborted_connection_fails_pending_reads() {
        let (client, server) = tokio::io::duplex(64);
        let abort = CancellationToken::new();
        let mut io = AbortableIo::new(server, abort.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        abort.cancel();
        let result = reader.await.expect("reader task");
        assert_eq!(
            result.expect_err("read fails").kind(),
            io::ErrorKind::ConnectionAborted
        );
        drop(client);
    }

    #[tokio::test]
    async fn a_live_connection_passes_data_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = AbortableIo::new(server, CancellationToken::new());
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn binding_a_unix_socket_replaces_a_stale_one_but_not_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("xds.sock");
        drop(
            Listener::bind(&Listen::Unix(path.clone()))
                .await
                .expect("first bind"),
        );
        assert!(path.exists(), "the socket file outlives its listener");
        Listener::bind(&Listen::Unix(path.clone()))
            .await
            .expect("rebinding over the stale socket");
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"data").expect("write");
        assert!(Listener::bind(&Listen::Unix(file.clone())).await.is_err());
        assert_eq!(std::fs::read(&file).expect("kept"), b"data");
    }
}

//! A TCP proxy that can be frozen: connections stay open but nothing passes,
//! as with a server that hangs. For faults the real programs cannot be told
//! to produce (a Consul agent that stops answering mid-request).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::{HarnessError, Result};

/// Forwards every connection on its loopback port to `target`; stops and
/// drops every connection when dropped.
#[derive(Debug)]
pub struct FreezableProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("proxy listener"))?;
        let addr = listener
            .local_addr()
            .map_err(HarnessError::io("proxy listener"))?;
        let (frozen, _) = watch::channel(false);
        let frozen_rx = frozen.subscribe();
        let task = tokio::spawn(async move {
            // Owned here: aborting the proxy's task drops every pipe.
            let mut pipes = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let Ok(server) = TcpStream::connect(target).await else { continue };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        pipes.spawn(pipe(client_read, server_write, frozen_rx.clone()));
                        pipes.spawn(pipe(server_read, client_write, frozen_rx.clone()));
                    }
                    Some(_) = pipes.join_next(), if !pipes.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, frozen, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, bytes that arrive are held, in both directions.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Passes what was held, and everything after it.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn passes_bytes_until_frozen_and_the_held_ones_after_thawing() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = echo.accept().await.expect("accept");
            let mut buffer = [0u8; 64];
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        });
        let proxy = FreezableProxy::start(echo_addr).await.expect("proxy");
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        let mut reply = [0u8; 4];

        client.write_all(b"ping").await.expect("write");
        client.read_exact(&mut reply).await.expect("echo");
        assert_eq!(&reply, b"ping");

        proxy.freeze();
        client.write_all(b"held").await.expect("write");
        let frozen =
            tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut reply)).await;
        assert!(frozen.is_err(), "nothing passes while frozen");

        proxy.thaw();
        client
            .read_exact(&mut reply)
            .await
            .expect("echo after thawing");
        assert_eq!(&reply, b"held");
    }
}

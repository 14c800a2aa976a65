//! HTTP-01: answering `GET /.well-known/acme-challenge/<token>` ourselves.
//!
//! The solver writes key authorizations into a [`TokenStore`]; the
//! [`Http01Server`] answers from the same store. With one replica an in-memory
//! store is enough; with several behind one address, whichever replica the CA
//! reaches must know the token, so a shared (Consul KV) store plugs in here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Challenge, ChallengeKind, ChallengeSolver, SolverError};

const CHALLENGE_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, thiserror::Error)]
pub enum Http01Error {
    #[error("token store: {0}")]
    Store(String),
    #[error("identifier `{0}` is a wildcard: wildcard names can only be validated with DNS-01")]
    Wildcard(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where key authorizations wait for the CA's request, by token.
#[async_trait]
pub trait TokenStore: Send + Sync + fmt::Debug {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), Http01Error>;
    async fn get(&self, token: &str) -> Result<Option<String>, Http01Error>;
    async fn remove(&self, token: &str) -> Result<(), Http01Error>;
}

/// A [`TokenStore`] in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    tokens: RwLock<HashMap<String, String>>,
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), Http01Error> {
        self.tokens
            .write()
            .map_err(|_| Http01Error::Store("lock poisoned".to_owned()))?
            .insert(token.to_owned(), key_authorization.to_owned());
        Ok(())
    }

    async fn get(&self, token: &str) -> Result<Option<String>, Http01Error> {
        Ok(self
            .tokens
            .read()
            .map_err(|_| Http01Error::Store("lock poisoned".to_owned()))?
            .get(token)
            .cloned())
    }

    async fn remove(&self, token: &str) -> Result<(), Http01Error> {
        self.tokens
            .write()
            .map_err(|_| Http01Error::Store("lock poisoned".to_owned()))?
            .remove(token);
        Ok(())
    }
}

/// Publishes HTTP-01 responses into a [`TokenStore`] that an [`Http01Server`] serves.
#[derive(Debug, Clone)]
pub struct Http01Solver {
    store: Arc<dyn TokenStore>,
}

impl Http01Solver {
    pub fn new(store: Arc<dyn TokenStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl ChallengeSolver for Http01Solver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    async fn present(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        if let Some(wildcard) = challenges.iter().find(|c| c.identifier().is_wildcard()) {
            return Err(Http01Error::Wildcard(wildcard.identifier().to_string()).into());
        }
        for challenge in challenges {
            self.store
                .put(challenge.token(), challenge.key_authorization())
                .await?;
        }
        Ok(())
    }

    async fn cleanup(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        for challenge in challenges {
            self.store.remove(challenge.token()).await?;
        }
        Ok(())
    }
}

/// The listener answering the CA's HTTP-01 requests.
#[derive(Debug)]
pub struct Http01Server {
    listener: TcpListener,
    store: Arc<dyn TokenStore>,
}

impl Http01Server {
    pub async fn bind(addr: SocketAddr, store: Arc<dyn TokenStore>) -> Result<Self, Http01Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Http01Error::Listen { addr, source })?;
        Ok(Self { listener, store })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Http01Error> {
        self.listener
            .local_addr()
            .map_err(|source| Http01Error::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: the next accept may succeed.
                    warn!(%error, "HTTP-01 listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let store = Arc::clone(&self.store);
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let store = Arc::clone(&store);
                    async move { Ok::<_, Infallible>(answer(store.as_ref(), &request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            debug!(%peer, %error, "HTTP-01 connection ended with an error");
                        }
                    }
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
    }
}

async fn answer(store: &dyn TokenStore, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let Some(token) = request.uri().path().strip_prefix(CHALLENGE_PATH_PREFIX) else {
        return plain(StatusCode::NOT_FOUND, "");
    };
    // Tokens are base64url (RFC 8555 §8.3); anything else is not a lookup worth making.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return plain(StatusCode::NOT_FOUND, "");
    }
    match store.get(token).await {
        Ok(Some(key_authorization)) => {
            debug!("HTTP-01 challenge answered");
            plain(StatusCode::OK, &key_authorization)
        }
        Ok(None) => plain(StatusCode::NOT_FOUND, ""),
        Err(error) => {
            warn!(%error, "HTTP-01 token store lookup failed");
            plain(StatusCode::SERVICE_UNAVAILABLE, "")
        }
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn serves_present_tokens_until_cleaned_up() {
        let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
        let server = Http01Server::bind("127.0.0.1:0".parse().expect("addr"), Arc::clone(&store))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.serve(shutdown.clone()));

        let solver = Http01Solver::new(Arc::clone(&store));
        let challenge = Challenge::new(
            DomainName::parse("www.example.test").expect("name"),
            "tok_EN-1".to_owned(),
            "tok_EN-1.thumbprint".to_owned(),
        );
        solver
            .present(std::slice::from_ref(&challenge))
            .await
            .expect("present");
        let response = get(addr, "/.well-known/acme-challenge/tok_EN-1").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.ends_with("\r\n\r\ntok_EN-1.thumbprint"),
            "{response}"
        );

        let unknown = get(addr, "/.well-known/acme-challenge/other").await;
        assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
        let traversal = get(addr, "/.well-known/acme-challenge/../etc").await;
        assert!(traversal.starts_with("HTTP/1.1 404"), "{traversal}");

        solver
            .cleanup(std::slice::from_ref(&challenge))
            .await
            .expect("cleanup");
        let gone = get(addr, "/.well-known/acme-challenge/tok_EN-1").await;
        assert!(gone.starts_with("HTTP/1.1 404"), "{gone}");

        shutdown.cancel();
        serving.await.expect("server task");
    }

    #[tokio::test]
    async fn wildcards_are_refused() {
        let solver = Http01Solver::new(Arc::new(MemoryTokenStore::new()));
        let challenge = Challenge::new(
            DomainName::parse("*.example.test").expect("name"),
            "t".to_owned(),
            "t.k".to_owned(),
        );
        let err = solver.present(&[challenge]).await.expect_err("wildcard");
        assert!(err.to_string().contains("DNS-01"), "{err}");
    }
}

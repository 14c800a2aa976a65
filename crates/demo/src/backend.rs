//! One demo backend instance: answers with its id, sometimes slowly,
//! sometimes with a deliberate 500, and drains gracefully on stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::DELIBERATE_ERROR_HEADER;

/// How an instance misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Share of requests answered 500 on purpose, 0.0..=1.0.
    pub error_ratio: f64,
    /// Share of requests answered after `slow_delay`.
    pub slow_ratio: f64,
    pub slow_delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            error_ratio: 0.0,
            slow_ratio: 0.0,
            slow_delay: Duration::from_millis(200),
        }
    }
}

/// A running instance; `stop` drains it.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    pub async fn start(
        id: String,
        ip: std::net::IpAddr,
        behaviour: Behaviour,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Arc::from(id.as_str()),
            behaviour,
            stop.clone(),
        ));
        Ok(Self {
            id,
            addr,
            stop,
            task,
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), closes.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!(id = %self.id, "instance did not drain within {grace:?}");
        }
    }
}

async fn serve(listener: TcpListener, id: Arc<str>, behaviour: Behaviour, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        // As any HTTP server should: an answer written in two pieces must
        // not wait out the peer's delayed acknowledgement (Nagle).
        let _ = stream.set_nodelay(true);
        let id = id.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let id = id.clone();
            async move { Ok::<_, Infallible>(answer(&request, &id, behaviour).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn answer<B>(request: &Request<B>, id: &str, behaviour: Behaviour) -> Response<Full<Bytes>> {
    if request.uri().path() == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    let (slow, fail) = {
        let mut rng = rand::rng();
        (
            rng.random_bool(behaviour.slow_ratio.clamp(0.0, 1.0)),
            rng.random_bool(behaviour.error_ratio.clamp(0.0, 1.0)),
        )
    };
    if slow {
        tokio::time::sleep(behaviour.slow_delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("{id}\n"))));
    if fail {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response.headers_mut().insert(
            DELIBERATE_ERROR_HEADER,
            hyper::header::HeaderValue::from_static("true"),
        );
    }
    response
}

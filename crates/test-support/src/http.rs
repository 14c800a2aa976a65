//! A minimal HTTP/1.1 client for readiness probes and admin APIs.
//!
//! Tests poke admin endpoints (Envoy's `/clusters`, Consul's `/v1/...`) and
//! need nothing more than one request per connection; the full clients under
//! test are deliberately not used here, so the harness cannot hide their bugs.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::{HarnessError, Result};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// `GET http://addr/path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    http_request("GET", addr, path, &[], Vec::new()).await
}

/// One HTTP/1.1 request over a fresh plain-TCP connection.
pub async fn http_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse> {
    let url = format!("http://{addr}{path}");
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| http_error(&url, e))?;
    stream.set_nodelay(true).map_err(|e| http_error(&url, e))?;
    send(stream, &url, method, &addr.to_string(), path, headers, body).await
}

pub(crate) async fn send<S>(
    stream: S,
    url: &str,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_error(url, e))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header("host", host);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http_error(url, e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_error(url, e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| http_error(url, e))?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(crate) fn http_error(url: &str, error: impl std::fmt::Display) -> HarnessError {
    HarnessError::Http {
        url: url.to_owned(),
        reason: error.to_string(),
    }
}

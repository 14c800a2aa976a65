//! An in-process front adding ACME Renewal Information (RFC 9773) to a real
//! CA that lacks it, as pebble 2.4 does.
//!
//! Every ACME request is relayed to the CA, so accounts, orders,
//! validations and certificates are the CA's own. On top of that the front
//! - adds `renewalInfo` to the directory and answers
//!   `GET <renewalInfo>/<certID>` with whatever the test set, recording the
//!   certificate IDs asked about;
//! - records every new-order request's `replaces`, and echoes it in the
//!   CA's answer as RFC 9773 §5 requires of a CA that accepts it (pebble
//!   drops the unknown field, and instant-acme refuses an order whose answer
//!   does not reflect it);
//! - optionally advertises ACME profiles (`meta.profiles`, as Let's Encrypt
//!   does) and records each order's `profile`, which pebble 2.4 ignores.
//!
//! Requests are relayed with the front's own `Host`: pebble builds every URL
//! it hands out from the `Host` it was asked with, and checks each JWS's
//! signed `url` against it. So all URLs the client learns point back at the
//! front, signatures stay valid, and no order can bypass the count.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, TRANSFER_ENCODING,
};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::http::http_error;
use crate::tls::{TestCa, tls_acceptor};
use crate::{HarnessError, Result};

/// Where the front serves renewal information.
const RENEWAL_INFO_PATH: &str = "/renewal-info";

/// What `GET <renewalInfo>/<certID>` answers, for every certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalInfoAnswer {
    /// `200` with this `suggestedWindow`.
    Window {
        start: OffsetDateTime,
        end: OffsetDateTime,
    },
    /// This status with an ACME problem document, as a failing CA sends.
    Status(u16),
    /// `200` with this body verbatim (malformed renewal information).
    Body(String),
}

/// One new-order request the front relayed to the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSeen {
    /// The `replaces` field of the request's payload.
    pub replaces: Option<String>,
    /// The `profile` field of the request's payload.
    pub profile: Option<String>,
    /// The CA's status code (201 when the order was created).
    pub status: u16,
    /// Whether the CA's own answer carried `replaces`, before the front
    /// echoed it (false for a CA that ignores the field).
    pub echoed_by_ca: bool,
}

#[derive(Debug)]
struct State {
    answer: RenewalInfoAnswer,
    retry_after_seconds: u64,
    echo_replaces: bool,
    /// Advertised in the directory's `meta.profiles`: name -> description.
    profiles: Vec<(String, String)>,
    queries: Vec<String>,
    orders: Vec<OrderSeen>,
    /// Learnt from the CA's directory.
    new_order_path: Option<String>,
}

/// The CA the front relays to.
#[derive(Debug)]
struct Upstream {
    host: String,
    port: u16,
    directory_path: String,
    tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug)]
struct Front {
    upstream: Upstream,
    /// `127.0.0.1:<port>`: the front's authority, sent upstream as `Host`.
    authority: String,
    state: Mutex<State>,
}

/// The front, serving HTTPS on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct AriFront {
    front: Arc<Front>,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl AriFront {
    /// Fronts the CA whose directory is `upstream_directory_url`
    /// (`https://host:port/path`), trusting `upstream_root_pem` for it.
    ///
    /// Renewal information starts as a window 60 to 61 days ahead with
    /// `Retry-After: 60`, and `replaces` is echoed.
    pub async fn start(upstream_directory_url: &str, upstream_root_pem: &str) -> Result<Self> {
        let upstream = Upstream::parse(upstream_directory_url, upstream_root_pem)?;
        let ca = TestCa::new("ACME renewal information front test CA")?;
        let leaf = ca.leaf(&["127.0.0.1", "localhost"])?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("ARI front listener"))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(HarnessError::io("ARI front listener"))?;
        let authority = addr.to_string();
        let acceptor = tls_acceptor(&leaf.cert_pem, &leaf.key_pem, None, &authority)?;
        let now = OffsetDateTime::now_utc();
        let front = Arc::new(Front {
            upstream,
            authority,
            state: Mutex::new(State {
                answer: RenewalInfoAnswer::Window {
                    start: now + time::Duration::days(60),
                    end: now + time::Duration::days(61),
                },
                retry_after_seconds: 60,
                echo_replaces: true,
                profiles: Vec::new(),
                queries: Vec::new(),
                orders: Vec::new(),
                new_order_path: None,
            }),
        });
        let serving = Arc::clone(&front);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let front = Arc::clone(&serving);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let front = Arc::clone(&front);
                        async move { Ok::<_, Infallible>(front.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let ari_front = Self {
            front,
            ca_pem: ca.cert_pem().to_owned(),
            task,
        };
        ari_front.check_directory().await?;
        Ok(ari_front)
    }

    /// `https://127.0.0.1:<port>/<the CA's directory path>`.
    pub fn directory_url(&self) -> String {
        format!(
            "https://{}{}",
            self.front.authority, self.front.upstream.directory_path
        )
    }

    /// The root of the front's own HTTPS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn set_renewal_info(&self, answer: RenewalInfoAnswer) {
        self.front.state().answer = answer;
    }

    /// The `Retry-After` (seconds) sent with every renewal information answer.
    pub fn set_retry_after(&self, seconds: u64) {
        self.front.state().retry_after_seconds = seconds;
    }

    /// Whether new-order answers reflect `replaces` (an ARI CA) or are the
    /// CA's own (pebble: never).
    pub fn set_echo_replaces(&self, echo: bool) {
        self.front.state().echo_replaces = echo;
    }

    /// Profiles the directory advertises from now on (name, description);
    /// none by default, like pebble 2.4.
    pub fn set_profiles(&self, profiles: &[(&str, &str)]) {
        self.front.state().profiles = profiles
            .iter()
            .map(|(name, description)| ((*name).to_owned(), (*description).to_owned()))
            .collect();
    }

    /// The certificate IDs renewal information was asked for, in order.
    pub fn renewal_info_queries(&self) -> Vec<String> {
        self.front.state().queries.clone()
    }

    /// Every new-order request relayed to the CA, in order.
    pub fn orders(&self) -> Vec<OrderSeen> {
        self.front.state().orders.clone()
    }

    /// Fetches the directory through the front once, so a CA that hands
    /// out URLs other than the front's fails here rather than letting orders
    /// bypass the count.
    async fn check_directory(&self) -> Result<()> {
        let url = self.directory_url();
        let request = Request::get(&self.front.upstream.directory_path)
            .body(Full::new(Bytes::new()))
            .map_err(|e| http_error(&url, e))?;
        let (status, _, body) = self.front.relay(request).await?;
        if status != StatusCode::OK {
            return Err(http_error(&url, format!("status {status}")));
        }
        self.front
            .with_renewal_info(&body)
            .map(drop)
            .map_err(|reason| http_error(&url, reason))
    }
}

impl Drop for AriFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if request.method() == Method::GET
            && let Some(cert_id) = path
                .strip_prefix(RENEWAL_INFO_PATH)
                .and_then(|rest| rest.strip_prefix('/'))
        {
            return self.renewal_info(cert_id);
        }
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let is_directory = parts.method == Method::GET && path == self.upstream.directory_path;
        let is_new_order = parts.method == Method::POST
            && self.state().new_order_path.as_deref() == Some(path.as_str());
        let payload = if is_new_order {
            jws_payload(&body)
        } else {
            None
        };
        let field = |name: &str| {
            payload
                .as_ref()
                .and_then(|payload| payload.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (replaces, profile) = (field("replaces"), field("profile"));
        let request = Request::from_parts(parts, Full::new(body));
        let (status, headers, mut body) = match self.relay(request).await {
            Ok(answer) => answer,
            Err(e) => return plain(StatusCode::BAD_GATEWAY, &e.to_string()),
        };
        if is_directory && status == StatusCode::OK {
            match self.with_renewal_info(&body) {
                Ok(directory) => body = directory,
                Err(reason) => return plain(StatusCode::BAD_GATEWAY, &reason),
            }
        }
        if is_new_order {
            let mut order = serde_json::from_slice::<Value>(&body).ok();
            let echoed_by_ca = order
                .as_ref()
                .and_then(|order| order.get("replaces"))
                .is_some();
            let mut state = self.state();
            state.orders.push(OrderSeen {
                replaces: replaces.clone(),
                profile,
                status: status.as_u16(),
                echoed_by_ca,
            });
            if state.echo_replaces
                && status == StatusCode::CREATED
                && let (Some(replaces), Some(order)) = (replaces, order.as_mut())
                && let Some(fields) = order.as_object_mut()
            {
                fields.insert("replaces".to_owned(), Value::String(replaces));
                body = Bytes::from(order.to_string());
            }
        }
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// The CA's directory with `renewalInfo` added; remembers where new
    /// orders go. Fails if a URL of the directory is not the front's.
    fn with_renewal_info(&self, body: &[u8]) -> std::result::Result<Bytes, String> {
        let mut directory: Value =
            serde_json::from_slice(body).map_err(|e| format!("CA directory: {e}"))?;
        let fields = directory
            .as_object_mut()
            .ok_or("CA directory is not an object")?;
        let base = format!("https://{}", self.authority);
        let foreign: Vec<&str> = fields
            .values()
            .filter_map(Value::as_str)
            .filter(|url| !url.starts_with(&format!("{base}/")))
            .collect();
        if !foreign.is_empty() {
            return Err(format!("CA URLs not through the front: {foreign:?}"));
        }
        let new_order = fields
            .get("newOrder")
            .and_then(Value::as_str)
            .and_then(|url| url.strip_prefix(&base))
            .ok_or("CA directory has no newOrder")?
            .to_owned();
        self.state().new_order_path = Some(new_order);
        fields.insert(
            "renewalInfo".to_owned(),
            Value::String(format!("{base}{RENEWAL_INFO_PATH}")),
        );
        let profiles = self.state().profiles.clone();
        if !profiles.is_empty() {
            let meta = fields
                .entry("meta")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                let listed = profiles
                    .into_iter()
                    .map(|(name, description)| (name, Value::String(description)))
                    .collect();
                meta.insert("profiles".to_owned(), Value::Object(listed));
            }
        }
        Ok(Bytes::from(directory.to_string()))
    }

    fn renewal_info(&self, cert_id: &str) -> Response<Full<Bytes>> {
        let (answer, retry_after) = {
            let mut state = self.state();
            state.queries.push(cert_id.to_owned());
            (state.answer.clone(), state.retry_after_seconds)
        };
        let (status, content_type, body) = match answer {
            RenewalInfoAnswer::Window { start, end } => {
                let format = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_default();
                let window = serde_json::json!({
                    "suggestedWindow": { "start": format(start), "end": format(end) }
                });
                (StatusCode::OK, "application/json", window.to_string())
            }
            RenewalInfoAnswer::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let problem = serde_json::json!({
                    "type": "urn:ietf:params:acme:error:serverInternal",
                    "detail": "renewal information unavailable",
                    "status": status.as_u16(),
                });
                (status, "application/problem+json", problem.to_string())
            }
            RenewalInfoAnswer::Body(body) => (StatusCode::OK, "application/json", body),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        headers.insert(RETRY_AFTER, retry_after.into());
        response
    }

    /// Sends `request` to the CA over a fresh TLS connection, as if it had
    /// been made to the front's authority.
    async fn relay(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let upstream = &self.upstream;
        let url = format!(
            "https://{}:{}{}",
            upstream.host,
            upstream.port,
            request.uri().path()
        );
        let tcp = TcpStream::connect((upstream.host.as_str(), upstream.port))
            .await
            .map_err(|e| http_error(&url, e))?;
        let name = ServerName::try_from(upstream.host.clone()).map_err(|e| http_error(&url, e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&upstream.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| http_error(&url, e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_error(&url, e))?;
        tokio::spawn(connection);

        let (mut parts, body) = request.into_parts();
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| http_error(&url, e))?;
        strip_framing(&mut parts.headers);
        parts.headers.insert(
            HOST,
            self.authority.parse().map_err(|e| http_error(&url, e))?,
        );
        let response = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| http_error(&url, e))?;
        let status = response.status();
        let mut headers = response.headers().clone();
        strip_framing(&mut headers);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http_error(&url, e))?
            .to_bytes();
        Ok((status, headers, body))
    }
}

impl Upstream {
    fn parse(directory_url: &str, root_pem: &str) -> Result<Self> {
        let invalid = |reason: &str| http_error(directory_url, reason);
        let rest = directory_url
            .strip_prefix("https://")
            .ok_or_else(|| invalid("not an https URL"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| invalid("no port"))?;
        let port = port.parse().map_err(|_| invalid("bad port"))?;
        let mut roots = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            let root = root.map_err(|e| http_error(directory_url, e))?;
            roots.add(root).map_err(|e| http_error(directory_url, e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| http_error(directory_url, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            host: host.to_owned(),
            port,
            directory_path: if path.is_empty() { "/" } else { path }.to_owned(),
            tls: Arc::new(config),
        })
    }
}

/// Drops the headers that describe one hop's message framing; hyper
/// recomputes them for the body actually sent.
fn strip_framing(headers: &mut HeaderMap) {
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION] {
        headers.remove(name);
    }
}

/// The decoded payload of a flattened JWS (RFC 8555 §6.2).
fn jws_payload(body: &[u8]) -> Option<Value> {
    let jws: Value = serde_json::from_slice(body).ok()?;
    let payload = URL_SAFE_NO_PAD.decode(jws.get("payload")?.as_str()?).ok()?;
    serde_json::from_slice(&payload).ok()
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

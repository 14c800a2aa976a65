//! The client handle, and the single path every request takes: URL and
//! headers, the request budget, the deadline, metrics, tracing, and mapping
//! of HTTP statuses onto [`Error`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;

use blocking_query::{Address, RequestBudget, RequestClass, Transport, error_chain};

use crate::codec::{DecodeFailure, decode_json};
use crate::config::{ClientConfig, ConfigError};
use crate::endpoint::EndpointKind;
use crate::json_array::ArraySplitter;
use crate::metrics::ClientMetrics;
use crate::query::{QueryMeta, QueryOptions, QueryResponse};
use crate::{Error, codec};

const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-consul-token");
const INDEX_HEADER: &str = "x-consul-index";
const LAST_CONTACT_HEADER: &str = "x-consul-lastcontact";
const KNOWN_LEADER_HEADER: &str = "x-consul-knownleader";
const FILTERED_BY_ACLS_HEADER: &str = "x-consul-results-filtered-by-acls";
/// Far above any real answer (a DC-wide `/v1/health/state/any` of 100,000
/// checks is about 38 MB), low enough that a broken peer cannot exhaust
/// memory or, for a streamed answer, keep a read going forever.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// How much of an error body an [`Error`] quotes.
const ERROR_BODY_EXCERPT: usize = 512;

/// A handle to one Consul agent. Cheap to clone; clones share connections,
/// budgets and metrics.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    address: Address,
    /// `http://authority/`, `https://authority/` or, for a Unix socket,
    /// `http://localhost/` (the connector ignores the authority).
    base_url: Url,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    budget: RequestBudget,
    metrics: ClientMetrics,
    request_timeout: Duration,
    blocking_timeout_margin: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.inner.address)
            .field("datacenter", &self.inner.datacenter)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ConfigError> {
        Self::with_metrics(config, ClientMetrics::new())
    }

    /// A client reporting into `metrics`, which may be shared with other clients.
    pub fn with_metrics(config: ClientConfig, metrics: ClientMetrics) -> Result<Self, ConfigError> {
        config.validate()?;
        let budget =
            RequestBudget::new(config.max_blocking_queries, config.max_concurrent_requests);
        let transport = Transport::new(
            &config.address,
            &config.tls,
            config.connect_timeout,
            budget.max_in_flight(),
        )?;
        let base_url =
            Url::parse(&config.address.base_url()).map_err(|e| ConfigError::InvalidAddress {
                address: config.address.to_string(),
                reason: e.to_string(),
            })?;
        let token = config
            .token
            .as_ref()
            .map(|t| t.header_value())
            .transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                address: config.address,
                base_url,
                token,
                datacenter: config.datacenter,
                budget,
                metrics,
                request_timeout: config.request_timeout,
                blocking_timeout_margin: config.blocking_timeout_margin,
            }),
        })
    }

    /// A client configured from Consul's CLI environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(ClientConfig::from_env()?)
    }

    pub fn metrics(&self) -> &ClientMetrics {
        &self.inner.metrics
    }

    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    /// The datacenter requests default to, if one was configured.
    pub fn datacenter(&self) -> Option<&str> {
        self.inner.datacenter.as_deref()
    }

    /// Sends `call` and returns Consul's answer, or the error it amounts to.
    pub(crate) async fn execute(&self, call: Call) -> Result<Reply, Error> {
        self.execute_with(call, BodyRead::Buffer).await
    }

    /// Sends `call`, whose answer is a JSON array, and hands each element's
    /// index and text to `each` as soon as it has arrived: the answer is
    /// never held whole. `each` decodes the element (see
    /// [`crate::codec::decode_element`]); its failure fails the call, and
    /// later elements are not looked at.
    ///
    /// Decoding happens while the body is read, so the request's deadline
    /// and its duration metric include it.
    pub(crate) async fn execute_each<F>(&self, call: Call, mut each: F) -> Result<QueryMeta, Error>
    where
        F: FnMut(usize, &[u8]) -> Result<(), DecodeFailure> + Send,
    {
        let mut splitter = ArraySplitter::default();
        let reply = {
            let mut read = |chunk: &[u8]| splitter.feed(chunk, &mut each);
            let reply = self.execute_with(call, BodyRead::Stream(&mut read)).await?;
            if !reply.status.is_success() {
                // An accepted non-2xx status was buffered (see `round_trip`).
                read(&reply.body).map_err(|failure| failure.into_error(&reply.endpoint))?;
            }
            reply
        };
        splitter
            .finish()
            .map_err(|failure| failure.into_error(&reply.endpoint))?;
        Ok(reply.meta)
    }

    async fn execute_with(&self, call: Call, read: BodyRead<'_>) -> Result<Reply, Error> {
        let inner = &self.inner;
        let url = self.url(&call);
        let endpoint = format!("{} {}", call.method, url.path());
        if let Some(reason) = call.invalid {
            return Err(Error::InvalidRequest { endpoint, reason });
        }
        let blocking_wait = call.options.blocking_wait();
        let (class, deadline) = match blocking_wait {
            Some(wait) => (
                RequestClass::Blocking,
                wait + wait / 16 + inner.blocking_timeout_margin,
            ),
            None if call.kind.keeps_a_session() => (RequestClass::Session, inner.request_timeout),
            None => (RequestClass::Other, inner.request_timeout),
        };
        let request = self.build_request(&call.method, &url, call.body, &endpoint)?;
        let span = tracing::debug_span!(
            "consul_request",
            method = %call.method,
            endpoint = call.kind.as_str(),
            path = url.path(),
            class = class.as_str(),
        );
        async move {
            let queued = inner.metrics.track_queued(class);
            let _permit = inner.budget.admit(class).await;
            drop(queued);
            let _in_flight = inner.metrics.track_in_flight(class);

            let started = Instant::now();
            let result =
                match tokio::time::timeout(deadline, self.round_trip(request, &endpoint, read))
                    .await
                {
                    Ok(result) => result,
                    Err(_elapsed) => Err(Error::Timeout {
                        endpoint: endpoint.clone(),
                        after: deadline,
                    }),
                };
            let result = result.and_then(|reply| {
                if reply.status.is_success() || call.accept.contains(&reply.status) {
                    Ok(reply)
                } else {
                    Err(status_error(endpoint.clone(), reply.status, &reply.body))
                }
            });
            let elapsed = started.elapsed();
            inner.metrics.observe(
                call.kind,
                class,
                elapsed,
                result.as_ref().err().map(Error::kind),
            );
            match &result {
                Ok(reply) => tracing::debug!(status = reply.status.as_u16(), ?elapsed, "answered"),
                Err(error) => tracing::debug!(%error, ?elapsed, "failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    fn url(&self, call: &Call) -> Url {
        let mut url = self.inner.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1");
            segments.extend(&call.segments);
        }
        let mut pairs: Vec<(&str, String)> = call
            .params
            .iter()
            .map(|(key, value)| (*key, value.clone()))
            .collect();
        if call.datacenter_scoped
            && let Some(dc) = call
                .options
                .datacenter
                .as_deref()
                .or(self.inner.datacenter.as_deref())
        {
            pairs.push(("dc", dc.to_owned()));
        }
        if call.options.stale {
            pairs.push(("stale", String::new()));
        }
        if let Some(wait) = call.options.blocking_wait() {
            pairs.push(("index", call.options.index.to_string()));
            pairs.push(("wait", codec::go_duration(wait)));
        }
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    fn build_request(
        &self,
        method: &Method,
        url: &Url,
        body: Option<(Bytes, &'static str)>,
        endpoint: &str,
    ) -> Result<http::Request<Full<Bytes>>, Error> {
        let invalid = |reason: String| Error::InvalidRequest {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("consul-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.inner.token {
            builder = builder.header(TOKEN_HEADER, token.clone());
        }
        let body = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(body))
            .map_err(|e| invalid(e.to_string()))
    }

    async fn round_trip(
        &self,
        request: http::Request<Full<Bytes>>,
        endpoint: &str,
        read: BodyRead<'_>,
    ) -> Result<Reply, Error> {
        let transport_error = |reason: String| Error::Transport {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let response = self
            .inner
            .transport
            .send(request)
            .await
            .map_err(|e| transport_error(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let meta = query_meta(&parts.headers, endpoint)?;
        let mut body = Limited::new(body, MAX_BODY_BYTES);
        let reading = |e: Box<dyn std::error::Error + Send + Sync>| {
            transport_error(format!("reading the body: {}", error_chain(e.as_ref())))
        };
        let body = match read {
            // Error bodies are kept whole: their excerpt goes into the error.
            BodyRead::Stream(each) if parts.status.is_success() => {
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.map_err(reading)?.into_data() {
                        each(&data).map_err(|failure| failure.into_error(endpoint))?;
                    }
                }
                Bytes::new()
            }
            _ => body.collect().await.map_err(reading)?.to_bytes(),
        };
        Ok(Reply {
            status: parts.status,
            meta,
            body,
            endpoint: endpoint.to_owned(),
        })
    }
}

/// How the body of a successful answer is taken in.
enum BodyRead<'a> {
    /// Whole, into [`Reply::body`].
    Buffer,
    /// Chunk by chunk as it arrives; [`Reply::body`] stays empty.
    Stream(&'a mut (dyn FnMut(&[u8]) -> Result<(), DecodeFailure> + Send)),
}

/// One request, described by the endpoint modules.
#[derive(Debug)]
pub(crate) struct Call {
    kind: EndpointKind,
    method: Method,
    segments: Vec<String>,
    params: Vec<(&'static str, String)>,
    options: QueryOptions,
    /// Agent endpoints act on the local agent and take no `?dc=`.
    datacenter_scoped: bool,
    body: Option<(Bytes, &'static str)>,
    /// Non-2xx statuses that are answers, not errors, for this endpoint
    /// (404 for an absent KV key, 409 for a rolled-back transaction).
    accept: Vec<StatusCode>,
    /// Set when the body could not be serialised; reported by `execute`.
    invalid: Option<String>,
}

impl Call {
    fn new<S: AsRef<str>>(
        kind: EndpointKind,
        method: Method,
        segments: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            kind,
            method,
            segments: segments
                .into_iter()
                .map(|s| s.as_ref().to_owned())
                .collect(),
            params: Vec::new(),
            options: QueryOptions::default(),
            datacenter_scoped: true,
            body: None,
            accept: Vec::new(),
            invalid: None,
        }
    }

    pub(crate) fn get<S: AsRef<str>>(
        kind: EndpointKind,
        segments: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::new(kind, Method::GET, segments)
    }

    pub(crate) fn put<S: AsRef<str>>(
        kind: EndpointKind,
        segments: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::new(kind, Method::PUT, segments)
    }

    pub(crate) fn delete<S: AsRef<str>>(
        kind: EndpointKind,
        segments: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::new(kind, Method::DELETE, segments)
    }

    pub(crate) fn param(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.params.push((key, value.into()));
        self
    }

    /// A parameter Consul reads by presence (`?recurse`).
    pub(crate) fn flag(self, key: &'static str) -> Self {
        self.param(key, "")
    }

    pub(crate) fn options(mut self, options: &QueryOptions) -> Self {
        self.options = options.clone();
        self
    }

    pub(crate) fn agent_local(mut self) -> Self {
        self.datacenter_scoped = false;
        self
    }

    pub(crate) fn accept(mut self, status: StatusCode) -> Self {
        self.accept.push(status);
        self
    }

    pub(crate) fn json_body<T: Serialize>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.body = Some((Bytes::from(bytes), "application/json")),
            Err(error) => self.invalid = Some(format!("serialising the body: {error}")),
        }
        self
    }

    pub(crate) fn raw_body(mut self, bytes: Bytes) -> Self {
        self.body = Some((bytes, "application/octet-stream"));
        self
    }
}

/// Consul's answer to a [`Call`]: a success or an accepted status.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) meta: QueryMeta,
    pub(crate) body: Bytes,
    pub(crate) endpoint: String,
}

impl Reply {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode_json(&self.endpoint, &self.body)
    }

    pub(crate) fn into_response<T: DeserializeOwned>(self) -> Result<QueryResponse<T>, Error> {
        Ok(QueryResponse {
            value: self.json()?,
            meta: self.meta,
        })
    }

    /// Consul's `true` / `false` answers to writes.
    pub(crate) fn boolean(&self) -> Result<bool, Error> {
        self.json()
    }

    /// For writes whose `false` would mean Consul ignored them.
    pub(crate) fn expect_true(&self) -> Result<(), Error> {
        if self.boolean()? {
            Ok(())
        } else {
            Err(Error::UnexpectedResponse {
                endpoint: self.endpoint.clone(),
                reason: "Consul answered `false` to an unconditional write".to_owned(),
            })
        }
    }
}

fn status_error(endpoint: String, status: StatusCode, body: &[u8]) -> Error {
    let message = excerpt(body);
    match status {
        StatusCode::FORBIDDEN => Error::PermissionDenied { endpoint, message },
        StatusCode::NOT_FOUND => Error::NotFound { endpoint, message },
        _ => Error::Status {
            endpoint,
            status: status.as_u16(),
            body: message,
        },
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(ERROR_BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn query_meta(headers: &HeaderMap, endpoint: &str) -> Result<QueryMeta, Error> {
    fn header<T: std::str::FromStr>(
        headers: &HeaderMap,
        name: &str,
        endpoint: &str,
    ) -> Result<Option<T>, Error> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| Error::Decode {
                endpoint: endpoint.to_owned(),
                path: format!("header {name}"),
                message: format!("unexpected value {value:?}"),
            })
    }
    Ok(QueryMeta {
        index: header::<u64>(headers, INDEX_HEADER, endpoint)?,
        last_contact: header::<u64>(headers, LAST_CONTACT_HEADER, endpoint)?
            .map(Duration::from_millis),
        known_leader: header::<bool>(headers, KNOWN_LEADER_HEADER, endpoint)?,
        results_filtered_by_acls: header::<bool>(headers, FILTERED_BY_ACLS_HEADER, endpoint)?
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(datacenter: Option<&str>) -> Client {
        Client::new(ClientConfig {
            datacenter: datacenter.map(str::to_owned),
            ..ClientConfig::default()
        })
        .expect("valid config")
    }

    #[tokio::test]
    async fn urls_encode_names_and_carry_query_options() {
        let client = client(Some("dc1"));
        let call = Call::get(EndpointKind::KvGet, ["kv", "a b", "c?d", "é"]).options(
            &QueryOptions::default()
                .stale()
                .blocking(42, Duration::from_secs(90)),
        );
        assert_eq!(
            client.url(&call).as_str(),
            "http://127.0.0.1:8500/v1/kv/a%20b/c%3Fd/%C3%A9?dc=dc1&stale=&index=42&wait=90s"
        );
        let call = Call::put(
            EndpointKind::AgentCheckUpdate,
            ["agent", "check", "update", "x"],
        )
        .agent_local();
        assert_eq!(
            client.url(&call).as_str(),
            "http://127.0.0.1:8500/v1/agent/check/update/x"
        );
        let call = Call::get(EndpointKind::CatalogServices, ["catalog", "services"])
            .options(&QueryOptions::default().datacenter("dc2"));
        assert_eq!(
            client.url(&call).as_str(),
            "http://127.0.0.1:8500/v1/catalog/services?dc=dc2"
        );
    }

    #[test]
    fn meta_headers_are_parsed_or_named_when_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(INDEX_HEADER, HeaderValue::from_static("17"));
        headers.insert(LAST_CONTACT_HEADER, HeaderValue::from_static("250"));
        headers.insert(KNOWN_LEADER_HEADER, HeaderValue::from_static("true"));
        assert_eq!(
            query_meta(&headers, "GET /v1/x").expect("valid"),
            QueryMeta {
                index: Some(17),
                last_contact: Some(Duration::from_millis(250)),
                known_leader: Some(true),
                results_filtered_by_acls: false,
            }
        );
        headers.insert(FILTERED_BY_ACLS_HEADER, HeaderValue::from_static("true"));
        assert!(
            query_meta(&headers, "GET /v1/x")
                .expect("valid")
                .results_filtered_by_acls,
            "Consul 1.11+ says when ACLs filtered the answer"
        );
        headers.insert(INDEX_HEADER, HeaderValue::from_static("-3"));
        match query_meta(&headers, "GET /v1/x") {
            Err(Error::Decode { path, .. }) => assert_eq!(path, "header x-consul-index"),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn statuses_map_to_distinct_errors() {
        let endpoint = || "GET /v1/kv/x".to_owned();
        assert!(matches!(
            status_error(endpoint(), StatusCode::FORBIDDEN, b"Permission denied"),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            status_error(endpoint(), StatusCode::NOT_FOUND, b""),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            status_error(endpoint(), StatusCode::INTERNAL_SERVER_ERROR, b"boom"),
            Error::Status { status: 500, .. }
        ));
        let long = "x".repeat(2000);
        match status_error(endpoint(), StatusCode::BAD_GATEWAY, long.as_bytes()) {
            Error::Status { body, .. } => assert!(body.chars().count() <= ERROR_BODY_EXCERPT + 1),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn debug_output_redacts_the_token() {
        let client = Client::new(ClientConfig {
            token: Some(crate::Token::new("very-secret-token").expect("valid")),
            ..ClientConfig::default()
        })
        .expect("valid");
        let debug = format!("{client:?}");
        assert!(!debug.contains("very-secret-token"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}

//! The client handle, and the single path every request takes: URL and
//! headers, the request budget, the deadline, metrics, tracing, and mapping
//! of HTTP statuses onto [`Error`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use blocking_query::{Address, QueryIndex, RequestBudget, RequestClass, Transport, error_chain};
use bytes::Bytes;
use http::header::{ACCEPT, HeaderName, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;

use crate::api::{CheckResult, NamespaceServices, ServiceRegistration};
use crate::config::{ConfigError, NomadConfig};
use crate::error::Error;
use crate::metrics::{EndpointKind, NomadMetrics};
use crate::query::{MAX_WAIT, NomadResponse, QueryMeta};

const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-nomad-token");
const INDEX_HEADER: &str = "x-nomad-index";
const LAST_CONTACT_HEADER: &str = "x-nomad-lastcontact";
const KNOWN_LEADER_HEADER: &str = "x-nomad-knownleader";
/// The namespace wildcard; only `/v1/services` reads it as one.
pub const ALL_NAMESPACES: &str = "*";
/// Far above any real answer (a region's whole registrations table), low
/// enough that a broken peer cannot exhaust memory.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How much of an error body an [`Error`] quotes.
const ERROR_BODY_EXCERPT: usize = 512;

/// A handle to one Nomad agent. Cheap to clone; clones share connections,
/// budgets and metrics.
#[derive(Clone)]
pub struct NomadClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    address: Address,
    base_url: Url,
    token: Option<HeaderValue>,
    region: Option<String>,
    namespace: String,
    budget: RequestBudget,
    metrics: NomadMetrics,
    request_timeout: Duration,
    blocking_timeout_margin: Duration,
}

impl fmt::Debug for NomadClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NomadClient")
            .field("address", &self.inner.address)
            .field("region", &self.inner.region)
            .field("namespace", &self.inner.namespace)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Which of the namespaces asked about the token may read (see
/// [`NomadClient::namespace_access`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceAccess {
    pub readable: Vec<String>,
    /// Answered 403: a `*` listing leaves these out without a word.
    pub denied: Vec<String>,
}

impl NomadClient {
    pub fn new(config: NomadConfig) -> Result<Self, ConfigError> {
        Self::with_metrics(config, NomadMetrics::new())
    }

    /// A client reporting into `metrics`, which may be shared with other clients.
    pub fn with_metrics(config: NomadConfig, metrics: NomadMetrics) -> Result<Self, ConfigError> {
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
                name: "address",
                source: blocking_query::AddressError {
                    address: config.address.to_string(),
                    reason: e.to_string(),
                },
            })?;
        let token = config
            .token
            .as_ref()
            .map(|token| {
                token.header_value().map_err(|e| ConfigError::InvalidToken {
                    origin: "the configuration".to_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                address: config.address,
                base_url,
                token,
                region: config.region,
                namespace: config.namespace,
                budget,
                metrics,
                request_timeout: config.request_timeout,
                blocking_timeout_margin: config.blocking_timeout_margin,
            }),
        })
    }

    /// A client configured from Nomad's CLI environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(NomadConfig::from_env()?)
    }

    pub fn metrics(&self) -> &NomadMetrics {
        &self.inner.metrics
    }

    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    /// The region every request names, if one was configured.
    pub fn region(&self) -> Option<&str> {
        self.inner.region.as_deref()
    }

    /// The configured namespace (`NOMAD_NAMESPACE`, else `default`).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// `GET /v1/services?namespace=…`: the service names (and tags) of one
    /// namespace, or with [`ALL_NAMESPACES`] of every namespace the token
    /// may read.
    ///
    /// The `*` trap: Nomad drops the namespaces the token cannot read from
    /// a `*` listing without a word, exactly as Consul's ACL filtering
    /// drops entries, and its answer carries no sign of it. What this
    /// client can tell: a token that may read *no* namespace gets `[]` with
    /// index 0 (Nomad answers before reading the table), which is reported
    /// as [`Error::PermissionDenied`] rather than as "no services". A token
    /// that may read some namespaces but not others cannot be told apart
    /// from a cluster without those namespaces; ask
    /// [`namespace_access`](Self::namespace_access) about the namespaces
    /// you expect, or list them one by one (each unreadable one is a 403).
    /// [`watch_all_namespaces`](Self::watch_all_namespaces) catches the
    /// narrowing of a namespace it has seen listed: it reads a namespace
    /// that vanished directly before believing it gone.
    /// Nomad 1.6's `/v1/namespaces` would not help: it filters by the token
    /// the same way.
    ///
    /// Entries are sorted by namespace, services by name and tags
    /// alphabetically: Nomad builds this answer from Go maps, in random
    /// order, and a watch compares answers by content.
    pub async fn services(
        &self,
        namespace: &str,
    ) -> Result<NomadResponse<Vec<NamespaceServices>>, Error> {
        self.services_blocking(namespace, plain_read()).await
    }

    /// [`services`](Self::services) as a blocking query on `query.index`.
    pub async fn services_blocking(
        &self,
        namespace: &str,
        query: QueryIndex,
    ) -> Result<NomadResponse<Vec<NamespaceServices>>, Error> {
        let call = Call {
            kind: EndpointKind::Services,
            segments: vec!["services".to_owned()],
            namespace: Some(namespace),
            query,
        };
        let mut response: NomadResponse<Vec<NamespaceServices>> = self.get(call).await?;
        if namespace == ALL_NAMESPACES
            && response.meta.index == Some(0)
            && response.value.is_empty()
        {
            return Err(Error::PermissionDenied {
                endpoint: "GET /v1/services".to_owned(),
                message: "the token may read no namespace: Nomad answered `*` with an empty \
                          list at index 0"
                    .to_owned(),
            });
        }
        for entry in &mut response.value {
            for service in &mut entry.services {
                service.tags.sort_unstable();
            }
            entry
                .services
                .sort_unstable_by(|a, b| a.service_name.cmp(&b.service_name));
        }
        response
            .value
            .sort_unstable_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(response)
    }

    /// `GET /v1/service/:name?namespace=…`: every registration of `name` in
    /// one namespace, sorted by ID.
    ///
    /// Nomad does not read `*` here as a wildcard: it looks up a namespace
    /// literally called `*` and answers `[]`, so `*` is refused as an
    /// [`Error::InvalidRequest`]. Name the namespaces instead
    /// ([`watch_service_in`](Self::watch_service_in) watches several).
    pub async fn service(
        &self,
        name: &str,
        namespace: &str,
    ) -> Result<NomadResponse<Vec<ServiceRegistration>>, Error> {
        self.service_blocking(name, namespace, plain_read()).await
    }

    /// [`service`](Self::service) as a blocking query on `query.index`.
    pub async fn service_blocking(
        &self,
        name: &str,
        namespace: &str,
        query: QueryIndex,
    ) -> Result<NomadResponse<Vec<ServiceRegistration>>, Error> {
        let invalid = |reason: &str| Error::InvalidRequest {
            endpoint: format!("GET /v1/service/{name}"),
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid("the service name is empty"));
        }
        if namespace == ALL_NAMESPACES {
            return Err(invalid(
                "`*` is not a wildcard for /v1/service/:name (Nomad would answer [] for a \
                 namespace called `*`); name the namespaces",
            ));
        }
        let call = Call {
            kind: EndpointKind::Service,
            segments: vec!["service".to_owned(), name.to_owned()],
            namespace: Some(namespace),
            query,
        };
        let mut response: NomadResponse<Vec<ServiceRegistration>> = self.get(call).await?;
        response
            .value
            .sort_unstable_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        Ok(response)
    }

    /// `GET /v1/client/allocation/:id/checks` (Nomad 1.4+): the results of
    /// the allocation's native service checks, by check ID. Not blocking;
    /// answered by the client agent running the allocation. An allocation
    /// the agent does not know is [`Error::NotFound`].
    pub async fn allocation_checks(
        &self,
        alloc_id: &str,
    ) -> Result<BTreeMap<String, CheckResult>, Error> {
        if alloc_id.is_empty() {
            return Err(Error::InvalidRequest {
                endpoint: "GET /v1/client/allocation//checks".to_owned(),
                reason: "the allocation ID is empty".to_owned(),
            });
        }
        let call = Call {
            kind: EndpointKind::AllocationChecks,
            segments: vec![
                "client".to_owned(),
                "allocation".to_owned(),
                alloc_id.to_owned(),
                "checks".to_owned(),
            ],
            namespace: None,
            query: plain_read(),
        };
        Ok(self.get(call).await?.value)
    }

    /// Which of `namespaces` the token may read, by listing each one's
    /// services (a 403 each for the others): the check a `*` listing
    /// cannot make (see [`services`](Self::services)). Any other failure is
    /// returned as is.
    pub async fn namespace_access<S: AsRef<str>>(
        &self,
        namespaces: &[S],
    ) -> Result<NamespaceAccess, Error> {
        let mut access = NamespaceAccess::default();
        for namespace in namespaces {
            let namespace = namespace.as_ref();
            match self.services(namespace).await {
                Ok(_) => access.readable.push(namespace.to_owned()),
                Err(Error::PermissionDenied { .. }) => access.denied.push(namespace.to_owned()),
                Err(other) => return Err(other),
            }
        }
        Ok(access)
    }

    async fn get<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<NomadResponse<T>, Error> {
        let inner = &self.inner;
        let url = self.url(&call);
        let endpoint = format!("GET {}", url.path());
        let blocking_wait = blocking_wait(call.query);
        let (class, deadline) = match blocking_wait {
            Some(wait) => (
                RequestClass::Blocking,
                wait + wait / 16 + inner.blocking_timeout_margin,
            ),
            None => (RequestClass::Other, inner.request_timeout),
        };
        let request = self.build_request(&url, &endpoint)?;
        // The path only: the query string is harmless, but one rule for
        // every log line is easier to keep than a judgement per field.
        let span = tracing::debug_span!(
            "nomad_request",
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
                match tokio::time::timeout(deadline, self.round_trip(request, &endpoint)).await {
                    Ok(result) => result,
                    Err(_elapsed) => Err(Error::Timeout {
                        endpoint: endpoint.clone(),
                        after: deadline,
                    }),
                };
            let elapsed = started.elapsed();
            inner.metrics.observe(
                call.kind,
                class,
                elapsed,
                result.as_ref().err().map(Error::kind),
            );
            match &result {
                Ok(_) => tracing::debug!(?elapsed, "answered"),
                Err(error) => tracing::debug!(%error, ?elapsed, "failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    fn url(&self, call: &Call<'_>) -> Url {
        let mut url = self.inner.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1");
            segments.extend(&call.segments);
        }
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(namespace) = call.namespace {
            pairs.push(("namespace", namespace.to_owned()));
        }
        if let Some(region) = &self.inner.region {
            pairs.push(("region", region.clone()));
        }
        if let Some(wait) = blocking_wait(call.query) {
            pairs.push(("index", call.query.index.to_string()));
            // Whole milliseconds, at least one: Nomad reads `wait=0ms` as
            // "no wait given" and blocks for its default instead.
            let millis = wait.as_millis().max(1);
            pairs.push(("wait", format!("{millis}ms")));
        }
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    fn build_request(
        &self,
        url: &Url,
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
            .method(Method::GET)
            .uri(uri)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("nomad-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.inner.token {
            builder = builder.header(TOKEN_HEADER, token.clone());
        }
        builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| invalid(e.to_string()))
    }

    async fn round_trip<T: DeserializeOwned>(
        &self,
        request: http::Request<Full<Bytes>>,
        endpoint: &str,
    ) -> Result<NomadResponse<T>, Error> {
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
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| transport_error(format!("reading the body: {}", error_chain(e.as_ref()))))?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(status_error(endpoint.to_owned(), parts.status, &body));
        }
        let meta = query_meta(&parts.headers, endpoint)?;
        Ok(NomadResponse {
            value: decode_json(endpoint, &body)?,
            meta,
        })
    }
}

/// One request, as the endpoint methods describe it.
#[derive(Debug)]
struct Call<'a> {
    kind: EndpointKind,
    segments: Vec<String>,
    namespace: Option<&'a str>,
    query: QueryIndex,
}

fn plain_read() -> QueryIndex {
    QueryIndex {
        index: 0,
        wait: Duration::ZERO,
    }
}

/// The `wait` to send when `query` blocks, capped at Nomad's maximum.
fn blocking_wait(query: QueryIndex) -> Option<Duration> {
    (query.index > 0).then(|| query.wait.min(MAX_WAIT))
}

fn decode_json<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| Error::Decode {
        endpoint: endpoint.to_owned(),
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(region: Option<&str>) -> NomadClient {
        NomadClient::new(NomadConfig {
            region: region.map(str::to_owned),
            ..NomadConfig::default()
        })
        .expect("valid config")
    }

    #[tokio::test]
    async fn urls_encode_names_and_carry_namespace_region_index_and_wait() {
        let client = client(Some("eu west"));
        let call = Call {
            kind: EndpointKind::Service,
            segments: vec!["service".to_owned(), "a b/c".to_owned()],
            namespace: Some("team-a"),
            query: QueryIndex {
                index: 42,
                wait: Duration::from_secs(600),
            },
        };
        assert_eq!(
            client.url(&call).as_str(),
            "http://127.0.0.1:4646/v1/service/a%20b%2Fc?namespace=team-a&region=eu+west&index=42&wait=300000ms"
        );
        let plain = Call {
            query: plain_read(),
            namespace: None,
            ..call
        };
        assert_eq!(
            client.url(&plain).as_str(),
            "http://127.0.0.1:4646/v1/service/a%20b%2Fc?region=eu+west"
        );
    }

    #[test]
    fn statuses_map_to_distinct_errors() {
        let endpoint = || "GET /v1/service/web".to_owned();
        assert!(matches!(
            status_error(endpoint(), StatusCode::FORBIDDEN, b"Permission denied"),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            status_error(endpoint(), StatusCode::NOT_FOUND, b""),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            status_error(
                endpoint(),
                StatusCode::INTERNAL_SERVER_ERROR,
                b"No path to region"
            ),
            Error::Status { status: 500, .. }
        ));
    }

    #[test]
    fn a_malformed_index_header_is_named() {
        let mut headers = HeaderMap::new();
        headers.insert(INDEX_HEADER, HeaderValue::from_static("seven"));
        match query_meta(&headers, "GET /v1/services") {
            Err(Error::Decode { path, .. }) => assert_eq!(path, "header x-nomad-index"),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn debug_output_redacts_the_token() {
        let client = NomadClient::new(NomadConfig {
            token: Some(blocking_query::Token::new("very-secret-token").expect("valid")),
            ..NomadConfig::default()
        })
        .expect("valid");
        let debug = format!("{client:?}");
        assert!(!debug.contains("very-secret-token"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}

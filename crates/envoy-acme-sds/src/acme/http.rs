//! The HTTPS transport `instant-acme` sends its requests through.
//!
//! It trusts the configured private root (or the system's, through the
//! same builder the Consul client uses), bounds each exchange, records how
//! long the CA took to answer, and turns a refusal that names a
//! `Retry-After` into a [`Throttled`] error. The hint so travels inside the
//! error of the very call that received it: with several certificates
//! ordering through one client at once, a hint kept anywhere else could be
//! read by another certificate's failure, stretching the wrong backoff and
//! leaving the throttled one without its hint.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient, Problem};
use prometheus_client::metrics::histogram::Histogram;

use super::AcmeConfig;

/// Upper bound for one HTTP exchange with the CA.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the HTTPS client for the CA cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("ACME HTTPS client: {0}")]
    Roots(#[source] consul_client::TlsError),
    #[error("ACME HTTPS client: {0}")]
    Tls(#[source] rustls::Error),
}

/// The CA turned a request down for now and said when to ask again: a 429
/// or 503 answer with `Retry-After` (RFC 8555 §6.6, RFC 9110 §10.2.3).
#[derive(Debug, Clone)]
pub struct Throttled {
    status: StatusCode,
    /// The CA's problem document; `None` when the body was none (a proxy's
    /// page, say), which throttles all the same.
    problem: Option<Problem>,
    retry_at: SystemTime,
}

impl Throttled {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn problem(&self) -> Option<&Problem> {
        self.problem.as_ref()
    }

    /// When the CA is willing to be asked again.
    pub fn retry_at(&self) -> SystemTime {
        self.retry_at
    }

    /// How long from `now` the CA asked to wait.
    pub fn wait(&self, now: SystemTime) -> Duration {
        self.retry_at.duration_since(now).unwrap_or(Duration::ZERO)
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Some(problem) => write!(f, "{problem}")?,
            None => write!(f, "HTTP {}", self.status)?,
        }
        write!(
            f,
            "; the CA asks to retry after {}",
            httpdate::fmt_http_date(self.retry_at)
        )
    }
}

impl std::error::Error for Throttled {}

/// The [`Throttled`] answer behind `error`, if that is what it is.
pub(super) fn throttled(error: &instant_acme::Error) -> Option<&Throttled> {
    match error {
        instant_acme::Error::Other(inner) => inner.downcast_ref::<Throttled>(),
        _ => None,
    }
}

/// How long the CA asked to wait, as it said with `error`: the
/// `Retry-After` of a refusal, or of an order still processing when
/// polling it gave up.
pub(super) fn retry_after(error: &instant_acme::Error) -> Option<Duration> {
    match error {
        instant_acme::Error::Timeout(Some(at)) => {
            Some(at.saturating_duration_since(Instant::now()))
        }
        other => throttled(other).map(|throttled| throttled.wait(SystemTime::now())),
    }
}

/// The `Retry-After` the CA sent with answers it did give, by request URL:
/// an order still being validated or issued may say when to ask again
/// (RFC 8555 §7.4, §8.2), and the library keeps that to itself. Keyed by
/// URL, which is the order's own, so no other order reads it; taken when
/// read, and dropped once long past.
#[derive(Debug, Default)]
pub(super) struct PollHints {
    hints: Mutex<HashMap<String, SystemTime>>,
}

/// Hints kept at most: far more than orders in flight at once.
const MAX_POLL_HINTS: usize = 256;

impl PollHints {
    fn record(&self, url: String, retry_at: SystemTime, now: SystemTime) {
        let mut hints = self.hints.lock().unwrap_or_else(PoisonError::into_inner);
        // Hints of URLs nobody polls (a finalize answer's, say) expire.
        hints.retain(|_, at| *at + HINT_LIFETIME > now);
        if hints.len() < MAX_POLL_HINTS {
            hints.insert(url, retry_at);
        }
    }

    /// How long from `now` the last answer from `url` asked to wait, if it
    /// did; forgotten once read.
    pub(super) fn take(&self, url: &str, now: SystemTime) -> Option<Duration> {
        self.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(url)
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

/// How long an unread hint is kept past its time.
const HINT_LIFETIME: Duration = Duration::from_secs(3600);

/// The HTTPS client `instant-acme` sends requests through.
pub(super) struct AcmeHttpClient {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    request_duration: Option<Histogram>,
    poll_hints: Arc<PollHints>,
}

impl AcmeHttpClient {
    pub(super) fn new(config: &AcmeConfig, poll_hints: Arc<PollHints>) -> Result<Self, HttpError> {
        let roots = consul_client::root_store(config.ca_root_pem.as_deref().map(str::as_bytes))
            .map_err(HttpError::Roots)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(HttpError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Without TCP_NODELAY a request whose head and body leave in two
        // writes (every JWS POST) holds the body until the CA acknowledges
        // the head, and its delayed ACK takes 40 ms: measured, each ACME
        // request took ~45 ms against a CA on loopback, ~3 ms with it.
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Ok(Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            request_duration: config.request_duration.clone(),
            poll_hints,
        })
    }
}

impl HttpClient for AcmeHttpClient {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = request.uri().to_string();
        let response = self.inner.request(request);
        let request_duration = self.request_duration.clone();
        let poll_hints = Arc::clone(&self.poll_hints);
        Box::pin(async move {
            let started = Instant::now();
            let response = tokio::time::timeout(HTTP_TIMEOUT, response)
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            if let Some(histogram) = &request_duration {
                histogram.observe(started.elapsed().as_secs_f64());
            }
            let now = SystemTime::now();
            if response.status().is_success()
                && let Some(retry_at) = parse_retry_after(response.headers(), now)
            {
                poll_hints.record(url, retry_at, now);
            }
            tokio::time::timeout(HTTP_TIMEOUT, answer(response, SystemTime::now()))
                .await
                .map_err(|_| timed_out())?
        })
    }
}

fn timed_out() -> instant_acme::Error {
    instant_acme::Error::Str("ACME server did not answer within 30 s")
}

/// What the library gets for `response`: the response itself, or, when the
/// CA throttles with a `Retry-After`, a [`Throttled`] error holding its
/// problem document. The library passes such an error through unchanged to
/// the caller of the step that sent the request.
async fn answer<B>(
    response: Response<B>,
    now: SystemTime,
) -> Result<BytesResponse, instant_acme::Error>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    let retry_at = if is_throttling(response.status()) {
        parse_retry_after(response.headers(), now)
    } else {
        None
    };
    let Some(retry_at) = retry_at else {
        return Ok(BytesResponse::from(response));
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| instant_acme::Error::Other(e.into()))?
        .to_bytes();
    Err(instant_acme::Error::Other(Box::new(Throttled {
        status,
        problem: serde_json::from_slice(&body).ok(),
        retry_at,
    })))
}

fn is_throttling(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (RFC 9110 §10.2.3).
fn parse_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(now + Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    fn response(status: u16, retry_after: Option<&str>, body: &str) -> Response<Full<Bytes>> {
        let mut builder = Response::builder().status(status);
        if let Some(value) = retry_after {
            builder = builder.header(http::header::RETRY_AFTER, value);
        }
        builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("response")
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("120"),
        );
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(now + Duration::from_secs(120))
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("soon"),
        );
        assert_eq!(parse_retry_after(&headers, now), None);
    }

    #[tokio::test]
    async fn only_throttling_with_a_retry_after_becomes_an_error() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let problem = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down","status":429}"#;

        let error = answer(response(429, Some("120"), problem), now)
            .await
            .err()
            .expect("throttled");
        let refusal = throttled(&error).expect("a Throttled error");
        assert_eq!(refusal.wait(now), Duration::from_secs(120));
        assert_eq!(refusal.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(error.to_string().contains("slow down"), "{error}");
        assert!(error.to_string().contains("rateLimited"), "{error}");

        // A proxy's page instead of a problem document throttles as well.
        let error = answer(response(503, Some("30"), "<html>busy</html>"), now)
            .await
            .err()
            .expect("throttled");
        assert_eq!(
            throttled(&error).expect("a Throttled error").wait(now),
            Duration::from_secs(30)
        );
        assert!(error.to_string().contains("503"), "{error}");

        // Everything else is the library's to read.
        for passed_on in [
            response(429, None, problem),
            response(500, Some("120"), problem),
            response(200, Some("5"), "{}"),
        ] {
            assert!(answer(passed_on, now).await.is_ok());
        }
    }

    #[test]
    fn poll_hints_are_per_url_read_once_and_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hints = PollHints::default();
        hints.record(
            "https://ca/order/1".to_owned(),
            now + Duration::from_secs(3),
            now,
        );
        assert_eq!(hints.take("https://ca/order/2", now), None);
        assert_eq!(
            hints.take("https://ca/order/1", now + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(hints.take("https://ca/order/1", now), None, "read once");
        // A hint in the past asks for no wait.
        hints.record("https://ca/order/3".to_owned(), now, now);
        assert_eq!(
            hints.take("https://ca/order/3", now + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
        // One nobody read is dropped an hour past its time.
        hints.record("https://ca/finalize/4".to_owned(), now, now);
        let later = now + HINT_LIFETIME + Duration::from_secs(1);
        hints.record("https://ca/order/5".to_owned(), later, later);
        assert_eq!(hints.take("https://ca/finalize/4", later), None);
        assert_eq!(
            hints.take("https://ca/order/5", later),
            Some(Duration::ZERO)
        );
    }
}

//! The client against a scripted CA: what the CA says in answer to one
//! call is reported with that call's outcome, and nowhere else; and the
//! `Retry-After` it sends with an order it is issuing sets when that order
//! is polled next.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instant_acme::CertificateIdentifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, Der, PrivateKeyDer};

use async_trait::async_trait;

use super::{AcmeClient, AcmeConfig, OrderRequest};
use crate::challenge::{Challenge, ChallengeKind, ChallengeSolver, SolverError};
use crate::domain::NameSet;
use crate::keys::KeyType;
use crate::store::disk::DiskStore;

/// The `Retry-After` the scripted CA sends when it throttles.
const RETRY_AFTER_SECONDS: u64 = 120;

/// An HTTPS server on 127.0.0.1 answering just enough of RFC 8555 for an
/// account to be created, then renewal information (RFC 9773): a rate
/// limit with `Retry-After` for one certificate, a server error without
/// it for every other; and one order, authorized already, issued slowly.
/// One thread a connection, each answer closing it.
struct ScriptedCa {
    base_url: String,
    root_pem: String,
    script: Arc<Script>,
}

impl ScriptedCa {
    fn start(throttled: &CertificateIdentifier<'_>) -> Self {
        let ca = test_support::TestCa::new("scripted ACME CA").expect("test CA");
        let leaf = ca.leaf(&["127.0.0.1"]).expect("leaf");
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let base_url = format!("https://{}", listener.local_addr().expect("address"));
        let script = Arc::new(Script {
            base_url: base_url.clone(),
            throttled_path: format!("/renewal-info/{throttled}"),
            certificate_pem: leaf.cert_pem.clone(),
            order_polls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let script_handle = Arc::clone(&script);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let tls = Arc::clone(&tls);
                let script = Arc::clone(&script);
                std::thread::spawn(move || script.serve(stream, tls));
            }
        });
        Self {
            base_url,
            root_pem: ca.cert_pem().to_owned(),
            script: Arc::clone(&script_handle),
        }
    }

    /// When each request for `path` arrived.
    fn arrivals(&self, path: &str) -> Vec<Instant> {
        self.script
            .requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|(requested, _)| requested == path)
            .map(|(_, at)| *at)
            .collect()
    }

    fn config(&self) -> AcmeConfig {
        let mut config = AcmeConfig::new(format!("{}/directory", self.base_url));
        config.ca_root_pem = Some(self.root_pem.clone());
        config
    }
}

struct Script {
    base_url: String,
    throttled_path: String,
    /// What the order's certificate URL serves.
    certificate_pem: String,
    /// Polls of the order so far: it is valid from the second on.
    order_polls: AtomicUsize,
    /// Every request's path and arrival.
    requests: Mutex<Vec<(String, Instant)>>,
}

/// The `Retry-After` the scripted CA sends with an order it is issuing.
const ORDER_RETRY_AFTER_SECONDS: u64 = 1;

/// One answer: status line, extra header lines, body.
type Answer = (&'static str, Vec<String>, String);

impl Script {
    fn serve(&self, stream: TcpStream, tls: Arc<rustls::ServerConfig>) {
        let Ok(connection) = rustls::ServerConnection::new(tls) else {
            return;
        };
        let mut stream = rustls::StreamOwned::new(connection, stream);
        let Some((method, path)) = read_request(&mut stream) else {
            return;
        };
        self.requests
            .lock()
            .expect("requests")
            .push((path.clone(), Instant::now()));
        let (status, headers, body) = self.answer(&method, &path);
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nReplay-Nonce: nonce-{}\r\n",
            body.len(),
            rand::random::<u32>()
        );
        for header in headers {
            head.push_str(&header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body.as_bytes());
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }

    fn answer(&self, method: &str, path: &str) -> Answer {
        let base = &self.base_url;
        let problem = |kind: &str, detail: &str, status: u16| {
            serde_json::json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": detail,
                "status": status,
            })
            .to_string()
        };
        let problem_type = "Content-Type: application/problem+json".to_owned();
        match (method, path) {
            ("GET", "/directory") => (
                "200 OK",
                vec!["Content-Type: application/json".to_owned()],
                serde_json::json!({
                    "newNonce": format!("{base}/nonce"),
                    "newAccount": format!("{base}/account"),
                    "newOrder": format!("{base}/order"),
                    "renewalInfo": format!("{base}/renewal-info"),
                })
                .to_string(),
            ),
            ("HEAD", "/nonce") => ("200 OK", Vec::new(), String::new()),
            ("POST", "/account") => (
                "201 Created",
                vec![format!("Location: {base}/account/1")],
                r#"{"status":"valid"}"#.to_owned(),
            ),
            // An order whose one name was authorized before: ready at
            // once. Finalized, it is processing, and the CA asks to look
            // again in a second, until the second poll finds it valid.
            ("POST", "/order") => (
                "201 Created",
                vec![
                    format!("Location: {base}/orders/1"),
                    "Content-Type: application/json".to_owned(),
                ],
                order_state("ready", base),
            ),
            ("POST", "/finalize/1") => (
                "200 OK",
                vec![
                    "Content-Type: application/json".to_owned(),
                    format!("Retry-After: {ORDER_RETRY_AFTER_SECONDS}"),
                ],
                order_state("processing", base),
            ),
            ("POST", "/orders/1") => {
                if self.order_polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        "200 OK",
                        vec![
                            "Content-Type: application/json".to_owned(),
                            format!("Retry-After: {ORDER_RETRY_AFTER_SECONDS}"),
                        ],
                        order_state("processing", base),
                    )
                } else {
                    (
                        "200 OK",
                        vec!["Content-Type: application/json".to_owned()],
                        order_state("valid", base),
                    )
                }
            }
            ("POST", "/certificate/1") => (
                "200 OK",
                vec!["Content-Type: application/pem-certificate-chain".to_owned()],
                self.certificate_pem.clone(),
            ),
            ("GET", path) if path == self.throttled_path => (
                "429 Too Many Requests",
                vec![problem_type, format!("Retry-After: {RETRY_AFTER_SECONDS}")],
                problem("rateLimited", "too many renewal information requests", 429),
            ),
            _ => (
                "500 Internal Server Error",
                vec![problem_type],
                problem("serverInternal", "the CA is unwell", 500),
            ),
        }
    }
}

/// The order document in `status`.
fn order_state(status: &str, base: &str) -> String {
    let mut order = serde_json::json!({
        "status": status,
        "identifiers": [{"type": "dns", "value": "example.test"}],
        "authorizations": [],
        "finalize": format!("{base}/finalize/1"),
    });
    if status == "valid" {
        order["certificate"] = format!("{base}/certificate/1").into();
    }
    order.to_string()
}

/// The request line's method and path; the headers and body are read and
/// dropped.
fn read_request(stream: &mut impl Read) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path))
}

fn certificate(authority_key_id: &[u8]) -> CertificateIdentifier<'static> {
    CertificateIdentifier::new(Der::from_slice(authority_key_id), Der::from_slice(&[1]))
        .into_owned()
}

/// Two certificates ask the CA at the same time; it throttles one with a
/// `Retry-After` and fails the other without. Each failure reports what the
/// CA said to it: the throttled one its hint, the other none, so the other
/// certificate's backoff is not stretched by a hint meant for the first.
#[tokio::test]
async fn a_retry_after_is_reported_with_the_failure_that_received_it_only() {
    let throttled = certificate(b"throttled certificate");
    let failing = certificate(b"failing certificate");
    let ca = ScriptedCa::start(&throttled);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::open(dir.path(), None).expect("store");
    let acme = AcmeClient::connect(ca.config(), &store)
        .await
        .expect("account");

    let (throttled_result, failing_result) =
        tokio::join!(acme.renewal_info(&throttled), acme.renewal_info(&failing));
    let throttled_error = throttled_result.expect_err("throttled");
    let failing_error = failing_result.expect_err("failing");

    assert_eq!(failing_error.retry_after(), None, "{failing_error}");
    let hint = throttled_error
        .retry_after()
        .unwrap_or_else(|| panic!("no Retry-After reported with {throttled_error}"));
    assert!(
        hint <= Duration::from_secs(RETRY_AFTER_SECONDS)
            && hint >= Duration::from_secs(RETRY_AFTER_SECONDS - 10),
        "{hint:?}"
    );
    // The CA's problem document is still what the error says.
    let message = throttled_error.to_string();
    assert!(message.contains("rateLimited"), "{message}");
    assert!(
        message.contains("too many renewal information"),
        "{message}"
    );
}

/// For orders whose authorizations are all valid: never asked to solve.
#[derive(Debug)]
struct NoChallenges;

#[async_trait]
impl ChallengeSolver for NoChallenges {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Dns01
    }

    async fn present(&self, _challenges: &[Challenge]) -> Result<(), SolverError> {
        panic!("no challenge to present");
    }

    async fn cleanup(&self, _challenges: &[Challenge]) -> Result<(), SolverError> {
        panic!("no challenge to withdraw");
    }
}

/// The CA answers the finalization and the first poll with `Retry-After:
/// 1`: the order is asked about a second later each time, not after the
/// 50 ms and 75 ms of the schedule, and the certificate comes on the poll
/// that finds the order valid.
#[tokio::test]
async fn polling_an_issuing_order_honours_its_retry_after() {
    let ca = ScriptedCa::start(&certificate(b"unused"));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::open(dir.path(), None).expect("store");
    let acme = AcmeClient::connect(ca.config(), &store)
        .await
        .expect("account");
    let names = NameSet::parse(&["example.test"]).expect("names");
    let request = OrderRequest {
        names: &names,
        key_type: KeyType::EcdsaP256,
        profile: None,
        replaces: None,
    };
    let solver: Arc<dyn ChallengeSolver> = Arc::new(NoChallenges);

    let issued = acme.issue(&request, &solver).await.expect("issued");

    assert!(issued.chain_pem.contains("BEGIN CERTIFICATE"));
    let finalized = ca.arrivals("/finalize/1");
    let polls = ca.arrivals("/orders/1");
    assert_eq!((finalized.len(), polls.len()), (1, 2), "{polls:?}");
    let hint = Duration::from_secs(ORDER_RETRY_AFTER_SECONDS);
    // The hint is whole seconds from the answer's arrival; allow for the
    // answer's own time on the way.
    let at_least = hint - Duration::from_millis(100);
    let first_wait = polls[0] - finalized[0];
    let second_wait = polls[1] - polls[0];
    assert!(first_wait >= at_least, "{first_wait:?}");
    assert!(second_wait >= at_least, "{second_wait:?}");
    assert!(second_wait < hint * 3, "{second_wait:?}");
    // The ready order was finalized without polling it first.
    let created = ca.arrivals("/order");
    assert_eq!(created.len(), 1);
    assert_eq!(ca.arrivals("/certificate/1").len(), 1);
}

//! The client against a scripted CA: what the CA says in answer to one
//! call is reported with that call's outcome, and nowhere else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::CertificateIdentifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, Der, PrivateKeyDer};

use super::{AcmeClient, AcmeConfig};
use crate::store::disk::DiskStore;

/// The `Retry-After` the scripted CA sends when it throttles.
const RETRY_AFTER_SECONDS: u64 = 120;

/// An HTTPS server on 127.0.0.1 answering just enough of RFC 8555 for an
/// account to be created, then renewal information (RFC 9773): a rate
/// limit with `Retry-After` for one certificate, a server error without
/// it for every other. One thread a connection, each answer closing it.
struct ScriptedCa {
    base_url: String,
    root_pem: String,
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
        });
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
        }
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
}

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

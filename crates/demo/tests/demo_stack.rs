//! The demo end to end: the same `demo-stack` program `cargo xtask demo`
//! runs, for 30 s. Every route comes from the backends' tags (gateway
//! mode): HTTPS through Envoy presents the ACME certificate and reaches
//! `web` at `/` and `api` at `/api/`, plain HTTP for the TLS host answers
//! 308, requests succeed while backends churn (failures only the backends'
//! deliberate 500s), Prometheus scrapes every target, and a host a service
//! declares during the run gets HTTPS with its own certificate.

use std::path::Path;
use std::time::Duration;

use test_support::{ManagedProcess, eventually, http_get, https_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_https_survives_churn_and_is_scraped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_file = dir.path().join("state.json");
    let output = dir.path().join("demo.out");
    let mut demo = ManagedProcess::spawn(
        "demo-stack",
        Path::new(env!("CARGO_BIN_EXE_demo-stack")),
        &[
            "--duration-secs".to_owned(),
            "30".to_owned(),
            "--rps".to_owned(),
            "50".to_owned(),
            "--state-file".to_owned(),
            state_file.display().to_string(),
        ],
        &[],
        &output,
    )
    .expect("demo-stack starts");
    let state: serde_json::Value = eventually(
        "the demo to be up",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            std::fs::read(&state_file)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", demo.log_tail()));
    let addr =
        |key: &str| -> std::net::SocketAddr { state[key].as_str().expect(key).parse().expect(key) };

    // HTTPS with the certificate pebble issued through DNS-01.
    let root =
        std::fs::read_to_string(state["root_pem_file"].as_str().expect("root")).expect("root pem");
    let (response, presented) = eventually(
        "an HTTPS answer from a backend",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            https_get(addr("https"), "demo.test", &root, "/")
                .await
                .ok()
                .filter(|(r, _)| r.status == 200)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", demo.log_tail()));
    assert!(response.body.starts_with("web-"), "{}", response.body);
    let cert = dns_names(&presented);
    assert!(cert.iter().any(|n| n == "demo.test"), "{cert:?}");
    assert!(cert.iter().any(|n| n == "*.demo.test"), "{cert:?}");

    // The path route of the second service, declared in its tags.
    let (api, _) = eventually(
        "an HTTPS answer from api",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            https_get(addr("https"), "demo.test", &root, "/api/items")
                .await
                .ok()
                .filter(|(r, _)| r.status == 200)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", demo.log_tail()));
    assert!(api.body.starts_with("api-"), "{}", api.body);

    // demo.test is a TLS host: on the plain listener it redirects.
    let plain = test_support::http_request(
        "GET",
        addr("http"),
        "/cart",
        &[("host", "demo.test")],
        Vec::new(),
    )
    .await
    .expect("plain answer");
    assert_eq!(plain.status, 308, "{}", plain.body);
    let location = plain
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(location.starts_with("https://demo.test"), "{location}");

    // The summary shows the route table.
    let printed = std::fs::read_to_string(&output).expect("output");
    assert!(
        printed.contains("routes (from the services' tags)"),
        "{printed}"
    );
    assert!(printed.contains("/api"), "{printed}");

    // Prometheus scrapes Envoy and both services.
    let prometheus = addr("prometheus");
    eventually(
        "every Prometheus target up",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let body = http_get(prometheus, "/api/v1/targets").await.ok()?.body;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            let targets = json["data"]["activeTargets"].as_array()?;
            (targets.len() == 3 && targets.iter().all(|t| t["health"] == "up")).then_some(())
        },
    )
    .await
    .expect("targets up");

    // The demo stops by itself and reports no failure but deliberate ones.
    eventually(
        "the demo to stop after --duration",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let running = demo.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await
    .expect("stopped");
    let log = std::fs::read_to_string(&output).expect("output");
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("req/s")).collect();
    assert!(summaries.len() >= 4, "too few summary lines:\n{log}");
    let mut deliberate = 0;
    for line in &summaries {
        let failures = number_after(line, "other failures ");
        assert_eq!(failures, 0, "gateway failures: {line}");
        deliberate += number_after(line, "deliberate 500 ");
    }
    assert!(deliberate > 0, "no deliberate 500s seen:\n{log}");
    // The host a service declared during the run got HTTPS, and the
    // summary said when.
    assert!(
        log.contains("new host shop.apps.demo.test: HTTPS verified"),
        "{log}"
    );
}

fn number_after(line: &str, label: &str) -> u64 {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` in {line}"))
}

/// The DNS names a DER certificate is valid for.
fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

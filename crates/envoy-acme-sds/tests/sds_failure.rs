//! A process whose SDS server has failed serves no certificate while its
//! `/readyz` would still answer: it must stop, with a non-zero status and a
//! message naming the SDS server, so that its orchestrator restarts it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::service::binary;
use test_support::free_port;

/// Far beyond the time the process needs to fail; only guards against a hang.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_failed_sds_server_ends_the_process_with_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The listener binds, then the server cannot be built: the key file
    // holds no private key. Nothing checks TLS material before the server
    // starts, so this is the SDS server itself failing.
    let cert = dir.path().join("sds.crt");
    let key = dir.path().join("sds.key");
    std::fs::write(&cert, "not a certificate\n").expect("write cert");
    std::fs::write(&key, "not a private key\n").expect("write key");
    let tsig = dir.path().join("tsig.key");
    std::fs::write(
        &tsig,
        "update-key:hmac-sha256:c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n",
    )
    .expect("write TSIG key");
    let log = dir.path().join("envoy-acme-sds.log");
    let path = |p: &std::path::Path| p.display().to_string();
    let args = [
        "--sds-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        // Never reached: ordering fails in the background and is retried.
        "--acme-directory".to_owned(),
        format!("https://127.0.0.1:{}/dir", free_port()),
        "--cert".to_owned(),
        "example.test".to_owned(),
        "--challenge".to_owned(),
        "dns-01".to_owned(),
        "--rfc2136-server".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--tsig-key-file".to_owned(),
        path(&tsig),
        "--storage".to_owned(),
        format!("disk:{}", dir.path().join("store").display()),
        "--sds-tls-cert".to_owned(),
        path(&cert),
        "--sds-tls-key".to_owned(),
        path(&key),
    ];
    let mut child = Command::new(binary())
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("the binary starts");

    let deadline = Instant::now() + EXIT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("still running {EXIT_LIMIT:?} after its SDS server failed; log:\n{logs}")
    });
    assert!(
        !status.success(),
        "exited with {status} after its SDS server failed; log:\n{logs}"
    );
    assert!(
        logs.contains("SDS server failed"),
        "the message names the SDS server; log:\n{logs}"
    );
}

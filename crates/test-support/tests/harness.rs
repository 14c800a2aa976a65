//! The harness itself, against the real programs: each starts, is usable,
//! and is gone after its handle is dropped.

use std::time::Duration;

use test_support::{
    Backend, ConsulAgent, ConsulOptions, Envoy, Knot, Pebble, PebbleOptions, http_get, http_request,
};

fn process_exists(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still show "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

fn pid_listening_on(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn consul_agent_starts_restarts_empty_and_dies_on_drop() {
    let mut consul = ConsulAgent::start().await.expect("consul starts");
    let put = http_request(
        "PUT",
        consul.http_addr(),
        "/v1/kv/harness/key",
        &[],
        b"value".to_vec(),
    )
    .await
    .expect("kv put");
    assert_eq!(put.status, 200, "{}", put.body);
    let get = http_get(consul.http_addr(), "/v1/kv/harness/key?raw")
        .await
        .expect("kv get");
    assert_eq!(get.body, "value");

    consul.restart().await.expect("consul restarts");
    let after = http_get(consul.http_addr(), "/v1/kv/harness/key?raw")
        .await
        .expect("kv get after restart");
    assert_eq!(
        after.status, 404,
        "a dev agent forgets its state on restart"
    );

    let port = consul.http_addr().port();
    drop(consul);
    assert!(!pid_listening_on(port), "consul still listens after drop");
}

#[tokio::test]
async fn consul_agent_with_acl_answers_403_without_token() {
    let consul = ConsulAgent::start_with(ConsulOptions {
        acl_master_token: Some("4d2c1b1e-3c1a-4a52-9f0e-6f1c2b3a4d5e".to_owned()),
        ..ConsulOptions::default()
    })
    .await
    .expect("consul with ACLs starts");
    let denied = http_get(consul.http_addr(), "/v1/agent/self")
        .await
        .expect("request completes");
    assert_eq!(denied.status, 403);
}

#[tokio::test]
async fn envoy_proxies_to_a_backend_and_dies_on_drop() {
    let backend = Backend::start("backend-a").await.expect("backend");
    let listener_port = test_support::free_port();
    let bootstrap = format!(
        r#"
node: {{ id: harness-test, cluster: harness }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: backend }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }} }} }}
"#,
        backend_port = backend.addr().port()
    );
    let envoy = Envoy::start(&bootstrap).await.expect("envoy starts");
    let response = http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], listener_port)),
        "/",
    )
    .await
    .expect("request through envoy");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "backend-a");
    assert_eq!(backend.requests(), 1);
    assert_eq!(
        envoy
            .stat("cluster.backend.upstream_rq_200")
            .await
            .expect("stats"),
        Some(1)
    );

    let pid = envoy.pid();
    drop(envoy);
    assert!(!process_exists(pid), "envoy {pid} survives its handle");
}

#[tokio::test]
async fn pebble_serves_a_directory_and_its_issuing_root() {
    let pebble = Pebble::start(PebbleOptions::default())
        .await
        .expect("pebble starts");
    let root = pebble.issuing_root_pem().await.expect("issuing root");
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    assert!(pebble.directory_url().starts_with("https://localhost:"));
}

#[tokio::test]
async fn knot_accepts_a_tsig_signed_update() {
    let knot = Knot::start("harness.test", &["@ A 127.0.0.1"])
        .await
        .expect("knot starts");
    let script = format!(
        "server {} {}\nzone harness.test.\nupdate add _acme-challenge.harness.test. 60 TXT \"token\"\nsend\n",
        knot.addr().ip(),
        knot.addr().port()
    );
    let knsupdate = test_support::tool("knsupdate").expect("knsupdate");
    let mut child = tokio::process::Command::new(knsupdate)
        .arg("-y")
        .arg(knot.tsig().knsupdate_arg())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("knsupdate runs");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).await.expect("script");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("knsupdate finishes")
        .expect("knsupdate output");
    assert!(
        output.status.success(),
        "update refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The same update with a key knot does not know is refused.
    let mut wrong = knot.tsig().clone();
    wrong.secret_base64 = "c2VjcmV0LXRoYXQta25vdC1kb2VzLW5vdC1rbm93".to_owned();
    let mut child =
        tokio::process::Command::new(test_support::tool("knsupdate").expect("knsupdate"))
            .arg("-y")
            .arg(wrong.knsupdate_arg())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("knsupdate runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).await.expect("script");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("knsupdate finishes")
        .expect("knsupdate output");
    assert!(
        !output.status.success(),
        "an update with a wrong TSIG key was accepted"
    );
}

#[test]
fn gateway_bootstraps_pass_envoys_own_validation() {
    use test_support::bootstrap::{EdsTransport, GatewayBootstrap};
    for transport in [EdsTransport::Grpc, EdsTransport::Ads] {
        let yaml = GatewayBootstrap {
            node_id: "validate".to_owned(),
            xds: "127.0.0.1:15000".parse().expect("addr"),
            transport,
            clusters: vec!["web".to_owned(), "api".to_owned()],
            listener_port: 10000,
            retries: true,
        }
        .yaml();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bootstrap.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let output = std::process::Command::new(test_support::tool("envoy").expect("envoy"))
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&path)
            .output()
            .expect("envoy runs");
        assert!(
            output.status.success(),
            "{transport:?} bootstrap rejected: {}\n{yaml}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

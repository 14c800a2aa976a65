//! A token whose ACL policy is narrowed while the server runs, against a
//! real Consul 1.8.7 with ACLs on and a real Envoy.
//!
//! Consul 1.8.7 answers the narrowed token's read with 200 and `[]`, sends
//! no header saying it filtered, and does not move the index for the policy
//! change: the answer looks like every instance leaving at once. The server
//! keeps the endpoints for `--reset-grace`, degraded, then reads afresh.

mod common;

use std::time::{Duration, Instant};

use common::{EdsServer, gateway, hosts, register_passing, wait_for_hostnames};
use consul_client::{Client, ClientConfig, Token};
use serde_json::Value;
use test_support::bootstrap::EdsTransport;
use test_support::{Backend, ConsulAgent, ConsulOptions, http_get, http_request};

const MASTER: &str = "3f1b6f0e-8a55-4c0e-9d4e-acl-master-token";
/// The test servers' `--reset-grace`.
const GRACE: Duration = Duration::from_secs(3);

const READ_ALL: &str =
    r#"service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }"#;
const READ_NOTHING: &str = r#"key_prefix "unrelated/" { policy = "read" }"#;

async fn acl_put(consul: &ConsulAgent, path: &str, body: String) -> Value {
    let response = http_request(
        "PUT",
        consul.http_addr(),
        path,
        &[("x-consul-token", MASTER)],
        body.into_bytes(),
    )
    .await
    .expect("ACL request");
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    serde_json::from_str(&response.body).expect("ACL answer is JSON")
}

fn master_client(consul: &ConsulAgent) -> Client {
    let address: consul_client::config::Address = consul.http_url().parse().expect("address");
    Client::new(ClientConfig {
        token: Some(Token::new(MASTER).expect("token")),
        ..ClientConfig::new(address)
    })
    .expect("client")
}

#[tokio::test]
async fn a_narrowed_policy_keeps_the_endpoints_degraded_for_the_grace_then_reads_afresh() {
    let consul = ConsulAgent::start_with(ConsulOptions {
        acl_master_token: Some(MASTER.to_owned()),
        ..ConsulOptions::default()
    })
    .await
    .expect("consul with ACLs");
    let policy = acl_put(
        &consul,
        "/v1/acl/policy",
        serde_json::json!({"Name": "eds-read", "Rules": READ_ALL}).to_string(),
    )
    .await;
    let policy_id = policy["ID"].as_str().expect("policy id").to_owned();
    let token = acl_put(
        &consul,
        "/v1/acl/token",
        serde_json::json!({"Policies": [{"ID": policy_id}]}).to_string(),
    )
    .await;
    let secret = token["SecretID"].as_str().expect("secret").to_owned();

    let master = master_client(&consul);
    let web1 = Backend::start("web-1").await.expect("backend");
    register_passing(&master, "web", &web1).await;
    let eds = EdsServer::start(&consul, &["--consul-token", &secret]).await;
    let (envoy, listener) = gateway(eds.xds, &["web"], EdsTransport::Grpc).await;
    wait_for_hostnames(&envoy, "web", &["web-1"], Duration::from_secs(10)).await;
    assert_eq!(eds.readyz().await.0, 200);

    // The operator narrows the policy; then the service changes, so the
    // blocking query returns, with what the token may now see: nothing.
    let narrowed = serde_json::json!({"ID": policy_id, "Name": "eds-read", "Rules": READ_NOTHING});
    acl_put(
        &consul,
        &format!("/v1/acl/policy/{policy_id}"),
        narrowed.to_string(),
    )
    .await;
    let web2 = Backend::start("web-2").await.expect("backend");
    register_passing(&master, "web", &web2).await;
    let changed = Instant::now();

    // Within the grace: endpoints kept in Envoy, traffic flows, degraded.
    let mut saw_degraded = false;
    while changed.elapsed() < GRACE - Duration::from_millis(500) {
        let hosts = hosts(&envoy, "web").await;
        assert!(
            !hosts.is_empty(),
            "the cluster was emptied {:?} after the narrowed answer\n{}",
            changed.elapsed(),
            eds.process.log_tail()
        );
        let (status, body) = eds.readyz().await;
        saw_degraded |= status == 429;
        if changed.elapsed() > Duration::from_secs(1) {
            assert_eq!(status, 429, "degraded while held: {body}");
        }
        assert_eq!(http_get(listener, "/").await.expect("proxied").status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_degraded, "/readyz never said 429");
    let metrics = http_get(eds.admin, "/metrics").await.expect("metrics");
    assert!(
        metrics.body.contains("consul_eds_vanished_held_total 1"),
        "{}",
        metrics.body
    );

    // The policy is restored before the grace ends. Its index does not
    // move, so only the fresh read at the deadline can see both instances.
    let restored = serde_json::json!({"ID": policy_id, "Name": "eds-read", "Rules": READ_ALL});
    acl_put(
        &consul,
        &format!("/v1/acl/policy/{policy_id}"),
        restored.to_string(),
    )
    .await;
    wait_for_hostnames(&envoy, "web", &["web-1", "web-2"], GRACE * 3).await;
    test_support::eventually(
        "readyz to recover",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { (eds.readyz().await.0 == 200).then_some(()) },
    )
    .await
    .expect("ready again");
}

//! HTTP-01 tokens in Consul KV, answered from memory: the challenge path is
//! public, so requests to it must not turn into Consul reads that compete
//! with the session renewals keeping the renewal lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use consul_client::{Address, Client, ClientConfig};
use envoy_acme_sds::challenge::consul_tokens::ConsulTokenStore;
use envoy_acme_sds::challenge::http01::{Http01Server, TokenStore};
use test_support::{ConsulAgent, eventually, http_get};
use tokio_util::sync::CancellationToken;

fn replica(consul: &ConsulAgent, shutdown: &CancellationToken) -> ConsulTokenStore {
    let client = Client::new(ClientConfig::new(
        consul.http_url().parse::<Address>().expect("address"),
    ))
    .expect("client");
    let store = ConsulTokenStore::new(client, "acme");
    tokio::spawn(store.clone().follow(shutdown.clone()));
    store
}

#[tokio::test]
async fn a_token_put_by_one_replica_is_answered_by_another_with_consul_gone() {
    let mut consul = ConsulAgent::start().await.expect("consul starts");
    let shutdown = CancellationToken::new();
    let writer = replica(&consul, &shutdown);
    let reader = replica(&consul, &shutdown);
    // Let the reader's blocking query take its first answer.
    tokio::time::sleep(Duration::from_millis(300)).await;

    writer.put("tok-1", "tok-1.thumb").await.expect("put");
    // The reader learns it from its blocking query, not by reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    consul.kill();
    assert_eq!(
        reader.get("tok-1").await.expect("answered").as_deref(),
        Some("tok-1.thumb"),
        "answered from the copy while Consul is down"
    );
    assert_eq!(reader.consul_reads(), 0, "no request reached Consul");
    shutdown.cancel();
}

#[tokio::test]
async fn a_flood_of_made_up_tokens_makes_only_a_few_consul_reads() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let shutdown = CancellationToken::new();
    let writer = replica(&consul, &shutdown);
    let reader = replica(&consul, &shutdown);
    writer.put("real", "real.thumb").await.expect("put");
    let served: Arc<dyn TokenStore> = Arc::new(reader.clone());
    let server = Http01Server::bind("127.0.0.1:0".parse().expect("addr"), served)
        .await
        .expect("binds");
    let addr = server.local_addr().expect("address");
    tokio::spawn(server.serve(shutdown.clone()));
    eventually(
        "the reader knows the real token",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let response = http_get(addr, "/.well-known/acme-challenge/real")
                .await
                .ok()?;
            (response.status == 200).then_some(())
        },
    )
    .await
    .expect("the real token is answered");
    let reads_before = reader.consul_reads();

    let started = Instant::now();
    for n in 0..300 {
        let response = http_get(addr, &format!("/.well-known/acme-challenge/made-up-{n}"))
            .await
            .expect("answered");
        assert_eq!(response.status, 404);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reads = reader.consul_reads() - reads_before;
    // A burst of 4, then 2 a second.
    let allowed = 4 + (2.0 * elapsed).ceil() as u64;
    assert!(
        reads <= allowed,
        "{reads} Consul reads for 300 requests in {elapsed:.2} s (at most {allowed})"
    );
    let real = http_get(addr, "/.well-known/acme-challenge/real")
        .await
        .expect("answered");
    assert_eq!(real.status, 200, "the real token is still answered");
    shutdown.cancel();
}

//! Two replicas of the binary on one Consul prefix, each with its own Envoy.
//!
//! - Only the lock holder orders; both serve the same certificate.
//! - HTTP-01 tokens live in Consul KV: pebble's validation requests are
//!   routed to the replica that did *not* place the order, which answers
//!   from KV.
//! - pebble rejects 30 % of nonces: retried, never a failed renewal.
//! - Killing the holder (SIGKILL, no goodbye) hands the lock over once its
//!   session expires, and renewal continues on the survivor.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::service::{SdsService, binary, presented};
use common::{ZONE, acme_ca_file, start_pebble};
use consul_client::{Address, Client, ClientConfig, QueryOptions, SessionRequest};
use envoy_acme_sds::store::consul::ConsulStore;
use envoy_acme_sds::store::encryption::KeyEncryption;
use envoy_acme_sds::store::{CertificateStore, SecretName};
use test_support::bootstrap::{SdsListenerBootstrap, SdsTransport};
use test_support::{ConsulAgent, Envoy, Knot, PebbleOptions, eventually, free_port};
use tokio::net::{TcpListener, TcpStream};

/// The replicas seal private keys with this key (Consul storage requires one).
const SEALING_KEY: [u8; 32] = [7; 32];
const PREFIX: &str = "ha-test";
const HOST: &str = "www.example.test";

/// One replica as the validation proxy sees it.
#[derive(Debug)]
struct Route {
    name: String,
    http01: SocketAddr,
    alive: bool,
    answered: AtomicUsize,
}

/// Stands where pebble sends HTTP-01 validations. Each connection goes to a
/// live replica that does not hold the lock (read from Consul when the
/// connection arrives), or to the holder when it is alone.
async fn start_validation_proxy(
    client: Client,
    lock_key: String,
    routes: Arc<Mutex<Vec<Arc<Route>>>>,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let holder = client
                .kv_get(&lock_key, &QueryOptions::default())
                .await
                .ok()
                .and_then(|r| r.value)
                .and_then(|pair| pair.value)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            let route = {
                let routes = routes.lock().expect("routes");
                let live: Vec<&Arc<Route>> = routes.iter().filter(|r| r.alive).collect();
                live.iter()
                    .find(|r| r.name != holder)
                    .or(live.first())
                    .map(|r| Arc::clone(r))
            };
            let Some(route) = route else { continue };
            route.answered.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(route.http01).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_orders_both_serve_and_the_lock_moves_when_the_holder_dies() {
    let knot = Knot::start(ZONE, &["www A 127.0.0.1"])
        .await
        .expect("knot starts");
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = Client::new(ClientConfig::new(
        consul.http_url().parse::<Address>().expect("address"),
    ))
    .expect("client");
    let encryption = KeyEncryption::from_bytes(&SEALING_KEY).expect("key");
    let store =
        ConsulStore::new(client.clone(), PREFIX, Some(Arc::new(encryption))).expect("store");

    let routes: Arc<Mutex<Vec<Arc<Route>>>> = Arc::new(Mutex::new(Vec::new()));
    let proxy_port =
        start_validation_proxy(client.clone(), store.lock_key(), Arc::clone(&routes)).await;
    let pebble = start_pebble(
        &knot,
        PebbleOptions {
            http01_port: Some(proxy_port),
            nonce_reject_percent: Some(30),
            ..PebbleOptions::default()
        },
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = acme_ca_file(&pebble, dir.path()).display().to_string();
    let key_file = dir.path().join("encryption.key");
    std::fs::write(&key_file, SEALING_KEY).expect("key file");
    let storage_args = vec![
        "--storage".to_owned(),
        format!("consul:{PREFIX}"),
        "--encryption-key-file".to_owned(),
        key_file.display().to_string(),
        "--consul-addr".to_owned(),
        consul.http_url(),
    ];
    let start = |name: &str| {
        let http01 = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args: Vec<String> = [
            "--acme-directory",
            &pebble.directory_url(),
            "--acme-ca-file",
            &ca_file,
            "--cert",
            HOST,
            "--challenge",
            "http-01",
            "--http01-listen",
            &http01.to_string(),
            "--instance-name",
            name,
            "--lock-delay",
            "0s",
            "--session-ttl",
            "10s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(storage_args.iter().cloned());
        routes.lock().expect("routes").push(Arc::new(Route {
            name: name.to_owned(),
            http01,
            alive: true,
            answered: AtomicUsize::new(0),
        }));
        SdsService::start(name, dir.path(), &args)
    };
    // Hold the lock until both replicas listen, so that whichever wins it
    // has a follower to answer pebble from KV.
    let gate = client
        .session_create(&SessionRequest {
            ttl: Some(Duration::from_secs(30)),
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("session");
    assert!(
        client
            .kv_acquire(&store.lock_key(), "test", &gate)
            .await
            .expect("acquire")
    );
    let mut replicas = vec![start("replica-a"), start("replica-b")];
    for replica in &replicas {
        eventually(
            "the replica listens",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async { replica.admin("/healthz").await.filter(|r| r.status == 200) },
        )
        .await
        .expect("listening");
    }
    assert!(
        client
            .kv_release(&store.lock_key(), "test", &gate)
            .await
            .expect("release")
    );
    client.session_destroy(&gate).await.expect("destroy");
    for replica in &mut replicas {
        replica.wait_ready(Duration::from_secs(90)).await;
    }

    // Exactly one holds the lock, and only it ordered.
    let mut holders = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        if replica.metric("envoy_acme_sds_lock_holder").await == 1.0 {
            holders.push(index);
        }
    }
    assert_eq!(holders.len(), 1, "lock holders: {holders:?}");
    let leader = holders[0];
    let follower = 1 - leader;
    let ok = format!("envoy_acme_sds_renewals_total{{secret=\"{HOST}\",result=\"ok\"}}");
    let failed = format!("envoy_acme_sds_renewals_total{{secret=\"{HOST}\",result=\"failed\"}}");
    assert_eq!(replicas[leader].metric(&ok).await, 1.0);
    assert_eq!(
        replicas[leader].metric(&failed).await,
        0.0,
        "bad nonces must be retried"
    );
    assert_eq!(replicas[follower].metric(&ok).await, 0.0);
    let name = SecretName::new(HOST).expect("name");
    assert_eq!(
        store
            .load_order_history(&name)
            .await
            .expect("history")
            .len(),
        1
    );
    // pebble's validations reached the follower, which answered from KV.
    let follower_answers = routes.lock().expect("routes")[follower]
        .answered
        .load(Ordering::SeqCst);
    assert!(follower_answers >= 1, "no validation reached the follower");
    let follower_page = replicas[follower].debug_certificates().await;
    assert_eq!(follower_page["renews"], false);

    // Both replicas' Envoys present the stored certificate.
    let stored = store
        .load_certificate(&name)
        .await
        .expect("load")
        .expect("stored");
    let root = pebble.issuing_root_pem().await.expect("root");
    let mut envoys = Vec::new();
    for (index, transport) in [(leader, SdsTransport::Sotw), (follower, SdsTransport::Ads)] {
        let port = free_port();
        let bootstrap =
            SdsListenerBootstrap::new(&format!("gateway-{index}"), port, HOST, replicas[index].sds)
                .transport(transport);
        let envoy = Envoy::start(&bootstrap.yaml()).await.expect("envoy starts");
        let listener = SocketAddr::from(([127, 0, 0, 1], port));
        let seen = eventually(
            "Envoy presents the certificate",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || presented(listener, HOST, &root),
        )
        .await
        .expect("presented");
        assert_eq!(seen.serial, stored.metadata().serial, "replica {index}");
        assert_eq!(seen.names, vec![HOST]);
        envoys.push((envoy, listener));
    }

    // The holder dies without releasing anything; the follower takes over
    // once Consul expires the session (TTL, lock delay 0s).
    replicas[leader].kill();
    {
        let mut routes = routes.lock().expect("routes");
        let dead = &routes[leader];
        routes[leader] = Arc::new(Route {
            name: dead.name.clone(),
            http01: dead.http01,
            alive: false,
            answered: AtomicUsize::new(0),
        });
    }
    let survivor = &replicas[follower];
    eventually(
        "the survivor holds the lock",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { (survivor.metric("envoy_acme_sds_lock_holder").await == 1.0).then_some(()) },
    )
    .await
    .expect("lock handed over");

    // Renewal continues there: an operator's request is served by the survivor's Envoy.
    let output = std::process::Command::new(binary())
        .args(["renew", "--cert", HOST])
        .args(&storage_args)
        .output()
        .expect("renew runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, survivor_listener) = &envoys[1];
    let renewed = eventually(
        "the survivor's Envoy presents a new certificate",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            presented(*survivor_listener, HOST, &root)
                .await
                .filter(|p| p.serial != stored.metadata().serial)
        },
    )
    .await
    .expect("renewed");
    let now_stored = store
        .load_certificate(&name)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(renewed.serial, now_stored.metadata().serial);
    assert_eq!(survivor.metric(&ok).await, 1.0);
    assert_eq!(
        store
            .load_order_history(&name)
            .await
            .expect("history")
            .len(),
        2
    );
}

//! What a replica following Consul KV reads, against a real Consul agent:
//! the follower's client talks to Consul through a proxy that counts every
//! byte Consul sends it and every request line, so "reads only what
//! changed" is measured on the wire, not taken on trust.

#[allow(unused_macros)] // The specification runs in consul_store.rs.
mod store_suite;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use consul_client::{Address, Client, ClientConfig, SessionId, SessionRequest, TxnOp};
use envoy_acme_sds::certificate::CertificateBundle;
use envoy_acme_sds::kv_watch::KvFollower;
use envoy_acme_sds::sds::{SecretPublisher, ServedSecret};
use envoy_acme_sds::store::codec::{Codec, KeysAtRest, certificate_item};
use envoy_acme_sds::store::consul::ConsulStore;
use envoy_acme_sds::store::{CertificateStore, SecretName};
use store_suite::{certificate, one_order};
use test_support::{ConsulAgent, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xds_core::{ResourceType, SharedKey, SnapshotCache};

const NODES: &str = "gateways";

/// A TCP proxy in front of Consul that counts what passes and can cut
/// every connection, as a partition would.
struct CountingProxy {
    address: SocketAddr,
    from_consul: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    _accepting: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(consul: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listener");
        let address = listener.local_addr().expect("address");
        let from_consul = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let accepting = tokio::spawn({
            let (from_consul, requests, cut, connections) = (
                Arc::clone(&from_consul),
                Arc::clone(&requests),
                Arc::clone(&cut),
                Arc::clone(&connections),
            );
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let Ok(server) = TcpStream::connect(consul).await else {
                        continue;
                    };
                    let (from_consul, requests) = (Arc::clone(&from_consul), Arc::clone(&requests));
                    connections.lock().expect("lock").spawn(relay(
                        client,
                        server,
                        from_consul,
                        requests,
                    ));
                }
            }
        });
        Self {
            address,
            from_consul,
            requests,
            cut,
            connections,
            _accepting: accepting,
        }
    }

    fn client(&self) -> Client {
        Client::new(ClientConfig::new(
            format!("http://{}", self.address)
                .parse::<Address>()
                .expect("address"),
        ))
        .expect("client")
    }

    /// Bytes from Consul and request lines since the last call.
    fn take(&self) -> (u64, Vec<String>) {
        let bytes = self.from_consul.swap(0, Ordering::SeqCst);
        let requests = std::mem::take(&mut *self.requests.lock().expect("lock"));
        (bytes, requests)
    }

    /// Cuts every connection and refuses new ones, until [`Self::restore`].
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().expect("lock").abort_all();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies both ways, counting what Consul sends and noting each request
/// line the client sends (each is written whole by the HTTP client).
async fn relay(
    client: TcpStream,
    server: TcpStream,
    from_consul: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buffer[..n]);
            for line in text.split("\r\n") {
                if line.starts_with("GET ") || line.starts_with("PUT ") {
                    requests.lock().expect("lock").push(line.to_owned());
                }
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            from_consul.fetch_add(n as u64, Ordering::SeqCst);
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(upstream, downstream);
}

fn direct_client(consul: &ConsulAgent) -> Client {
    Client::new(ClientConfig::new(
        consul.http_url().parse::<Address>().expect("address"),
    ))
    .expect("client")
}

async fn lock_holder(client: &Client, store: &ConsulStore) -> SessionId {
    let session = client
        .session_create(&SessionRequest {
            ttl: Some(Duration::from_secs(60)),
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("session");
    // A freshly started agent may refuse the first acquisition for a moment.
    eventually(
        "the lock is acquired",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            client
                .kv_acquire(&store.lock_key(), "writer", &session)
                .await
                .expect("acquire")
                .then_some(())
        },
    )
    .await
    .expect("lock held");
    session
}

fn host(n: usize) -> SecretName {
    SecretName::new(format!("host-{n:04}.example.com")).expect("name")
}

fn certificate_for(name: &SecretName) -> CertificateBundle {
    certificate(&[name.as_str()])
}

/// A replica's follower, reading through `proxy`, serving `names`.
struct Replica {
    cache: SnapshotCache,
    publisher: Arc<SecretPublisher>,
    keys_at_rest: watch::Receiver<Option<KeysAtRest>>,
    woken: watch::Receiver<()>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(proxy: &CountingProxy, prefix: &str, names: &[SecretName]) -> Self {
        let store = ConsulStore::new(proxy.client(), prefix, None).expect("store");
        let cache = SnapshotCache::new(SharedKey(NODES.to_owned()));
        let publisher = Arc::new(SecretPublisher::new(
            cache.clone(),
            NODES,
            names
                .iter()
                .map(|name| ServedSecret {
                    name: name.clone(),
                    validation_context: None,
                })
                .collect(),
            format!("consul:{prefix}"),
        ));
        let (wake, mut woken) = watch::channel(());
        woken.mark_unchanged();
        let (keys_sender, keys_at_rest) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            KvFollower::new(store, Arc::clone(&publisher), wake)
                .with_keys_at_rest(keys_sender)
                .run(stop.clone()),
        );
        Self {
            cache,
            publisher,
            keys_at_rest,
            woken,
            stop,
            task,
        }
    }

    fn serial(&self, name: &SecretName) -> Option<String> {
        self.publisher
            .current(name)
            .map(|bundle| bundle.metadata().serial.clone())
    }

    async fn serves(&self, name: &SecretName, bundle: &CertificateBundle) {
        let wanted = bundle.metadata().serial.clone();
        eventually(
            &format!("{name} served with serial {wanted}"),
            Duration::from_secs(20),
            Duration::from_millis(20),
            || {
                let served = self.serial(name) == Some(wanted.clone());
                async move { served.then_some(()) }
            },
        )
        .await
        .expect("served");
    }

    /// The SDS resource the gateways get for `name`, encoded.
    fn resource(&self, name: &SecretName) -> Option<Bytes> {
        let snapshot = self.cache.snapshot(NODES)?;
        snapshot
            .get(ResourceType::Secret, name.as_str())
            .map(|resource| resource.encoded_any().clone())
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("follower stops");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Lets in-flight answers arrive, so what was read is all counted.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The request lines other than the two blocking queries a replica holds
/// (`last-write` and `renewals/`).
fn reads_beyond_the_watches<'a>(requests: &'a [String], prefix: &str) -> Vec<&'a str> {
    requests
        .iter()
        .map(String::as_str)
        .filter(|line| {
            !line.starts_with(&format!("GET /v1/kv/{prefix}/last-write?"))
                && !line.starts_with(&format!("GET /v1/kv/{prefix}/renewals/?"))
        })
        .collect()
}

#[tokio::test]
async fn renewing_one_of_fifty_certificates_reads_and_pushes_only_that_certificate() {
    const PREFIX: &str = "fifty";
    let consul = ConsulAgent::start().await.expect("consul starts");
    let direct = direct_client(&consul);
    let store = ConsulStore::new(direct.clone(), PREFIX, None).expect("store");
    let writer = store.fenced(lock_holder(&direct, &store).await);
    let names: Vec<SecretName> = (0..50).map(host).collect();
    let mut stored = Vec::new();
    for name in &names {
        let bundle = certificate_for(name);
        writer.save_certificate(name, &bundle).await.expect("write");
        writer
            .save_order_history(name, &one_order(name.as_str()))
            .await
            .expect("history");
        stored.push(bundle);
    }

    let proxy = CountingProxy::start(consul.http_addr()).await;
    let replica = Replica::start(&proxy, PREFIX, &names);
    for (name, bundle) in names.iter().zip(&stored) {
        replica.serves(name, bundle).await;
    }
    settle().await;
    let (startup_bytes, startup_requests) = proxy.take();
    assert!(
        startup_requests
            .iter()
            .any(|line| line.contains(&format!("/v1/kv/{PREFIX}/certificates/?recurse"))),
        "everything is read once at start: {startup_requests:#?}"
    );
    let before: Vec<Option<Bytes>> = names.iter().map(|name| replica.resource(name)).collect();

    let renewed_name = &names[7];
    let renewed = certificate_for(renewed_name);
    writer
        .save_certificate(renewed_name, &renewed)
        .await
        .expect("renewal");
    replica.serves(renewed_name, &renewed).await;
    settle().await;
    let (change_bytes, change_requests) = proxy.take();

    // Read: the `last-write` record, and that certificate's items alone.
    assert_eq!(
        reads_beyond_the_watches(&change_requests, PREFIX),
        [format!(
            "GET /v1/kv/{PREFIX}/certificates/{}/?recurse= HTTP/1.1",
            renewed_name.path_segment()
        )],
        "{change_requests:#?}"
    );
    proxy
        .client()
        .kv_list(
            &format!("{PREFIX}/certificates/{}/", renewed_name.path_segment()),
            &Default::default(),
        )
        .await
        .expect("list");
    let (its_items, _) = proxy.take();
    assert!(
        change_bytes < its_items + 4096,
        "a change read {change_bytes} bytes, that certificate's items are {its_items}; \
         the full read at start was {startup_bytes}"
    );
    // Pushed: the renewed certificate's secret changed, no other did.
    for (n, (name, old)) in names.iter().zip(&before).enumerate() {
        let now = replica.resource(name);
        if n == 7 {
            let now = now.expect("served");
            assert_ne!(Some(&now), old.as_ref(), "the renewed secret is pushed");
            let leaf = renewed
                .chain_pem()
                .split_inclusive("-----END CERTIFICATE-----\n");
            let leaf = leaf.into_iter().next().expect("leaf");
            assert!(contains(&now, leaf.as_bytes()), "the new leaf is served");
        } else {
            assert_eq!(&now, old, "{name} untouched");
        }
    }
    let keys = (*replica.keys_at_rest.borrow()).expect("reported");
    assert_eq!(keys.total, 50);
    assert_eq!(keys.plaintext, 50);
    replica.stop().await;
}

/// What a version before version entries wrote: the four items in one
/// transaction, and nothing else.
async fn write_without_version_entry(
    client: &Client,
    prefix: &str,
    name: &SecretName,
    bundle: &CertificateBundle,
) {
    let encoded = Codec::default()
        .encode_certificate(name, bundle)
        .expect("encode");
    let ops: Vec<TxnOp> = encoded
        .parts()
        .into_iter()
        .map(|(part, bytes)| TxnOp::KvSet {
            key: format!("{prefix}/{}", certificate_item(name, part)),
            value: Bytes::copy_from_slice(bytes),
            flags: 0,
        })
        .collect();
    assert!(
        client
            .txn(&ops, &Default::default())
            .await
            .expect("txn")
            .is_committed()
    );
}

#[tokio::test]
async fn a_store_written_without_version_entries_is_served_and_its_later_writes_announced() {
    const PREFIX: &str = "older";
    let consul = ConsulAgent::start().await.expect("consul starts");
    let direct = direct_client(&consul);
    let names: Vec<SecretName> = (0..3).map(host).collect();
    let mut stored = Vec::new();
    for name in &names {
        let bundle = certificate_for(name);
        write_without_version_entry(&direct, PREFIX, name, &bundle).await;
        stored.push(bundle);
    }
    let listing = direct
        .kv_list(&format!("{PREFIX}/versions/"), &Default::default())
        .await
        .expect("list")
        .value;
    assert!(listing.is_empty(), "no entries yet: {listing:?}");

    let proxy = CountingProxy::start(consul.http_addr()).await;
    let replica = Replica::start(&proxy, PREFIX, &names);
    for (name, bundle) in names.iter().zip(&stored) {
        replica.serves(name, bundle).await;
    }

    // An older lock holder renews one: no entry moves, so the replica
    // cannot know until the next holder announces it.
    let renewed = certificate_for(&names[1]);
    write_without_version_entry(&direct, PREFIX, &names[1], &renewed).await;
    settle().await;
    assert_eq!(
        replica.serial(&names[1]),
        Some(stored[1].metadata().serial.clone())
    );
    let store = ConsulStore::new(direct.clone(), PREFIX, None).expect("store");
    let holder = store.fenced(lock_holder(&direct, &store).await);
    proxy.take();
    assert_eq!(
        holder
            .announce_unversioned_writes()
            .await
            .expect("announced"),
        3,
        "every certificate without an entry"
    );
    replica.serves(&names[1], &renewed).await;
    assert_eq!(
        holder.announce_unversioned_writes().await.expect("again"),
        0,
        "announced once"
    );
    settle().await;
    let (_, requests) = proxy.take();
    let reads = reads_beyond_the_watches(&requests, PREFIX);
    assert_eq!(
        reads.len(),
        3,
        "each announced certificate read once: {reads:#?}"
    );

    // Writes of this version carry their entry: followed at once.
    let next = certificate_for(&names[2]);
    holder
        .save_certificate(&names[2], &next)
        .await
        .expect("write");
    replica.serves(&names[2], &next).await;
    replica.stop().await;
}

#[tokio::test]
async fn corrupt_or_deleted_certificates_leave_the_last_good_one_served() {
    const PREFIX: &str = "faults";
    let consul = ConsulAgent::start().await.expect("consul starts");
    let direct = direct_client(&consul);
    let store = ConsulStore::new(direct.clone(), PREFIX, None).expect("store");
    let writer = store.fenced(lock_holder(&direct, &store).await);
    let name = host(1);
    let good = certificate_for(&name);
    writer.save_certificate(&name, &good).await.expect("write");
    let proxy = CountingProxy::start(consul.http_addr()).await;
    let mut replica = Replica::start(&proxy, PREFIX, std::slice::from_ref(&name));
    replica.serves(&name, &good).await;

    // Garbage, a half-written item, an empty one, then a partial set, each
    // written by hand and announced by bumping the entry by hand: the good
    // certificate stays.
    let metadata = store.key(&certificate_item(
        &name,
        envoy_acme_sds::store::codec::CertificatePart::Metadata,
    ));
    let entry = store.key(&format!("versions/certificates/{}", name.path_segment()));
    // As an operator announces a hand edit: any new value moves the entry,
    // any record not written by a replica has the replicas compare entries.
    let items_read = format!(
        "GET /v1/kv/{PREFIX}/certificates/{}/?recurse= HTTP/1.1",
        name.path_segment()
    );
    let mut bumps = 0;
    let mut bump = || {
        bumps += 1;
        let value = format!("by hand {bumps}");
        let (direct, entry, proxy, items_read) = (&direct, &entry, &proxy, &items_read);
        async move {
            proxy.take();
            direct.kv_put(entry, value.clone()).await.expect("bump");
            // A record that does not follow on has the replica compare the entries.
            direct
                .kv_put(&format!("{PREFIX}/last-write"), value)
                .await
                .expect("record");
            eventually(
                "the replica reads the items",
                Duration::from_secs(10),
                Duration::from_millis(20),
                || {
                    let read = proxy.take().1.contains(items_read);
                    async move { read.then_some(()) }
                },
            )
            .await
            .expect("read");
        }
    };
    for corrupt in [
        &b"not json"[..],
        &b"{\"version\": 1, \"metadata\": {"[..],
        &b""[..],
    ] {
        direct
            .kv_put(&metadata, corrupt.to_vec())
            .await
            .expect("put");
        bump().await;
        assert_eq!(replica.serial(&name), Some(good.metadata().serial.clone()));
    }
    direct
        .kv_delete(&store.key(&certificate_item(
            &name,
            envoy_acme_sds::store::codec::CertificatePart::Key,
        )))
        .await
        .expect("delete");
    bump().await;
    assert_eq!(replica.serial(&name), Some(good.metadata().serial.clone()));

    // Deleted altogether, entry and all: still served, and a new one is
    // followed again.
    direct
        .kv_delete_tree(&format!("{PREFIX}/certificates/"))
        .await
        .expect("delete");
    direct.kv_delete(&entry).await.expect("delete entry");
    settle().await;
    assert_eq!(replica.serial(&name), Some(good.metadata().serial.clone()));
    let next = certificate_for(&name);
    writer.save_certificate(&name, &next).await.expect("write");
    replica.serves(&name, &next).await;

    // A renewal request wakes the renewer.
    assert!(!replica.woken.has_changed().expect("sender alive"));
    store
        .request_renewal(
            &name,
            &envoy_acme_sds::store::RenewalRequest::replacing(
                next.metadata(),
                time::OffsetDateTime::now_utc(),
            ),
        )
        .await
        .expect("request");
    eventually(
        "the renewer is woken",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let woken = replica.woken.has_changed().expect("sender alive");
            async move { woken.then_some(()) }
        },
    )
    .await
    .expect("woken");
    replica.woken.mark_unchanged();
    replica.stop().await;
}

#[tokio::test]
async fn while_consul_is_cut_off_the_certificates_stay_served_and_a_renewal_follows_after() {
    const PREFIX: &str = "partition";
    let consul = ConsulAgent::start().await.expect("consul starts");
    let direct = direct_client(&consul);
    let store = ConsulStore::new(direct.clone(), PREFIX, None).expect("store");
    let writer = store.fenced(lock_holder(&direct, &store).await);
    let names: Vec<SecretName> = (0..3).map(host).collect();
    let mut stored = Vec::new();
    for name in &names {
        let bundle = certificate_for(name);
        writer.save_certificate(name, &bundle).await.expect("write");
        stored.push(bundle);
    }
    let proxy = CountingProxy::start(consul.http_addr()).await;
    let replica = Replica::start(&proxy, PREFIX, &names);
    for (name, bundle) in names.iter().zip(&stored) {
        replica.serves(name, bundle).await;
    }

    proxy.cut();
    let renewed = certificate_for(&names[0]);
    writer
        .save_certificate(&names[0], &renewed)
        .await
        .expect("renewal");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, bundle) in names.iter().zip(&stored) {
        assert_eq!(replica.serial(name), Some(bundle.metadata().serial.clone()));
    }
    proxy.restore();
    replica.serves(&names[0], &renewed).await;
    for (name, bundle) in names.iter().zip(&stored).skip(1) {
        assert_eq!(replica.serial(name), Some(bundle.metadata().serial.clone()));
    }
    replica.stop().await;
}

#[tokio::test]
async fn concurrent_writes_of_the_lock_holder_all_land_and_are_all_followed() {
    const PREFIX: &str = "concurrent";
    let consul = ConsulAgent::start().await.expect("consul starts");
    let direct = direct_client(&consul);
    let store = ConsulStore::new(direct.clone(), PREFIX, None).expect("store");
    let writer = store.fenced(lock_holder(&direct, &store).await);
    let names: Vec<SecretName> = (0..12).map(host).collect();
    let proxy = CountingProxy::start(consul.http_addr()).await;
    let replica = Replica::start(&proxy, PREFIX, &names);

    // Each write replaces `last-write` by CAS: those that lose the race
    // read it again and retry, so none fails and the chain stays whole.
    let bundles: Vec<CertificateBundle> = names.iter().map(certificate_for).collect();
    let writes = names.iter().zip(&bundles).map(|(name, bundle)| {
        let writer = writer.clone();
        async move { writer.save_certificate(name, bundle).await }
    });
    for result in futures::future::join_all(writes).await {
        result.expect("every concurrent write lands");
    }
    for (name, bundle) in names.iter().zip(&bundles) {
        replica.serves(name, bundle).await;
    }
    replica.stop().await;
}

/// The figure for ADR 0009: bytes Consul sends one replica for a change of
/// one certificate among 1,000 (each with its order history), read the old
/// way (the whole prefix, as one blocking query over `<prefix>/` answered)
/// and the new way. Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement: writes 1,000 certificates (about a minute)"]
async fn bytes_read_per_change_with_a_thousand_certificates() {
    const PREFIX: &str = "thousand";
    const COUNT: usize = 1000;
    let consul = ConsulAgent::start().await.expect("consul starts");
    let direct = direct_client(&consul);
    let store = ConsulStore::new(direct.clone(), PREFIX, None).expect("store");
    let writer = store.fenced(lock_holder(&direct, &store).await);
    let names: Vec<SecretName> = (0..COUNT).map(host).collect();
    let mut last = None;
    for name in &names {
        let bundle = certificate_for(name);
        writer.save_certificate(name, &bundle).await.expect("write");
        writer
            .save_order_history(name, &one_order(name.as_str()))
            .await
            .expect("history");
        last = Some(bundle);
    }
    let proxy = CountingProxy::start(consul.http_addr()).await;
    let replica = Replica::start(&proxy, PREFIX, &names);
    replica
        .serves(&names[COUNT - 1], last.as_ref().expect("stored"))
        .await;
    settle().await;
    let (startup, _) = proxy.take();

    let renewed = certificate_for(&names[500]);
    writer
        .save_certificate(&names[500], &renewed)
        .await
        .expect("renewal");
    replica.serves(&names[500], &renewed).await;
    settle().await;
    let (after, requests) = proxy.take();
    assert_eq!(
        reads_beyond_the_watches(&requests, PREFIX).len(),
        1,
        "{requests:#?}"
    );

    // The old follower's answer to the same change was the whole prefix,
    // which then had no `versions/` or `last-write`: today's listing less
    // those. The `versions/` listing is also what a replica reads when
    // records do not follow on.
    let reader = proxy.client();
    reader
        .kv_list(&format!("{PREFIX}/"), &Default::default())
        .await
        .expect("list");
    let (whole, _) = proxy.take();
    reader
        .kv_list(&format!("{PREFIX}/versions/"), &Default::default())
        .await
        .expect("list");
    let (versions, _) = proxy.take();
    reader
        .kv_get(&format!("{PREFIX}/last-write"), &Default::default())
        .await
        .expect("get");
    let (record, _) = proxy.take();
    let before = whole - versions - record;
    println!(
        "{COUNT} certificates with order histories, one renewed: the old follower read \
         {before} bytes, this one {after} bytes ({:.0}x less); comparing the version entries \
         (records not following on) reads {versions} bytes more; the full read at start: \
         {startup} bytes",
        before as f64 / after as f64
    );
    replica.stop().await;
}

//! Transport options, limits and shutdown of the server.

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use xds_core::{
    Listen, Resource, ResourceType, ServerOptions, SharedKey, SnapshotCache, TlsOptions, XdsServer,
};

const EDS: ResourceType = ResourceType::Endpoint;

/// `count` clusters of `endpoints` endpoints each.
fn large_set(count: usize, endpoints: usize) -> Vec<ClusterLoadAssignment> {
    (0..count)
        .map(|c| {
            let addresses: Vec<_> = (0..endpoints)
                .map(|e| {
                    std::net::SocketAddr::from((
                        [10, (c % 250) as u8, (e / 250 % 250) as u8, (e % 250) as u8],
                        8000 + (e % 1000) as u16,
                    ))
                })
                .collect();
            assignment(&format!("cluster-{c}"), &addresses)
        })
        .collect()
}

/// The answer to one EDS subscription over ADS on `channel`, or how the
/// server refused the stream.
async fn first_response(
    channel: Channel,
    names: &[&str],
) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = SotwClient::open(channel, Service::Ads, "envoy-1").await?;
    client.subscribe(EDS, names);
    client
        .next()
        .await?
        .ok_or_else(|| tonic::Status::unknown("stream ended"))
}

#[tokio::test]
async fn a_twenty_megabyte_endpoint_set_is_delivered() {
    let server = TestServer::start().await;
    let set = large_set(100, 10_000);
    let resources: Vec<Resource> = set
        .iter()
        .map(|a| Resource::encode(a).expect("encodes"))
        .collect();
    let bytes: usize = resources.iter().map(|r| r.encoded_any().len()).sum();
    assert!(bytes > 20 * 1024 * 1024, "only {bytes} bytes");
    server
        .cache
        .set_resources(KEY, EDS, resources)
        .expect("set");
    let names: Vec<String> = set.iter().map(|a| a.cluster_name.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let response = first_response(channel(&server.url()).await, &refs)
        .await
        .expect("delivered");
    assert_eq!(response.resources.len(), 100);
    let received: usize = response.resources.iter().map(|a| a.value.len()).sum();
    assert!(received > 20 * 1024 * 1024);
}

#[tokio::test]
async fn the_message_size_limit_is_configurable() {
    let options = ServerOptions {
        max_message_size: 1024 * 1024,
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    server.set_endpoints(&large_set(1, 50_000));
    let error = first_response(channel(&server.url()).await, &["cluster-0"])
        .await
        .expect_err("too large for the configured limit");
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error}");
}

#[tokio::test]
async fn the_server_listens_on_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("xds.sock");
    let cache = SnapshotCache::new(SharedKey(KEY.to_owned()));
    cache
        .set_endpoints(KEY, &[assignment("a", &[addr(1)])])
        .expect("set");
    let bound = XdsServer::new(cache)
        .bind(Listen::Unix(path.clone()))
        .await
        .expect("binds");
    assert_eq!(bound.unix_path().as_deref(), Some(path.as_path()));
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));
    let channel = Endpoint::from_static("http://unix.socket")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connects");
    let response = first_response(channel, &["a"]).await.expect("answered");
    assert_eq!(names(&response), ["a"]);
    let _ = stop.send(());
    serving.await.expect("task").expect("clean stop");
}

struct Pki {
    ca: test_support::TestCa,
    server: test_support::LeafPem,
    client: test_support::LeafPem,
}

fn pki() -> Pki {
    let ca = test_support::TestCa::new("xds test ca").expect("ca");
    let server = ca.leaf(&["localhost", "127.0.0.1"]).expect("server leaf");
    let client = ca.leaf(&["envoy-client"]).expect("client leaf");
    Pki { ca, server, client }
}

async fn tls_server(pki: &Pki, mutual: bool) -> TestServer {
    let options = ServerOptions {
        tls: Some(TlsOptions {
            certificate_chain_pem: pki.server.cert_pem.clone(),
            private_key_pem: pki.server.key_pem.clone(),
            client_ca_pem: mutual.then(|| pki.ca.cert_pem().to_owned()),
        }),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    server.set_endpoints(&[assignment("a", &[addr(1)])]);
    server
}

async fn tls_channel(
    server: &TestServer,
    pki: &Pki,
    identity: Option<&test_support::LeafPem>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.cert_pem()))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .expect("url")
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca() {
    let pki = pki();
    let server = tls_server(&pki, false).await;
    let channel = tls_channel(&server, &pki, None).await.expect("handshake");
    let response = first_response(channel, &["a"]).await.expect("answered");
    assert_eq!(names(&response), ["a"]);
    // A plaintext client gets nothing.
    let plain = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(first_response(plain, &["a"]).await.is_err());
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = pki();
    let server = tls_server(&pki, true).await;
    let with_identity = tls_channel(&server, &pki, Some(&pki.client))
        .await
        .expect("handshake");
    let response = first_response(with_identity, &["a"])
        .await
        .expect("answered");
    assert_eq!(names(&response), ["a"]);

    let anonymous = tls_channel(&server, &pki, None).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(channel) => first_response(channel, &["a"]).await.is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    let stranger_ca = test_support::TestCa::new("other ca").expect("ca");
    let stranger = stranger_ca.leaf(&["envoy-client"]).expect("leaf");
    let foreign = tls_channel(&server, &pki, Some(&stranger)).await;
    let refused = match foreign {
        Err(_) => true,
        Ok(channel) => first_response(channel, &["a"]).await.is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let options = ServerOptions {
        max_streams: Some(1),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let mut first = SotwClient::ads(&server.url(), "envoy-1").await;
    first.subscribe(EDS, &["a"]);
    let _ = first.recv().await;
    let refused = first_response(channel(&server.url()).await, &["a"])
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    drop(first);
    eventually("the slot to free up", || {
        server.metrics.stream_count("ads", "sotw") == 0
    })
    .await;
    first_response(channel(&server.url()).await, &["a"])
        .await
        .expect("a slot is free again");
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_without_waiting_for_the_deadline() {
    // A deadline longer than the hang guard: if streams did not end by
    // themselves, stopping would fail the test instead of passing late.
    let options = ServerOptions {
        drain_timeout: HANG_GUARD * 3,
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["a"]);
    let _ = client.recv().await;
    let url = server.url();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(client.ended().await.code(), tonic::Code::Unavailable);
    stopping.await.expect("task").expect("clean stop");
    let after = Channel::from_shared(url).expect("url").connect().await;
    assert!(after.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_drain_deadline() {
    let options = ServerOptions {
        drain_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = TestServer::with_options(options).await;
    // About 10 MB: more than hyper's default windows (2 MB per stream,
    // 5 MB per connection) can absorb.
    server.set_endpoints(&large_set(10, 40_000));
    let names = [
        "cluster-0",
        "cluster-1",
        "cluster-2",
        "cluster-3",
        "cluster-4",
        "cluster-5",
        "cluster-6",
        "cluster-7",
        "cluster-8",
        "cluster-9",
    ];
    // The response (megabytes) exceeds the flow-control windows, and this
    // client never reads it: the server's write is stuck.
    let unread = SotwClient::ads(&server.url(), "stuck").await;
    unread.subscribe(EDS, &names);
    eventually("the push to start", || server.metrics.push_count(EDS) == 1).await;
    server
        .stop()
        .await
        .expect("stops once the deadline cuts the connection");
    drop(unread);
}

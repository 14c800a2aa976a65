//! The state-of-the-world protocol, spoken by a raw gRPC client.

mod common;

use common::*;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_core::{Resource, ResourceType};

const EDS: ResourceType = ResourceType::Endpoint;

/// A server with endpoints for `clusters` (one address each), and an ADS
/// client, `envoy-1`, that subscribed to `subscribed` and ACKed the first
/// response, which is returned.
async fn acked_subscription(
    clusters: &[&str],
    subscribed: &[&str],
) -> (TestServer, SotwClient, DiscoveryResponse) {
    let server = TestServer::start().await;
    let assignments: Vec<_> = clusters.iter().map(|c| assignment(c, &[addr(1)])).collect();
    server.set_endpoints(&assignments);
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, subscribed);
    let first = client.recv().await;
    client.ack(&first, subscribed);
    (server, client, first)
}

#[tokio::test]
async fn every_response_carries_a_fresh_nonce() {
    let server = TestServer::start().await;
    server.set_endpoints(&[assignment("a", &[addr(1)])]);
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["a"]);
    let mut nonces = std::collections::HashSet::new();
    for port in 2..6 {
        let response = client.recv().await;
        assert!(!response.nonce.is_empty());
        assert!(nonces.insert(response.nonce.clone()), "nonce reused");
        client.ack(&response, &["a"]);
        server.set_endpoints(&[assignment("a", &[addr(port)])]);
    }
}

#[tokio::test]
async fn an_ack_advances_the_version_the_server_records() {
    let (server, mut client, first) = acked_subscription(&["a"], &["a"]).await;
    eventually("the first ACK", || server.metrics.ack_count(EDS) == 1).await;
    let status = server.type_status("envoy-1", EDS);
    assert_eq!(
        status.acked_version.as_deref(),
        Some(first.version_info.as_str())
    );

    server.set_endpoints(&[assignment("a", &[addr(2)])]);
    let second = client.recv().await;
    assert_ne!(second.version_info, first.version_info);
    client.ack(&second, &["a"]);
    eventually("the second ACK", || server.metrics.ack_count(EDS) == 2).await;
    let status = server.type_status("envoy-1", EDS);
    assert_eq!(
        status.acked_version.as_deref(),
        Some(second.version_info.as_str())
    );
    assert_eq!(
        status.sent_version.as_deref(),
        Some(second.version_info.as_str())
    );
}

#[tokio::test]
async fn a_nack_is_counted_and_the_rejected_version_is_not_sent_again() {
    let (server, mut client, good) = acked_subscription(&["a", "b"], &["a", "b"]).await;

    server.update_endpoints(&[assignment("a", &[addr(2)])]);
    let bad = client.recv().await;
    assert_eq!(names(&bad), ["a"]);
    client.nack(
        &bad,
        &good.version_info,
        &["a", "b"],
        "endpoint a is unacceptable",
    );
    eventually("the NACK", || server.metrics.nack_count(EDS) == 1).await;
    let status = server.type_status("envoy-1", EDS);
    let rejection = status.last_rejection.as_ref().expect("rejection recorded");
    assert_eq!(rejection.message, "endpoint a is unacceptable");
    assert_eq!(rejection.version, bad.version_info);
    assert_eq!(
        status.acked_version.as_deref(),
        Some(good.version_info.as_str())
    );

    // Another cluster changes: the push carries it alone, not the rejected a.
    server.update_endpoints(&[assignment("b", &[addr(3)])]);
    let next = client.recv().await;
    assert_eq!(names(&next), ["b"]);
    client.ack(&next, &["a", "b"]);

    // Once a changes, it is sent again.
    server.update_endpoints(&[assignment("a", &[addr(4)])]);
    let fixed = client.recv().await;
    assert_eq!(names(&fixed), ["a"]);
}

#[tokio::test]
async fn after_a_nack_the_next_change_resends_what_the_rejected_response_carried() {
    let (server, mut client, good) = acked_subscription(&["a", "b", "c"], &["a", "b", "c"]).await;
    let all = ["a", "b", "c"];

    // a and b change in one write; Envoy rejects the response for a's sake,
    // and so holds neither of them.
    server.update_endpoints(&[assignment("a", &[addr(2)]), assignment("b", &[addr(2)])]);
    let bad = client.recv().await;
    assert_eq!(names(&bad), ["a", "b"]);
    client.nack(&bad, &good.version_info, &all, "endpoint a is unacceptable");
    eventually("the NACK", || server.metrics.nack_count(EDS) == 1).await;

    // Once a is fixed, b goes with it: the client never took b's change.
    server.update_endpoints(&[assignment("a", &[addr(3)])]);
    let fixed = client.recv().await;
    assert_eq!(names(&fixed), ["a", "b"]);
    let b = fixed
        .resources
        .iter()
        .map(decode::<ClusterLoadAssignment>)
        .find(|assignment| assignment.cluster_name == "b");
    assert_eq!(b, Some(assignment("b", &[addr(2)])));
}

#[tokio::test]
async fn a_request_with_a_stale_nonce_is_ignored() {
    let (server, mut client, first) = acked_subscription(&["a", "c"], &["a"]).await;
    server.update_endpoints(&[assignment("a", &[addr(2)])]);
    let second = client.recv().await;

    // An answer to the first response, arriving late, asks for c as well.
    client.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        type_url: EDS.type_url().to_owned(),
        resource_names: strings(&["a", "c"]),
        response_nonce: first.nonce.clone(),
        ..DiscoveryRequest::default()
    });
    eventually("the stale request", || {
        server.metrics.stale_request_count(EDS) == 1
    })
    .await;
    assert_eq!(
        server.subscribed(EDS),
        ["a"],
        "the stale request changed nothing"
    );

    // The ACK of the current response is honoured, and asks for c.
    client.ack(&second, &["a", "c"]);
    let third = client.recv().await;
    assert_eq!(names(&third), ["c"]);
    assert_eq!(server.metrics.ack_count(EDS), 2);
}

#[tokio::test]
async fn named_subscriptions_get_only_what_they_name() {
    let server = TestServer::start().await;
    server.set_endpoints(&[
        assignment("a", &[addr(1)]),
        assignment("b", &[addr(1)]),
        assignment("c", &[addr(1)]),
    ]);
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["a", "c"]);
    let response = client.recv().await;
    assert_eq!(names(&response), ["a", "c"]);
    client.ack(&response, &["a", "c"]);
    // A change to b is not for this client; a change to c is.
    server.set_endpoints(&[
        assignment("a", &[addr(1)]),
        assignment("b", &[addr(2)]),
        assignment("c", &[addr(2)]),
    ]);
    assert_eq!(names(&client.recv().await), ["c"]);
}

#[tokio::test]
async fn an_unknown_cluster_is_answered_at_once_with_no_endpoints() {
    let server = TestServer::start().await;
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["nobody-knows"]);
    let response = client.recv().await;
    assert_eq!(response.resources.len(), 1);
    let assignment: ClusterLoadAssignment = decode(&response.resources[0]);
    assert_eq!(assignment.cluster_name, "nobody-knows");
    assert!(assignment.endpoints.is_empty());
}

#[tokio::test]
async fn wildcard_subscriptions_get_every_cluster_and_removals() {
    let server = TestServer::start().await;
    server.set_clusters(&[eds_cluster("a"), eds_cluster("b")]);
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(ResourceType::Cluster, &[]);
    let all = client.recv().await;
    assert_eq!(names(&all), ["a", "b"]);
    client.ack(&all, &[]);
    server.set_clusters(&[eds_cluster("b"), eds_cluster("c")]);
    let next = client.recv().await;
    assert_eq!(
        names(&next),
        ["b", "c"],
        "CDS is the whole state: a's absence removes it"
    );
    assert_eq!(
        server
            .subscriptions
            .wildcard_subscribers(ResourceType::Cluster),
        1
    );
}

#[tokio::test]
async fn an_endpoint_change_sends_only_the_clusters_that_changed() {
    let server = TestServer::start().await;
    let names_all: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let all: Vec<ClusterLoadAssignment> = names_all
        .iter()
        .map(|n| assignment(n, &[addr(1)]))
        .collect();
    server.set_endpoints(&all);
    let refs: Vec<&str> = names_all.iter().map(String::as_str).collect();
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &refs);
    let initial = client.recv().await;
    assert_eq!(initial.resources.len(), 100);
    client.ack(&initial, &refs);
    let pushed_before = server.metrics.pushed_resource_count(EDS);
    server.update_endpoints(&[assignment("c42", &[addr(2)])]);
    let update = client.recv().await;
    assert_eq!(names(&update), ["c42"]);
    assert_eq!(server.metrics.pushed_resource_count(EDS) - pushed_before, 1);
}

#[tokio::test]
async fn ads_pushes_clusters_then_endpoints_then_listeners_then_routes() {
    let server = TestServer::start().await;
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    // Subscribe in the reverse order; nothing is set yet except endpoints'
    // stand-in, so only EDS answers at first.
    client.subscribe(ResourceType::Route, &["r"]);
    client.subscribe(ResourceType::Listener, &[]);
    client.subscribe(EDS, &["a"]);
    client.subscribe(ResourceType::Cluster, &[]);
    let stand_in = client.recv().await;
    assert_eq!(stand_in.type_url, EDS.type_url());
    client.ack(&stand_in, &["a"]);
    eventually("the ACK", || server.metrics.ack_count(EDS) == 1).await;

    let resources = |ty, items: Vec<Resource>| (ty, items);
    server
        .cache
        .set_snapshot(
            KEY,
            [
                resources(
                    ResourceType::Route,
                    vec![Resource::encode(&route("r")).expect("encodes")],
                ),
                resources(
                    ResourceType::Listener,
                    vec![Resource::encode(&listener("l")).expect("encodes")],
                ),
                resources(
                    EDS,
                    vec![Resource::encode(&assignment("a", &[addr(1)])).expect("encodes")],
                ),
                resources(
                    ResourceType::Cluster,
                    vec![Resource::encode(&eds_cluster("a")).expect("encodes")],
                ),
            ],
        )
        .expect("set");
    let mut order = Vec::new();
    for _ in 0..4 {
        let response = client.recv().await;
        order.push(ResourceType::from_type_url(&response.type_url).expect("known type"));
    }
    assert_eq!(
        order,
        [
            ResourceType::Cluster,
            EDS,
            ResourceType::Listener,
            ResourceType::Route
        ]
    );
}

#[tokio::test]
async fn a_client_resuming_after_a_restart_is_not_sent_an_empty_config() {
    // The first server life: the client gets a's endpoints and ACKs them.
    let (server, _client, before) = acked_subscription(&["a"], &["a"]).await;
    let at = server.addr;
    server.stop().await.expect("clean stop");

    // A new server: empty cache at first. The client resumes at its version.
    let server = TestServer::restart_at(at).await;
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.send(DiscoveryRequest {
        version_info: before.version_info.clone(),
        node: Some(node("envoy-1")),
        type_url: EDS.type_url().to_owned(),
        resource_names: strings(&["a"]),
        ..DiscoveryRequest::default()
    });
    eventually("the resumed subscription", || {
        server.subscriptions.names(EDS).contains("a")
    })
    .await;
    // The application restores the same endpoints: the client has them.
    server.set_endpoints(&[assignment("a", &[addr(1)])]);
    // Then they really change: that is the first thing the client hears.
    server.set_endpoints(&[assignment("a", &[addr(2)])]);
    let first = client.recv().await;
    assert_eq!(names(&first), ["a"]);
    assert_eq!(
        decode::<ClusterLoadAssignment>(&first.resources[0]),
        assignment("a", &[addr(2)]),
        "neither an empty set nor a copy of what the client has"
    );
}

#[tokio::test]
async fn the_per_type_eds_service_serves_endpoints_and_refuses_other_types() {
    let server = TestServer::start().await;
    server.set_endpoints(&[assignment("a", &[addr(1)])]);
    let mut client = SotwClient::eds(&server.url(), "envoy-1").await;
    client.send(DiscoveryRequest {
        node: Some(node("envoy-1")),
        resource_names: strings(&["a"]),
        ..DiscoveryRequest::default()
    });
    let response = client.recv().await;
    assert_eq!(response.type_url, EDS.type_url());
    assert_eq!(names(&response), ["a"]);
    assert_eq!(server.metrics.stream_count("eds", "sotw"), 1);

    let mut wrong = SotwClient::eds(&server.url(), "envoy-2").await;
    wrong.subscribe(ResourceType::Cluster, &[]);
    assert_eq!(wrong.ended().await.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn subscriptions_follow_streams_and_vanish_when_they_disconnect() {
    let server = TestServer::start().await;
    let mut one = SotwClient::ads(&server.url(), "envoy-1").await;
    let mut two = SotwClient::ads(&server.url(), "envoy-2").await;
    one.subscribe(EDS, &["a", "b"]);
    two.subscribe(EDS, &["b", "c"]);
    eventually("both subscriptions", || {
        server.subscriptions.names(EDS).len() == 3
    })
    .await;
    let response = one.recv().await;
    one.ack(&response, &["a"]);
    eventually("a narrowed subscription", || {
        server.subscribed(EDS) == ["a", "b", "c"] && server.metrics.ack_count(EDS) == 1
    })
    .await;
    let _ = two.recv().await;
    drop(two);
    eventually("the disconnect", || server.subscribed(EDS) == ["a"]).await;
    eventually("the stream gauge", || {
        server.metrics.stream_count("ads", "sotw") == 1
    })
    .await;
}

#[tokio::test]
async fn the_first_request_must_name_the_node() {
    let server = TestServer::start().await;
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.send(DiscoveryRequest {
        type_url: EDS.type_url().to_owned(),
        resource_names: strings(&["a"]),
        ..DiscoveryRequest::default()
    });
    assert_eq!(client.ended().await.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn pushes_and_their_latency_are_exported() {
    let (server, mut client, _) = acked_subscription(&["a"], &["a"]).await;
    server.set_endpoints(&[assignment("a", &[addr(2)])]);
    let _ = client.recv().await;
    let text = server.metrics_text();
    assert!(
        text.contains("xds_pushes_total{type=\"endpoint\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("xds_push_latency_seconds_count{type=\"endpoint\"} 1"),
        "only the push after a write is a latency sample: {text}"
    );
    assert!(
        text.contains("xds_streams{service=\"ads\",protocol=\"sotw\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("xds_type_streams{type=\"endpoint\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("xds_snapshot_generation{type=\"endpoint\"}"),
        "{text}"
    );
}

/// What a make-before-break writer waits on: a write that touches none
/// of the names a stream subscribes to sends it nothing, yet its status
/// must say it has caught up with that write; a write it must send shows
/// as caught up but unacknowledged until the ACK.
#[tokio::test]
async fn the_status_says_when_a_stream_has_caught_up_with_the_cache() {
    let (server, mut client, first) = acked_subscription(&["a", "b"], &["a"]).await;
    let current = || server.cache.snapshot(KEY).unwrap().version(EDS).to_string();
    let settled = || {
        let status = server.type_status("envoy-1", EDS);
        status.caught_up_version == Some(current()) && status.acked_version == status.sent_version
    };
    eventually("the first response acknowledged", settled).await;

    let mut changes = server.clients.changes();
    server.update_endpoints(&[assignment("b", &[addr(2)])]);
    tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed())
        .await
        .expect("the stream's status changes after a write");
    eventually("caught up with a write it had nothing to send for", settled).await;
    assert_eq!(
        server.type_status("envoy-1", EDS).sent_version.as_deref(),
        Some(first.version_info.as_str()),
        "nothing was sent for a name the stream does not subscribe to"
    );

    server.update_endpoints(&[assignment("a", &[addr(3)])]);
    let update = client.recv().await;
    let status = server.type_status("envoy-1", EDS);
    assert_eq!(status.caught_up_version, Some(current()));
    assert_ne!(
        status.acked_version, status.sent_version,
        "not yet acknowledged"
    );
    client.ack(&update, &["a"]);
    eventually("the update acknowledged", settled).await;
}

/// A stand-in that falls due while the client has yet to answer a push
/// waits for that answer, and the answer is still read: the stream must
/// not spin on the due stand-in (it once did, never reading the ACK, so
/// Envoy with thousands of clusters stopped receiving endpoints).
#[tokio::test]
async fn a_stand_in_due_during_an_unanswered_push_follows_the_ack() {
    let server = TestServer::start().await;
    server.set_endpoints(&[assignment("a", &[addr(1)])]);
    let mut client = SotwClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["a", "b"]);
    let first = client.recv().await;
    assert_eq!(names(&first), ["a"]);
    // Past the stand-in delay (2 s) for `b` before answering.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    client.ack(&first, &["a", "b"]);
    eventually("the ACK", || server.metrics.ack_count(EDS) == 1).await;
    let stand_in = client.recv().await;
    assert_eq!(names(&stand_in), ["b"]);
    let decoded =
        <ClusterLoadAssignment as prost::Message>::decode(stand_in.resources[0].value.as_slice())
            .expect("an assignment");
    assert!(decoded.endpoints.is_empty(), "{decoded:?}");
}

//! The incremental (delta) protocol, spoken by a raw gRPC client.

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use xds_core::{Resource, ResourceType};

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;

#[tokio::test]
async fn responses_carry_nonces_and_acks_advance_the_recorded_version() {
    let server = TestServer::start().await;
    server.set_clusters(&[eds_cluster("a")]);
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(CDS, &["*"]);
    let first = client.recv().await;
    assert!(!first.nonce.is_empty());
    assert_eq!(delta_names(&first), ["a"]);
    assert_eq!(
        first.resources[0].version.len(),
        16,
        "a per-resource version"
    );
    client.ack(&first);
    eventually("the ACK", || server.metrics.ack_count(CDS) == 1).await;
    let status = server.type_status("envoy-1", CDS);
    assert_eq!(
        status.acked_version.as_deref(),
        Some(first.system_version_info.as_str())
    );

    server.set_clusters(&[eds_cluster("a"), eds_cluster("b")]);
    let second = client.recv().await;
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(delta_names(&second), ["b"], "only what changed");
}

#[tokio::test]
async fn removed_resources_are_announced() {
    let server = TestServer::start().await;
    server.set_clusters(&[eds_cluster("a"), eds_cluster("b")]);
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(CDS, &[]);
    let first = client.recv().await;
    assert_eq!(delta_names(&first), ["a", "b"]);
    client.ack(&first);
    server.set_clusters(&[eds_cluster("a")]);
    let removal = client.recv().await;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, ["b"]);
}

#[tokio::test]
async fn a_named_resource_that_does_not_exist_is_reported_removed() {
    let server = TestServer::start().await;
    server.set_routes(&[route("exists")]);
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(ResourceType::Route, &["exists", "missing"]);
    let response = client.recv().await;
    assert_eq!(delta_names(&response), ["exists"]);
    assert_eq!(response.removed_resources, ["missing"]);
}

#[tokio::test]
async fn a_nack_is_counted_and_not_answered_with_the_same_resource() {
    let server = TestServer::start().await;
    server.set_endpoints(&[assignment("a", &[addr(1)]), assignment("b", &[addr(1)])]);
    let mut client = DeltaClient::eds(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["a", "b"]);
    let first = client.recv().await;
    client.ack(&first);
    server.update_endpoints(&[assignment("a", &[addr(2)])]);
    let bad = client.recv().await;
    client.nack(&bad, "a is rejected");
    eventually("the NACK", || server.metrics.nack_count(EDS) == 1).await;
    let status = server.type_status("envoy-1", EDS);
    assert_eq!(
        status.last_rejection.as_ref().map(|r| r.message.as_str()),
        Some("a is rejected")
    );
    server.update_endpoints(&[assignment("b", &[addr(3)])]);
    assert_eq!(delta_names(&client.recv().await), ["b"]);
}

#[tokio::test]
async fn a_stale_nonce_is_ignored_but_its_subscription_change_is_kept() {
    let server = TestServer::start().await;
    server.set_endpoints(&[assignment("a", &[addr(1)]), assignment("b", &[addr(1)])]);
    let mut client = DeltaClient::eds(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["a"]);
    let first = client.recv().await;
    client.ack(&first);
    eventually("the ACK", || server.metrics.ack_count(EDS) == 1).await;
    // The same nonce again: already answered, hence stale.
    client.send(DeltaDiscoveryRequest {
        type_url: EDS.type_url().to_owned(),
        response_nonce: first.nonce.clone(),
        resource_names_subscribe: strings(&["b"]),
        ..DeltaDiscoveryRequest::default()
    });
    let response = client.recv().await;
    assert_eq!(
        delta_names(&response),
        ["b"],
        "the subscription still counts"
    );
    assert_eq!(server.metrics.stale_request_count(EDS), 1);
    assert_eq!(
        server.metrics.ack_count(EDS),
        1,
        "the stale ACK is not an ACK"
    );
}

#[tokio::test]
async fn subscribing_again_to_a_held_resource_resends_it() {
    let server = TestServer::start().await;
    server.set_routes(&[route("r")]);
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(ResourceType::Route, &["r"]);
    let first = client.recv().await;
    assert_eq!(delta_names(&first), ["r"]);
    client.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Route.type_url().to_owned(),
        response_nonce: first.nonce.clone(),
        resource_names_subscribe: strings(&["r"]),
        ..DeltaDiscoveryRequest::default()
    });
    let again = client.recv().await;
    assert_eq!(delta_names(&again), ["r"]);
    assert_eq!(again.resources[0].version, first.resources[0].version);
}

#[tokio::test]
async fn unknown_clusters_get_no_endpoints_and_unsubscribing_releases_them() {
    let server = TestServer::start().await;
    let mut client = DeltaClient::eds(&server.url(), "envoy-1").await;
    client.subscribe(EDS, &["ghost"]);
    let response = client.recv().await;
    let resource = response.resources[0].resource.as_ref().expect("a resource");
    let assignment: ClusterLoadAssignment = decode(resource);
    assert_eq!(assignment.cluster_name, "ghost");
    assert!(assignment.endpoints.is_empty());
    assert!(server.subscriptions.names(EDS).contains("ghost"));
    client.send(DeltaDiscoveryRequest {
        type_url: EDS.type_url().to_owned(),
        response_nonce: response.nonce.clone(),
        resource_names_unsubscribe: strings(&["ghost"]),
        ..DeltaDiscoveryRequest::default()
    });
    eventually("the unsubscription", || {
        server.subscriptions.names(EDS).is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_reconnecting_client_is_sent_only_what_differs_from_what_it_holds() {
    let server = TestServer::start().await;
    server.set_clusters(&[eds_cluster("a"), eds_cluster("b")]);
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(CDS, &["*"]);
    let first = client.recv().await;
    client.ack(&first);
    let held: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let at = server.addr;
    server.stop().await.expect("clean stop");

    let server = TestServer::restart_at(at).await;
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.send(DeltaDiscoveryRequest {
        node: Some(node("envoy-1")),
        type_url: CDS.type_url().to_owned(),
        resource_names_subscribe: strings(&["*"]),
        initial_resource_versions: held,
        ..DeltaDiscoveryRequest::default()
    });
    eventually("the resumed stream", || {
        server.subscriptions.wildcard_subscribers(CDS) == 1
    })
    .await;
    // While the cache is empty, nothing is removed; when it is refilled,
    // only the cluster that differs is sent.
    server.set_clusters(&[eds_cluster("a"), eds_cluster("c")]);
    let first = client.recv().await;
    assert_eq!(delta_names(&first), ["c"]);
    assert_eq!(first.removed_resources, ["b"]);
}

#[tokio::test]
async fn delta_ads_pushes_in_dependency_order() {
    let server = TestServer::start().await;
    server.set_routes(&[]);
    let mut client = DeltaClient::ads(&server.url(), "envoy-1").await;
    client.subscribe(ResourceType::Route, &["r"]);
    client.subscribe(ResourceType::Listener, &["*"]);
    client.subscribe(CDS, &["*"]);
    // Only the route's "does not exist" is due so far.
    let nothing = client.recv().await;
    assert_eq!(nothing.removed_resources, ["r"]);
    client.ack(&nothing);
    server
        .cache
        .set_snapshot(
            KEY,
            [
                (
                    ResourceType::Route,
                    vec![Resource::encode(&route("r")).expect("encodes")],
                ),
                (
                    ResourceType::Listener,
                    vec![Resource::encode(&listener("l")).expect("encodes")],
                ),
                (
                    CDS,
                    vec![Resource::encode(&eds_cluster("a")).expect("encodes")],
                ),
            ],
        )
        .expect("set");
    let mut order = Vec::new();
    for _ in 0..3 {
        let response = client.recv().await;
        order.push(ResourceType::from_type_url(&response.type_url).expect("known"));
        client.ack(&response);
    }
    assert_eq!(order, [CDS, ResourceType::Listener, ResourceType::Route]);
}

//! Against the real Envoy: configuration arrives, updates apply without a
//! restart, bad updates are rejected while the last good config keeps
//! serving, restarts of this server go unnoticed by traffic, and SDS
//! certificates reach TLS listeners and rotate.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, DataSource, config_source, data_source,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::{Message, Name};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use test_support::bootstrap::{EdsTransport, GatewayBootstrap, control_plane_cluster};
use test_support::{Backend, Envoy, TestCa, free_port, http_get, https_get};
use xds_core::{Resource, ResourceType};

const EDS: ResourceType = ResourceType::Endpoint;
/// Envoy's reconnect backoff and config application are eventually
/// consistent; this bounds the wait, it does not measure anything.
const SETTLE: Duration = Duration::from_secs(30);

fn gateway(node_id: &str, xds: SocketAddr, transport: EdsTransport, listener_port: u16) -> String {
    GatewayBootstrap {
        node_id: node_id.to_owned(),
        xds,
        transport,
        clusters: vec!["web".to_owned()],
        listener_port,
        retries: false,
    }
    .yaml()
}

/// Probes until `probe` yields something, for as long as Envoy may take to settle.
async fn settled<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    probe: impl FnMut() -> Fut,
) -> test_support::Result<T> {
    test_support::eventually(what, SETTLE, Duration::from_millis(50), probe).await
}

/// Waits until a request through Envoy is answered by `backend`.
async fn eventually_served_by(listener: SocketAddr, backend: &str) {
    settled(&format!("a request served by {backend}"), || async move {
        http_get(listener, "/")
            .await
            .ok()
            .filter(|r| r.status == 200 && r.body == backend)
    })
    .await
    .expect("Envoy routes to the backend");
}

/// Waits until Envoy's stat `name` is `at_least` or more.
async fn stat_at_least(envoy: &Envoy, name: &str, at_least: u64) {
    stat_becomes(envoy, name, |value| value >= at_least)
        .await
        .expect("Envoy reports the stat");
}

async fn stat_becomes(
    envoy: &Envoy,
    name: &str,
    wanted: impl Fn(u64) -> bool + Copy,
) -> test_support::Result<u64> {
    settled(&format!("{name} as wanted"), || async move {
        envoy
            .stat(name)
            .await
            .ok()
            .flatten()
            .filter(|value| wanted(*value))
    })
    .await
}

/// A server, two backends and an Envoy (node `node_id`) whose cluster
/// `web` is backend-a, already routing requests to it.
struct Gateway {
    server: TestServer,
    a: Backend,
    b: Backend,
    envoy: Envoy,
    listener: SocketAddr,
}

impl Gateway {
    async fn start(node_id: &str, transport: EdsTransport) -> Self {
        let server = TestServer::start().await;
        let a = Backend::start("backend-a").await.expect("backend a");
        let b = Backend::start("backend-b").await.expect("backend b");
        server.set_endpoints(&[assignment("web", &[a.addr()])]);
        let port = free_port();
        let envoy = Envoy::start(&gateway(node_id, server.addr, transport, port))
            .await
            .expect("Envoy starts and initialises");
        let listener = addr(port);
        eventually_served_by(listener, "backend-a").await;
        Self {
            server,
            a,
            b,
            envoy,
            listener,
        }
    }
}

async fn endpoints_are_served_and_updated(transport: EdsTransport, service: &'static str) {
    let gw = Gateway::start("gw-1", transport).await;
    let streams = gw.server.clients.of_node("gw-1");
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].service, service);

    gw.server
        .set_endpoints(&[assignment("web", &[gw.b.addr()])]);
    eventually_served_by(gw.listener, "backend-b").await;
    stat_at_least(&gw.envoy, "cluster.web.update_success", 2).await;
    assert_eq!(
        gw.envoy
            .stat("cluster.web.update_rejected")
            .await
            .expect("stats"),
        Some(0)
    );
}

#[tokio::test]
async fn envoy_gets_endpoints_over_ads_and_applies_updates_live() {
    endpoints_are_served_and_updated(EdsTransport::Ads, "ads").await;
}

#[tokio::test]
async fn envoy_gets_endpoints_from_the_eds_service_and_applies_updates_live() {
    endpoints_are_served_and_updated(EdsTransport::Grpc, "eds").await;
}

#[tokio::test]
async fn an_update_envoy_rejects_is_nacked_and_the_last_good_config_keeps_serving() {
    let gw = Gateway::start("gw-nack", EdsTransport::Ads).await;

    // A load balancing weight of 0 violates Envoy's validation (>= 1).
    let mut invalid = assignment("web", &[gw.b.addr()]);
    invalid.endpoints[0].lb_endpoints[0].load_balancing_weight = Some(UInt32Value { value: 0 });
    gw.server.set_endpoints(&[invalid]);
    eventually("the NACK", || gw.server.metrics.nack_count(EDS) == 1).await;
    stat_at_least(&gw.envoy, "cluster.web.update_rejected", 1).await;
    let status = gw.server.type_status("gw-nack", EDS);
    let rejection = status.last_rejection.as_ref().expect("recorded");
    assert!(!rejection.message.is_empty(), "Envoy's explanation is kept");
    for _ in 0..5 {
        let response = http_get(gw.listener, "/").await.expect("served");
        assert_eq!(
            response.body, "backend-a",
            "the previous endpoints still serve"
        );
    }
    assert_eq!(
        gw.server.metrics.nack_count(EDS),
        1,
        "the rejected update is not re-sent"
    );

    gw.server
        .set_endpoints(&[assignment("web", &[gw.b.addr()])]);
    eventually_served_by(gw.listener, "backend-b").await;
    assert_eq!(gw.server.metrics.nack_count(EDS), 1);
}

#[tokio::test]
async fn envoy_keeps_its_endpoints_while_the_server_restarts_and_resumes_after() {
    let Gateway {
        server,
        a,
        b,
        envoy,
        listener,
    } = Gateway::start("gw-restart", EdsTransport::Ads).await;
    stat_at_least(&envoy, "control_plane.connected_state", 1).await;

    let at = server.addr;
    server.stop().await.expect("graceful stop");
    stat_becomes(&envoy, "control_plane.connected_state", |value| value == 0)
        .await
        .expect("disconnected");
    let response = http_get(listener, "/").await.expect("served");
    assert_eq!(
        response.body, "backend-a",
        "serving while the control plane is down"
    );

    // A new server process: its cache starts empty.
    let server = TestServer::restart_at(at).await;
    stat_at_least(&envoy, "control_plane.connected_state", 1).await;
    eventually("the resumed EDS subscription", || {
        server.subscriptions.names(EDS).contains("web")
    })
    .await;
    assert_eq!(
        server.metrics.push_count(EDS),
        0,
        "no empty stand-in for held endpoints"
    );
    let response = http_get(listener, "/").await.expect("served");
    assert_eq!(response.body, "backend-a");

    // The application refills the cache with what Envoy has: nothing to send.
    server.set_endpoints(&[assignment("web", &[a.addr()])]);
    // A real change goes through the new server.
    server.set_endpoints(&[assignment("web", &[b.addr()])]);
    eventually_served_by(listener, "backend-b").await;
    assert_eq!(
        server.metrics.push_count(EDS),
        1,
        "the refill itself was not re-sent"
    );
    assert_eq!(
        envoy
            .stat("cluster.web.update_rejected")
            .await
            .expect("stats"),
        Some(0)
    );
}

// --- A fully dynamic Envoy: CDS, EDS, LDS, RDS over ADS. ---

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn http_listener(port: u16, route_config_name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "ingress".to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config_name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..HttpFilter::default()
        }],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: "ingress".to_owned(),
        address: Some(socket_address("127.0.0.1", u32::from(port))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn routes_to(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "all".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..RouteMatch::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_owned(),
                    )),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

fn dynamic_bootstrap(node_id: &str, xds: SocketAddr, api_type: &str) -> String {
    format!(
        r#"node: {{ id: {node_id}, cluster: test }}
dynamic_resources:
  ads_config: {{ api_type: {api_type}, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
  cds_config: {{ resource_api_version: V3, ads: {{}} }}
  lds_config: {{ resource_api_version: V3, ads: {{}} }}
static_resources:
  clusters:
{xds_cluster}"#,
        xds_cluster = control_plane_cluster("xds", xds, "")
    )
}

fn full_snapshot(
    port: u16,
    endpoints: &ClusterLoadAssignment,
) -> Vec<(ResourceType, Vec<Resource>)> {
    let encode = |r: Result<Resource, _>| vec![r.expect("encodes")];
    vec![
        (
            ResourceType::Cluster,
            encode(Resource::encode(&eds_cluster("web"))),
        ),
        (EDS, encode(Resource::encode(endpoints))),
        (
            ResourceType::Listener,
            encode(Resource::encode(&http_listener(port, "routes"))),
        ),
        (
            ResourceType::Route,
            encode(Resource::encode(&routes_to("routes", "web"))),
        ),
    ]
}

async fn fully_dynamic_envoy(api_type: &str, node_id: &str, protocol: &str) {
    let server = TestServer::start().await;
    let a = Backend::start("backend-a").await.expect("backend a");
    let b = Backend::start("backend-b").await.expect("backend b");
    let port = free_port();
    server
        .cache
        .set_snapshot(KEY, full_snapshot(port, &assignment("web", &[a.addr()])))
        .expect("set");
    let envoy = Envoy::start(&dynamic_bootstrap(node_id, server.addr, api_type))
        .await
        .expect("Envoy initialises from CDS, EDS, LDS and RDS");
    let listener = addr(port);
    eventually_served_by(listener, "backend-a").await;
    let streams = server.clients.of_node(node_id);
    assert_eq!(streams.len(), 1, "one ADS stream carries every type");
    assert_eq!((streams[0].service, streams[0].protocol), ("ads", protocol));
    assert_eq!(streams[0].types.len(), 4);

    // A second cluster and a route to it, in one snapshot.
    let mut snapshot = full_snapshot(port, &assignment("web", &[a.addr()]));
    snapshot[0]
        .1
        .push(Resource::encode(&eds_cluster("next")).expect("encodes"));
    snapshot[1]
        .1
        .push(Resource::encode(&assignment("next", &[b.addr()])).expect("encodes"));
    snapshot[3] = (
        ResourceType::Route,
        vec![Resource::encode(&routes_to("routes", "next")).expect("encodes")],
    );
    server.cache.set_snapshot(KEY, snapshot).expect("set");
    eventually_served_by(listener, "backend-b").await;
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
        "cluster.web.update_rejected",
        "cluster.next.update_rejected",
    ] {
        assert_eq!(envoy.stat(stat).await.expect("stats"), Some(0), "{stat}");
    }
    assert_eq!(server.metrics.nack_count(ResourceType::Cluster), 0);
    assert_eq!(server.metrics.nack_count(ResourceType::Route), 0);
}

#[tokio::test]
async fn a_fully_dynamic_envoy_is_configured_over_sotw_ads() {
    fully_dynamic_envoy("GRPC", "dynamic-sotw", "sotw").await;
}

#[tokio::test]
async fn a_fully_dynamic_envoy_is_configured_over_delta_ads() {
    fully_dynamic_envoy("DELTA_GRPC", "dynamic-delta", "delta").await;
}

// --- SDS: certificates for TLS listeners. ---

fn tls_secret(name: &str, leaf: &test_support::LeafPem) -> Secret {
    let inline = |pem: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_owned())),
        ..DataSource::default()
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&leaf.cert_pem)),
            private_key: Some(inline(&leaf.key_pem)),
            ..TlsCertificate::default()
        })),
    }
}

fn tls_listener_yaml(name: &str, port: u16, sds_config: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: server-cert
              sds_config: {sds_config}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: secured }} }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .as_ref()
        .to_vec()
}

/// Waits until the TLS listener at `port` presents `expected`.
async fn eventually_presents(port: u16, ca: &TestCa, expected: &[u8]) {
    settled(
        "the TLS listener to present the certificate",
        || async move {
            let (response, presented) = https_get(addr(port), "localhost", ca.cert_pem(), "/")
                .await
                .ok()?;
            (response.status == 200 && response.body == "secured" && presented == expected)
                .then_some(())
        },
    )
    .await
    .expect("the certificate is served");
}

#[tokio::test]
async fn sds_delivers_certificates_to_tls_listeners_and_rotates_them_live() {
    let server = TestServer::start().await;
    let ca = TestCa::new("sds test ca").expect("ca");
    let first = ca.leaf(&["localhost"]).expect("leaf");
    server
        .cache
        .set_secrets(KEY, &[tls_secret("server-cert", &first)])
        .expect("set");
    let (via_ads, via_sds) = (free_port(), free_port());
    let sds_service = "{ resource_api_version: V3, api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] } }";
    let bootstrap = format!(
        r#"node: {{ id: sds-test, cluster: test }}
dynamic_resources:
  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
static_resources:
  listeners:
{ads_listener}{sds_listener}  clusters:
{xds_cluster}"#,
        ads_listener =
            tls_listener_yaml("via_ads", via_ads, "{ resource_api_version: V3, ads: {} }"),
        sds_listener = tls_listener_yaml("via_sds", via_sds, sds_service),
        xds_cluster = control_plane_cluster("xds", server.addr, ""),
    );
    let envoy = Envoy::start(&bootstrap).await.expect("Envoy starts");
    let pid = envoy.pid();
    for port in [via_ads, via_sds] {
        eventually_presents(port, &ca, &der_of(&first.cert_pem)).await;
    }
    let services: Vec<&str> = server
        .clients
        .of_node("sds-test")
        .iter()
        .map(|s| s.service)
        .collect();
    assert!(
        services.contains(&"ads") && services.contains(&"sds"),
        "{services:?}"
    );

    let rotated = ca.leaf(&["localhost"]).expect("leaf");
    assert_ne!(der_of(&rotated.cert_pem), der_of(&first.cert_pem));
    server
        .cache
        .set_secrets(KEY, &[tls_secret("server-cert", &rotated)])
        .expect("set");
    for port in [via_ads, via_sds] {
        eventually_presents(port, &ca, &der_of(&rotated.cert_pem)).await;
    }
    assert_eq!(envoy.pid(), pid, "no restart");
    assert_eq!(server.metrics.nack_count(ResourceType::Secret), 0);
}

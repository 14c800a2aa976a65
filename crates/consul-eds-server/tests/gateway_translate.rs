//! The gateway's translated resources against the real Envoy: a bootstrap
//! holding only the ADS cluster receives clusters, endpoints, listeners and
//! routes, accepts them all, and routes requests by host and path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use consul_eds_server::gateway::clusters::EncodedClusters;
use consul_eds_server::gateway::translate::{TranslateSettings, resources};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use route_tags::{
    Backend, ClusterDecl, ClusterOptions, HostPattern, ListenerSpec, ListenerTable, PathMatch,
    Rewrite, RouteAction, RouteOptions, RouteTable, TableRoute, VirtualHostTable,
};
use test_support::bootstrap::control_plane_cluster;
use test_support::{Envoy, free_port, http_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use xds_core::{Listen, Resource, ResourceType, SharedKey, SnapshotCache, XdsServer};

const KEY: &str = "gateways";
const SETTLE: Duration = Duration::from_secs(30);

/// A backend answering `<name> <path>`, so a test sees where a request
/// went and with which path.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("?").to_owned();
                let body = format!("{name} {path}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

fn assignment(cluster: &str, at: SocketAddr) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: at.ip().to_string(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                u32::from(at.port()),
                            )),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

fn forward(service: &str, name: &str, path: PathMatch, options: RouteOptions) -> TableRoute {
    TableRoute {
        service: service.to_owned(),
        route_name: name.to_owned(),
        path,
        options,
        action: RouteAction::Forward {
            backends: vec![Backend {
                service: service.to_owned(),
                canary: false,
                weight: 1,
            }],
        },
        from_any_host: false,
    }
}

/// shop.example.com: `/api` (stripped) to `api`, `/` to `shop`;
/// secure.example.com is a TLS host, so the plain listener redirects it.
fn table(port: u16) -> RouteTable {
    let prefix = |p: &str| PathMatch::Prefix(p.to_owned());
    RouteTable {
        listeners: vec![ListenerTable {
            listener: ListenerSpec {
                name: "web".to_owned(),
                host: "127.0.0.1".to_owned(),
                port,
                tls: false,
            },
            virtual_hosts: vec![
                VirtualHostTable {
                    host: HostPattern::Exact("secure.example.com".to_owned()),
                    tls: true,
                    routes: vec![TableRoute {
                        action: RouteAction::RedirectToHttps,
                        ..forward("shop", "secure", prefix("/"), RouteOptions::default())
                    }],
                },
                VirtualHostTable {
                    host: HostPattern::Exact("shop.example.com".to_owned()),
                    tls: false,
                    routes: vec![
                        forward(
                            "api",
                            "shop.example.com/api",
                            prefix("/api"),
                            RouteOptions {
                                rewrite: Some(Rewrite::Strip("/api".to_owned())),
                                ..RouteOptions::default()
                            },
                        ),
                        forward(
                            "shop",
                            "shop.example.com/",
                            prefix("/"),
                            RouteOptions::default(),
                        ),
                    ],
                },
            ],
        }],
        clusters: ["api", "shop"]
            .into_iter()
            .map(|service| ClusterDecl {
                service: service.to_owned(),
                options: ClusterOptions::default(),
                canary: false,
            })
            .collect(),
        problems: vec![],
        ..RouteTable::default()
    }
}

fn bootstrap(xds: SocketAddr) -> String {
    format!(
        r#"node: {{ id: gateway-translate, cluster: test }}
dynamic_resources:
  ads_config: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
  cds_config: {{ resource_api_version: V3, ads: {{}} }}
  lds_config: {{ resource_api_version: V3, ads: {{}} }}
static_resources:
  clusters:
{xds_cluster}"#,
        xds_cluster = control_plane_cluster("xds", xds, ""),
    )
}

async fn get(listener: SocketAddr, host: &str, path: &str) -> (u16, String, Option<String>) {
    let response = http_request("GET", listener, path, &[("host", host)], Vec::new())
        .await
        .expect("Envoy answers");
    let location = response
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status, response.body, location)
}

#[tokio::test]
async fn envoy_accepts_the_translated_gateway_and_routes_by_host_and_path() {
    let api = echo_backend("api").await;
    let shop = echo_backend("shop").await;
    let port = free_port();
    let table = table(port);
    let built = resources(&table, &TranslateSettings::default()).expect("encodes");
    let clusters = EncodedClusters::default()
        .rebuild(&table)
        .expect("clusters encode");

    let cache = SnapshotCache::new(SharedKey(KEY.to_owned()));
    let encode = |r: Result<Resource, _>| r.expect("encodes");
    let endpoints: BTreeMap<&str, SocketAddr> = [("api", api), ("shop", shop)].into();
    cache
        .set_snapshot(
            KEY,
            vec![
                (
                    ResourceType::Cluster,
                    clusters.iter().map(|(_, c)| c.clone()).collect(),
                ),
                (
                    ResourceType::Endpoint,
                    endpoints
                        .iter()
                        .map(|(name, at)| encode(Resource::encode(&assignment(name, *at))))
                        .collect(),
                ),
                (
                    ResourceType::Listener,
                    built
                        .listeners
                        .iter()
                        .map(|l| encode(Resource::encode(l)))
                        .collect(),
                ),
                (ResourceType::Route, built.routes.clone()),
            ],
        )
        .expect("set");
    let bound = XdsServer::new(cache.clone())
        .bind(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("binds");
    let xds = bound.local_addr().expect("a TCP address");
    let server = tokio::spawn(bound.serve(std::future::pending()));

    let envoy = Envoy::start(&bootstrap(xds))
        .await
        .expect("Envoy initialises from the gateway's resources");
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    test_support::eventually(
        "the gateway to route",
        SETTLE,
        Duration::from_millis(50),
        || async {
            http_request(
                "GET",
                listener,
                "/",
                &[("host", "shop.example.com")],
                Vec::new(),
            )
            .await
            .ok()
            .filter(|r| r.status == 200)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));

    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
        "http.web.rds.web.update_rejected",
        "cluster.api.update_rejected",
        "cluster.shop.update_rejected",
    ] {
        assert_eq!(envoy.stat(stat).await.expect("stats"), Some(0), "{stat}");
    }
    let dump = envoy.admin_get("/config_dump").await.expect("config dump");
    assert!(dump.contains("\"name\": \"web\""), "the listener is active");
    assert!(dump.contains("shop.example.com"), "the routes are loaded");

    assert_eq!(
        get(listener, "shop.example.com", "/api/items?x=1").await.1,
        "api /items?x=1",
        "strip removes /api and keeps the query"
    );
    assert_eq!(get(listener, "shop.example.com", "/api").await.1, "api /");
    assert_eq!(
        get(listener, "shop.example.com", "/apix").await.1,
        "shop /apix",
        "a prefix matches whole segments only"
    );
    assert_eq!(
        get(listener, "shop.example.com:8080", "/cart").await.1,
        "shop /cart",
        "the port in Host does not matter"
    );
    let (status, _, location) = get(listener, "secure.example.com", "/pay?id=7").await;
    assert_eq!(status, 308, "a TLS host on a plain listener redirects");
    let location = location.expect("a location");
    assert!(
        location.starts_with("https://secure.example.com") && location.ends_with("/pay?id=7"),
        "{location}"
    );
    assert_eq!(get(listener, "other.example.com", "/").await.0, 404);

    drop(envoy);
    server.abort();
}

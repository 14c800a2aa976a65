//! Envoy bootstraps for tests: a gateway whose clusters come from EDS, and a
//! TLS listener whose certificate comes from SDS.
//!
//! The shape follows the verified rules for Envoy 1.40: the xDS cluster
//! speaks HTTP/2 (`typed_extension_protocol_options`), `eds_config` sits in
//! `eds_cluster_config`, and every config source says
//! `resource_api_version: V3` / `transport_api_version: V3`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How Envoy asks for endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdsTransport {
    /// The plain EDS service (`api_type: GRPC`), as the seed's bootstraps do.
    /// Envoy opens one stream per cluster: beyond about a thousand clusters
    /// its xDS cluster's default circuit breaker refuses the rest; use ADS.
    Grpc,
    /// Over the aggregated discovery service.
    Ads,
}

/// An HTTP gateway: one listener, one EDS cluster per name, routed by Host.
#[derive(Debug, Clone)]
pub struct GatewayBootstrap {
    pub node_id: String,
    pub xds: SocketAddr,
    pub transport: EdsTransport,
    /// EDS clusters; requests go to the cluster named like their Host
    /// header, and to the first cluster otherwise.
    pub clusters: Vec<String>,
    pub listener_port: u16,
    /// Retry on connection failures and resets (not on 5xx: a backend's own
    /// errors must reach the client).
    pub retries: bool,
}

impl GatewayBootstrap {
    pub fn yaml(&self) -> String {
        let config_source = match self.transport {
            EdsTransport::Grpc => {
                "{ resource_api_version: V3, api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] } }"
            }
            EdsTransport::Ads => "{ resource_api_version: V3, ads: {} }",
        };
        let ads = match self.transport {
            EdsTransport::Ads => {
                "dynamic_resources:\n  ads_config: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }\n"
            }
            EdsTransport::Grpc => "",
        };
        let retry = if self.retries {
            ", retry_policy: { retry_on: \"connect-failure,reset,refused-stream\", num_retries: 3 }"
        } else {
            ""
        };
        let mut virtual_hosts = String::new();
        for cluster in &self.clusters {
            let _ = writeln!(
                virtual_hosts,
                "            - {{ name: {cluster}, domains: [\"{cluster}\", \"{cluster}:*\"], routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: {cluster}{retry} }} }}] }}"
            );
        }
        if let Some(first) = self.clusters.first() {
            let _ = writeln!(
                virtual_hosts,
                "            - {{ name: default, domains: [\"*\"], routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: {first}{retry} }} }}] }}"
            );
        }
        let mut clusters = String::new();
        for cluster in &self.clusters {
            let _ = writeln!(
                clusters,
                "  - {{ name: {cluster}, type: EDS, connect_timeout: 1s, eds_cluster_config: {{ eds_config: {config_source} }} }}"
            );
        }
        format!(
            r#"node: {{ id: {node}, cluster: test-gateway }}
{ads}static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
{virtual_hosts}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}{xds_cluster}"#,
            node = self.node_id,
            listener_port = self.listener_port,
            xds_cluster = control_plane_cluster("xds", self.xds, ""),
        )
    }
}

/// The bootstrap of the server's gateway mode (docs/envoy/gateway.yaml,
/// reduced): the node and one ADS stream to the control plane at `xds`,
/// state of the world or `delta`. Every listener, route and cluster comes
/// over that stream, so nothing here names a service.
pub fn ads_only_bootstrap(node_id: &str, xds: SocketAddr, delta: bool) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node: {{ id: {node_id}, cluster: gateway }}
dynamic_resources:
  ads_config: {{ api_type: {api_type}, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
  cds_config: {{ resource_api_version: V3, ads: {{}} }}
  lds_config: {{ resource_api_version: V3, ads: {{}} }}
static_resources:
  clusters:
{xds_cluster}"#,
        xds_cluster = control_plane_cluster("xds", xds, ""),
    )
}

/// A static cluster `name` reaching a control plane at `addr` over gRPC
/// (HTTP/2), with `transport_socket` (YAML at the cluster's indentation, or
/// empty for plaintext).
pub fn control_plane_cluster(name: &str, addr: SocketAddr, transport_socket: &str) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
{transport_socket}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// The head of a listener `name` on `addr` whose certificate is the SDS
/// secret `secret`, asked through `sds_config`: up to `filters:`, which the
/// caller's filters follow.
pub fn sds_tls_listener(name: &str, addr: SocketAddr, secret: &str, sds_config: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: "{secret}"
              sds_config: {sds_config}
      filters:
"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// How Envoy asks for secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdsTransport {
    /// The SDS service, state of the world.
    Sotw,
    /// The SDS service, delta protocol.
    Delta,
    /// Aggregated (ADS), state of the world.
    Ads,
}

/// TLS from Envoy to the SDS server: the server is checked against
/// `trusted_ca` and `server_name` (SNI and SAN); `client` is the certificate
/// and key files Envoy presents, for a server demanding mutual TLS.
#[derive(Debug, Clone)]
pub struct SdsClientTls {
    pub server_name: String,
    pub trusted_ca: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// One HTTPS listener whose certificate is the SDS secret `secret`,
/// answering every request with 200 "ok".
#[derive(Debug, Clone)]
pub struct SdsListenerBootstrap {
    pub node_id: String,
    pub listener_port: u16,
    pub secret: String,
    pub sds: SocketAddr,
    pub transport: SdsTransport,
    /// Plain-text gRPC to the SDS server when `None`.
    pub tls: Option<SdsClientTls>,
}

impl SdsListenerBootstrap {
    /// State-of-the-world SDS over plain-text gRPC.
    pub fn new(node_id: &str, listener_port: u16, secret: &str, sds: SocketAddr) -> Self {
        Self {
            node_id: node_id.to_owned(),
            listener_port,
            secret: secret.to_owned(),
            sds,
            transport: SdsTransport::Sotw,
            tls: None,
        }
    }

    #[must_use]
    pub fn transport(self, transport: SdsTransport) -> Self {
        Self { transport, ..self }
    }

    #[must_use]
    pub fn tls(self, tls: SdsClientTls) -> Self {
        Self {
            tls: Some(tls),
            ..self
        }
    }

    pub fn yaml(&self) -> String {
        let grpc = "grpc_services: [{ envoy_grpc: { cluster_name: sds } }]";
        let api_source = |api_type: &str| {
            format!(
                "{{ resource_api_version: V3, api_config_source: {{ api_type: {api_type}, transport_api_version: V3, {grpc} }} }}"
            )
        };
        let (config_source, ads) = match self.transport {
            SdsTransport::Sotw => (api_source("GRPC"), String::new()),
            SdsTransport::Delta => (api_source("DELTA_GRPC"), String::new()),
            SdsTransport::Ads => (
                "{ resource_api_version: V3, ads: {} }".to_owned(),
                format!(
                    "dynamic_resources:\n  ads_config: {{ api_type: GRPC, transport_api_version: V3, {grpc} }}\n"
                ),
            ),
        };
        let transport_socket = self.tls.as_ref().map_or_else(String::new, |tls| {
            let certificates = match &tls.client {
                Some((cert, key)) => format!(
                    "tls_certificates: [{{ certificate_chain: {{ filename: \"{}\" }}, private_key: {{ filename: \"{}\" }} }}]",
                    cert.display(),
                    key.display()
                ),
                None => "tls_certificates: []".to_owned(),
            };
            format!(
                r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {name}
        common_tls_context:
          {certificates}
          validation_context:
            trusted_ca: {{ filename: "{ca}" }}
            match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {name} }} }}]
"#,
                name = tls.server_name,
                ca = tls.trusted_ca.display(),
            )
        });
        format!(
            r#"node: {{ id: {node}, cluster: test-gateway }}
{ads}static_resources:
  listeners:
{listener}      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }} }}] }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{sds_cluster}"#,
            node = self.node_id,
            listener = sds_tls_listener(
                "https",
                SocketAddr::from(([127, 0, 0, 1], self.listener_port)),
                &self.secret,
                &config_source,
            ),
            sds_cluster = control_plane_cluster("sds", self.sds, &transport_socket),
        )
    }
}

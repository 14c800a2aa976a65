//! Envoy bootstraps for tests: a gateway whose clusters come from EDS.
//!
//! The shape follows the verified rules for Envoy 1.40: the xDS cluster
//! speaks HTTP/2 (`typed_extension_protocol_options`), `eds_config` sits in
//! `eds_cluster_config`, and every config source says
//! `resource_api_version: V3` / `transport_api_version: V3`.

use std::fmt::Write;
use std::net::SocketAddr;

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
{clusters}  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {xds_ip}, port_value: {xds_port} }} }} }}
"#,
            node = self.node_id,
            listener_port = self.listener_port,
            xds_ip = self.xds.ip(),
            xds_port = self.xds.port(),
        )
    }
}

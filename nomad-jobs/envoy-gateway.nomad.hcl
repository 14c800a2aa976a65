# The Envoy gateway: endpoints from consul-eds-server (EDS over ADS),
# certificates from envoy-acme-sds (SDS). It replaces nginx + consul-template:
# no reload on any change.
#
# The bootstrap lists the control planes' current instances through the
# template's Consul service lookups. Envoy keeps its last configuration while
# a control plane is briefly unreachable.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "envoy_image" {
  type    = string
  default = "envoyproxy/envoy:v1.40.0"
}

# Clusters the gateway routes to, named after Consul services.
variable "services" {
  type    = list(string)
  default = ["web"]
}

# The SDS secret name (envoy-acme-sds: the first domain of the certificate).
variable "certificate_secret" {
  type    = string
  default = "example.com"
}

job "envoy-gateway" {
  datacenters = var.datacenters
  type        = "system"

  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "gateway" {
    network {
      port "http" { static = 80 }
      port "https" { static = 443 }
      port "admin" { to = 9901 }
    }

    service {
      name = "envoy-gateway"
      port = "https"

      check {
        name     = "ready"
        type     = "http"
        port     = "admin"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    service {
      name = "envoy-gateway-metrics"
      port = "admin"
      tags = ["metrics", "metrics_path=/stats/prometheus"]
    }

    task "envoy" {
      driver = "docker"

      # Envoy drains listeners on SIGTERM; shutdown_delay takes the gateway
      # out of Consul first so load balancers stop sending new connections.
      kill_signal    = "SIGTERM"
      kill_timeout   = "30s"
      shutdown_delay = "10s"

      config {
        image = var.envoy_image
        ports = ["http", "https", "admin"]
        args = [
          "-c", "${NOMAD_TASK_DIR}/envoy.yaml",
          "--service-node", "${NOMAD_ALLOC_ID}",
          "--service-cluster", "envoy-gateway",
          "--drain-time-s", "20",
        ]
      }

      template {
        destination = "${NOMAD_TASK_DIR}/envoy.yaml"
        # Envoy reads its bootstrap only at start. It changes only when a
        # control-plane instance moves; routine endpoint and certificate
        # changes arrive over xDS without any restart.
        change_mode = "restart"
        splay       = "30s"
        data          = <<-EOT
admin:
  address: { socket_address: { address: 0.0.0.0, port_value: 9901 } }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{ envoy_grpc: { cluster_name: eds } }]
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 0.0.0.0, port_value: 80 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: redirect
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, redirect: { https_redirect: true } }]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  - name: https
    address: { socket_address: { address: 0.0.0.0, port_value: 443 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: ${var.certificate_secret}
              sds_config:
                resource_api_version: V3
                api_config_source:
                  api_type: GRPC
                  transport_api_version: V3
                  grpc_services: [{ envoy_grpc: { cluster_name: sds } }]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          route_config:
            virtual_hosts:
%{ for service in var.services ~}
            - name: ${service}
              domains: ["${service}.*"]
              routes:
              - match: { prefix: "/" }
                route:
                  cluster: ${service}
                  retry_policy: { retry_on: "connect-failure,reset,refused-stream", num_retries: 2 }
%{ endfor ~}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
%{ for service in var.services ~}
  - name: ${service}
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: { eds_config: { resource_api_version: V3, ads: {} } }
    circuit_breakers:
      thresholds: [{ max_connections: 4096, max_pending_requests: 1024, max_requests: 4096, max_retries: 16 }]
    outlier_detection: { consecutive_5xx: 5, base_ejection_time: 10s, max_ejection_percent: 50 }
%{ endfor ~}
  - name: eds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: eds
      endpoints:
      - lb_endpoints:
{{- range service "consul-eds-server" }}
        - endpoint: { address: { socket_address: { address: {{ .Address }}, port_value: {{ .Port }} } } }
{{- end }}
  - name: sds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: sds
      endpoints:
      - lb_endpoints:
{{- range service "envoy-acme-sds" }}
        - endpoint: { address: { socket_address: { address: {{ .Address }}, port_value: {{ .Port }} } } }
{{- end }}
EOT
      }

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}

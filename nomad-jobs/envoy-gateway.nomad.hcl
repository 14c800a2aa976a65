# The Envoy gateway: listeners, routes, clusters and endpoints from
# consul-eds-server in gateway mode (over ADS, built from the services' own
# tags: see sample-app.nomad.hcl and docs/gateway.md), certificates from
# envoy-acme-sds (SDS, asked for by each TLS host's name). It replaces
# nginx + consul-template: no reload on any change, and a new job is routed
# with no change here.
#
# The bootstrap lists the control planes' current instances through the
# template's Consul service lookups. Envoy keeps its last configuration while
# a control plane is briefly unreachable.
#
# Both control planes are reached over mutual TLS: Envoy presents a client
# certificate signed by the control-plane CA and checks each server's name
# (`consul-eds-server.service.consul`, `envoy-acme-sds.service.consul`).
# From Nomad Variables, rendered into the task's secrets directory:
#   nomad/jobs/envoy-gateway: client_cert, client_key, control_plane_ca
# docs/operations.md ("Control-plane certificates") shows how to make them.
#
# Envoy's admin listener can change Envoy's state (/quitquitquit,
# /runtime_modify...), so it listens on loopback only. Consul's check and
# Prometheus use the `metrics` listener on the node's address, which passes
# only GET /ready and /stats/prometheus through to the admin listener.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "envoy_image" {
  type    = string
  default = "envoyproxy/envoy:v1.40.0"
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
      port "metrics" {}
    }

    service {
      name = "envoy-gateway"
      port = "https"

      check {
        name     = "ready"
        type     = "http"
        port     = "metrics"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    service {
      name = "envoy-gateway-metrics"
      port = "metrics"
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
        # Envoy binds the public ports on every interface, its admin listener
        # on the node's loopback and the metrics listener on the node's
        # address: only host networking gives it all three.
        network_mode = "host"
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
  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{ envoy_grpc: { cluster_name: eds } }]
  cds_config: { resource_api_version: V3, ads: {} }
  lds_config: { resource_api_version: V3, ads: {} }
# Shed load before the kernel kills the task (memory = 256 below).
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 201326592  # 192 MiB
  actions:
  - name: envoy.overload_actions.shrink_heap
    triggers: [{ name: envoy.resource_monitors.fixed_heap, threshold: { value: 0.90 } }]
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{ name: envoy.resource_monitors.fixed_heap, threshold: { value: 0.95 } }]
static_resources:
  listeners:
  # Envoy's own listeners: the metrics pass-through only. The gateway's
  # listeners (web :80, websecure :443), routes and clusters come over ADS.
  - name: metrics
    address: { socket_address: { address: {{ env "NOMAD_IP_metrics" }}, port_value: {{ env "NOMAD_PORT_metrics" }} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: metrics
          route_config:
            virtual_hosts:
            - name: admin
              domains: ["*"]
              routes:
              - match: { path: /ready, headers: [{ name: ":method", string_match: { exact: GET } }] }
                route: { cluster: admin }
              - match: { path: /stats/prometheus, headers: [{ name: ":method", string_match: { exact: GET } }] }
                route: { cluster: admin }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: admin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: admin
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9901 } } }
  - name: eds
    type: STATIC
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: consul-eds-server.service.consul
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: { filename: /secrets/control-plane/client.crt }
            private_key: { filename: /secrets/control-plane/client.key }
          validation_context:
            trusted_ca: { filename: /secrets/control-plane/ca.crt }
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: { exact: consul-eds-server.service.consul }
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
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: envoy-acme-sds.service.consul
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: { filename: /secrets/control-plane/client.crt }
            private_key: { filename: /secrets/control-plane/client.key }
          validation_context:
            trusted_ca: { filename: /secrets/control-plane/ca.crt }
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: { exact: envoy-acme-sds.service.consul }
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

      template {
        destination = "${NOMAD_SECRETS_DIR}/control-plane/client.crt"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-gateway" -}}{{ .client_cert }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/control-plane/client.key"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-gateway" -}}{{ .client_key }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/control-plane/ca.crt"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-gateway" -}}{{ .control_plane_ca }}{{- end -}}
        EOT
      }

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}

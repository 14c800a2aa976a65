# consul-eds-server: Consul health -> Envoy EDS.
#
# Deployable alone. Envoy gateways reach it on the `xds` port (bind it to a
# private interface, or enable mTLS, never expose it publicly). The Consul
# token comes from Nomad Variables through a template, so it never appears in
# the job file, the process list or the logs.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "ghcr.io/envoy-consul-gateway/consul-eds-server:0.1.0"
}

variable "consul_http_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
}

job "consul-eds-server" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "2m"
    progress_deadline = "5m"
    auto_revert       = true
  }

  group "eds" {
    count = 2

    network {
      port "xds" { static = 15000 }
      port "admin" { to = 9102 }
    }

    service {
      name = "consul-eds-server"
      port = "xds"
      tags = ["xds", "grpc"]

      check {
        name     = "readyz"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"

        # /readyz answers 429 while Consul reads fail but the last endpoints
        # are still served; Consul records that as a warning. Do not restart
        # a degraded instance: a fresh one would have nothing to serve.
        check_restart {
          limit           = 3
          grace           = "30s"
          ignore_warnings = true
        }
      }
    }

    service {
      name = "consul-eds-server-metrics"
      port = "admin"
      tags = ["metrics"]
    }

    task "consul-eds-server" {
      driver = "docker"

      # SIGTERM drains xDS streams; Envoy keeps its endpoints and reconnects
      # to the other instance meanwhile.
      kill_signal    = "SIGTERM"
      kill_timeout   = "15s"
      shutdown_delay = "5s"

      config {
        image = var.image
        ports = ["xds", "admin"]
        args = [
          "--xds-listen", "0.0.0.0:15000",
          "--admin-listen", "0.0.0.0:9102",
          "--consul-addr", var.consul_http_addr,
          "--consul-token-file", "${NOMAD_SECRETS_DIR}/consul-token",
          "--log-format", "json",
        ]
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/consul-token"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/consul-eds-server" -}}{{ .consul_token }}{{- end -}}
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}

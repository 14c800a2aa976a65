# A sample application routed by the gateway with no gateway change: its
# service's tags declare the route (docs/gateway.md). Run it and
# https://app.example.com/ answers through every Envoy gateway; stop it and
# the route is gone. Nomad registers the service in Consul, consul-eds-server
# (in gateway mode) reads the tags and serves Envoy the cluster, route and
# listener chain; envoy-acme-sds serves the host's certificate.
#
# Canary deployments: a new version's first allocation carries
# `canary_tags` (`edge.canary`) and gets the share `canary=` gives it;
# promoting the deployment gives every allocation the ordinary tags again.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "traefik/whoami:v1.10"
}

variable "host" {
  type    = string
  default = "app.example.com"
}

job "sample-app" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel     = 1
    canary           = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "app" {
    count = 3

    network {
      port "http" { to = 80 }
    }

    service {
      name = "sample-app"
      port = "http"
      tags = [
        # HTTPS for the host (plain HTTP answers 308), 10 % to a canary.
        "edge.route=${var.host}/ tls=true timeout=10s retries=2 canary=10",
        # What nginx could not do: HTTP/1.1 keep-alive pools bounded per
        # cluster, circuit breaking and ejection of failing instances.
        "edge.cluster.max_connections=1024",
        "edge.cluster.max_pending_requests=256",
        "edge.cluster.max_requests=1024",
        "edge.cluster.outlier_consecutive_5xx=5",
        "edge.cluster.outlier_ejection_time=30s",
        "edge.cluster.health_check_path=/health",
      ]
      canary_tags = [
        "edge.route=${var.host}/ tls=true timeout=10s retries=2 canary=10",
        "edge.cluster.max_connections=1024",
        "edge.cluster.max_pending_requests=256",
        "edge.cluster.max_requests=1024",
        "edge.cluster.outlier_consecutive_5xx=5",
        "edge.cluster.outlier_ejection_time=30s",
        "edge.cluster.health_check_path=/health",
        "edge.canary",
      ]

      check {
        type     = "http"
        path     = "/health"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "app" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}

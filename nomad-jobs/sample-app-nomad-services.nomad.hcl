# The sample application of sample-app.nomad.hcl for a cluster without
# Consul: its service is registered in Nomad itself (`provider = "nomad"`,
# Nomad 1.3+), and its tags declare the route the same way (docs/gateway.md;
# Nomad registrations carry tags, no meta). consul-eds-server routes it and
# envoy-acme-sds orders the host's certificate (`var.host` must lie under
# envoy-acme-sds's `allowed_domains`), both reading Nomad's registry with
# `--sources consul,nomad` (or `--sources nomad` without Consul), as their
# jobs here do.
#
# Health: Nomad removes a registration when its allocation stops, and runs
# the check itself (Nomad 1.4+): a failing check holds a deployment back and
# restarts the task, but does not take the instance out of the registrations
# the gateway reads. Outlier detection (the `edge.cluster.outlier_*` tags
# below; with the Nomad source, on by default for Nomad-sourced clusters)
# ejects an instance that answers with errors meanwhile.
#
# Canary deployments: a new version's first allocation registers
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
  default = "nomad-app.example.com"
}

job "sample-app-nomad-services" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel     = 1
    canary           = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
    # Deployment health from the Nomad service's check.
    health_check = "checks"
  }

  group "app" {
    count = 3

    network {
      port "http" { to = 80 }
    }

    service {
      name     = "sample-app-nomad"
      provider = "nomad"
      port     = "http"
      tags = [
        # HTTPS for the host (plain HTTP answers 308), 10 % to a canary.
        "edge.route=${var.host}/ tls=true timeout=10s retries=2 canary=10",
        "edge.cluster.max_connections=1024",
        "edge.cluster.max_requests=1024",
        "edge.cluster.outlier_consecutive_5xx=5",
        "edge.cluster.outlier_ejection_time=30s",
      ]
      canary_tags = [
        "edge.route=${var.host}/ tls=true timeout=10s retries=2 canary=10",
        "edge.cluster.max_connections=1024",
        "edge.cluster.max_requests=1024",
        "edge.cluster.outlier_consecutive_5xx=5",
        "edge.cluster.outlier_ejection_time=30s",
        "edge.canary",
      ]

      # Run by the Nomad client; results at
      # /v1/client/allocation/<id>/checks.
      check {
        name     = "health"
        type     = "http"
        path     = "/health"
        interval = "5s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
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

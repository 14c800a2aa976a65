# The demo backend: instances that register themselves in Consul (service
# `web`), one added or removed per second, some answers slow or 500 on
# purpose. For trying the gateway, never for production traffic.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "ghcr.io/envoy-consul-gateway/demo-backend:0.1.0"
}

job "demo-backend" {
  datacenters = var.datacenters
  type        = "service"

  group "backend" {
    count = 1

    # The instances pick free ports on the host and register them.
    network {
      mode = "host"
    }

    task "demo-backend" {
      driver = "docker"

      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      config {
        image        = var.image
        network_mode = "host"
        args = [
          "--consul-addr", "http://${attr.unique.network.ip-address}:8500",
          "--service", "web",
          "--ip", "${attr.unique.network.ip-address}",
          "--min-instances", "2",
          "--max-instances", "6",
          "--churn-every-ms", "1000",
          "--error-percent", "2",
          "--slow-percent", "5",
        ]
      }

      resources {
        cpu    = 200
        memory = 64
      }
    }
  }
}

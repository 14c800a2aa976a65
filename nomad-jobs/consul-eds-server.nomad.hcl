# consul-eds-server: Consul health -> Envoy EDS, in gateway mode: Envoy's
# listeners, routes and clusters too, from the route tags of the Consul
# services (docs/gateway.md; sample-app.nomad.hcl is a job that declares its
# route). The gateway's listeners are declared here, like Traefik's
# entrypoints: Envoy binds them on its own node.
#
# Deployable alone. Envoy gateways on other nodes reach it on the `xds` port,
# so xDS is served only over mutual TLS: the gateways present a client
# certificate signed by the control-plane CA, and this service presents a
# server certificate for the DNS name `consul-eds-server.service.consul` (the
# gateway job checks that name). It serves only the services listed in
# `var.services`, so a client cannot make it watch arbitrary names. Every
# port binds the node's own address (host networking), never 0.0.0.0.
#
# Secrets come from Nomad Variables through templates, so they never appear
# in the job file, the process list or the logs:
#   nomad/jobs/consul-eds-server: consul_token, xds_tls_cert, xds_tls_key, client_ca
# docs/operations.md ("Control-plane certificates") shows how to make the
# certificates with openssl, or how to have Vault's PKI issue them instead.
#
# Services registered in Nomad itself (`provider = "nomad"`, e.g.
# sample-app-nomad-services.nomad.hcl) are read too (`--sources consul,nomad`):
# a service known to both registries is one cluster with the instances of
# both. The Nomad token is the task's workload identity (the `identity`
# block below); a policy-backed token from a Nomad Variable is the commented
# alternative.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "ghcr.io/envoy-consul-gateway/consul-eds-server:0.1.0"
}

# Further Consul services an Envoy may ask for by cluster name (EDS of a
# hand-written cluster). Routed services need no entry: their tags are
# read from Consul, never from a client.
variable "services" {
  type    = list(string)
  default = ["web"]
}

# Envoy's listeners: NAME=HOST:PORT, `,tls` for HTTPS (routes pick them by
# NAME with `listener=`; a route without it is served on every listener its
# TLS setting allows).
variable "listeners" {
  type    = list(string)
  default = ["web=0.0.0.0:80", "websecure=0.0.0.0:443,tls"]
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
      port "admin" {}
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
        # The service binds the node's addresses itself (NOMAD_IP_*), so
        # Consul's checks and Prometheus reach the admin port and nothing
        # listens on every interface.
        network_mode = "host"
        args = [
          "--xds-listen", "${NOMAD_IP_xds}:${NOMAD_PORT_xds}",
          "--xds-tls-cert", "${NOMAD_SECRETS_DIR}/xds.crt",
          "--xds-tls-key", "${NOMAD_SECRETS_DIR}/xds.key",
          "--xds-tls-client-ca", "${NOMAD_SECRETS_DIR}/client-ca.crt",
          "--services", join(",", var.services),
          "--admin-listen", "${NOMAD_IP_admin}:${NOMAD_PORT_admin}",
          "--consul-addr", var.consul_http_addr,
          "--consul-token-file", "${NOMAD_SECRETS_DIR}/consul-token",
          "--log-format", "json",
          "--gateway",
          "--listener", join(";", var.listeners),
          # Nomad's own registry, through the local Nomad agent.
          "--sources", "consul,nomad",
          "--nomad-addr", "http://${attr.unique.network.ip-address}:4646",
          "--nomad-token-file", "${NOMAD_SECRETS_DIR}/nomad_token",
          "--nomad-namespace", "default",
        ]
      }

      # The Nomad token, either way written to secrets/nomad_token:
      # - the task's workload identity (Nomad 1.5+). Nomad's implicit policy
      #   lets it list and read services with no ACL policy, except a `*`
      #   listing: that shows only the namespaces a policy attached to this
      #   job lets it read, and silently nothing else (`nomad acl policy
      #   apply -namespace default -job consul-eds-server ...` with
      #   `read-job` on them).
      identity {
        file = true
      }

      # - or a token kept in a Nomad Variable (`nomad_token` beside
      #   `consul_token`), when a policy-backed ACL token is wanted instead.
      # template {
      #   destination = "${NOMAD_SECRETS_DIR}/nomad_token"
      #   perms       = "0400"
      #   change_mode = "restart"
      #   data        = <<-EOT
      #     {{- with nomadVar "nomad/jobs/consul-eds-server" -}}{{ .nomad_token }}{{- end -}}
      #   EOT
      # }

      template {
        destination = "${NOMAD_SECRETS_DIR}/consul-token"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/consul-eds-server" -}}{{ .consul_token }}{{- end -}}
        EOT
      }

      # The xDS listener's identity and the CA its clients (the gateways)
      # must be signed by. With Vault, replace the three data blocks by
      # `{{ with secret "pki/issue/control-plane" "common_name=consul-eds-server.service.consul" }}`
      # and `.Data.certificate`, `.Data.private_key`, `.Data.issuing_ca`.
      template {
        destination = "${NOMAD_SECRETS_DIR}/xds.crt"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/consul-eds-server" -}}{{ .xds_tls_cert }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/xds.key"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/consul-eds-server" -}}{{ .xds_tls_key }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/client-ca.crt"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/consul-eds-server" -}}{{ .client_ca }}{{- end -}}
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}

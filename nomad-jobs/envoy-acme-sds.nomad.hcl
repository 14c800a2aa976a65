# envoy-acme-sds: ACME certificates -> Envoy SDS.
#
# Two replicas share one Consul KV prefix. Both serve every certificate over
# SDS (gateways may point at either); only the holder of the Consul session
# lock orders and renews, and every write is fenced by that lock. Killing or
# draining the holder hands renewals to the other replica.
#
# SDS answers carry private keys, so it is served only over mutual TLS: the
# gateways present a client certificate signed by the control-plane CA, and
# this service presents a server certificate for the DNS name
# `envoy-acme-sds.service.consul` (the gateway job checks that name). Every
# port binds the node's own address (host networking), never 0.0.0.0.
#
# Secrets come from Nomad Variables through templates, so they never appear
# in the job file, the process list or the logs:
#   nomad/jobs/envoy-acme-sds: consul_token, tsig_key, encryption_key,
#                              sds_tls_cert, sds_tls_key, client_ca
# The TSIG key is a BIND-style `key "name" { algorithm ...; secret "..."; };`
# block; the encryption key is 32 random bytes in hex (`openssl rand -hex 32`).
#
# The encryption key seals every private key stored in Consul KV (anyone with
# KV read on the prefix would read them otherwise; the service refuses to
# start on Consul storage without one). Put it with the other secrets, e.g.:
#   nomad var put nomad/jobs/envoy-acme-sds \
#     encryption_key="$(openssl rand -hex 32)" consul_token=@consul-token ...
# (`nomad var put` replaces the whole variable: give every item, or use
# `nomad var get ... | nomad var put -in=json ...` to change one.)
# Rotation (docs/operations.md, "Keys at rest"): put the old key as
# `previous_encryption_key` and the new one as `encryption_key`, add a
# template for `previous.key` like the one below and
# `--previous-encryption-key-file ${NOMAD_SECRETS_DIR}/previous.key`; once
# the status page says every key is sealed, remove both again.
# docs/operations.md ("Control-plane certificates") shows how to make the
# certificates with openssl, or how to have Vault's PKI issue them instead.
#
# Routed hosts (`--follow-routes`): every TLS host a service's route tags
# declare (docs/gateway.md) gets its own certificate, under the domains
# `var.allowed_domains` names, with no change here. The tags are read from
# both registries consul-eds-server reads (`--sources consul,nomad`): Consul's
# catalog, and the services Nomad registers itself (`provider = "nomad"`,
# e.g. sample-app-nomad-services.nomad.hcl). The Nomad token is the task's
# workload identity (the `identity` block below), as for consul-eds-server.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "ghcr.io/envoy-consul-gateway/envoy-acme-sds:0.1.0"
}

variable "consul_http_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
}

variable "acme_directory" {
  type    = string
  default = "https://acme-staging-v02.api.letsencrypt.org/directory"
}

variable "email" {
  type    = string
  default = "hostmaster@example.com"
}

# One --cert per entry: comma-separated names, optionally `secret-name=` first.
variable "certificate" {
  type    = string
  default = "example.com,*.example.com"
}

# Suffixes a routed host may be ordered for (comma-separated): a host
# equal to one or ending in `.SUFFIX`. A tag naming any other host gets no
# order, only a placeholder, and is listed as refused on the status page.
variable "allowed_domains" {
  type    = string
  default = "example.com"
}

variable "rfc2136_server" {
  type    = string
  default = "10.0.0.53:53"
}

job "envoy-acme-sds" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "sds" {
    count = 2

    # Never both replicas on one node: losing it would lose both.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "sds" { static = 20000 }
      port "admin" {}
    }

    service {
      name = "envoy-acme-sds"
      port = "sds"
      tags = ["sds", "grpc"]

      # 200 once every configured certificate is served, 503 before. A
      # fresh replica answers 503 until the first certificate exists (the
      # first order takes seconds), hence the grace.
      check {
        name     = "readyz"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"

        check_restart {
          limit = 6
          grace = "2m"
        }
      }
    }

    service {
      name = "envoy-acme-sds-metrics"
      port = "admin"
      tags = ["metrics"]
    }

    task "envoy-acme-sds" {
      driver = "docker"

      # SIGTERM releases the renewal lock at once (the other replica takes
      # over without waiting for the session TTL) and drains SDS streams;
      # Envoy keeps its certificates and reconnects to the other replica.
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
          "--acme-directory", var.acme_directory,
          "--email", var.email,
          "--cert", var.certificate,
          "--challenge", "dns-01",
          "--rfc2136-server", var.rfc2136_server,
          "--tsig-key-file", "${NOMAD_SECRETS_DIR}/tsig.key",
          "--storage", "consul:envoy-acme-sds",
          "--encryption-key-file", "${NOMAD_SECRETS_DIR}/encryption.key",
          "--consul-addr", var.consul_http_addr,
          "--consul-token-file", "${NOMAD_SECRETS_DIR}/consul-token",
          "--lock-delay", "15s",
          "--instance-name", "${NOMAD_ALLOC_ID}",
          "--sds-listen", "${NOMAD_IP_sds}:${NOMAD_PORT_sds}",
          "--sds-tls-cert", "${NOMAD_SECRETS_DIR}/sds.crt",
          "--sds-tls-key", "${NOMAD_SECRETS_DIR}/sds.key",
          "--sds-client-ca", "${NOMAD_SECRETS_DIR}/client-ca.crt",
          "--admin-listen", "${NOMAD_IP_admin}:${NOMAD_PORT_admin}",
          "--log-format", "json",
          # A certificate for every routed TLS host, from the route tags of
          # Consul's catalog and of Nomad's own registry (through the local
          # Nomad agent), as the gateway reads them.
          "--follow-routes",
          "--allowed-domains", var.allowed_domains,
          "--sources", "consul,nomad",
          "--nomad-addr", "http://${attr.unique.network.ip-address}:4646",
          "--nomad-token-file", "${NOMAD_SECRETS_DIR}/nomad_token",
          "--nomad-namespace", "default",
        ]
      }

      # The Nomad token: the task's workload identity (Nomad 1.5+), written
      # to secrets/nomad_token. It lists the services of its own namespace
      # with no ACL policy; reading other namespaces needs a policy with
      # `read-job` on them attached to this job (`nomad acl policy apply
      # -namespace default -job envoy-acme-sds ...`), or a policy-backed
      # token kept in this job's Nomad Variable (`nomad_token`) and rendered
      # to the same file by a template like the ones below.
      identity {
        file = true
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/consul-token"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-acme-sds" -}}{{ .consul_token }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/tsig.key"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-acme-sds" -}}{{ .tsig_key }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/encryption.key"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-acme-sds" -}}{{ .encryption_key }}{{- end -}}
        EOT
      }

      # The SDS listener's identity and the CA its clients (the gateways)
      # must be signed by. With Vault, replace the three data blocks by
      # `{{ with secret "pki/issue/control-plane" "common_name=envoy-acme-sds.service.consul" }}`
      # and `.Data.certificate`, `.Data.private_key`, `.Data.issuing_ca`.
      template {
        destination = "${NOMAD_SECRETS_DIR}/sds.crt"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-acme-sds" -}}{{ .sds_tls_cert }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/sds.key"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-acme-sds" -}}{{ .sds_tls_key }}{{- end -}}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/client-ca.crt"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/envoy-acme-sds" -}}{{ .client_ca }}{{- end -}}
        EOT
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}

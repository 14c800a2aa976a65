//! The demo backend's and the gateway's Nomad jobs parse, and pass only
//! flags their programs have.

use std::path::{Path, PathBuf};

use test_support::nomad::{help_flags, parse_job, task_args};

fn job(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../nomad-jobs")
        .join(name)
}

#[test]
fn the_demo_backend_job_uses_real_flags() {
    let body = parse_job(&job("demo-backend.nomad.hcl")).expect("parses");
    let known = help_flags(Path::new(env!("CARGO_BIN_EXE_demo-backend"))).expect("--help");
    let tasks = task_args(&body);
    let flags = tasks
        .iter()
        .find(|t| t.task == "demo-backend")
        .expect("demo-backend task")
        .flags();
    assert!(flags.len() >= 5, "{flags:?}");
    for flag in flags {
        assert!(known.contains(&flag), "demo-backend has no {flag}");
    }
}

#[test]
fn the_gateway_job_passes_envoy_real_flags() {
    let body = parse_job(&job("envoy-gateway.nomad.hcl")).expect("parses");
    let envoy = test_support::tool("envoy").expect("envoy installed");
    let known = help_flags(&envoy).expect("envoy --help");
    let tasks = task_args(&body);
    let envoy_task = tasks
        .iter()
        .find(|t| t.task == "envoy")
        .expect("envoy task");
    let flags = envoy_task.flags();
    assert!(flags.contains(&"--service-node".to_owned()), "{flags:?}");
    for flag in flags {
        assert!(known.contains(&flag), "envoy has no {flag}");
    }
}

/// The gateway's bootstrap, rendered as Nomad would render it (one instance
/// of each control plane, the control-plane certificates in place of the
/// task's secrets directory), is a configuration Envoy accepts; it reaches
/// both control planes over mutual TLS and keeps its admin listener on
/// loopback.
#[test]
fn the_gateway_bootstrap_is_valid_and_reaches_the_control_planes_over_mtls() {
    use test_support::nomad::render_template_data;

    let body = parse_job(&job("envoy-gateway.nomad.hcl")).expect("parses");
    let rendered = render_template_data(
        &body,
        "/envoy.yaml",
        // Gateway mode: the bootstrap names no service or certificate.
        &[],
    )
    .expect("the bootstrap template renders");

    let secrets = tempfile::tempdir().expect("tempdir");
    let ca = test_support::TestCa::new("control-plane CA").expect("CA");
    let client = ca.client_leaf("envoy-gateway").expect("client certificate");
    std::fs::write(secrets.path().join("client.crt"), &client.cert_pem).expect("write");
    std::fs::write(secrets.path().join("client.key"), &client.key_pem).expect("write");
    std::fs::write(secrets.path().join("ca.crt"), ca.cert_pem()).expect("write");

    // What consul-template would put in: one instance of each control plane
    // and the node's address for the metrics listener.
    let bootstrap: String = rendered
        .lines()
        .filter(|line| !line.contains("{{- range service") && !line.contains("{{- end }}"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{{ .Address }}", "127.0.0.1")
        .replace("{{ .Port }}", "15000")
        .replace("{{ env \"NOMAD_IP_metrics\" }}", "127.0.0.1")
        .replace("{{ env \"NOMAD_PORT_metrics\" }}", "9902")
        .replace(
            "/secrets/control-plane",
            &secrets.path().display().to_string(),
        );
    assert!(
        !bootstrap.contains("{{"),
        "unrendered action left:\n{bootstrap}"
    );

    let admin = format!("\n{bootstrap}")
        .split("\nadmin:")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1).map(str::to_owned))
        .expect("an admin section");
    assert!(
        admin.contains("address: 127.0.0.1,"),
        "admin on loopback: {admin}"
    );
    for (cluster, server_name) in [
        ("eds", "consul-eds-server.service.consul"),
        ("sds", "envoy-acme-sds.service.consul"),
    ] {
        let section = bootstrap
            .split(&format!("\n  - name: {cluster}\n"))
            .nth(1)
            .map(|rest| rest.split("\n  - name: ").next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("no {cluster} cluster in\n{bootstrap}"));
        for needed in [
            "UpstreamTlsContext",
            "tls_certificates:",
            "trusted_ca:",
            &format!("exact: {server_name}"),
        ] {
            assert!(
                section.contains(needed),
                "{cluster} lacks {needed}:\n{section}"
            );
        }
    }

    let file = secrets.path().join("envoy.yaml");
    std::fs::write(&file, &bootstrap).expect("write");
    let envoy = test_support::tool("envoy").expect("envoy installed");
    let output = std::process::Command::new(envoy)
        .args(["--mode", "validate", "--disable-hot-restart"])
        // As the job passes them.
        .args([
            "--service-node",
            "gateway-1",
            "--service-cluster",
            "envoy-gateway",
        ])
        .arg("-c")
        .arg(&file)
        .output()
        .expect("envoy runs");
    assert!(
        output.status.success(),
        "envoy rejects the gateway bootstrap:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

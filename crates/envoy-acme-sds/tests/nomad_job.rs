//! The Nomad job passes only flags the real binary has, and runs it the
//! way the service is meant to run: two replicas on Consul storage,
//! following the routes of both registries the gateway reads.

use std::path::Path;

use test_support::nomad::{help_flags, parse_job, task_args};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_envoy-acme-sds"))
}

#[test]
fn every_flag_in_the_nomad_job_exists() {
    let job =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs/envoy-acme-sds.nomad.hcl");
    let body = parse_job(&job).expect("the job parses as HCL");
    let known = help_flags(binary()).expect("--help runs");
    assert!(known.contains("--storage"), "help parsing found {known:?}");
    let tasks = task_args(&body);
    let task = tasks
        .iter()
        .find(|t| t.task == "envoy-acme-sds")
        .expect("the job has an envoy-acme-sds task");
    let flags = task.flags();
    assert!(flags.len() >= 10, "too few flags found: {flags:?}");
    for flag in &flags {
        assert!(
            known.contains(flag),
            "{} passes {flag}, which --help does not list",
            job.display()
        );
    }
    let storage = task
        .args
        .iter()
        .skip_while(|arg| *arg != "--storage")
        .nth(1)
        .expect("--storage has a value");
    assert!(
        storage.starts_with("consul:"),
        "replicas need Consul storage, not {storage}"
    );
    let text = std::fs::read_to_string(&job).expect("job");
    assert!(text.contains("count = 2"), "the job runs two replicas");
    assert!(
        text.contains("path     = \"/readyz\""),
        "health check on /readyz"
    );
}

#[test]
fn a_flag_that_does_not_exist_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("bad.nomad.hcl");
    std::fs::write(
        &job,
        "job \"x\" {\n group \"g\" {\n  task \"envoy-acme-sds\" {\n   config {\n    args = [\"--no-such-flag\", \"1\"]\n   }\n  }\n }\n}\n",
    )
    .expect("write");
    let tasks = task_args(&parse_job(&job).expect("parses"));
    let known = help_flags(binary()).expect("--help runs");
    assert!(tasks[0].flags().iter().any(|f| !known.contains(f)));
}

/// SDS answers carry private keys: the shipped job serves them only over
/// mutual TLS, and binds no port on every interface.
#[test]
fn the_nomad_job_serves_secrets_only_over_mutual_tls() {
    let job =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs/envoy-acme-sds.nomad.hcl");
    let tasks = task_args(&parse_job(&job).expect("the job parses as HCL"));
    let task = tasks
        .iter()
        .find(|t| t.task == "envoy-acme-sds")
        .expect("the job has an envoy-acme-sds task");
    assert!(
        task.value_of("--sds-listen").is_some(),
        "the job says where SDS listens"
    );
    let findings = task.exposure_findings();
    assert!(findings.is_empty(), "{findings:#?}");
}

/// Private keys in Consul KV are sealed: the job passes a key file rendered
/// from a Nomad variable into the secrets directory, never plaintext keys.
#[test]
fn the_nomad_job_seals_private_keys_with_a_key_from_a_nomad_variable() {
    let job =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs/envoy-acme-sds.nomad.hcl");
    let tasks = task_args(&parse_job(&job).expect("the job parses as HCL"));
    let task = tasks
        .iter()
        .find(|t| t.task == "envoy-acme-sds")
        .expect("the job has an envoy-acme-sds task");
    let key_file = task
        .value_of("--encryption-key-file")
        .expect("the job passes --encryption-key-file");
    // Interpolated strings keep their quotes in the parsed arguments.
    assert_eq!(
        key_file.trim_matches('"'),
        "${NOMAD_SECRETS_DIR}/encryption.key"
    );
    assert!(
        !task
            .flags()
            .iter()
            .any(|flag| flag == "--allow-plaintext-keys"),
        "the shipped job stores keys in plaintext"
    );
    let text = std::fs::read_to_string(&job).expect("job");
    let template = text
        .split("template {")
        .find(|block| block.contains("destination = \"${NOMAD_SECRETS_DIR}/encryption.key\""))
        .expect("a template renders the key file");
    assert!(
        template.contains("{{ .encryption_key }}") && template.contains("nomadVar"),
        "the key comes from a Nomad variable: {template}"
    );
    assert!(
        template.contains("perms       = \"0400\""),
        "only the task's user reads it: {template}"
    );
    assert!(
        text.contains("nomad var put"),
        "the job says how to put the key"
    );
}

/// With `--follow-routes` the job orders for the TLS hosts of both
/// registries the shipped gateway reads, Nomad's through the local agent
/// with the task's workload identity (the file Nomad writes for `identity
/// { file = true }`), the same way the server job reads them; and every
/// host the sample jobs route, the Consul one and the `provider = "nomad"`
/// one, lies under the job's default allowed domains, so deploying them
/// unchanged gets each its certificate.
#[test]
fn the_nomad_job_follows_the_routes_of_consul_and_nomad_with_its_workload_identity() {
    use envoy_acme_sds::domain::DomainName;
    use envoy_acme_sds::routed::catalog::tls_hosts;
    use envoy_acme_sds::routed::policy::AllowedSuffix;
    use test_support::nomad::{Value, service_tags, variable_default, writes_identity_token};

    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs");
    let body = parse_job(&jobs.join("envoy-acme-sds.nomad.hcl")).expect("the job parses");
    let tasks = task_args(&body);
    let task = tasks
        .iter()
        .find(|t| t.task == "envoy-acme-sds")
        .expect("the job has an envoy-acme-sds task");
    assert!(
        task.flags().iter().any(|flag| flag == "--follow-routes"),
        "{:?}",
        task.args
    );
    assert_eq!(task.value_of("--sources"), Some("consul,nomad"));
    // Interpolated strings keep their quotes in the parsed arguments.
    assert_eq!(
        task.value_of("--nomad-token-file"),
        Some("\"${NOMAD_SECRETS_DIR}/nomad_token\"")
    );
    assert!(
        writes_identity_token(&body, "envoy-acme-sds"),
        "no `identity {{ file = true }}` block writes the token file"
    );
    assert!(
        task.flags().iter().all(|flag| flag != "--http01-listen"),
        "DNS-01 needs no listener; one would have to be exposed"
    );

    // The same agent, namespace and token file as the server job's.
    let server = task_args(&parse_job(&jobs.join("consul-eds-server.nomad.hcl")).expect("parses"));
    let server = server
        .iter()
        .find(|t| t.task == "consul-eds-server")
        .expect("the server task");
    for flag in [
        "--sources",
        "--nomad-addr",
        "--nomad-token-file",
        "--nomad-namespace",
    ] {
        assert!(task.value_of(flag).is_some(), "the job passes no {flag}");
        assert_eq!(task.value_of(flag), server.value_of(flag), "{flag}");
    }

    assert_eq!(
        task.value_of("--allowed-domains"),
        Some("var.allowed_domains")
    );
    let Some(Value::String(allowed)) =
        variable_default(&body, "allowed_domains").expect("the default evaluates")
    else {
        panic!("allowed_domains has no string default");
    };
    let suffixes: Vec<AllowedSuffix> = allowed
        .split(',')
        .map(|suffix| AllowedSuffix::parse(suffix.trim()).expect("a valid suffix"))
        .collect();
    let prefix = route_tags::TagPrefix::new("edge").expect("the default tag prefix");
    for (job, provider) in [
        ("sample-app.nomad.hcl", "consul"),
        ("sample-app-nomad-services.nomad.hcl", "nomad"),
    ] {
        let app = parse_job(&jobs.join(job)).expect("the sample job parses");
        let services = service_tags(&app, &[]).expect("tags evaluate");
        let routed: std::collections::BTreeMap<String, Vec<String>> = services
            .iter()
            .filter(|service| service.provider == provider)
            .map(|service| {
                let mut tags = service.tags.clone();
                tags.extend(service.canary_tags.iter().cloned());
                (service.name.clone(), tags)
            })
            .collect();
        let hosts = tls_hosts(&prefix, &routed);
        assert_eq!(hosts.len(), 1, "{job} routes one TLS host: {hosts:?}");
        for host in hosts.keys() {
            let name = DomainName::parse(host).expect("a domain name");
            assert!(
                suffixes.iter().any(|suffix| suffix.allows(&name)),
                "{job} routes {host}, outside the default allowed domains {allowed}"
            );
        }
    }
}

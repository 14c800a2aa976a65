//! The Nomad job passes only flags the real binary has, and runs it the
//! way the service is meant to run: two replicas on Consul storage.

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

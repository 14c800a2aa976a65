//! The Nomad job passes only flags the real binary has.

use std::path::Path;

use test_support::nomad::{help_flags, parse_job, task_args};

#[test]
fn every_flag_in_the_nomad_job_exists() {
    let job =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs/consul-eds-server.nomad.hcl");
    let body = parse_job(&job).expect("the job parses as HCL");
    let known =
        help_flags(Path::new(env!("CARGO_BIN_EXE_consul-eds-server"))).expect("--help runs");
    assert!(
        known.contains("--consul-addr"),
        "help parsing found {known:?}"
    );
    let tasks = task_args(&body);
    let task = tasks
        .iter()
        .find(|t| t.task == "consul-eds-server")
        .expect("the job has a consul-eds-server task");
    let flags = task.flags();
    assert!(flags.len() >= 4, "too few flags found: {flags:?}");
    for flag in flags {
        assert!(
            known.contains(&flag),
            "{} passes {flag}, which --help does not list",
            job.display()
        );
    }
}

#[test]
fn a_flag_that_does_not_exist_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("bad.nomad.hcl");
    std::fs::write(
        &job,
        "job \"x\" {\n group \"g\" {\n  task \"consul-eds-server\" {\n   config {\n    args = [\"--no-such-flag\", \"1\"]\n   }\n  }\n }\n}\n",
    )
    .expect("write");
    let tasks = task_args(&parse_job(&job).expect("parses"));
    let known =
        help_flags(Path::new(env!("CARGO_BIN_EXE_consul-eds-server"))).expect("--help runs");
    assert!(tasks[0].flags().iter().any(|f| !known.contains(f)));
}

/// xDS decides where traffic goes: the shipped job serves it only over
/// mutual TLS, only for the services it lists, and binds no port on every
/// interface.
#[test]
fn the_nomad_job_serves_xds_only_over_mutual_tls_for_listed_services() {
    let job =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs/consul-eds-server.nomad.hcl");
    let tasks = task_args(&parse_job(&job).expect("the job parses as HCL"));
    let task = tasks
        .iter()
        .find(|t| t.task == "consul-eds-server")
        .expect("the job has a consul-eds-server task");
    assert!(
        task.value_of("--xds-listen").is_some(),
        "the job says where xDS listens"
    );
    let findings = task.exposure_findings();
    assert!(findings.is_empty(), "{findings:#?}");
}

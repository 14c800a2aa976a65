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

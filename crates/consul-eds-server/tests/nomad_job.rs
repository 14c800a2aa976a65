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

/// The shipped server job runs in gateway mode with listeners Envoy can
/// bind, and the sample application's tags are route tags the gateway reads
/// without a problem: one TLS route, a circuit breaker, and canary tags that
/// are the ordinary ones plus `edge.canary`.
#[test]
fn the_sample_application_declares_a_route_the_gateway_serves() {
    assert_sample_route(
        "sample-app.nomad.hcl",
        "sample-app",
        "consul",
        "app.example.com",
    );
}

/// The same for the sample registered in Nomad itself: the tags say the
/// same, only the provider differs.
#[test]
fn the_nomad_services_sample_declares_a_route_the_gateway_serves() {
    assert_sample_route(
        "sample-app-nomad-services.nomad.hcl",
        "sample-app-nomad",
        "nomad",
        "nomad-app.example.com",
    );
}

/// The server job reads Nomad's own registry beside Consul's, with the
/// token of its workload identity (the file Nomad writes for `identity {
/// file = true }`), so a job registering `provider = "nomad"` services is
/// routed by the shipped deployment.
#[test]
fn the_server_job_reads_nomad_services_with_its_workload_identity() {
    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs");
    let path = jobs.join("consul-eds-server.nomad.hcl");
    let tasks = task_args(&parse_job(&path).expect("parses"));
    let task = tasks
        .iter()
        .find(|t| t.task == "consul-eds-server")
        .expect("task");
    assert_eq!(task.value_of("--sources"), Some("consul,nomad"));
    // An interpolated value is kept as the job writes it, quotes and all.
    assert_eq!(
        task.value_of("--nomad-token-file"),
        Some("\"${NOMAD_SECRETS_DIR}/nomad_token\"")
    );
    assert!(task.value_of("--nomad-addr").is_some(), "{:?}", task.args);
    let text = std::fs::read_to_string(&path).expect("read");
    let identity = text
        .lines()
        .position(|line| line.trim() == "identity {")
        .expect("an identity block, not commented out");
    assert!(
        text.lines()
            .skip(identity)
            .take(3)
            .any(|line| line.trim() == "file = true"),
        "the identity's token is written to a file"
    );
}

fn assert_sample_route(job: &str, service_name: &str, provider: &str, host: &str) {
    use route_tags::{InstanceTags, ListenerSpec, RouteTable, ServiceInput, TagPrefix};
    use test_support::nomad::service_tags;

    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nomad-jobs");
    let server = task_args(&parse_job(&jobs.join("consul-eds-server.nomad.hcl")).expect("parses"));
    let server = server
        .iter()
        .find(|t| t.task == "consul-eds-server")
        .expect("task");
    assert!(
        server.args.iter().any(|a| a == "--gateway"),
        "{:?}",
        server.args
    );
    // The listeners are a list variable joined with `;`, as the server's
    // CONSUL_EDS_LISTENERS reads them; each must parse.
    let listeners: Vec<ListenerSpec> = ["web=0.0.0.0:80", "websecure=0.0.0.0:443,tls"]
        .iter()
        .map(|spec| spec.parse().expect("a listener the server accepts"))
        .collect();
    let text = std::fs::read_to_string(jobs.join("consul-eds-server.nomad.hcl")).expect("read");
    assert!(
        text.contains(r#"default = ["web=0.0.0.0:80", "websecure=0.0.0.0:443,tls"]"#),
        "the test's listeners are the job's defaults"
    );

    let app = parse_job(&jobs.join(job)).expect("the sample job parses");
    let services = service_tags(&app, &[]).expect("tags evaluate");
    let service = services
        .iter()
        .find(|s| s.name == service_name)
        .unwrap_or_else(|| panic!("{job} has no service {service_name}"));
    assert_eq!(service.provider, provider, "{job}");
    let mut expected_canary = service.tags.clone();
    expected_canary.push("edge.canary".to_owned());
    assert_eq!(service.canary_tags, expected_canary);

    let prefix = TagPrefix::new("edge").expect("prefix");
    let decl = route_tags::service_decl(
        &prefix,
        &[
            InstanceTags {
                id: "a-1",
                tags: &service.tags,
            },
            InstanceTags {
                id: "a-2",
                tags: &service.tags,
            },
            InstanceTags {
                id: "a-canary",
                tags: &service.canary_tags,
            },
        ],
    );
    assert!(decl.problems.is_empty(), "{:?}", decl.problems);
    assert!(decl.has_canary);
    assert_eq!(decl.cluster.circuit_breakers.max_requests, Some(1024));
    let table = RouteTable::build(
        &listeners,
        &[ServiceInput {
            service: service_name,
            decl: &decl,
        }],
        &RouteTable::default(),
    );
    assert!(table.problems.is_empty(), "{:?}", table.problems);
    assert_eq!(
        table.tls_hosts(),
        vec![route_tags::HostPattern::Exact(host.to_owned())]
    );
    assert!(table.clusters[0].canary, "the canary gets its share");
}

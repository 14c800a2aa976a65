//! Nomad job files, checked without Nomad: they parse as HCL, every flag a
//! task passes to one of our binaries exists in that binary's `--help`, no
//! listener that serves secrets or config is reachable from the network
//! without mutual TLS, and a template renders to what its program accepts.

use std::collections::BTreeSet;
use std::path::Path;

use hcl::{Block, Body, Expression};

/// A value for a job's `var.*` when rendering a template.
pub use hcl::Value;

use crate::{HarnessError, Result};

/// A task's `config { args = [...] }`, as written (interpolations kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskArgs {
    pub job: String,
    pub group: String,
    pub task: String,
    pub args: Vec<String>,
}

impl TaskArgs {
    /// The `--long-flags` among the arguments (`--flag=value` counts as `--flag`).
    pub fn flags(&self) -> Vec<String> {
        self.args
            .iter()
            .filter(|arg| arg.starts_with("--"))
            .map(|arg| arg.split('=').next().unwrap_or(arg).to_owned())
            .collect()
    }

    /// The value given to `flag` (`--flag value` or `--flag=value`).
    pub fn value_of(&self, flag: &str) -> Option<&str> {
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            if arg == flag {
                return args.next().map(String::as_str);
            }
            if let Some(value) = arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
                return Some(value);
            }
        }
        None
    }

    /// What in this task exposes secrets or config to the network: an SDS or
    /// xDS listener beyond loopback without certificate, key *and* client CA
    /// (TLS without a client CA only encrypts: anyone can still ask), an xDS
    /// listener beyond loopback without a `--services` allow-list, and an
    /// admin listener on every interface. Empty when the task is safe.
    pub fn exposure_findings(&self) -> Vec<String> {
        const SERVERS: [(&str, [&str; 3]); 2] = [
            (
                "--sds-listen",
                ["--sds-tls-cert", "--sds-tls-key", "--sds-client-ca"],
            ),
            (
                "--xds-listen",
                ["--xds-tls-cert", "--xds-tls-key", "--xds-tls-client-ca"],
            ),
        ];
        let at = format!("{}/{}/{}", self.job, self.group, self.task);
        let mut findings = Vec::new();
        for (listen, tls) in SERVERS {
            // Absent: the services' default is loopback.
            let Some(address) = self.value_of(listen) else {
                continue;
            };
            if is_local(address) {
                continue;
            }
            let missing: Vec<&str> = tls
                .iter()
                .copied()
                .filter(|flag| self.value_of(flag).is_none_or(str::is_empty))
                .collect();
            if !missing.is_empty() {
                findings.push(format!(
                    "{at}: {listen} {address} is reachable from the network without mTLS \
                     (missing {})",
                    missing.join(", ")
                ));
            }
            if listen == "--xds-listen" && self.value_of("--services").is_none() {
                findings.push(format!(
                    "{at}: {listen} {address} is reachable from the network and any client \
                     can make it watch any service name (no --services allow-list)"
                ));
            }
        }
        if let Some(address) = self.value_of("--admin-listen")
            && is_every_interface(address)
        {
            findings.push(format!(
                "{at}: --admin-listen {address} listens on every interface; bind the node's \
                 own address (NOMAD_IP_<port>) or loopback"
            ));
        }
        findings
    }
}

/// Loopback or a Unix socket: only processes on this node can connect.
fn is_local(address: &str) -> bool {
    if address.starts_with("unix:") {
        return true;
    }
    let host = host_of(address);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_every_interface(address: &str) -> bool {
    let host = host_of(address);
    host.is_empty()
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
}

/// The host part of `host:port` or `[v6]:port`, brackets removed.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The `data` of the `template` block whose `destination` ends with
/// `destination_suffix`, rendered the way Nomad renders a job's HCL before
/// consul-template sees it: `var.*` references and `%{ for }` directives
/// evaluated with `vars`; consul-template's own `{{ ... }}` actions are left
/// as they are.
pub fn render_template_data(
    body: &Body,
    destination_suffix: &str,
    vars: &[(&str, Value)],
) -> Result<String> {
    use hcl::eval::Evaluate;

    let template = all_blocks(body, "template")
        .into_iter()
        .find(|block| {
            attribute(block.body(), "destination").is_some_and(|d| {
                d.to_string()
                    .trim_end_matches('"')
                    .ends_with(destination_suffix)
            })
        })
        .ok_or_else(|| HarnessError::Parse {
            path: destination_suffix.into(),
            reason: "no template block has this destination".to_owned(),
        })?;
    let data = attribute(template.body(), "data").ok_or_else(|| HarnessError::Parse {
        path: destination_suffix.into(),
        reason: "the template has no data".to_owned(),
    })?;
    let mut context = hcl::eval::Context::new();
    let vars: hcl::Map<String, Value> = vars
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    context.declare_var("var", Value::Object(vars));
    match data.evaluate(&context) {
        Ok(Value::String(text)) => Ok(text),
        Ok(other) => Err(HarnessError::Parse {
            path: destination_suffix.into(),
            reason: format!("the template's data is not a string: {other:?}"),
        }),
        Err(error) => Err(HarnessError::Parse {
            path: destination_suffix.into(),
            reason: format!("the template does not render: {error}"),
        }),
    }
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// Every block named `identifier` at any depth.
fn all_blocks<'a>(body: &'a Body, identifier: &str) -> Vec<&'a Block> {
    let mut found = Vec::new();
    for block in body.blocks() {
        if block.identifier() == identifier {
            found.push(block);
        }
        found.extend(all_blocks(block.body(), identifier));
    }
    found
}

/// A `service` block's tags, evaluated as Nomad would (`${var.*}` from the
/// job's variable defaults, overridden by `vars`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTags {
    pub name: String,
    /// Where Nomad registers it: `consul` (Nomad's default) or `nomad`.
    pub provider: String,
    pub tags: Vec<String>,
    pub canary_tags: Vec<String>,
}

/// Every `service` block of a job, its tags evaluated.
pub fn service_tags(body: &Body, vars: &[(&str, Value)]) -> Result<Vec<ServiceTags>> {
    use hcl::eval::Evaluate;

    let mut known: hcl::Map<String, Value> = hcl::Map::new();
    for variable in blocks(body, "variable") {
        if let Some(default) = attribute(variable.body(), "default") {
            let value =
                default
                    .evaluate(&hcl::eval::Context::new())
                    .map_err(|e| HarnessError::Parse {
                        path: label(variable).into(),
                        reason: format!("variable default does not evaluate: {e}"),
                    })?;
            known.insert(label(variable), value);
        }
    }
    for (name, value) in vars {
        known.insert((*name).to_owned(), value.clone());
    }
    let mut context = hcl::eval::Context::new();
    context.declare_var("var", Value::Object(known));
    let list = |block: &Block, key: &str| -> Result<Vec<String>> {
        let Some(expression) = attribute(block.body(), key) else {
            return Ok(Vec::new());
        };
        match expression.evaluate(&context) {
            Ok(Value::Array(items)) => Ok(items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .collect()),
            Ok(other) => Err(HarnessError::Parse {
                path: key.into(),
                reason: format!("`{key}` is not a list: {other:?}"),
            }),
            Err(error) => Err(HarnessError::Parse {
                path: key.into(),
                reason: format!("`{key}` does not evaluate: {error}"),
            }),
        }
    };
    let mut found = Vec::new();
    for service in all_blocks(body, "service") {
        let text = |key: &str| {
            attribute(service.body(), key)
                .and_then(|value| value.evaluate(&context).ok())
                .and_then(|value| value.as_str().map(str::to_owned))
        };
        found.push(ServiceTags {
            name: text("name").unwrap_or_default(),
            provider: text("provider").unwrap_or_else(|| "consul".to_owned()),
            tags: list(service, "tags")?,
            canary_tags: list(service, "canary_tags")?,
        });
    }
    Ok(found)
}

/// Whether the task named `task` has an `identity` block with `file =
/// true`: Nomad (1.5+) then writes the task's workload-identity token to
/// `secrets/nomad_token`, the file a `--nomad-token-file` can name.
pub fn writes_identity_token(body: &Body, task: &str) -> bool {
    all_blocks(body, "task")
        .into_iter()
        .filter(|block| label(block) == task)
        .flat_map(|block| blocks(block.body(), "identity"))
        .any(|identity| {
            matches!(
                attribute(identity.body(), "file"),
                Some(Expression::Bool(true))
            )
        })
}

/// The default of the job's variable `name`, evaluated; `None` when the
/// job declares no such variable or it has no default.
pub fn variable_default(body: &Body, name: &str) -> Result<Option<Value>> {
    use hcl::eval::Evaluate;

    let Some(default) = blocks(body, "variable")
        .find(|variable| label(variable) == name)
        .and_then(|variable| attribute(variable.body(), "default"))
    else {
        return Ok(None);
    };
    default
        .evaluate(&hcl::eval::Context::new())
        .map(Some)
        .map_err(|e| HarnessError::Parse {
            path: name.into(),
            reason: format!("variable default does not evaluate: {e}"),
        })
}

/// Parses a job file; an HCL error names the file and the position.
pub fn parse_job(path: &Path) -> Result<Body> {
    let text = std::fs::read_to_string(path).map_err(HarnessError::io(path))?;
    hcl::parse(&text).map_err(|e| HarnessError::Parse {
        path: path.to_owned(),
        reason: format!("invalid HCL: {e}"),
    })
}

/// Every task's args in a parsed job.
pub fn task_args(body: &Body) -> Vec<TaskArgs> {
    let mut found = Vec::new();
    for job in blocks(body, "job") {
        let job_name = label(job);
        for group in blocks(job.body(), "group") {
            for task in blocks(group.body(), "task") {
                for config in blocks(task.body(), "config") {
                    let args = config
                        .body()
                        .attributes()
                        .find(|a| a.key() == "args")
                        .map(|a| strings(a.expr()))
                        .unwrap_or_default();
                    found.push(TaskArgs {
                        job: job_name.clone(),
                        group: label(group),
                        task: label(task),
                        args,
                    });
                }
            }
        }
    }
    found
}

/// The long flags a binary's `--help` lists.
pub fn help_flags(binary: &Path) -> Result<BTreeSet<String>> {
    let output = std::process::Command::new(binary)
        .arg("--help")
        .output()
        .map_err(|source| HarnessError::Spawn {
            name: binary.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect())
}

fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == identifier)
}

fn label(block: &Block) -> String {
    block
        .labels()
        .first()
        .map(|l| l.as_str().to_owned())
        .unwrap_or_default()
}

/// String elements of an array; interpolated or computed ones as their HCL text.
fn strings(expr: &Expression) -> Vec<String> {
    match expr {
        Expression::Array(items) => items
            .iter()
            .map(|item| match item {
                Expression::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(args: &[&str]) -> TaskArgs {
        TaskArgs {
            job: "j".into(),
            group: "g".into(),
            task: "t".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn a_network_sds_listener_without_a_client_ca_is_found() {
        let findings = task(&[
            "--sds-listen",
            "0.0.0.0:20000",
            "--sds-tls-cert",
            "c",
            "--sds-tls-key",
            "k",
        ])
        .exposure_findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].contains("missing --sds-client-ca"),
            "{findings:?}"
        );
    }

    #[test]
    fn a_node_address_needs_mtls_too() {
        let findings =
            task(&["--sds-listen=${NOMAD_IP_sds}:${NOMAD_PORT_sds}"]).exposure_findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
    }

    #[test]
    fn an_xds_listener_needs_mtls_and_an_allow_list() {
        let open = task(&["--xds-listen", "10.0.0.5:15000"]).exposure_findings();
        assert_eq!(open.len(), 2, "{open:?}");
        let safe = task(&[
            "--xds-listen",
            "10.0.0.5:15000",
            "--xds-tls-cert",
            "c",
            "--xds-tls-key",
            "k",
            "--xds-tls-client-ca",
            "ca",
            "--services",
            "web",
        ])
        .exposure_findings();
        assert!(safe.is_empty(), "{safe:?}");
    }

    #[test]
    fn loopback_and_unix_sockets_are_local() {
        for address in [
            "127.0.0.1:20000",
            "[::1]:20000",
            "localhost:1",
            "unix:/run/sds.sock",
        ] {
            assert!(
                task(&["--sds-listen", address])
                    .exposure_findings()
                    .is_empty(),
                "{address}"
            );
        }
    }

    #[test]
    fn an_admin_listener_on_every_interface_is_found() {
        assert_eq!(
            task(&["--admin-listen", "0.0.0.0:9102"])
                .exposure_findings()
                .len(),
            1
        );
        assert_eq!(
            task(&["--admin-listen", "[::]:9102"])
                .exposure_findings()
                .len(),
            1
        );
        assert!(
            task(&["--admin-listen", "${NOMAD_IP_admin}:${NOMAD_PORT_admin}"])
                .exposure_findings()
                .is_empty()
        );
    }

    #[test]
    fn an_identity_token_is_written_only_with_file_true_in_that_task() {
        let body = hcl::parse(
            r#"
variable "domains" {
  type    = string
  default = "example.com"
}
job "j" {
  group "g" {
    task "a" {
      identity {
        file = true
      }
    }
    task "b" {
      identity {
        file = false
      }
    }
    task "c" {
      # identity {
      #   file = true
      # }
    }
  }
}
"#,
        )
        .expect("parses");
        assert!(writes_identity_token(&body, "a"));
        assert!(!writes_identity_token(&body, "b"));
        assert!(!writes_identity_token(&body, "c"));
        assert!(!writes_identity_token(&body, "missing"));
        assert_eq!(
            variable_default(&body, "domains").expect("evaluates"),
            Some(Value::from("example.com"))
        );
        assert_eq!(variable_default(&body, "other").expect("evaluates"), None);
    }

    #[test]
    fn a_template_renders_its_variables_and_keeps_consul_template_actions() {
        let body = hcl::parse(
            r#"
job "j" {
  group "g" {
    task "t" {
      template {
        destination = "${NOMAD_TASK_DIR}/out.yaml"
        data        = <<-EOT
%{ for name in var.names ~}
- ${name}: {{ env "X" }}
%{ endfor ~}
EOT
      }
    }
  }
}
"#,
        )
        .expect("parses");
        let names = Value::Array(vec!["a".into(), "b".into()]);
        let text = render_template_data(&body, "/out.yaml", &[("names", names)]).expect("renders");
        assert_eq!(text, "- a: {{ env \"X\" }}\n- b: {{ env \"X\" }}\n");
    }
}

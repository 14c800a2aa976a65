//! Nomad job files, checked without Nomad: they parse as HCL, and every flag
//! a task passes to one of our binaries exists in that binary's `--help`.

use std::collections::BTreeSet;
use std::path::Path;

use hcl::{Block, Body, Expression};

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

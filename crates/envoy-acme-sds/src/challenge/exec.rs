//! A challenge solver that runs an operator-supplied program, for DNS
//! providers reachable only through their own API (the lego/certbot "manual
//! hook" convention).
//!
//! The program is called once per challenge:
//!
//! ```text
//! <program> [args...] present <domain> <token> <value>
//! <program> [args...] cleanup <domain> <token> <value>
//! ```
//!
//! with the same in the environment as `ACME_ACTION`, `ACME_DOMAIN`,
//! `ACME_TOKEN`, `ACME_VALUE`, plus `ACME_CHALLENGE_TYPE` and, for DNS-01,
//! `ACME_RECORD_NAME` (`_acme-challenge.<domain>`). `<domain>` is the name the
//! CA validates (no `*.`), `<value>` the TXT value for DNS-01 or the key
//! authorization for HTTP-01. `present` must only exit 0 once the record is
//! served. The program inherits no stdin; its output is captured, not logged.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Command;
use tracing::{debug, warn};

use super::{Challenge, ChallengeKind, ChallengeSolver, SolverError};

/// How much of the hook's stderr an error carries.
const STDERR_TAIL: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("starting `{program}`: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {action}` for {domain} exited with {status}: {stderr}")]
    Failed {
        program: PathBuf,
        action: &'static str,
        domain: String,
        status: String,
        stderr: String,
    },
    #[error("`{program} {action}` for {domain} did not finish within {timeout:?}")]
    Timeout {
        program: PathBuf,
        action: &'static str,
        domain: String,
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct ExecHookConfig {
    pub program: PathBuf,
    /// Arguments placed before the action.
    pub args: Vec<String>,
    /// Which challenge the hook answers; DNS-01 unless it serves HTTP files.
    pub kind: ChallengeKind,
    /// Per invocation; a hook waiting for DNS propagation may need minutes.
    pub timeout: Duration,
}

impl ExecHookConfig {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            kind: ChallengeKind::Dns01,
            timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExecHookSolver {
    config: ExecHookConfig,
}

impl ExecHookSolver {
    pub fn new(config: ExecHookConfig) -> Self {
        Self { config }
    }

    async fn run(&self, action: &'static str, challenge: &Challenge) -> Result<(), ExecError> {
        let value = match self.config.kind {
            ChallengeKind::Dns01 => challenge.dns01_value(),
            ChallengeKind::Http01 => challenge.key_authorization().to_owned(),
        };
        let domain = challenge.domain().to_owned();
        let mut command = Command::new(&self.config.program);
        command
            .args(&self.config.args)
            .args([action, domain.as_str(), challenge.token(), value.as_str()])
            .env("ACME_ACTION", action)
            .env("ACME_DOMAIN", &domain)
            .env("ACME_TOKEN", challenge.token())
            .env("ACME_VALUE", &value)
            .env("ACME_CHALLENGE_TYPE", self.config.kind.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A hook that outlives its timeout is killed with the future.
            .kill_on_drop(true);
        if self.config.kind == ChallengeKind::Dns01 {
            command.env("ACME_RECORD_NAME", challenge.dns01_record_name());
        }
        let child = spawn(&mut command)
            .await
            .map_err(|source| ExecError::Spawn {
                program: self.config.program.clone(),
                source,
            })?;
        let output = tokio::time::timeout(self.config.timeout, child.wait_with_output())
            .await
            .map_err(|_| ExecError::Timeout {
                program: self.config.program.clone(),
                action,
                domain: domain.clone(),
                timeout: self.config.timeout,
            })?
            .map_err(|source| ExecError::Spawn {
                program: self.config.program.clone(),
                source,
            })?;
        if output.status.success() {
            debug!(action, %domain, "exec hook succeeded");
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail_start = stderr
            .char_indices()
            .map(|(i, _)| i)
            .find(|i| stderr.len() - i <= STDERR_TAIL)
            .unwrap_or(stderr.len());
        Err(ExecError::Failed {
            program: self.config.program.clone(),
            action,
            domain,
            status: output.status.to_string(),
            stderr: stderr[tail_start..].trim().to_owned(),
        })
    }
}

#[async_trait]
impl ChallengeSolver for ExecHookSolver {
    fn kind(&self) -> ChallengeKind {
        self.config.kind
    }

    async fn present(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        for challenge in challenges {
            self.run("present", challenge).await?;
        }
        Ok(())
    }

    /// Runs every cleanup even if one fails, and reports the first failure.
    async fn cleanup(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        let mut first_error = None;
        for challenge in challenges {
            if let Err(error) = self.run("cleanup", challenge).await {
                warn!(%error, "exec hook cleanup failed");
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// Starts `command`, retrying briefly while the program is "busy"
/// (ETXTBSY): the hook was just written, and a process forked meanwhile
/// (by this service or by whatever deployed the hook) still holds it open
/// for writing until that child execs. That clears within milliseconds.
async fn spawn(command: &mut Command) -> std::io::Result<tokio::process::Child> {
    let mut delay = Duration::from_millis(10);
    for _ in 0..5 {
        match command.spawn() {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainName;

    fn script(dir: &std::path::Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("hook.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write hook");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        path
    }

    fn challenge() -> Challenge {
        Challenge::new(
            DomainName::parse("*.example.test").expect("name"),
            "tok".to_owned(),
            "tok.thumb".to_owned(),
        )
    }

    #[tokio::test]
    async fn passes_action_domain_token_and_value_as_args_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("calls");
        let hook = script(
            dir.path(),
            &format!(
                "echo \"$@|$ACME_ACTION|$ACME_DOMAIN|$ACME_TOKEN|$ACME_VALUE|$ACME_RECORD_NAME|$ACME_CHALLENGE_TYPE\" >> {}",
                log.display()
            ),
        );
        let mut config = ExecHookConfig::new(hook);
        config.args = vec!["--zone".to_owned(), "example.test".to_owned()];
        let solver = ExecHookSolver::new(config);
        let challenge = challenge();
        solver
            .present(std::slice::from_ref(&challenge))
            .await
            .expect("present");
        solver
            .cleanup(std::slice::from_ref(&challenge))
            .await
            .expect("cleanup");
        let calls = std::fs::read_to_string(&log).expect("log");
        let value = challenge.dns01_value();
        assert_eq!(
            calls,
            format!(
                "--zone example.test present example.test tok {value}|present|example.test|tok|{value}|_acme-challenge.example.test|dns-01\n\
                 --zone example.test cleanup example.test tok {value}|cleanup|example.test|tok|{value}|_acme-challenge.example.test|dns-01\n"
            )
        );
    }

    #[tokio::test]
    async fn failure_reports_status_and_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hook = script(dir.path(), "echo 'provider said no' >&2; exit 3");
        let solver = ExecHookSolver::new(ExecHookConfig::new(hook));
        let err = solver.present(&[challenge()]).await.expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("provider said no"), "{text}");
    }

    #[tokio::test]
    async fn a_hanging_hook_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hook = script(dir.path(), "exec sleep 30");
        let mut config = ExecHookConfig::new(hook);
        config.timeout = Duration::from_millis(200);
        let solver = ExecHookSolver::new(config);
        let err = solver.present(&[challenge()]).await.expect_err("times out");
        assert!(
            matches!(err, SolverError::Exec(ExecError::Timeout { .. })),
            "{err}"
        );
    }
}

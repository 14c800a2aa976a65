use std::path::PathBuf;
use std::time::Duration;

/// Why a real component could not be started or queried.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("`{name}` not found in {looked_in}: run `cargo xtask tools` first")]
    ToolMissing { name: String, looked_in: PathBuf },
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited early ({status}); its log ends with:\n{log_tail}")]
    ExitedEarly {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error("{name} not ready after {after:?}; its log ends with:\n{log_tail}")]
    NotReady {
        name: String,
        after: Duration,
        log_tail: String,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("HTTP request to {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HarnessError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

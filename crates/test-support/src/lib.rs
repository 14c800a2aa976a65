//! Test harness that runs the **real** components this project talks to.
//!
//! Every server starts on free loopback ports in its own temporary directory
//! and is killed when its handle is dropped, including during a panic's
//! unwinding. Children are also started under `setpriv --pdeathsig KILL`, so
//! the kernel kills them if the test process itself dies without unwinding
//! (SIGKILL, abort): no orphans either way.
//!
//! Binaries come from `.tools/bin` (installed by `cargo xtask tools`); set
//! `CONTROL_PLANE_TOOLS` to use another directory.
//!
//! Two in-process stand-ins are the exceptions. [`acme_ari`] fronts a real
//! pebble rather than replacing it: it adds what pebble 2.4 lacks (ARI).
//! [`nomad_api`] replaces Nomad's service-discovery API, because no Nomad
//! binary can be obtained under an open-source licence (ADR 0007).

pub mod acme_ari;
mod backend;
pub mod bootstrap;
mod consul;
pub mod docs;
mod envoy;
mod error;
pub mod gateway;
mod http;
mod knot;
pub mod nomad;
pub mod nomad_api;
mod pebble;
mod process;
mod proxy;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use backend::Backend;
pub use consul::{ConsulAgent, ConsulOptions};
pub use envoy::Envoy;
pub use error::HarnessError;
pub use http::{HttpResponse, http_get, http_request};
pub use knot::{Knot, TsigKey};
pub use pebble::{Pebble, PebbleOptions};
pub use process::ManagedProcess;
pub use proxy::FreezableProxy;
pub use tls::{LeafPem, TestCa, https_get};

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// A TCP port that was free a moment ago on 127.0.0.1.
///
/// There is an unavoidable window between releasing the port and the child
/// binding it; prefer letting a server bind port 0 and report its address
/// where the server supports it (Envoy's admin does).
pub fn free_port() -> u16 {
    // The kernel may hand a released port out again at once; within this
    // process (the tests of one binary run side by side) a port is given
    // out only once, so two servers are never told to bind the same port.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
        if HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// Where a tool lives: `$CONTROL_PLANE_TOOLS/<name>` or the workspace's `.tools/bin/<name>`.
pub fn tool(name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("CONTROL_PLANE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin"));
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(HarnessError::ToolMissing {
            name: name.to_owned(),
            looked_in: dir,
        })
    }
}

/// Polls `probe` every `interval` until it yields `Some`, or fails after `limit`.
///
/// Tests assert on eventually-consistent systems (Envoy applying an update,
/// Consul electing a leader); a bounded poll states the expectation and its
/// deadline in one place instead of sleeping a guessed amount.
pub async fn eventually<T, F, Fut>(
    what: &str,
    limit: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                after: limit,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

//! The measured `consul-eds-server` process, the Consul client that feeds it,
//! and readings of what it and Envoy report about themselves.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use consul_client::config::Address;
use consul_client::{Client, ClientConfig};
use test_support::{ConsulAgent, Envoy, ManagedProcess, eventually, free_port, http_get};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("consul-eds-server: {0}")]
    Harness(#[from] test_support::HarnessError),
    #[error("temporary directory for consul-eds-server: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("Consul address: {0}")]
    Address(#[from] consul_client::ConfigError),
    #[error("Consul client: {0}")]
    Client(#[from] consul_client::Error),
    #[error("consul-eds-server /metrics answered {status}: {body}")]
    Metrics { status: u16, body: String },
}

/// A running `consul-eds-server`, killed when dropped.
#[derive(Debug)]
pub struct EdsServer {
    pub process: ManagedProcess,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl EdsServer {
    /// Starts `binary` against `consul` with `extra` flags and waits for its
    /// admin's `/healthz`. Logs only warnings: a benchmark's own logging
    /// must not be what it measures.
    pub async fn start(
        binary: &Path,
        consul: &ConsulAgent,
        extra: &[&str],
    ) -> Result<Self, ServerError> {
        Self::start_reading(binary, &consul.http_url(), extra).await
    }

    /// [`start`](Self::start) with `--consul-addr consul_url`, which need not
    /// answer when `extra` chooses other sources (`--sources nomad`).
    pub async fn start_reading(
        binary: &Path,
        consul_url: &str,
        extra: &[&str],
    ) -> Result<Self, ServerError> {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().map_err(ServerError::TempDir)?;
        let mut argv = vec![
            "--consul-addr".to_owned(),
            consul_url.to_owned(),
            "--xds-listen".to_owned(),
            xds.to_string(),
            "--admin-listen".to_owned(),
            admin.to_string(),
            "--log-format".to_owned(),
            "json".to_owned(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = ManagedProcess::spawn(
            "consul-eds-server",
            binary,
            &argv,
            &[("RUST_LOG".to_owned(), "warn".to_owned())],
            &dir.path().join("eds.log"),
        )?;
        eventually(
            "consul-eds-server admin",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async {
                http_get(admin, "/healthz")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            },
        )
        .await?;
        Ok(Self {
            process,
            xds,
            admin,
            _dir: dir,
        })
    }

    /// The server's Prometheus text from its admin's `/metrics`.
    pub async fn metrics(&self) -> Result<String, ServerError> {
        let response = http_get(self.admin, "/metrics").await?;
        if response.status != 200 {
            return Err(ServerError::Metrics {
                status: response.status,
                body: response.body,
            });
        }
        Ok(response.body)
    }
}

/// A client for `consul` allowed `max_blocking` blocking queries at once.
pub fn consul_client(consul: &ConsulAgent, max_blocking: usize) -> Result<Client, ServerError> {
    let address: Address = consul
        .http_url()
        .parse()
        .map_err(consul_client::ConfigError::from)?;
    let mut config = ClientConfig::new(address);
    config.max_blocking_queries = max_blocking;
    config.max_concurrent_requests = 64;
    Ok(Client::new(config)?)
}

/// The sum of every sample of the Prometheus metric `name` (all label sets),
/// or of those whose labels contain `label` when given.
pub fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && label.is_none_or(|l| labels.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The sum of the Envoy stats matched by the regular expression `filter`.
pub async fn envoy_stat_sum(envoy: &Envoy, filter: &str) -> Result<u64, ServerError> {
    let body = envoy.admin_get(&format!("/stats?filter={filter}")).await?;
    Ok(body
        .lines()
        .filter_map(|line| {
            line.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum())
}

/// A duration in milliseconds with one decimal, for reports.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_every_label_set_or_the_chosen_ones() {
        let text = "# HELP xds_pushes Discovery responses sent\n\
                    # TYPE xds_pushes counter\n\
                    xds_pushes_total{type=\"route\"} 3\n\
                    xds_pushes_total{type=\"cluster\"} 4\n\
                    xds_pushed_resources_total{type=\"route\"} 100\n\
                    up 1\n";
        assert_eq!(metric_sum(text, "xds_pushes_total", None), 7.0);
        assert_eq!(
            metric_sum(text, "xds_pushes_total", Some("type=\"route\"")),
            3.0
        );
        assert_eq!(metric_sum(text, "up", None), 1.0);
        assert_eq!(metric_sum(text, "absent_total", None), 0.0);
    }

    #[test]
    fn milliseconds_have_one_decimal() {
        assert_eq!(ms(Duration::from_micros(12_345)), "12.3 ms");
    }
}

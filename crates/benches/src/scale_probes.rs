//! Timed probes of the scale bench (changes made during a storm, each
//! awaited in a small Envoy) and the connections a process holds to the agent.
//!
//! Why a second, small Envoy: polling the admin of an Envoy with thousands
//! of clusters costs tens of milliseconds a poll, on the thread that also
//! applies the updates being timed. An Envoy subscribed over ADS to the
//! probe clusters only gets the same pushes from the same server, and its
//! `/stats?filter=` answers in about a millisecond: the cost of a poll is
//! measured and printed beside the figures.

use std::time::{Duration, Instant};

use test_support::Envoy;

use crate::server::envoy_stat_sum;

/// How long a probe waits before it counts the change as lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one probe saw.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    /// From the change's acknowledgement by Consul to the reply of the
    /// first poll that showed it; `None` if it never showed.
    pub visible_after: Option<Duration>,
    /// Mean round trip of this probe's polls.
    pub poll: Duration,
    /// The first poll already showed `want`: the change before this one
    /// (to the same service) never showed, so this one measured nothing.
    pub already: bool,
}

/// Polls `cluster`'s `membership_total` in `envoy` until it is `want`.
pub async fn until_members(
    envoy: &Envoy,
    cluster: &str,
    want: u64,
    changed_at: Instant,
) -> ProbeResult {
    let filter = format!(
        "^cluster\\.{}\\.membership_total$",
        cluster.replace('.', "\\.")
    );
    let mut polls = 0u32;
    let mut polling = Duration::ZERO;
    loop {
        let sent = Instant::now();
        let seen = envoy_stat_sum(envoy, &filter).await.ok();
        let replied = Instant::now();
        polls += 1;
        polling += replied - sent;
        let poll = polling / polls;
        if seen == Some(want) {
            return ProbeResult {
                visible_after: Some(replied - changed_at),
                poll,
                already: polls == 1,
            };
        }
        if replied - changed_at > PROBE_TIMEOUT {
            return ProbeResult {
                visible_after: None,
                poll,
                already: false,
            };
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Established TCP connections of process `pid` to `port` on loopback,
/// from `/proc`: the process's socket inodes matched against the kernel's
/// table. `None` where `/proc` cannot be read.
pub fn connections_to(pid: u32, port: u16) -> Option<usize> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(target) = std::fs::read_link(entry.ok()?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        count += text
            .lines()
            .skip(1)
            .filter(|line| connects_to(line, port, &inodes))
            .count();
    }
    Some(count)
}

/// Whether a `/proc/net/tcp` line is an established connection to `port`
/// owned by one of `inodes`.
fn connects_to(line: &str, port: u16, inodes: &std::collections::HashSet<String>) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local remote st tx:rx tr:when retrnsmt uid timeout inode
    let (Some(remote), Some(state), Some(inode)) = (fields.get(2), fields.get(3), fields.get(9))
    else {
        return false;
    };
    let remote_port = remote
        .rsplit_once(':')
        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    *state == "01" && remote_port == Some(port) && inodes.contains(*inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_line_counts_when_established_to_the_port_and_owned() {
        let inodes = std::collections::HashSet::from(["4242".to_owned()]);
        // 127.0.0.1:40000 -> 127.0.0.1:8500, established, inode 4242.
        let line = "  1: 0100007F:9C40 0100007F:2134 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1";
        assert!(connects_to(line, 8500, &inodes));
        assert!(!connects_to(line, 8501, &inodes), "another port");
        assert!(
            !connects_to(&line.replace(" 01 ", " 06 "), 8500, &inodes),
            "TIME_WAIT"
        );
        assert!(
            !connects_to(line, 8500, &Default::default()),
            "another process's"
        );
    }

    #[tokio::test]
    async fn this_process_connections_are_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let before = connections_to(std::process::id(), port).expect("/proc");
        let _a = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let _b = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        assert_eq!(connections_to(std::process::id(), port), Some(before + 2));
    }
}

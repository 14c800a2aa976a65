//! The defaults of settings that have a value when nothing names one: the
//! one place both `--help` and the resolution read them from. (The key type,
//! challenge and log format defaults are their types' `Default`.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub const SDS_LISTEN: SocketAddr = SocketAddr::new(LOCALHOST, 20000);
pub const ADMIN_LISTEN: SocketAddr = SocketAddr::new(LOCALHOST, 9103);
/// Port 80 on every address: where ACME CAs look for HTTP-01 answers.
pub const HTTP01_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80);
pub const LOCK_DELAY: Duration = Duration::from_secs(15);
pub const SESSION_TTL: Duration = Duration::from_secs(15);
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The gateway's default tag prefix: both read the same tags.
pub const TAG_PREFIX: &str = "edge";
/// Let's Encrypt allows 300 new orders per account per 3 hours; a fifth of
/// that per hour leaves the static certificates and retries room.
pub const ORDERS_PER_HOUR: u32 = 20;
/// A week: longer than any redeploy or maintenance window that takes a
/// service's tags away for a while, shorter than a certificate's life.
pub const UNROUTED_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The address Nomad's CLI talks to by default.
pub const NOMAD_ADDR: &str = "http://127.0.0.1:4646";
/// Nomad's own namespace, where jobs go unless they name another.
pub const NOMAD_NAMESPACE: &str = "default";

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

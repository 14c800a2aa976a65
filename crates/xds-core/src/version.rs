//! Content versions: a resource's version is a hash of its encoded bytes.
//!
//! Why content and not a counter: a counter restarts at zero with the
//! process, so after a control-plane restart a reconnecting Envoy would
//! report versions that mean something else now. A content hash means the
//! same thing in every process, so a client that already holds a resource is
//! recognised as such and is not sent it again (nor an empty stand-in).
//!
//! FNV-1a is used because its output is specified (unlike `std`'s hasher,
//! which may change between Rust releases) and it needs no dependency; the
//! versions only have to tell contents apart, not resist an adversary.

use std::fmt;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// An opaque version, rendered as 16 hex digits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u64);

impl Version {
    /// The version of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(VersionHasher::new().write(bytes).finish_raw())
    }

    /// Parses a version this crate rendered; `None` for anything else
    /// (another control plane's version, an empty string).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Self)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The wire form without allocating: 16 lowercase hex digits.
    pub(crate) fn to_hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let shift = 60 - 4 * i;
            *byte = DIGITS[((self.0 >> shift) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Incremental FNV-1a, for versions computed over several parts.
#[derive(Debug, Clone)]
pub(crate) struct VersionHasher(u64);

impl VersionHasher {
    pub(crate) fn new() -> Self {
        Self(FNV_OFFSET)
    }

    pub(crate) fn write(mut self, bytes: &[u8]) -> Self {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    pub(crate) fn write_u64(self, value: u64) -> Self {
        self.write(&value.to_le_bytes())
    }

    fn finish_raw(self) -> u64 {
        self.0
    }

    pub(crate) fn finish(self) -> Version {
        Version(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_has_equal_versions_and_different_content_differs() {
        assert_eq!(Version::of(b"abc"), Version::of(b"abc"));
        assert_ne!(Version::of(b"abc"), Version::of(b"abd"));
    }

    #[test]
    fn versions_are_stable_across_processes() {
        // The published FNV-1a 64 test vector: a restarted control plane must
        // compute exactly this, whatever the Rust release.
        assert_eq!(Version::of(b"a").as_u64(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn rendering_round_trips_and_foreign_versions_are_rejected() {
        let version = Version::of(b"cluster");
        assert_eq!(Version::parse(&version.to_string()), Some(version));
        assert_eq!(version.to_hex().as_slice(), version.to_string().as_bytes());
        assert_eq!(Version::parse(""), None);
        assert_eq!(Version::parse("42"), None);
        assert_eq!(Version::parse("zzzzzzzzzzzzzzzz"), None);
    }
}

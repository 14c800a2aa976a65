//! Domain names as a certificate lists them, and the set of names one certificate covers.
//!
//! Names are validated and normalised once, at the edge (configuration), so the
//! rest of the crate can compare them as plain strings: lowercase, no trailing
//! dot, ASCII (internationalised names must already be in their `xn--` form).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a name a certificate can be ordered for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("domain name is empty")]
    Empty,
    #[error("domain name `{name}` is longer than 253 characters")]
    TooLong { name: String },
    #[error(
        "domain name `{name}` has an invalid label `{label}` (letters, digits and inner hyphens only, 1 to 63 characters)"
    )]
    InvalidLabel { name: String, label: String },
    #[error(
        "domain name `{name}`: a wildcard is only allowed as the whole leftmost label (`*.example.com`)"
    )]
    MisplacedWildcard { name: String },
    #[error("domain name `{name}` needs at least two labels")]
    SingleLabel { name: String },
    #[error("a certificate needs at least one domain name")]
    NoNames,
}

/// One validated DNS name, possibly a wildcard (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let name = input.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(DomainError::Empty);
        }
        if name.len() > 253 {
            return Err(DomainError::TooLong { name });
        }
        let base = name.strip_prefix("*.").unwrap_or(&name);
        if base.contains('*') {
            return Err(DomainError::MisplacedWildcard { name });
        }
        let labels: Vec<&str> = base.split('.').collect();
        if labels.len() < 2 {
            return Err(DomainError::SingleLabel { name });
        }
        if let Some(label) = labels.iter().find(|label| !is_valid_label(label)) {
            return Err(DomainError::InvalidLabel {
                label: (*label).to_owned(),
                name,
            });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// The name without its wildcard label: what the CA validates for `*.example.com`.
    pub fn base(&self) -> &str {
        self.0.strip_prefix("*.").unwrap_or(&self.0)
    }

    /// Where the DNS-01 TXT record for this name lives (RFC 8555 §8.4). An apex
    /// and its wildcard share it, so one order puts two values under one name.
    pub fn dns01_record_name(&self) -> String {
        format!("_acme-challenge.{}", self.base())
    }

    /// Whether a certificate name (SAN) `self` is valid for the host `host`,
    /// with wildcard matching of exactly one label as TLS clients do it.
    pub fn matches(&self, host: &DomainName) -> bool {
        if self == host {
            return true;
        }
        match (self.is_wildcard(), host.as_str().split_once('.')) {
            (true, Some((_, parent))) if !host.is_wildcard() => parent == self.base(),
            _ => false,
        }
    }
}

fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DomainName {
    type Error = DomainError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DomainName> for String {
    fn from(name: DomainName) -> Self {
        name.0
    }
}

impl std::str::FromStr for DomainName {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The names of one certificate: non-empty, deduplicated, in a canonical order.
///
/// Two configurations listing the same names in another order are the same
/// set; that is what CAs count for their duplicate-certificate limit, so it is
/// also the key of the order budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<DomainName>", into = "Vec<DomainName>")]
pub struct NameSet {
    /// The first configured name, kept first: it names the secret by default.
    primary: DomainName,
    all: BTreeSet<DomainName>,
}

impl NameSet {
    pub fn new(names: impl IntoIterator<Item = DomainName>) -> Result<Self, DomainError> {
        let mut names = names.into_iter();
        let primary = names.next().ok_or(DomainError::NoNames)?;
        let mut all: BTreeSet<DomainName> = names.collect();
        all.insert(primary.clone());
        Ok(Self { primary, all })
    }

    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, DomainError> {
        Self::new(
            names
                .iter()
                .map(|name| DomainName::parse(name.as_ref()))
                .collect::<Result<Vec<_>, _>>()?,
        )
    }

    /// The first name as configured.
    pub fn primary(&self) -> &DomainName {
        &self.primary
    }

    /// All names in canonical (sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = &DomainName> {
        self.all.iter()
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// A stable textual key for this exact set (sorted, comma separated).
    pub fn canonical_key(&self) -> String {
        self.all
            .iter()
            .map(DomainName::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Names of this set that no name in `certificate_names` covers exactly.
    ///
    /// Exact, not wildcard, matching: a certificate ordered for `example.com`
    /// and `*.example.com` must list both; `*.example.com` alone does not cover
    /// the apex, and coverage of `a.example.com` by the wildcard is not what
    /// was asked for.
    pub fn missing_from<'a>(
        &'a self,
        certificate_names: &'a [DomainName],
    ) -> impl Iterator<Item = &'a DomainName> + 'a {
        self.all
            .iter()
            .filter(move |name| !certificate_names.contains(name))
    }
}

impl TryFrom<Vec<DomainName>> for NameSet {
    type Error = DomainError;

    fn try_from(value: Vec<DomainName>) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NameSet> for Vec<DomainName> {
    fn from(set: NameSet) -> Self {
        let NameSet { primary, all } = set;
        std::iter::once(primary.clone())
            .chain(all.into_iter().filter(|name| *name != primary))
            .collect()
    }
}

impl fmt::Display for NameSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        let name = DomainName::parse("WWW.Example.COM.").expect("valid");
        assert_eq!(name.as_str(), "www.example.com");
    }

    #[test]
    fn accepts_leftmost_wildcard_only() {
        let wildcard = DomainName::parse("*.example.com").expect("valid");
        assert!(wildcard.is_wildcard());
        assert_eq!(wildcard.base(), "example.com");
        assert_eq!(wildcard.dns01_record_name(), "_acme-challenge.example.com");
        assert!(matches!(
            DomainName::parse("a.*.example.com"),
            Err(DomainError::MisplacedWildcard { .. })
        ));
        assert!(matches!(
            DomainName::parse("*a.example.com"),
            Err(DomainError::MisplacedWildcard { .. })
        ));
    }

    #[test]
    fn rejects_bad_labels() {
        for bad in [
            "exa_mple.com",
            "-a.example.com",
            "a..example.com",
            "localhost",
            "",
        ] {
            assert!(DomainName::parse(bad).is_err(), "{bad} accepted");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(DomainName::parse(&long_label).is_err());
    }

    #[test]
    fn wildcard_matches_one_label() {
        let wildcard = DomainName::parse("*.example.com").expect("valid");
        let host = |s: &str| DomainName::parse(s).expect("valid");
        assert!(wildcard.matches(&host("a.example.com")));
        assert!(!wildcard.matches(&host("example.com")));
        assert!(!wildcard.matches(&host("a.b.example.com")));
    }

    #[test]
    fn name_set_is_order_independent_but_keeps_primary() {
        let a = NameSet::parse(&["example.com", "*.example.com"]).expect("valid");
        let b = NameSet::parse(&["*.example.com", "example.com", "EXAMPLE.com"]).expect("valid");
        assert_eq!(a.canonical_key(), b.canonical_key());
        assert_eq!(a.primary().as_str(), "example.com");
        assert_eq!(b.primary().as_str(), "*.example.com");
        assert_eq!(a.len(), 2);
        assert!(matches!(
            NameSet::parse::<&str>(&[]),
            Err(DomainError::NoNames)
        ));
    }

    #[test]
    fn name_set_serde_round_trip_keeps_primary_first() {
        let set = NameSet::parse(&["b.example.com", "a.example.com"]).expect("valid");
        let json = serde_json::to_string(&set).expect("serialize");
        assert_eq!(json, r#"["b.example.com","a.example.com"]"#);
        let back: NameSet = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, set);
    }

    #[test]
    fn missing_names_are_reported() {
        let set = NameSet::parse(&["example.com", "*.example.com"]).expect("valid");
        let only_apex = vec![DomainName::parse("example.com").expect("valid")];
        let missing: Vec<_> = set.missing_from(&only_apex).collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].as_str(), "*.example.com");
    }
}

//! How one routed TLS host is served, decided from configuration alone
//! (pure): covered by a configured certificate, ordered on its own, or
//! refused with a reason. Every replica decides the same way, so the status
//! page of a replica that does not renew still says why a host is refused.

use std::fmt;

use serde::Serialize;

use crate::domain::{DomainError, DomainName};
use crate::manager::CertificateSpec;
use crate::store::SecretName;

/// One `--allowed-domains` suffix: a host may be ordered if it equals the
/// suffix or ends in `.` + suffix (a label boundary: `example.com` does not
/// allow `badexample.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSuffix(DomainName);

impl AllowedSuffix {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let name = DomainName::parse(text)?;
        if name.is_wildcard() {
            // `*.example.com` would read as "subdomains only"; a suffix
            // already means the name and everything under it.
            return Err(DomainError::MisplacedWildcard {
                name: name.as_str().to_owned(),
            });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether `host` (a wildcard by its base) lies at or under this suffix.
    pub fn allows(&self, host: &DomainName) -> bool {
        let base = host.base();
        let suffix = self.0.as_str();
        base == suffix
            || base
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.'))
    }
}

impl fmt::Display for AllowedSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// Why a routed host gets no order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// Outside every `--allowed-domains` suffix.
    NotAllowed,
    /// A wildcard host, and the challenge is HTTP-01.
    WildcardNeedsDns01,
    /// The host's name cannot be a certificate's name (or a secret's).
    InvalidName { detail: String },
}

impl Refusal {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotAllowed => "not_allowed",
            Self::WildcardNeedsDns01 => "wildcard_needs_dns01",
            Self::InvalidName { .. } => "invalid_name",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllowed => f.write_str("not under any --allowed-domains suffix"),
            Self::WildcardNeedsDns01 => {
                f.write_str("a wildcard host needs dns-01, and the challenge is http-01")
            }
            Self::InvalidName { detail } => write!(f, "not a certificate name: {detail}"),
        }
    }
}

/// How a routed host is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPlan {
    /// A configured certificate covers the host: served under the host's
    /// name, no order.
    Covered {
        by: SecretName,
    },
    /// Its own certificate, ordered under the host's name; `zone` is the
    /// allowed suffix it lies under (the longest), where dns-01 records
    /// go unless a zone is configured.
    Order {
        spec: CertificateSpec,
        zone: String,
    },
    Refused(Refusal),
}

impl HostPlan {
    /// The metric label and status page word.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Covered { .. } => "covered",
            Self::Order { .. } => "ordered",
            Self::Refused(_) => "refused",
        }
    }
}

/// The rules a routed host is planned with.
#[derive(Debug, Clone)]
pub struct RoutedPolicy {
    pub allowed: Vec<AllowedSuffix>,
    /// The configured certificates, which may cover routed hosts.
    pub configured: Vec<CertificateSpec>,
    /// Whether challenges are HTTP-01 (which cannot prove a wildcard).
    pub http01: bool,
}

impl RoutedPolicy {
    /// A configured certificate covers a host when one of its names matches
    /// it as a TLS client would (one label under a wildcard); that one is
    /// served. Only then the allow-list: it restricts orders, not what the
    /// operator configured.
    pub fn plan(&self, host: &str) -> HostPlan {
        let name = match DomainName::parse(host) {
            Ok(name) => name,
            Err(error) => {
                return HostPlan::Refused(Refusal::InvalidName {
                    detail: error.to_string(),
                });
            }
        };
        if let Some(covering) = self
            .configured
            .iter()
            .find(|spec| spec.names.iter().any(|san| san.matches(&name)))
        {
            return HostPlan::Covered {
                by: covering.secret_name.clone(),
            };
        }
        let Some(zone) = self
            .allowed
            .iter()
            .filter(|suffix| suffix.allows(&name))
            .map(AllowedSuffix::as_str)
            .max_by_key(|suffix| suffix.len())
            .map(str::to_owned)
        else {
            return HostPlan::Refused(Refusal::NotAllowed);
        };
        if name.is_wildcard() && self.http01 {
            return HostPlan::Refused(Refusal::WildcardNeedsDns01);
        }
        match crate::domain::NameSet::new([name]).map(CertificateSpec::new) {
            Ok(Ok(spec)) => HostPlan::Order { spec, zone },
            Ok(Err(error)) => HostPlan::Refused(Refusal::InvalidName {
                detail: error.to_string(),
            }),
            Err(error) => HostPlan::Refused(Refusal::InvalidName {
                detail: error.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NameSet;

    fn routed_policy(http01: bool) -> RoutedPolicy {
        let wildcard =
            CertificateSpec::new(NameSet::parse(&["*.example.com"]).expect("names")).expect("spec");
        RoutedPolicy {
            allowed: vec![
                AllowedSuffix::parse("demo.test").expect("suffix"),
                AllowedSuffix::parse("Apps.Example.Org.").expect("suffix"),
            ],
            configured: vec![wildcard],
            http01,
        }
    }

    #[test]
    fn suffixes_match_on_a_label_boundary() {
        let suffix = AllowedSuffix::parse("demo.test").expect("suffix");
        let allows = |host: &str| suffix.allows(&DomainName::parse(host).expect("host"));
        assert!(allows("demo.test"));
        assert!(allows("new.demo.test"));
        assert!(allows("a.b.demo.test"));
        assert!(allows("*.demo.test"));
        assert!(!allows("baddemo.test"));
        assert!(!allows("demo.test.evil.com"));
        assert!(!allows("other.test"));
        assert!(AllowedSuffix::parse("*.demo.test").is_err());
        assert!(AllowedSuffix::parse("test").is_err());
    }

    #[test]
    fn a_configured_wildcard_covers_one_label_and_orders_nothing() {
        let policy = routed_policy(true);
        let covered = HostPlan::Covered {
            by: SecretName::new("*.example.com").expect("name"),
        };
        assert_eq!(policy.plan("shop.example.com"), covered);
        // Two labels down: not covered, and not allowed either.
        assert_eq!(
            policy.plan("a.shop.example.com"),
            HostPlan::Refused(Refusal::NotAllowed)
        );
        // The wildcard host itself is the certificate's own name.
        assert_eq!(policy.plan("*.example.com"), covered);
    }

    #[test]
    fn allowed_hosts_get_their_own_order_and_others_are_refused() {
        let policy = routed_policy(true);
        match policy.plan("new.demo.test") {
            HostPlan::Order { spec, zone } => {
                assert_eq!(spec.secret_name.as_str(), "new.demo.test");
                assert_eq!(spec.names.canonical_key(), "new.demo.test");
                assert_eq!(zone, "demo.test");
            }
            other => panic!("not ordered: {other:?}"),
        }
        assert!(matches!(
            policy.plan("x.apps.example.org"),
            HostPlan::Order { .. }
        ));
        assert_eq!(
            policy.plan("evil.com"),
            HostPlan::Refused(Refusal::NotAllowed)
        );
        assert_eq!(
            policy.plan("*.demo.test"),
            HostPlan::Refused(Refusal::WildcardNeedsDns01)
        );
        assert!(matches!(
            routed_policy(false).plan("*.demo.test"),
            HostPlan::Order { .. }
        ));
        assert!(matches!(
            policy.plan("bad_host.demo.test"),
            HostPlan::Refused(Refusal::InvalidName { .. })
        ));
    }
}

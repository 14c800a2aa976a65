//! Certificates for routed hosts (`--follow-routes`): every TLS host the
//! gateway routes by service tags gets a secret under its name.
//!
//! | module | concern |
//! |---|---|
//! | [`catalog`] | the routed TLS hosts, read from the catalog with the gateway's tag parser; the unrouted clock |
//! | [`policy`] | per host: covered by a configured certificate, own order, or refused (pure) |
//! | [`placeholder`] | the self-signed secret served until a host's certificate exists |
//! | [`sources`] | the registries read (`--sources`): Consul's catalog, Nomad's namespaces, their union |
//! | [`follower`] | every replica: the registries' answers, feeding the SDS secrets |
//! | [`orders`] | the lock holder only: one certificate manager per host to order |
//!
//! The split follows the HA rule of the rest of the service: every replica
//! reads the catalog and serves every host's secret from the store; only
//! the renewal lock's holder orders.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::sds::RoutedSecret;
use crate::store::SecretName;

pub mod catalog;
pub mod follower;
pub mod orders;
pub mod placeholder;
pub mod policy;
pub mod sources;

use catalog::{HostRouting, RoutedHosts};
use policy::{HostPlan, Refusal, RoutedPolicy};

/// A count per metric label.
pub type LabelCounts = Vec<(&'static str, usize)>;

/// One routed host: how it is routed and how it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedHost {
    pub routing: HostRouting,
    pub plan: HostPlan,
}

impl RoutedHost {
    /// Whether its certificate is still renewed at `now`: routed, or
    /// unrouted for less than `grace`.
    pub fn renews_at(&self, now: OffsetDateTime, grace: Duration) -> bool {
        self.routing
            .unrouted_since
            .is_none_or(|since| now < since + grace)
    }

    /// When renewal stops, if the host is no longer routed.
    pub fn renewal_stops_at(&self, grace: Duration) -> Option<OffsetDateTime> {
        self.routing.unrouted_since.map(|since| since + grace)
    }
}

/// Every routed host as the catalog was last read, with its plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutedView {
    pub hosts: BTreeMap<String, RoutedHost>,
    /// Whether the catalog has answered since the start.
    pub read: bool,
}

impl RoutedView {
    pub fn build(hosts: &RoutedHosts, policy: &RoutedPolicy) -> Self {
        Self {
            hosts: hosts
                .hosts()
                .iter()
                .map(|(host, routing)| {
                    (
                        host.clone(),
                        RoutedHost {
                            routing: routing.clone(),
                            plan: policy.plan(host),
                        },
                    )
                })
                .collect(),
            read: hosts.is_read(),
        }
    }

    /// The SDS secret of every routed host (under the host's name, the
    /// name the gateway asks for) and how it is filled.
    pub fn secrets(&self) -> BTreeMap<SecretName, RoutedSecret> {
        self.hosts
            .iter()
            .filter_map(|(host, entry)| {
                let name = SecretName::new(host.clone()).ok()?;
                let how = match &entry.plan {
                    HostPlan::Covered { by } => RoutedSecret::Covered { by: by.clone() },
                    HostPlan::Order { .. } => RoutedSecret::Own,
                    HostPlan::Refused(_) => RoutedSecret::Refused,
                };
                Some((name, how))
            })
            .collect()
    }

    /// Hosts per plan and refusals per reason, every label listed.
    pub fn counts(&self) -> (LabelCounts, LabelCounts) {
        let mut plans = vec![("ordered", 0), ("covered", 0), ("refused", 0)];
        let mut reasons = vec![
            (Refusal::NotAllowed.label(), 0),
            (Refusal::WildcardNeedsDns01.label(), 0),
            (
                Refusal::InvalidName {
                    detail: String::new(),
                }
                .label(),
                0,
            ),
        ];
        for entry in self.hosts.values() {
            if let Some(slot) = plans.iter_mut().find(|(l, _)| *l == entry.plan.label()) {
                slot.1 += 1;
            }
            if let HostPlan::Refused(refusal) = &entry.plan
                && let Some(slot) = reasons.iter_mut().find(|(l, _)| *l == refusal.label())
            {
                slot.1 += 1;
            }
        }
        (plans, reasons)
    }

    /// The refused hosts and why, for pages and logs.
    pub fn refused(&self) -> Vec<RefusedHost> {
        self.hosts
            .iter()
            .filter_map(|(host, entry)| match &entry.plan {
                HostPlan::Refused(refusal) => Some(RefusedHost {
                    host: host.clone(),
                    reason: refusal.label(),
                    detail: refusal.to_string(),
                    services: entry.routing.services.iter().cloned().collect(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// A refused host as `/debug/certificates` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedHost {
    pub host: String,
    pub reason: &'static str,
    pub detail: String,
    pub services: Vec<String>,
}

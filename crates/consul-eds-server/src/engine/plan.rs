//! A demanded cluster: which watches feed it, and what it serves from them.
//!
//! Pure like the per-service rule: built from the settings and the services'
//! states, so the actor only decides *when* a cluster is built again.

use super::WatchKey;
use super::rules::ServiceState;
use crate::health::HealthPolicy;
use crate::naming::ClusterTarget;
use crate::state::{ClusterView, Excluded, Freshness};

/// What a demanded cluster selects and from which watches.
#[derive(Debug, Clone)]
pub(crate) struct ClusterPlan {
    target: ClusterTarget,
    /// Watches feeding it, with the priority their endpoints get.
    sources: Vec<(WatchKey, u32)>,
}

impl ClusterPlan {
    /// The target's own datacenter at priority 0, then each failover
    /// datacenter (but the target's own) at the next priority.
    pub(crate) fn new(target: ClusterTarget, failover_dcs: &[String]) -> Self {
        let primary = WatchKey {
            service: target.service.clone(),
            datacenter: target.datacenter.clone(),
        };
        let failovers = failover_dcs
            .iter()
            .filter(|dc| target.datacenter.as_ref() != Some(*dc))
            .map(|dc| WatchKey {
                service: target.service.clone(),
                datacenter: Some(dc.clone()),
            });
        let sources = std::iter::once(primary).chain(failovers).zip(0..).collect();
        Self { target, sources }
    }

    pub(crate) fn target(&self) -> &ClusterTarget {
        &self.target
    }

    /// The watches this cluster needs.
    pub(crate) fn watch_keys(&self) -> impl Iterator<Item = &WatchKey> {
        self.sources.iter().map(|(key, _)| key)
    }

    pub(crate) fn is_fed_by(&self, key: &WatchKey) -> bool {
        self.watch_keys().any(|k| k == key)
    }

    /// The endpoints of the cluster from its services' states, or `None`
    /// while none of its watches has read anything yet (nothing is known, so
    /// nothing is pushed).
    pub(crate) fn build<'a>(
        &self,
        cluster: &str,
        policy: &HealthPolicy,
        service: impl Fn(&WatchKey) -> Option<&'a ServiceState>,
    ) -> Option<ClusterView> {
        let mut endpoints = Vec::new();
        let mut excluded = Vec::new();
        let mut freshness = Freshness::Pending;
        let mut any_data = false;
        for (key, priority) in &self.sources {
            let Some(state) = service(key) else {
                continue;
            };
            // The cluster reports the primary watch's freshness, or a
            // failover's degradation if the primary is fine.
            if *priority == 0 || matches!(state.freshness(), Freshness::Degraded { .. }) {
                freshness = state.freshness().clone();
            }
            let Some(instances) = state.instances() else {
                continue;
            };
            any_data = true;
            for instance in instances.iter() {
                if let Some(tag) = &self.target.tag
                    && !instance.tags.contains(tag)
                {
                    continue;
                }
                if let Some(tag) = &self.target.without_tag
                    && instance.tags.contains(tag)
                {
                    continue;
                }
                if !instance.address_is_ip {
                    excluded.push(Excluded {
                        instance_id: instance.id.to_string(),
                        reason: format!(
                            "address `{}` is not an IP address (EDS endpoints must be IPs)",
                            instance.address
                        ),
                    });
                    continue;
                }
                match policy.endpoint(instance, *priority) {
                    Ok(endpoint) => endpoints.push(endpoint),
                    Err(reason) => excluded.push(Excluded {
                        instance_id: instance.id.to_string(),
                        reason: reason.to_owned(),
                    }),
                }
            }
        }
        if !any_data {
            return None;
        }
        Some(ClusterView {
            cluster: cluster.to_owned(),
            service: self.target.service.clone(),
            freshness,
            endpoints: endpoints.into(),
            excluded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::passing;
    use crate::engine::rules::{Input, Now};

    fn target(service: &str, datacenter: Option<&str>) -> ClusterTarget {
        ClusterTarget {
            service: service.to_owned(),
            tag: None,
            without_tag: None,
            datacenter: datacenter.map(str::to_owned),
        }
    }

    fn key(datacenter: Option<&str>) -> WatchKey {
        WatchKey {
            service: "web".to_owned(),
            datacenter: datacenter.map(str::to_owned),
        }
    }

    #[test]
    fn failover_datacenters_follow_the_primary_and_skip_the_targets_own() {
        let failover = ["dc2".to_owned(), "dc3".to_owned()];
        let plan = ClusterPlan::new(target("web", Some("dc2")), &failover);
        assert_eq!(
            plan.sources,
            vec![(key(Some("dc2")), 0), (key(Some("dc3")), 1)]
        );
        assert!(plan.is_fed_by(&key(Some("dc3"))));
        assert!(!plan.is_fed_by(&key(None)));
    }

    #[test]
    fn nothing_is_built_before_a_feeding_watch_has_read() {
        let plan = ClusterPlan::new(target("web", None), &[]);
        let unread = ServiceState::default();
        assert!(
            plan.build("web", &HealthPolicy::default(), |_| Some(&unread))
                .is_none()
        );
        let mut read = ServiceState::default();
        let now = Now {
            instant: std::time::Instant::now(),
            unix_secs: 0,
        };
        read.apply(
            Input::Source(passing(&["web-1"], 3)),
            now,
            std::time::Duration::ZERO,
        );
        let view = plan
            .build("web", &HealthPolicy::default(), |_| Some(&read))
            .expect("built once read");
        assert_eq!(view.endpoints.len(), 1);
        assert_eq!(view.freshness, Freshness::Synced { index: 3 });
    }

    #[test]
    fn a_stable_cluster_leaves_out_the_instances_of_its_excluded_tag() {
        use crate::engine::fixtures::{instance, instances};
        use crate::model::CheckState;
        let mut read = ServiceState::default();
        read.apply(
            Input::Source(instances(
                vec![
                    instance("web-1", CheckState::Passing, &[]),
                    instance("web-2", CheckState::Passing, &["edge.canary"]),
                ],
                4,
            )),
            Now {
                instant: std::time::Instant::now(),
                unix_secs: 0,
            },
            std::time::Duration::ZERO,
        );
        let ids = |target: ClusterTarget| -> Vec<String> {
            let view = ClusterPlan::new(target, &[])
                .build("web", &HealthPolicy::default(), |_| Some(&read))
                .expect("read");
            view.endpoints
                .iter()
                .map(|e| e.instance_id.to_string())
                .collect()
        };
        let stable = ClusterTarget {
            without_tag: Some("edge.canary".to_owned()),
            ..target("web", None)
        };
        let canary = ClusterTarget {
            tag: Some("edge.canary".to_owned()),
            ..target("web", None)
        };
        assert_eq!(ids(stable), ["web-1"]);
        assert_eq!(ids(canary), ["web-2"]);
        assert_eq!(ids(target("web", None)), ["web-1", "web-2"]);
    }
}

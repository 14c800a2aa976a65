//! A demanded cluster: which watches feed it, and what it serves from them.
//!
//! Pure like the per-service rule: built from the settings and the services'
//! states, so the actor only decides *when* a cluster is built again.

use super::rules::ServiceState;
use super::{EngineSettings, NomadListing, WatchKey};
use crate::health::HealthPolicy;
use crate::model::SourceKind;
use crate::naming::ClusterTarget;
use crate::state::{ClusterView, Excluded, Freshness};

/// What a demanded cluster selects and from which watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterPlan {
    target: ClusterTarget,
    /// Watches feeding it, with the priority their endpoints get.
    sources: Vec<(WatchKey, u32)>,
}

impl ClusterPlan {
    /// From Consul, when it is read and the target selects it: the target's
    /// own datacenter at priority 0, then each failover datacenter (but the
    /// target's own) at the next priority. From Nomad, when it is read and
    /// the target selects it: each selected namespace at priority 0, beside
    /// Consul's instances (merged by service name). Nomad's registrations
    /// carry Nomad's datacenter, which is not Consul's: a target naming a
    /// datacenter selects Consul only, and failover is Consul's. With
    /// `--nomad-namespace '*'` the selected namespaces are those `listing`
    /// lists the service in; a name with `{namespace}` reads its own.
    ///
    /// A plan may come out with no watch at all (its registry is not read);
    /// such a cluster is not served.
    pub(crate) fn new(
        target: ClusterTarget,
        settings: &EngineSettings,
        listing: &NomadListing,
    ) -> Self {
        let selection = &settings.sources;
        let wants = |kind: SourceKind| target.source.is_none_or(|source| source == kind);
        let mut sources = Vec::new();
        let consul_namespace = target
            .namespace
            .as_deref()
            .is_none_or(|namespace| namespace == "default");
        if selection.consul && wants(SourceKind::Consul) && consul_namespace {
            let datacenter = target.datacenter.as_deref();
            sources.push((WatchKey::consul(&target.service, datacenter), 0));
            let failovers = settings
                .failover_dcs
                .iter()
                .filter(|dc| target.datacenter.as_ref() != Some(*dc));
            for (dc, priority) in failovers.zip(1..) {
                sources.push((WatchKey::consul(&target.service, Some(dc)), priority));
            }
        }
        if wants(SourceKind::Nomad) && target.datacenter.is_none() {
            let namespaces = match &target.namespace {
                Some(namespace) if !selection.nomad_namespaces.is_empty() => {
                    vec![namespace.clone()]
                }
                Some(_) => Vec::new(),
                None if selection.reads_every_nomad_namespace() => listing
                    .namespaces
                    .get(&target.service)
                    .map(|namespaces| namespaces.iter().cloned().collect())
                    .unwrap_or_default(),
                None => selection.nomad_namespaces.clone(),
            };
            for namespace in namespaces {
                sources.push((WatchKey::nomad(&target.service, &namespace), 0));
            }
        }
        Self { target, sources }
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
        let mut freshness = None;
        let mut any_data = false;
        for (key, priority) in &self.sources {
            let Some(state) = service(key) else {
                continue;
            };
            // The cluster reports its first primary watch's freshness, or
            // the first degradation of any other watch feeding it (another
            // registry's, a failover's) if that one is fine.
            let degraded = matches!(state.freshness(), Freshness::Degraded { .. });
            let already_degraded = matches!(freshness, Some(Freshness::Degraded { .. }));
            if (*priority == 0 && freshness.is_none()) || (degraded && !already_degraded) {
                freshness = Some(state.freshness().clone());
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
            freshness: freshness.unwrap_or(Freshness::Pending),
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
    use crate::engine::{SourceEvent, SourceSelection};

    fn target(service: &str, datacenter: Option<&str>) -> ClusterTarget {
        ClusterTarget {
            datacenter: datacenter.map(str::to_owned),
            ..ClusterTarget::service(service)
        }
    }

    fn key(datacenter: Option<&str>) -> WatchKey {
        WatchKey::consul("web", datacenter)
    }

    fn settings(failover_dcs: &[&str], sources: SourceSelection) -> EngineSettings {
        EngineSettings {
            failover_dcs: failover_dcs.iter().map(|dc| (*dc).to_owned()).collect(),
            sources,
            ..crate::engine::fixtures::settings()
        }
    }

    /// A plan with no `*` listing.
    fn plan_of(target: ClusterTarget, settings: &EngineSettings) -> ClusterPlan {
        ClusterPlan::new(target, settings, &NomadListing::default())
    }

    fn consul_only() -> SourceSelection {
        SourceSelection::default()
    }

    fn both(namespaces: &[&str]) -> SourceSelection {
        SourceSelection {
            consul: true,
            nomad_namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn failover_datacenters_follow_the_primary_and_skip_the_targets_own() {
        let plan = plan_of(
            target("web", Some("dc2")),
            &settings(&["dc2", "dc3"], consul_only()),
        );
        assert_eq!(
            plan.sources,
            vec![(key(Some("dc2")), 0), (key(Some("dc3")), 1)]
        );
        assert!(plan.is_fed_by(&key(Some("dc3"))));
        assert!(!plan.is_fed_by(&key(None)));
    }

    #[test]
    fn a_name_known_to_both_registries_is_fed_by_both_at_the_same_priority() {
        let plan = plan_of(target("web", None), &settings(&["dc2"], both(&["a", "b"])));
        assert_eq!(
            plan.sources,
            vec![
                (key(None), 0),
                (key(Some("dc2")), 1),
                (WatchKey::nomad("web", "a"), 0),
                (WatchKey::nomad("web", "b"), 0),
            ]
        );
    }

    #[test]
    fn a_name_choosing_a_registry_or_namespace_is_fed_by_that_alone() {
        let nomad_only = ClusterTarget {
            source: Some(SourceKind::Nomad),
            ..target("web", None)
        };
        let plan = plan_of(nomad_only, &settings(&["dc2"], both(&["a"])));
        assert_eq!(plan.sources, vec![(WatchKey::nomad("web", "a"), 0)]);

        let in_namespace = ClusterTarget {
            namespace: Some("b".to_owned()),
            ..target("web", None)
        };
        let plan = plan_of(in_namespace.clone(), &settings(&[], both(&["a"])));
        assert_eq!(plan.sources, vec![(WatchKey::nomad("web", "b"), 0)]);
        // Nomad not read: nothing feeds a namespace other than Consul's.
        let plan = plan_of(in_namespace, &settings(&[], consul_only()));
        assert_eq!(plan.watch_keys().count(), 0);

        // A Consul datacenter is Consul's alone.
        let plan = plan_of(target("web", Some("dc2")), &settings(&[], both(&["a"])));
        assert_eq!(plan.sources, vec![(key(Some("dc2")), 0)]);
    }

    #[test]
    fn with_every_nomad_namespace_a_service_is_fed_from_the_namespaces_listing_it() {
        let settings = settings(&[], both(&["*"]));
        assert!(settings.sources.reads_every_nomad_namespace());
        assert!(!both(&["a"]).reads_every_nomad_namespace());
        let listing = NomadListing {
            namespaces: [
                ("web".to_owned(), ["a".to_owned(), "b".to_owned()].into()),
                ("api".to_owned(), ["b".to_owned()].into()),
            ]
            .into(),
            held: Default::default(),
        };
        let plan = ClusterPlan::new(target("web", None), &settings, &listing);
        assert_eq!(
            plan.sources,
            vec![
                (key(None), 0),
                (WatchKey::nomad("web", "a"), 0),
                (WatchKey::nomad("web", "b"), 0),
            ]
        );
        // Never `*` itself: /v1/service/:name would read it as a name.
        assert!(plan.watch_keys().all(|k| k != &WatchKey::nomad("web", "*")));
        // Listed nowhere (yet): Consul's alone.
        let plan = ClusterPlan::new(target("db", None), &settings, &listing);
        assert_eq!(plan.sources, vec![(WatchKey::consul("db", None), 0)]);
        // `{namespace}` in the name reads that namespace, listed or not.
        let in_namespace = ClusterTarget {
            namespace: Some("c".to_owned()),
            source: Some(SourceKind::Nomad),
            ..target("web", None)
        };
        let plan = ClusterPlan::new(in_namespace, &settings, &listing);
        assert_eq!(plan.sources, vec![(WatchKey::nomad("web", "c"), 0)]);
        // The plan follows the listing, so the engine can tell it changed.
        let narrower = NomadListing {
            namespaces: [("web".to_owned(), ["b".to_owned()].into())].into(),
            held: Default::default(),
        };
        assert_ne!(
            ClusterPlan::new(target("web", None), &settings, &listing),
            ClusterPlan::new(target("web", None), &settings, &narrower)
        );
    }

    #[test]
    fn a_merged_cluster_serves_both_registries_and_shows_either_ones_degradation() {
        use crate::engine::fixtures::passing;
        let now = Now {
            instant: std::time::Instant::now(),
            unix_secs: 0,
        };
        let mut consul = ServiceState::default();
        consul.apply(
            Input::Source(passing(&["c-1"], 3)),
            now,
            std::time::Duration::ZERO,
        );
        let mut nomad = ServiceState::default();
        nomad.apply(
            Input::Source(passing(&["n-1", "n-2"], 9)),
            now,
            std::time::Duration::ZERO,
        );
        let plan = plan_of(target("web", None), &settings(&[], both(&["default"])));
        let build = |consul: &ServiceState, nomad: &ServiceState| {
            plan.build("web", &HealthPolicy::default(), |key| {
                Some(match key.origin {
                    crate::engine::Origin::Consul => consul,
                    crate::engine::Origin::Nomad { .. } => nomad,
                })
            })
            .expect("read")
        };
        let view = build(&consul, &nomad);
        let mut ids: Vec<String> = view
            .endpoints
            .iter()
            .map(|e| e.instance_id.to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["c-1", "n-1", "n-2"]);
        assert_eq!(view.freshness, Freshness::Synced { index: 3 });

        // Nomad fails: its last instances stay, and the cluster says so.
        nomad.apply(
            Input::Source(SourceEvent::Failing {
                error: "nomad down".to_owned(),
            }),
            now,
            std::time::Duration::ZERO,
        );
        let view = build(&consul, &nomad);
        assert_eq!(view.endpoints.len(), 3);
        assert!(
            matches!(view.freshness, Freshness::Degraded { .. }),
            "{:?}",
            view.freshness
        );
    }

    #[test]
    fn nothing_is_built_before_a_feeding_watch_has_read() {
        let plan = plan_of(target("web", None), &settings(&[], consul_only()));
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
            let view = plan_of(target, &settings(&[], consul_only()))
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

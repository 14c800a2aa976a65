//! Instances and watch events the engine's tests are written in.

use std::sync::Arc;

use std::time::Duration;

use super::{EngineSettings, SourceEvent, SourceSelection};
use crate::health::HealthPolicy;
use crate::model::{CheckState, ServiceInstance, SourceKind, Weights};
use crate::naming::ClusterNaming;

/// Settings of an engine reading Consul alone, with no failover.
pub(super) fn settings() -> EngineSettings {
    EngineSettings {
        naming: ClusterNaming::new("{service}").expect("template"),
        policy: HealthPolicy::default(),
        failover_dcs: Vec::new(),
        sources: SourceSelection::default(),
        allowed_services: Default::default(),
        coalesce: Duration::from_millis(5),
        reset_grace: Duration::from_secs(10),
    }
}

/// An instance at an IP address on one node, with Consul's default weights.
pub(super) fn instance(id: &str, checks: CheckState, tags: &[&str]) -> ServiceInstance {
    ServiceInstance {
        id: id.into(),
        node: "node".into(),
        address: "10.0.0.1".into(),
        address_is_ip: true,
        port: 8080,
        checks,
        maintenance: false,
        weights: Weights::default(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        locality: Arc::default(),
        source: SourceKind::Consul,
    }
}

/// An ordinary read (not the first after an index reset).
pub(super) fn instances(list: Vec<ServiceInstance>, index: u64) -> SourceEvent {
    SourceEvent::Instances {
        instances: list,
        index,
        after_reset: false,
    }
}

/// An ordinary read of passing, untagged instances.
pub(super) fn passing(ids: &[&str], index: u64) -> SourceEvent {
    let list = ids
        .iter()
        .map(|id| instance(id, CheckState::Passing, &[]))
        .collect();
    instances(list, index)
}

/// What a restored or restarted Consul answers before agents re-register.
pub(super) fn empty_after_reset(index: u64) -> SourceEvent {
    SourceEvent::Instances {
        instances: vec![],
        index,
        after_reset: true,
    }
}

pub(super) fn failing(error: &str) -> SourceEvent {
    SourceEvent::Failing {
        error: error.to_owned(),
    }
}

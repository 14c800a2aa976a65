//! The kinds of Consul endpoint this crate calls.
//!
//! Metrics and tracing label requests by kind, never by full path: a path
//! holds service names and KV keys, which would give a metric family one
//! series per key.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// What a request does, as a low-cardinality label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointKind {
    AgentSelf,
    AgentServiceRegister,
    AgentServiceDeregister,
    AgentServiceMaintenance,
    AgentCheckUpdate,
    CatalogServices,
    CatalogRegister,
    CatalogDeregister,
    HealthService,
    HealthChecks,
    HealthState,
    KvGet,
    KvList,
    KvPut,
    KvDelete,
    SessionCreate,
    SessionRenew,
    SessionDestroy,
    SessionInfo,
    Txn,
    UiServices,
}

impl EndpointKind {
    /// Whether the request creates, renews or ends a session: those draw
    /// from their own budget (see `budget`), since a late renewal loses a lock.
    pub fn keeps_a_session(self) -> bool {
        matches!(
            self,
            Self::SessionCreate | Self::SessionRenew | Self::SessionDestroy
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentSelf => "agent_self",
            Self::AgentServiceRegister => "agent_service_register",
            Self::AgentServiceDeregister => "agent_service_deregister",
            Self::AgentServiceMaintenance => "agent_service_maintenance",
            Self::AgentCheckUpdate => "agent_check_update",
            Self::CatalogServices => "catalog_services",
            Self::CatalogRegister => "catalog_register",
            Self::CatalogDeregister => "catalog_deregister",
            Self::HealthService => "health_service",
            Self::HealthChecks => "health_checks",
            Self::HealthState => "health_state",
            Self::KvGet => "kv_get",
            Self::KvList => "kv_list",
            Self::KvPut => "kv_put",
            Self::KvDelete => "kv_delete",
            Self::SessionCreate => "session_create",
            Self::SessionRenew => "session_renew",
            Self::SessionDestroy => "session_destroy",
            Self::SessionInfo => "session_info",
            Self::Txn => "txn",
            Self::UiServices => "ui_services",
        }
    }
}

impl std::fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for EndpointKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

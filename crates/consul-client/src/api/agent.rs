//! `/v1/agent/*`: what the local agent is, and the services and checks it
//! runs (register, deregister, maintenance mode, TTL check updates).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::health::{CheckStatus, ServiceAddress, Weights};
use crate::client::Call;
use crate::codec::go_duration_opt;
use crate::endpoint::EndpointKind;
use crate::{Client, Error};

/// What `/v1/agent/self` says about the agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSelf {
    /// The agent's datacenter: the one requests without `?dc=` read.
    pub datacenter: String,
    pub node_name: String,
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(default)]
    pub server: bool,
    #[serde(default)]
    pub version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentSelfWire {
    config: AgentSelf,
}

/// `PUT /v1/agent/service/register`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceRegistration {
    /// Defaults to the name; must be unique on the agent.
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Empty: the agent's node address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub port: u16,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub enable_tag_override: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<AgentCheck>,
}

/// A check the agent runs (HTTP, TCP) or waits to be told about (TTL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentCheck {
    /// Defaults to `service:<service id>[:n]`.
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    pub name: String,
    #[serde(
        rename = "TTL",
        with = "go_duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<Duration>,
    /// The status before the first result (Consul: critical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl AgentCheck {
    fn named(name: impl Into<String>) -> Self {
        Self {
            check_id: None,
            name: name.into(),
            ttl: None,
            http: None,
            tcp: None,
            interval: None,
            timeout: None,
            deregister_critical_service_after: None,
            status: None,
            notes: None,
        }
    }

    /// Critical unless updated (see [`Client::agent_check_update`]) at least every `ttl`.
    pub fn ttl(name: impl Into<String>, ttl: Duration) -> Self {
        Self {
            ttl: Some(ttl),
            ..Self::named(name)
        }
    }

    /// The agent GETs `url` every `interval`; 2xx passes, 429 warns.
    pub fn http(name: impl Into<String>, url: impl Into<String>, interval: Duration) -> Self {
        Self {
            http: Some(url.into()),
            interval: Some(interval),
            ..Self::named(name)
        }
    }

    /// The agent connects to `host:port` every `interval`.
    pub fn tcp(name: impl Into<String>, address: impl Into<String>, interval: Duration) -> Self {
        Self {
            tcp: Some(address.into()),
            interval: Some(interval),
            ..Self::named(name)
        }
    }

    pub fn with_id(mut self, check_id: impl Into<String>) -> Self {
        self.check_id = Some(check_id.into());
        self
    }

    pub fn with_initial_status(mut self, status: CheckStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// Whether maintenance mode is turned on (with a reason) or off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maintenance {
    /// The service is served as critical with this reason until turned off.
    Enable {
        reason: Option<String>,
    },
    Disable,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CheckUpdate<'a> {
    status: CheckStatus,
    output: &'a str,
}

impl Client {
    /// `GET /v1/agent/self`, reduced to the agent's identity.
    pub async fn agent_self(&self) -> Result<AgentSelf, Error> {
        let call = Call::get(EndpointKind::AgentSelf, ["agent", "self"]).agent_local();
        Ok(self.execute(call).await?.json::<AgentSelfWire>()?.config)
    }

    /// `PUT /v1/agent/service/register`: adds or replaces a service (and its
    /// checks) on the local agent.
    pub async fn agent_service_register(
        &self,
        registration: &AgentServiceRegistration,
    ) -> Result<(), Error> {
        let call = Call::put(
            EndpointKind::AgentServiceRegister,
            ["agent", "service", "register"],
        )
        .agent_local()
        .json_body(registration);
        self.execute(call).await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/<id>`.
    pub async fn agent_service_deregister(&self, service_id: &str) -> Result<(), Error> {
        let call = Call::put(
            EndpointKind::AgentServiceDeregister,
            ["agent", "service", "deregister", service_id],
        )
        .agent_local();
        self.execute(call).await.map(drop)
    }

    /// `PUT /v1/agent/service/maintenance/<id>?enable=…&reason=…`.
    pub async fn agent_service_maintenance(
        &self,
        service_id: &str,
        maintenance: &Maintenance,
    ) -> Result<(), Error> {
        let mut call = Call::put(
            EndpointKind::AgentServiceMaintenance,
            ["agent", "service", "maintenance", service_id],
        )
        .agent_local();
        match maintenance {
            Maintenance::Enable { reason } => {
                call = call.param("enable", "true");
                if let Some(reason) = reason {
                    call = call.param("reason", reason.clone());
                }
            }
            Maintenance::Disable => call = call.param("enable", "false"),
        }
        self.execute(call).await.map(drop)
    }

    /// `PUT /v1/agent/check/update/<check id>`: sets a TTL check's status
    /// (and resets its TTL) with `output` shown in Consul's UI.
    pub async fn agent_check_update(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), Error> {
        let call = Call::put(
            EndpointKind::AgentCheckUpdate,
            ["agent", "check", "update", check_id],
        )
        .agent_local()
        .json_body(&CheckUpdate { status, output });
        self.execute(call).await.map(drop)
    }

    pub async fn agent_check_pass(&self, check_id: &str, output: &str) -> Result<(), Error> {
        self.agent_check_update(check_id, CheckStatus::Passing, output)
            .await
    }

    pub async fn agent_check_warn(&self, check_id: &str, output: &str) -> Result<(), Error> {
        self.agent_check_update(check_id, CheckStatus::Warning, output)
            .await
    }

    pub async fn agent_check_fail(&self, check_id: &str, output: &str) -> Result<(), Error> {
        self.agent_check_update(check_id, CheckStatus::Critical, output)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_json;

    #[test]
    fn registration_serialises_durations_as_go_strings() {
        let registration = AgentServiceRegistration {
            id: Some("web-1".to_owned()),
            name: "web".to_owned(),
            port: 8080,
            weights: Some(Weights {
                passing: 5,
                warning: 1,
            }),
            checks: vec![AgentCheck::ttl("alive", Duration::from_secs(10)).with_id("web-1:ttl")],
            ..AgentServiceRegistration::default()
        };
        assert_eq!(
            serde_json::to_value(&registration).expect("serialisable"),
            serde_json::json!({
                "ID": "web-1", "Name": "web", "Port": 8080, "EnableTagOverride": false,
                "Weights": {"Passing": 5, "Warning": 1},
                "Checks": [{"CheckID": "web-1:ttl", "Name": "alive", "TTL": "10s"}]
            })
        );
    }

    #[test]
    fn agent_self_reads_the_config_section() {
        let body = br#"{"Config": {"Datacenter": "dc1", "NodeName": "n1", "NodeID": "x",
                        "Server": true, "Version": "1.8.7", "Revision": "abc"},
                        "Member": {"Name": "n1"}}"#;
        let wire: AgentSelfWire = decode_json("GET /v1/agent/self", body).expect("valid");
        assert_eq!(wire.config.datacenter, "dc1");
        assert_eq!(wire.config.version, "1.8.7");
        match decode_json::<AgentSelfWire>("GET /v1/agent/self", br#"{"Config": {}}"#) {
            Err(Error::Decode { path, message, .. }) => {
                assert_eq!(path, "Config");
                assert!(message.contains("Datacenter"), "{message}");
            }
            Err(other) => panic!("expected a decode error, got {other:?}"),
            Ok(_) => panic!("a config without a datacenter must be rejected"),
        }
    }
}

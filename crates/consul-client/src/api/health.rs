//! `/v1/health/*`: service instances with their node and checks, and checks
//! by service or by state.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::Call;
use crate::codec::{decode_element, null_as_default};
use crate::endpoint::EndpointKind;
use crate::{Client, Error, QueryOptions, QueryResponse};

/// The state of one health check. Ordered by severity, so the worst of
/// several is their `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// Which instances `/v1/health/service/<name>` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthFilter {
    /// Every instance, whatever its checks say.
    #[default]
    All,
    /// `?passing`: only instances whose checks all pass.
    PassingOnly,
}

/// The `<state>` of `/v1/health/state/<state>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Every check in the datacenter: a DC-wide view in one blocking query.
    Any,
    Passing,
    Warning,
    Critical,
    /// Every check that is not passing: `any` with Consul's `filter`
    /// (1.4+). Where most checks pass, as in a healthy datacenter, a small
    /// answer that still wakes on every check change of the datacenter,
    /// since a blocking query's index is the whole checks table's.
    NotPassing,
}

/// The `filter` expression of [`HealthState::NotPassing`].
const NOT_PASSING_FILTER: &str = r#"Status != "passing""#;

impl HealthState {
    /// The `<state>` segment of the path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any | Self::NotPassing => "any",
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// The call for this state's checks.
    fn call(self, options: &QueryOptions) -> Call {
        let call = Call::get(
            EndpointKind::HealthState,
            ["health", "state", self.as_str()],
        )
        .options(options);
        match self {
            Self::NotPassing => call.param("filter", NOT_PASSING_FILTER),
            Self::Any | Self::Passing | Self::Warning | Self::Critical => call,
        }
    }
}

/// How much traffic an instance gets when its checks pass or warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

/// Consul's defaults for an instance registered without weights.
impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// An address and port a service is also reachable on (`lan`, `wan`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// A node of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The node's name.
    pub node: String,
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    /// `lan`, `wan`, `lan_ipv4`, … as plain addresses.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// A service instance as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    /// The service's name.
    pub service: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Empty when the instance uses its node's address.
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub weights: Weights,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// One health check and its last result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: CheckStatus,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub output: String,
    /// Empty for a node-level check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_tags: Vec<String>,
    /// `ttl`, `http`, `tcp`, … (empty for the agent's own serf check).
    #[serde(rename = "Type", default)]
    pub check_type: String,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// Consul's check ID for node maintenance mode.
pub const NODE_MAINTENANCE_CHECK_ID: &str = "_node_maintenance";
/// Prefix of Consul's check IDs for service maintenance mode.
pub const SERVICE_MAINTENANCE_CHECK_PREFIX: &str = "_service_maintenance:";

impl HealthCheck {
    /// Whether this is the check Consul adds for node or service maintenance.
    pub fn is_maintenance(&self) -> bool {
        self.check_id == NODE_MAINTENANCE_CHECK_ID
            || self.check_id.starts_with(SERVICE_MAINTENANCE_CHECK_PREFIX)
    }
}

/// The identity and status of a check, without its output or notes: what a
/// DC-wide `/v1/health/state/any` read needs to tell which services changed.
/// Skipping the free-text fields keeps a read of every check in a large
/// datacenter several times smaller in memory.
///
/// The names borrow from the answer's text where they can (no JSON escape
/// in them, the usual case): [`Client::health_state_fold`] hands each check
/// on without allocating. `CheckBrief<'static>` owns its names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckBrief<'a> {
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    #[serde(rename = "CheckID", borrow)]
    pub check_id: Cow<'a, str>,
    pub status: CheckStatus,
    /// Empty for a node-level check.
    #[serde(rename = "ServiceID", default, borrow)]
    pub service_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub service_name: Cow<'a, str>,
}

impl CheckBrief<'_> {
    /// The same check, owning its names.
    pub fn into_owned(self) -> CheckBrief<'static> {
        CheckBrief {
            node: Cow::Owned(self.node.into_owned()),
            check_id: Cow::Owned(self.check_id.into_owned()),
            status: self.status,
            service_id: Cow::Owned(self.service_id.into_owned()),
            service_name: Cow::Owned(self.service_name.into_owned()),
        }
    }
}

/// One instance of a service: `/v1/health/service/<name>`'s element.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: Node,
    pub service: Service,
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the node's and the service's checks; passing
    /// when there are none.
    pub fn status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|check| check.status)
            .max()
            .unwrap_or(CheckStatus::Passing)
    }

    /// Node or service maintenance mode is on.
    pub fn in_maintenance(&self) -> bool {
        self.checks.iter().any(HealthCheck::is_maintenance)
    }

    /// The service's address, or its node's when it has none (Consul's rule).
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

impl Client {
    /// `GET /v1/health/service/<service>`: the instances of `service`, each
    /// with its node and all its checks (node-level ones included).
    pub async fn health_service(
        &self,
        service: &str,
        filter: HealthFilter,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<ServiceEntry>>, Error> {
        let mut call =
            Call::get(EndpointKind::HealthService, ["health", "service", service]).options(options);
        if filter == HealthFilter::PassingOnly {
            call = call.param("passing", "true");
        }
        self.execute(call).await?.into_response()
    }

    /// `GET /v1/health/checks/<service>`: the checks of `service`'s instances.
    pub async fn health_checks(
        &self,
        service: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<HealthCheck>>, Error> {
        let call =
            Call::get(EndpointKind::HealthChecks, ["health", "checks", service]).options(options);
        self.execute(call).await?.into_response()
    }

    /// [`Client::health_state`] folded into `init` one [`CheckBrief`] at a
    /// time, as the answer arrives: the answer's text is never held whole
    /// and no list of checks is built, so what a read of every check in a
    /// large datacenter costs in memory is what `fold` keeps. A malformed
    /// check fails the read (its path is `[index]...`), and the partly
    /// folded value is dropped.
    pub async fn health_state_fold<A, F>(
        &self,
        state: HealthState,
        options: &QueryOptions,
        init: A,
        mut fold: F,
    ) -> Result<QueryResponse<A>, Error>
    where
        A: Send,
        F: for<'a> FnMut(&mut A, CheckBrief<'a>) + Send,
    {
        let call = state.call(options);
        let mut value = init;
        let meta = self
            .execute_each(call, |index, text| {
                fold(&mut value, decode_element(index, text)?);
                Ok(())
            })
            .await?;
        Ok(QueryResponse { value, meta })
    }

    /// `GET /v1/health/state/<state>`: every check in the datacenter in
    /// `state` ([`HealthState::Any`]: all of them).
    pub async fn health_state(
        &self,
        state: HealthState,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<HealthCheck>>, Error> {
        self.execute(state.call(options)).await?.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeFailure, decode_json};
    use crate::json_array::ArraySplitter;

    /// Abridged from a Consul 1.8 answer, nulls included.
    const ENTRY: &str = r#"[{
        "Node": {"ID": "a1", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                 "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.51.100.1"},
                 "Meta": {"zone": "a"}, "CreateIndex": 5, "ModifyIndex": 6},
        "Service": {"Kind": "", "ID": "web-1", "Service": "web", "Tags": null, "Address": "",
                    "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 8080}},
                    "Meta": null, "Port": 8080, "Weights": {"Passing": 10, "Warning": 1},
                    "EnableTagOverride": false, "CreateIndex": 7, "ModifyIndex": 7},
        "Checks": [
            {"Node": "n1", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
             "Notes": "", "Output": "Agent alive", "ServiceID": "", "ServiceName": "", "ServiceTags": [],
             "Type": "", "CreateIndex": 5, "ModifyIndex": 5},
            {"Node": "n1", "CheckID": "_service_maintenance:web-1", "Name": "Service Maintenance Mode",
             "Status": "critical", "Notes": "deploy", "Output": "", "ServiceID": "web-1",
             "ServiceName": "web", "ServiceTags": null, "Type": "maintenance",
             "CreateIndex": 9, "ModifyIndex": 9}
        ]
    }]"#;

    #[test]
    fn entries_decode_with_nulls_and_derive_status_address_maintenance() {
        let entries: Vec<ServiceEntry> =
            decode_json("GET /v1/health/service/web", ENTRY.as_bytes()).expect("valid entry");
        let entry = &entries[0];
        assert_eq!(
            entry.service.weights,
            Weights {
                passing: 10,
                warning: 1
            }
        );
        assert!(entry.service.tags.is_empty());
        assert_eq!(entry.node.tagged_addresses["wan"], "198.51.100.1");
        assert_eq!(entry.service.tagged_addresses["lan_ipv4"].port, 8080);
        assert_eq!(entry.address(), "10.0.0.1");
        assert_eq!(entry.status(), CheckStatus::Critical);
        assert!(entry.in_maintenance());
    }

    /// Decodes `body` as `Client::health_state_fold` does: split in
    /// `chunk`-byte pieces as if from the network, each check decoded alone.
    fn briefs(body: &str, chunk: usize) -> Result<Vec<CheckBrief<'static>>, DecodeFailure> {
        let mut splitter = ArraySplitter::default();
        let mut checks = Vec::new();
        for piece in body.as_bytes().chunks(chunk) {
            splitter.feed(piece, &mut |index, text| {
                checks.push(decode_element::<CheckBrief<'_>>(index, text)?.into_owned());
                Ok(())
            })?;
        }
        splitter.finish()?;
        Ok(checks)
    }

    const CHECKS: &str = r#"[{"Node": "n1", "CheckID": "service:web-1", "Name": "HTTP", "Status": "warning",
        "Notes": "", "Output": "a long body we do not keep, with ] and } in it", "ServiceID": "web-1",
        "ServiceName": "web", "ServiceTags": null, "Type": "http",
        "Definition": {"Interval": "0s", "Header": null}, "CreateIndex": 9, "ModifyIndex": 9},
        {"Node": "n1", "CheckID": "serfHealth", "Name": "Serf", "Status": "passing"}]"#;

    #[test]
    fn brief_checks_keep_identity_and_status_only() {
        for chunk in [1, 7, CHECKS.len()] {
            let checks = briefs(CHECKS, chunk).expect("valid checks");
            assert_eq!(checks.len(), 2, "chunks of {chunk} bytes");
            assert_eq!(checks[0].service_name, "web");
            assert_eq!(checks[0].check_id, "service:web-1");
            assert_eq!(checks[0].status, CheckStatus::Warning);
            assert_eq!(checks[1].service_id, "", "a node check");
            assert_eq!(checks[1].node, "n1");
        }
    }

    #[test]
    fn brief_names_borrow_the_text_unless_it_has_escapes() {
        let plain =
            br#"{"Node": "n1", "CheckID": "c", "Status": "critical", "ServiceName": "web"}"#;
        let check: CheckBrief<'_> = decode_element(0, plain).expect("valid check");
        assert!(
            matches!(check.node, Cow::Borrowed("n1"))
                && matches!(check.service_name, Cow::Borrowed("web")),
            "names without escapes are not copied: {check:?}"
        );
        let escaped = br#"{"Node": "n\u0031", "CheckID": "c", "Status": "passing"}"#;
        let check: CheckBrief<'_> = decode_element(0, escaped).expect("valid check");
        assert_eq!(
            check.node, "n1",
            "an escaped name is decoded into its own string"
        );
    }

    #[test]
    fn a_bad_brief_check_is_named_by_its_index_and_field() {
        let unknown_status = CHECKS.replace(r#""Status": "passing""#, r#""Status": "fine""#);
        let failure = briefs(&unknown_status, 5).expect_err("an unknown status");
        assert_eq!(failure.path, "[1].Status");
        assert!(failure.message.contains("fine"), "{}", failure.message);

        let no_id = CHECKS.replace(r#""CheckID": "serfHealth", "#, "");
        let failure = briefs(&no_id, 5).expect_err("a check without an ID");
        assert_eq!(failure.path, "[1]");
        assert!(failure.message.contains("CheckID"), "{}", failure.message);

        let status_as_number = CHECKS.replace(r#""Status": "warning""#, r#""Status": 2"#);
        assert_eq!(
            briefs(&status_as_number, 64).expect_err("a number").path,
            "[0].Status"
        );

        let truncated = &CHECKS[..CHECKS.len() - 20];
        let failure = briefs(truncated, 64).expect_err("a cut answer");
        assert_eq!(failure.path, "[1]");
        assert!(failure.message.contains("ended"), "{}", failure.message);

        let not_a_list = briefs(r#"{"Node": "n1"}"#, 64).expect_err("an object");
        assert_eq!(not_a_list.path, "(root)");
    }

    #[test]
    fn a_wrong_type_names_its_path() {
        let body = ENTRY.replace(r#""Port": 8080, "Weights""#, r#""Port": "http", "Weights""#);
        match decode_json::<Vec<ServiceEntry>>("GET /v1/health/service/web", body.as_bytes()) {
            Err(Error::Decode { path, .. }) => assert_eq!(path, "[0].Service.Port"),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_status_is_an_error_not_a_guess() {
        let body = ENTRY.replace(r#""Status": "passing""#, r#""Status": "fine""#);
        match decode_json::<Vec<ServiceEntry>>("GET /v1/health/service/web", body.as_bytes()) {
            Err(Error::Decode { path, .. }) => assert_eq!(path, "[0].Checks[0].Status"),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
}

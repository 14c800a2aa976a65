//! The shapes of Nomad's answers, field for field as Nomad 1.6 encodes them
//! (`api/services.go`, `nomad/structs/service_registration.go`,
//! `nomad/structs/checks.go`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// Go encodes a nil slice as `null`; every list here may come as one.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// One allocation's registration of a service (`provider = "nomad"`), from
/// `GET /v1/service/:name`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// `_nomad-task-<alloc>-<task>-<service>-<port label>`, unique per
    /// namespace.
    #[serde(rename = "ID")]
    pub id: String,
    pub service_name: String,
    pub namespace: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub datacenter: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(rename = "AllocID")]
    pub alloc_id: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The services of one namespace, from `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceServices {
    pub namespace: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub services: Vec<ServiceSummary>,
}

/// Each service of a `/v1/services` answer (one namespace or several) with
/// the union of its tags, in the shape a Consul catalog listing has: what
/// route tags are read from, whichever registry listed them.
pub fn tags_by_service(listed: &[NamespaceServices]) -> BTreeMap<String, Vec<String>> {
    let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for summary in listed.iter().flat_map(|namespace| &namespace.services) {
        let tags = services.entry(summary.service_name.clone()).or_default();
        for tag in &summary.tags {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
    }
    services
}

/// One service name with the union of its registrations' tags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary {
    pub service_name: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
}

/// A check's last result (`structs.CheckStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Success,
    Failure,
    Pending,
}

/// Whether a failing check holds deployments back (`healthiness`) or only
/// says the service is not ready (`readiness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    Healthiness,
    Readiness,
}

/// One check result of an allocation (`structs.CheckQueryResult`), from
/// `GET /v1/client/allocation/:id/checks`, keyed there by [`Self::id`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckResult {
    #[serde(rename = "ID")]
    pub id: String,
    pub mode: CheckMode,
    pub status: CheckStatus,
    /// The HTTP status of an HTTP check; absent (0) otherwise.
    #[serde(default)]
    pub status_code: u16,
    #[serde(default)]
    pub output: String,
    /// Unix seconds of the result.
    pub timestamp: i64,
    pub group: String,
    /// Empty for a group-level service.
    #[serde(default)]
    pub task: String,
    pub service: String,
    pub check: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_lists_decode_as_empty() {
        let stub: ServiceSummary =
            serde_json::from_str(r#"{"ServiceName":"web","Tags":null}"#).expect("decodes");
        assert!(stub.tags.is_empty());
        let listing: NamespaceServices =
            serde_json::from_str(r#"{"Namespace":"default","Services":null}"#).expect("decodes");
        assert!(listing.services.is_empty());
    }

    #[test]
    fn a_check_result_without_optional_fields_decodes() {
        let check: CheckResult = serde_json::from_str(
            r#"{"ID":"a1","Mode":"readiness","Status":"pending","Timestamp":1700000000,
                "Group":"app","Service":"web","Check":"alive"}"#,
        )
        .expect("decodes");
        assert_eq!(check.status, CheckStatus::Pending);
        assert_eq!((check.status_code, check.task.as_str()), (0, ""));
    }
}

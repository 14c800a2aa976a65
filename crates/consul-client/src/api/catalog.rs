//! `/v1/catalog/*`: the service list, and registration of nodes and
//! services that no local agent runs (external services).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::api::health::{CheckStatus, ServiceAddress, Weights};
use crate::client::Call;
use crate::endpoint::EndpointKind;
use crate::{Client, Error, QueryOptions, QueryResponse};

/// Service name to the union of its instances' tags.
pub type ServiceTags = BTreeMap<String, Vec<String>>;

/// `PUT /v1/catalog/register`'s body: a node, and optionally a service and
/// a check on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogRegistration {
    pub node: String,
    pub address: String,
    /// The client's datacenter when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<CatalogService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CatalogCheck>,
    /// Leave the node's address and meta as they are.
    pub skip_node_update: bool,
}

/// A service instance registered through the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    #[serde(rename = "ID")]
    pub id: String,
    /// The service's name.
    pub service: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub port: u16,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
}

/// A check whose status the registrant sets (the catalog runs no checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: CheckStatus,
    /// Empty for a node-level check.
    #[serde(rename = "ServiceID", skip_serializing_if = "String::is_empty")]
    pub service_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// `PUT /v1/catalog/deregister`'s body: a whole node, or one service or
/// check of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogDeregistration {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
}

/// Consul writes `null` for a service whose instances have no tags.
fn tags_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ServiceTags, D::Error> {
    let raw = BTreeMap::<String, Option<Vec<String>>>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(name, tags)| (name, tags.unwrap_or_default()))
        .collect())
}

#[derive(Deserialize)]
#[serde(transparent)]
struct ServicesWire(#[serde(deserialize_with = "tags_map")] ServiceTags);

impl Client {
    /// `GET /v1/catalog/services`: every service name with its tags.
    pub async fn catalog_services(
        &self,
        options: &QueryOptions,
    ) -> Result<QueryResponse<ServiceTags>, Error> {
        let call =
            Call::get(EndpointKind::CatalogServices, ["catalog", "services"]).options(options);
        Ok(self
            .execute(call)
            .await?
            .into_response::<ServicesWire>()?
            .map(|wire| wire.0))
    }

    /// `PUT /v1/catalog/register`.
    pub async fn catalog_register(&self, registration: &CatalogRegistration) -> Result<(), Error> {
        let call = Call::put(EndpointKind::CatalogRegister, ["catalog", "register"])
            .json_body(registration);
        self.execute(call).await?.expect_true()
    }

    /// `PUT /v1/catalog/deregister`.
    pub async fn catalog_deregister(
        &self,
        deregistration: &CatalogDeregistration,
    ) -> Result<(), Error> {
        let call = Call::put(EndpointKind::CatalogDeregister, ["catalog", "deregister"])
            .json_body(deregistration);
        self.execute(call).await?.expect_true()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_json;

    #[test]
    fn services_with_null_tags_decode_to_empty() {
        let wire: ServicesWire = decode_json(
            "GET /v1/catalog/services",
            br#"{"consul": null, "web": ["v1", "canary"]}"#,
        )
        .expect("valid");
        assert_eq!(wire.0["consul"], Vec::<String>::new());
        assert_eq!(wire.0["web"], vec!["v1", "canary"]);
    }

    #[test]
    fn registration_serialises_with_consuls_field_names() {
        let registration = CatalogRegistration {
            node: "ext-1".to_owned(),
            address: "192.0.2.10".to_owned(),
            service: Some(CatalogService {
                id: "db-1".to_owned(),
                service: "db".to_owned(),
                port: 5432,
                ..CatalogService::default()
            }),
            check: Some(CatalogCheck {
                check_id: "db-1:alive".to_owned(),
                name: "alive".to_owned(),
                status: CheckStatus::Passing,
                service_id: "db-1".to_owned(),
                output: String::new(),
            }),
            ..CatalogRegistration::default()
        };
        let json = serde_json::to_value(&registration).expect("serialisable");
        assert_eq!(
            json,
            serde_json::json!({
                "Node": "ext-1", "Address": "192.0.2.10", "SkipNodeUpdate": false,
                "Service": {"ID": "db-1", "Service": "db", "Port": 5432},
                "Check": {"CheckID": "db-1:alive", "Name": "alive", "Status": "passing", "ServiceID": "db-1"}
            })
        );
    }
}

//! `/v1/internal/ui/services`: one summary per service of the datacenter,
//! the list Consul's own web UI shows.
//!
//! Why an internal endpoint: it is the only answer of Consul 1.8 that says,
//! per service and in one read, how many instances it has and on which
//! nodes, at a size proportional to the number of services (about 2 MB for
//! 5,000 services of 20 instances each, where every check or every instance
//! is tens of MB). Consul does not promise it stays the same between
//! versions, so callers treat a failed read as "nothing learned" and fall
//! back to reading what they must (docs/adr/0010-dc-wide-changes.md).

use std::borrow::Cow;

use serde::Deserialize;

use crate::client::Call;
use crate::codec::{decode_element, null_as_default};
use crate::endpoint::EndpointKind;
use crate::{Client, Error, QueryOptions, QueryResponse};

/// What one service's summary says, its names borrowed from the answer's
/// text where they can be (see [`crate::CheckBrief`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The union of its instances' tags.
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub tags: Vec<Cow<'a, str>>,
    /// The nodes it has instances on, each once.
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub nodes: Vec<Cow<'a, str>>,
    #[serde(default)]
    pub instance_count: u64,
    #[serde(default)]
    pub checks_passing: u64,
    #[serde(default)]
    pub checks_warning: u64,
    #[serde(default)]
    pub checks_critical: u64,
}

impl Client {
    /// `GET /v1/internal/ui/services`, folded into `init` one summary at a
    /// time as the answer arrives (see [`Client::health_state_fold`]).
    pub async fn ui_services_fold<A, F>(
        &self,
        options: &QueryOptions,
        init: A,
        mut fold: F,
    ) -> Result<QueryResponse<A>, Error>
    where
        A: Send,
        F: for<'a> FnMut(&mut A, ServiceSummary<'a>) + Send,
    {
        let call =
            Call::get(EndpointKind::UiServices, ["internal", "ui", "services"]).options(options);
        let mut value = init;
        let meta = self
            .execute_each(call, |index, text| {
                fold(&mut value, decode_element(index, text)?);
                Ok(())
            })
            .await?;
        Ok(QueryResponse { value, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_element;

    #[test]
    fn a_summary_of_consul_1_8_decodes_with_its_names_borrowed() {
        // As Consul 1.8.7 answers, nulls included.
        let text = br#"{"Name":"web","Tags":null,"Nodes":["n1","n2"],"InstanceCount":3,
            "ChecksPassing":2,"ChecksWarning":0,"ChecksCritical":1,
            "ExternalSources":null,"GatewayConfig":{}}"#;
        let summary: ServiceSummary<'_> = decode_element(0, text).expect("decodes");
        assert_eq!(summary.name, "web");
        assert!(matches!(summary.name, Cow::Borrowed(_)));
        assert!(summary.tags.is_empty());
        assert_eq!(summary.nodes, ["n1", "n2"]);
        assert_eq!(summary.instance_count, 3);
        assert_eq!(summary.checks_critical, 1);
    }
}

//! Many services of many instances registered straight into Consul's
//! catalog, as external services on made-up nodes: no process per
//! instance, so a benchmark can hold 100,000 of them.

use consul_client::{CatalogCheck, CatalogRegistration, CatalogService, CheckStatus, Client};
use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{failed} of {attempted} catalog registrations failed, the first: {first}")]
    Registrations {
        failed: usize,
        attempted: usize,
        first: consul_client::Error,
    },
}

/// `services` services `svc-0..` of `instances` instances `svc-S-I`.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub services: usize,
    pub instances: usize,
}

impl Fleet {
    /// Instances spread over at least 500 nodes, as in a real datacenter,
    /// and never two instances of one service on one node.
    pub fn nodes(&self) -> usize {
        500.max(self.instances)
    }

    pub fn service_name(service: usize) -> String {
        format!("svc-{service}")
    }

    pub fn instance_id(service: usize, instance: usize) -> String {
        format!("svc-{service}-{instance}")
    }

    /// The registration of one instance with its service check at `status`.
    pub fn registration(
        &self,
        service: usize,
        instance: usize,
        tags: Vec<String>,
        status: CheckStatus,
    ) -> CatalogRegistration {
        let node = (service * self.instances + instance) % self.nodes();
        let id = Self::instance_id(service, instance);
        CatalogRegistration {
            node: format!("node-{node}"),
            address: format!("10.{}.{}.{}", node / 65536, (node / 256) % 256, node % 256),
            service: Some(CatalogService {
                id: id.clone(),
                service: Self::service_name(service),
                tags,
                port: 8080,
                ..CatalogService::default()
            }),
            check: Some(CatalogCheck {
                check_id: format!("check:{id}"),
                name: "bench".to_owned(),
                status,
                service_id: id,
                output: String::new(),
            }),
            ..CatalogRegistration::default()
        }
    }

    /// Registers every instance, passing, with the tags `tags(service)`;
    /// 32 registrations in flight, which Consul's default limits take.
    pub async fn register_all(
        &self,
        client: &Client,
        tags: impl Fn(usize) -> Vec<String>,
    ) -> Result<(), FleetError> {
        let tags = &tags;
        let registrations =
            (0..self.services).flat_map(|s| (0..self.instances).map(move |i| (s, i)));
        let results: Vec<Result<(), consul_client::Error>> = futures::stream::iter(registrations)
            .map(|(s, i)| async move {
                client
                    .catalog_register(&self.registration(s, i, tags(s), CheckStatus::Passing))
                    .await
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let attempted = results.len();
        let mut errors = results.into_iter().filter_map(Result::err);
        match errors.next() {
            None => Ok(()),
            Some(first) => Err(FleetError::Registrations {
                failed: 1 + errors.count(),
                attempted,
                first,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_of_one_service_land_on_distinct_nodes() {
        let fleet = Fleet {
            services: 3,
            instances: 20,
        };
        let nodes: std::collections::BTreeSet<String> = (0..20)
            .map(|i| fleet.registration(2, i, vec![], CheckStatus::Passing).node)
            .collect();
        assert_eq!(nodes.len(), 20);
        let registration = fleet.registration(2, 7, vec!["t".into()], CheckStatus::Critical);
        let service = registration.service.expect("service");
        assert_eq!(service.id, "svc-2-7");
        assert_eq!(service.service, "svc-2");
        assert_eq!(service.tags, vec!["t".to_owned()]);
        assert_eq!(registration.check.expect("check").service_id, "svc-2-7");
    }
}

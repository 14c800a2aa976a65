//! Domain endpoints -> Envoy `ClusterLoadAssignment`.
//!
//! The only module of this service that touches protobuf types.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality as EnvoyLocality, SocketAddress, address,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::model::{ClusterEndpoints, Endpoint, EndpointHealth, Locality};

/// One `ClusterLoadAssignment`, endpoints grouped by (priority, locality)
/// in a stable order, so equal inputs encode to equal bytes and the cache
/// does not see a change where there is none.
pub fn cluster_load_assignment(cluster: &ClusterEndpoints) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<(u32, &Locality), Vec<&Endpoint>> = BTreeMap::new();
    for endpoint in cluster.endpoints.iter() {
        groups
            .entry((endpoint.priority, &*endpoint.locality))
            .or_default()
            .push(endpoint);
    }
    let endpoints = groups
        .into_iter()
        .map(|((priority, locality), mut members)| {
            members.sort_by(|a, b| {
                (&a.address, a.port, &a.instance_id).cmp(&(&b.address, b.port, &b.instance_id))
            });
            LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    region: locality.region.clone(),
                    zone: locality.zone.clone(),
                    sub_zone: locality.sub_zone.clone(),
                }),
                lb_endpoints: members.into_iter().map(lb_endpoint).collect(),
                priority,
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.cluster.clone(),
        endpoints,
        ..Default::default()
    }
}

fn lb_endpoint(endpoint: &Endpoint) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: endpoint.address.to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(endpoint.port))),
                    ..Default::default()
                })),
            }),
            // Shown in Envoy's /clusters: which Consul instance this is.
            hostname: endpoint.instance_id.to_string(),
            ..Default::default()
        })),
        health_status: health_status(endpoint.health) as i32,
        load_balancing_weight: Some(UInt32Value {
            value: endpoint.weight.max(1),
        }),
        ..Default::default()
    }
}

fn health_status(health: EndpointHealth) -> HealthStatus {
    match health {
        EndpointHealth::Healthy => HealthStatus::Healthy,
        EndpointHealth::Degraded => HealthStatus::Degraded,
        EndpointHealth::Unhealthy => HealthStatus::Unhealthy,
        EndpointHealth::Draining => HealthStatus::Draining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, address: &str, priority: u32, zone: &str) -> Endpoint {
        Endpoint {
            instance_id: id.into(),
            node: "node".into(),
            address: address.into(),
            port: 80,
            health: EndpointHealth::Healthy,
            weight: 3,
            locality: Locality {
                region: "dc1".to_owned(),
                zone: zone.to_owned(),
                sub_zone: String::new(),
            }
            .into(),
            priority,
            reason: "",
        }
    }

    #[test]
    fn groups_by_priority_then_locality_in_a_stable_order() {
        let cluster = ClusterEndpoints {
            cluster: "web".to_owned(),
            endpoints: vec![
                endpoint("c", "10.0.0.3", 1, "a"),
                endpoint("b", "10.0.0.2", 0, "b"),
                endpoint("a", "10.0.0.1", 0, "a"),
                endpoint("d", "::1", 0, "a"),
            ]
            .into(),
        };
        let cla = cluster_load_assignment(&cluster);
        assert_eq!(cla.cluster_name, "web");
        let shape: Vec<(u32, String, usize)> = cla
            .endpoints
            .iter()
            .map(|group| {
                let zone = group
                    .locality
                    .as_ref()
                    .map(|l| l.zone.clone())
                    .unwrap_or_default();
                (group.priority, zone, group.lb_endpoints.len())
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, "a".to_owned(), 2),
                (0, "b".to_owned(), 1),
                (1, "a".to_owned(), 1)
            ]
        );
        let mut reversed = cluster.clone();
        reversed.endpoints = cluster.endpoints.iter().rev().cloned().collect();
        assert_eq!(
            cluster_load_assignment(&reversed),
            cla,
            "input order must not matter"
        );
    }

    #[test]
    fn carries_weight_health_and_address() {
        let mut draining = endpoint("a", "2001:db8::1", 0, "");
        draining.health = EndpointHealth::Draining;
        let cla = cluster_load_assignment(&ClusterEndpoints {
            cluster: "web".to_owned(),
            endpoints: vec![draining].into(),
        });
        let lb = &cla.endpoints[0].lb_endpoints[0];
        assert_eq!(lb.health_status, HealthStatus::Draining as i32);
        assert_eq!(lb.load_balancing_weight, Some(UInt32Value { value: 3 }));
        let Some(HostIdentifier::Endpoint(inner)) = &lb.host_identifier else {
            panic!("no endpoint");
        };
        let Some(address::Address::SocketAddress(socket)) =
            inner.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            panic!("no socket address");
        };
        assert_eq!(socket.address, "2001:db8::1");
        assert_eq!(socket.port_specifier, Some(PortSpecifier::PortValue(80)));
    }
}

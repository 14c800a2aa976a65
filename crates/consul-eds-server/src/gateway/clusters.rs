//! The gateway's clusters in the form the xDS cache holds them: encoded,
//! and translated again only where a declaration changed.
//!
//! A translated `Cluster` is kilobytes of mostly empty protobuf fields; its
//! encoding is a few hundred bytes. At 5,000 routed services a set of
//! translated clusters was tens of megabytes, built whole for every route
//! change and held again by the publisher to compare against. Here each
//! cluster is translated and encoded on its own and only the encoding is
//! kept, so the standing set is a few megabytes, shared with the cache, and
//! a rebuild translates only the services whose cluster options changed.

use std::collections::BTreeMap;

use route_tags::{ClusterOptions, RouteTable};
use xds_core::{Resource, ResourceError};

use super::translate;

/// Every cluster a route table needs, by name, encoded.
#[derive(Debug, Clone, Default)]
pub struct EncodedClusters {
    by_name: BTreeMap<String, Built>,
}

#[derive(Debug, Clone)]
struct Built {
    /// What the resource was translated from: equal options, equal bytes.
    options: ClusterOptions,
    resource: Resource,
}

impl EncodedClusters {
    /// The clusters `table` needs. A cluster whose options equal those it
    /// was built from in `self` is reused as it is; only the others are
    /// translated and encoded.
    pub fn rebuild(&self, table: &RouteTable) -> Result<Self, ResourceError> {
        let mut by_name = BTreeMap::new();
        for decl in &table.clusters {
            for name in translate::cluster_names(decl) {
                let built = match self.by_name.get(&name) {
                    Some(built) if built.options == decl.options => built.clone(),
                    _ => Built {
                        options: decl.options.clone(),
                        resource: Resource::encode(&translate::cluster(&name, &decl.options))?,
                    },
                };
                by_name.insert(name, built);
            }
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.by_name.get(name).map(|built| &built.resource)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Name and resource, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Resource)> {
        self.by_name
            .iter()
            .map(|(name, built)| (name.as_str(), &built.resource))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    use route_tags::ClusterDecl;

    use super::*;

    fn decl(service: &str, canary: bool, options: ClusterOptions) -> ClusterDecl {
        ClusterDecl {
            service: service.to_owned(),
            options,
            canary,
        }
    }

    fn table(clusters: Vec<ClusterDecl>) -> RouteTable {
        RouteTable {
            clusters,
            ..RouteTable::default()
        }
    }

    fn decoded(clusters: &EncodedClusters, name: &str) -> Cluster {
        let any = clusters.get(name).expect(name).to_any().expect("any");
        Cluster::decode(any.value.as_slice()).expect("a cluster")
    }

    #[test]
    fn a_canary_cluster_is_built_beside_the_stable_one() {
        let built = EncodedClusters::default()
            .rebuild(&table(vec![
                decl("web", true, ClusterOptions::default()),
                decl("api", false, ClusterOptions::default()),
            ]))
            .expect("encodes");
        let names: Vec<&str> = built.iter().map(|(name, _)| name).collect();
        assert_eq!(names, vec!["api", "web", "web/canary"]);
        assert_eq!(decoded(&built, "web/canary").name, "web/canary");
        assert_eq!(
            decoded(&built, "web"),
            translate::cluster("web", &ClusterOptions::default())
        );
    }

    #[test]
    fn only_changed_options_are_translated_again() {
        let slow = ClusterOptions {
            connect_timeout: Some(Duration::from_secs(9)),
            ..ClusterOptions::default()
        };
        let first = EncodedClusters::default()
            .rebuild(&table(vec![
                decl("api", false, ClusterOptions::default()),
                decl("web", false, ClusterOptions::default()),
            ]))
            .expect("encodes");
        let second = first
            .rebuild(&table(vec![
                decl("api", false, ClusterOptions::default()),
                decl("web", false, slow.clone()),
            ]))
            .expect("encodes");
        // Reused: the very same encoding, not an equal copy.
        let same = |name: &str| {
            std::ptr::eq(
                first.get(name).expect(name).encoded_any().as_ptr(),
                second.get(name).expect(name).encoded_any().as_ptr(),
            )
        };
        assert!(same("api"));
        assert!(!same("web"));
        assert_ne!(first.get("web"), second.get("web"));
        assert_eq!(decoded(&second, "web"), translate::cluster("web", &slow));
    }

    #[test]
    fn a_cluster_no_route_needs_is_left_out() {
        let first = EncodedClusters::default()
            .rebuild(&table(vec![
                decl("api", false, ClusterOptions::default()),
                decl("web", true, ClusterOptions::default()),
            ]))
            .expect("encodes");
        let second = first
            .rebuild(&table(vec![decl("web", false, ClusterOptions::default())]))
            .expect("encodes");
        let names: Vec<&str> = second.iter().map(|(name, _)| name).collect();
        assert_eq!(names, vec!["web"]);
        assert!(!second.contains("api") && !second.contains("web/canary"));
        assert_eq!(second.len(), 1);
    }
}

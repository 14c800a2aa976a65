//! Which snapshot an Envoy gets: the node key.
//!
//! Every stream is served from the snapshot of its node key. Keying by node
//! id gives each Envoy its own configuration; keying by something Envoys
//! share (their `cluster`, a metadata field, a constant) lets a fleet of
//! identical gateways share one snapshot, so the application writes each
//! change once however many Envoys there are.

use std::fmt;

use envoy_types::pb::envoy::config::core::v3::Node;

/// Maps the `Node` an Envoy announces to the key of the snapshot it is served.
pub trait NodeHash: Send + Sync + 'static {
    fn node_key(&self, node: &Node) -> String;
}

/// Each Envoy its own snapshot, keyed by `node.id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByNodeId;

impl NodeHash for ByNodeId {
    fn node_key(&self, node: &Node) -> String {
        node.id.clone()
    }
}

/// One snapshot per Envoy cluster (`node.cluster`, `--service-cluster`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByNodeCluster;

impl NodeHash for ByNodeCluster {
    fn node_key(&self, node: &Node) -> String {
        node.cluster.clone()
    }
}

/// Every Envoy shares the snapshot with this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey(pub String);

impl NodeHash for SharedKey {
    fn node_key(&self, _node: &Node) -> String {
        self.0.clone()
    }
}

/// Any function of the node, e.g. a metadata field with a fallback.
impl<F> NodeHash for F
where
    F: Fn(&Node) -> String + Send + Sync + 'static,
{
    fn node_key(&self, node: &Node) -> String {
        self(node)
    }
}

/// A boxed [`NodeHash`] with a `Debug` that does not expose the closure.
pub(crate) struct DynNodeHash(pub(crate) Box<dyn NodeHash>);

impl fmt::Debug for DynNodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeHash")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cluster: &str) -> Node {
        Node {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            ..Node::default()
        }
    }

    #[test]
    fn the_provided_hashes_pick_the_documented_field() {
        let envoy = node("envoy-1", "gateways");
        assert_eq!(ByNodeId.node_key(&envoy), "envoy-1");
        assert_eq!(ByNodeCluster.node_key(&envoy), "gateways");
        assert_eq!(SharedKey("all".to_owned()).node_key(&envoy), "all");
    }

    #[test]
    fn a_closure_is_a_node_hash() {
        let hash = |node: &Node| format!("{}/{}", node.cluster, node.id);
        assert_eq!(hash.node_key(&node("a", "b")), "b/a");
    }
}

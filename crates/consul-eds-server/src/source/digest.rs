//! What the DC-wide view keeps of its two kinds of answer, and how two
//! answers are compared to tell which services and nodes changed:
//! [`ChecksDigest`] of the checks that are not passing, and
//! [`SummariesDigest`] of the services' summaries (how many instances, on
//! which nodes, with which tags).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use consul_client::{CheckBrief, ServiceSummary};

/// What the DC-wide view keeps of a `/v1/health/state/<state>` answer: per
/// service, and per node for node-level checks, a digest of the identity
/// and status of its checks. One small entry per service or node with a
/// check in the answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ChecksDigest {
    pub(super) services: HashMap<String, Digest>,
    pub(super) nodes: HashMap<String, Digest>,
}

/// Checks folded in any order: how many, and the wrapping sum of each
/// one's hash. Consul's order does not matter, and any check added,
/// removed or changing status changes the sum (two changes cancelling out
/// would need two 64-bit hashes to sum to the same value).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest {
    checks: u32,
    sum: u64,
}

impl ChecksDigest {
    pub(super) fn add(&mut self, check: CheckBrief<'_>) {
        // A service check counts for its service; a node check (no service)
        // for its node, whose services it affects.
        let (map, key, hash) = if check.service_name.is_empty() {
            let hash = hash_of(&(&*check.check_id, check.status));
            (&mut self.nodes, check.node, hash)
        } else {
            let hash = hash_of(&(&*check.node, &*check.check_id, check.status));
            (&mut self.services, check.service_name, hash)
        };
        // The name is copied only the first time it is seen.
        let digest = match map.get_mut(&*key) {
            Some(digest) => digest,
            None => map.entry(key.into_owned()).or_default(),
        };
        digest.checks += 1;
        digest.sum = digest.sum.wrapping_add(hash);
    }
}

/// What the DC-wide view keeps of a `/v1/internal/ui/services` answer: per
/// service, a hash of its instance count, its nodes and its tags. Not its
/// check counts: a check change is the checks watch's to find, and leaving
/// them out keeps a health change from costing a second read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SummariesDigest {
    pub(super) services: HashMap<String, u64>,
}

impl SummariesDigest {
    pub(super) fn add(&mut self, summary: ServiceSummary<'_>) {
        let hash = hash_of(&(summary.instance_count, &summary.nodes, &summary.tags));
        self.services.insert(summary.name.into_owned(), hash);
    }
}

/// Names whose digest differs between `a` and `b`, or that only one has.
pub(super) fn differing<'a, D: PartialEq>(
    a: &'a HashMap<String, D>,
    b: &'a HashMap<String, D>,
) -> impl Iterator<Item = &'a str> {
    let changed_or_gone = a
        .iter()
        .filter(|(name, digest)| b.get(*name) != Some(digest))
        .map(|(name, _)| name.as_str());
    let added = b
        .keys()
        .filter(|name| !a.contains_key(*name))
        .map(String::as_str);
    changed_or_gone.chain(added)
}

/// A node name as the DC-wide view remembers it. Two names sharing a key
/// would only make a node check change trigger a read too many.
pub(super) fn node_key(node: &str) -> u64 {
    hash_of(node)
}

/// A hash that is the same for the same value throughout the process
/// (std's SipHash with fixed keys).
fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Checks of a small datacenter, for the tests of the digest and the view.
#[cfg(test)]
pub(super) mod fixtures {
    use consul_client::{CheckBrief, CheckStatus};

    use super::ChecksDigest;

    pub(in crate::source) fn check(
        node: &str,
        id: &str,
        status: CheckStatus,
        service: &str,
    ) -> CheckBrief<'static> {
        CheckBrief {
            node: node.to_owned().into(),
            check_id: id.to_owned().into(),
            status,
            service_id: service.to_owned().into(),
            service_name: service.to_owned().into(),
        }
    }

    pub(in crate::source) fn digest(checks: &[CheckBrief<'static>]) -> ChecksDigest {
        let mut digest = ChecksDigest::default();
        for check in checks {
            digest.add(check.clone());
        }
        digest
    }

    /// Two nodes with a node check each; web on n1 and n2, api on n2, db on n3.
    pub(in crate::source) fn datacenter() -> Vec<CheckBrief<'static>> {
        vec![
            check("n1", "serfHealth", CheckStatus::Passing, ""),
            check("n2", "serfHealth", CheckStatus::Passing, ""),
            check("n1", "web-1", CheckStatus::Passing, "web"),
            check("n2", "web-2", CheckStatus::Critical, "web"),
            check("n2", "api-1", CheckStatus::Passing, "api"),
            check("n3", "db-1", CheckStatus::Passing, "db"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use consul_client::CheckStatus;

    use super::fixtures::{check, datacenter, digest};
    use super::*;

    fn changed(a: &ChecksDigest, b: &ChecksDigest) -> BTreeSet<String> {
        differing(&a.services, &b.services)
            .chain(differing(&a.nodes, &b.nodes))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_checks_digest_ignores_order_and_sees_each_status_change() {
        let before = digest(&datacenter());
        let mut reordered = datacenter();
        reordered.reverse();
        assert_eq!(digest(&reordered), before, "Consul's order does not matter");

        let mut swapped = datacenter();
        // Two checks of one service trading statuses still change it.
        swapped[2].status = CheckStatus::Critical;
        swapped[3].status = CheckStatus::Passing;
        assert_eq!(
            changed(&before, &digest(&swapped)),
            BTreeSet::from(["web".to_owned()])
        );

        let mut node_down = datacenter();
        node_down[1].status = CheckStatus::Critical;
        assert_eq!(
            changed(&before, &digest(&node_down)),
            BTreeSet::from(["n2".to_owned()]),
            "a node check counts for its node, not a service"
        );

        let mut fewer = datacenter();
        fewer.retain(|c| c.service_name != "db");
        fewer.push(check("n3", "cache-1", CheckStatus::Passing, "cache"));
        assert_eq!(
            changed(&before, &digest(&fewer)),
            BTreeSet::from(["cache".to_owned(), "db".to_owned()]),
            "services that lost or gained all their checks"
        );
    }

    fn summary(
        name: &str,
        instances: u64,
        nodes: &[&str],
        tags: &[&str],
    ) -> ServiceSummary<'static> {
        ServiceSummary {
            name: name.to_owned().into(),
            tags: tags.iter().map(|t| t.to_string().into()).collect(),
            nodes: nodes.iter().map(|n| n.to_string().into()).collect(),
            instance_count: instances,
            checks_passing: instances,
            checks_warning: 0,
            checks_critical: 0,
        }
    }

    fn summaries(list: &[ServiceSummary<'static>]) -> SummariesDigest {
        let mut digest = SummariesDigest::default();
        for summary in list {
            digest.add(summary.clone());
        }
        digest
    }

    #[test]
    fn the_summaries_digest_sees_instances_nodes_and_tags_but_not_check_counts() {
        let base = [
            summary("web", 2, &["n1", "n2"], &["v1"]),
            summary("api", 1, &["n2"], &[]),
        ];
        let before = summaries(&base);
        let changed = |after: &SummariesDigest| -> BTreeSet<String> {
            differing(&before.services, &after.services)
                .map(str::to_owned)
                .collect()
        };

        let mut flipped = base.clone();
        flipped[0].checks_passing = 1;
        flipped[0].checks_critical = 1;
        assert!(
            changed(&summaries(&flipped)).is_empty(),
            "health is not its concern"
        );

        let mut one_more = base.clone();
        one_more[0].instance_count = 3;
        assert_eq!(
            changed(&summaries(&one_more)),
            BTreeSet::from(["web".to_owned()])
        );

        let mut moved = base.clone();
        moved[1].nodes = vec!["n3".into()];
        assert_eq!(
            changed(&summaries(&moved)),
            BTreeSet::from(["api".to_owned()])
        );

        let mut tagged = base.clone();
        tagged[1].tags = vec!["edge.host=a.test".into()];
        assert_eq!(
            changed(&summaries(&tagged)),
            BTreeSet::from(["api".to_owned()])
        );

        let gone = summaries(&base[..1]);
        assert_eq!(
            changed(&gone),
            BTreeSet::from(["api".to_owned()]),
            "a service gone"
        );
    }
}

//! Cluster names <-> services.
//!
//! By default a cluster is named after its service (`web`), as the seed's
//! Envoy bootstraps expect. `<service>.<tag>` selects the instances carrying
//! a tag (`web.canary`). `--cluster-name-template` adds prefixes, the
//! datacenter, the registry or Nomad's namespace (`consul-{service}`,
//! `{service}.{dc}`, `{source}-{service}`, `{service}.{namespace}`).
//!
//! A name without `{source}` selects the service in every registry the
//! server reads (`--sources`), merged by name: that is how a service moved
//! from Consul to Nomad keeps its cluster while both registries hold it.
//! A name without `{namespace}` selects Nomad's namespaces given by
//! `--nomad-namespace`.

use regex::Regex;

use crate::model::SourceKind;

/// What a cluster name asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterTarget {
    pub service: String,
    pub tag: Option<String>,
    /// Instances carrying this tag are left out: in gateway mode a stable
    /// cluster never sends traffic to the canaries (they get a cluster of
    /// their own when a route says `canary=`). Never set from a cluster
    /// name.
    pub without_tag: Option<String>,
    /// `None`: the server's own datacenter.
    pub datacenter: Option<String>,
    /// `None`: every registry the server reads, merged by service name.
    pub source: Option<SourceKind>,
    /// Nomad's namespace; `None`: the configured ones. Consul (without
    /// Enterprise) has no namespaces: a name giving one selects Consul's
    /// instances only when it is `default`.
    pub namespace: Option<String>,
}

impl ClusterTarget {
    /// All of `service`'s instances, wherever they are registered, in the
    /// local datacenter.
    pub fn service(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            tag: None,
            without_tag: None,
            datacenter: None,
            source: None,
            namespace: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    #[error("--cluster-name-template `{template}` must contain `{{service}}` exactly once")]
    MissingService { template: String },
    #[error("--cluster-name-template `{template}`: `{{{placeholder}}}` may appear at most once")]
    Repeated {
        template: String,
        placeholder: &'static str,
    },
    #[error("--cluster-name-template `{template}`: {source}")]
    Pattern {
        template: String,
        #[source]
        source: regex::Error,
    },
}

/// Parses cluster names according to the template.
#[derive(Debug, Clone)]
pub struct ClusterNaming {
    pattern: Regex,
}

/// Consul service names and tags as they appear in DNS-friendly clusters.
const NAME: &str = "[A-Za-z0-9_-]+";

impl ClusterNaming {
    pub fn new(template: &str) -> Result<Self, NamingError> {
        if template.matches("{service}").count() != 1 {
            return Err(NamingError::MissingService {
                template: template.to_owned(),
            });
        }
        for placeholder in ["dc", "source", "namespace"] {
            if template.matches(&format!("{{{placeholder}}}")).count() > 1 {
                return Err(NamingError::Repeated {
                    template: template.to_owned(),
                    placeholder,
                });
            }
        }
        let mut pattern = String::from("^");
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{service}") {
                pattern.push_str(&format!(r"(?P<service>{NAME})(?:\.(?P<tag>{NAME}))?"));
                rest = after;
            } else if let Some(after) = rest.strip_prefix("{dc}") {
                pattern.push_str(&format!("(?P<dc>{NAME})"));
                rest = after;
            } else if let Some(after) = rest.strip_prefix("{source}") {
                let sources: Vec<&str> = SourceKind::ALL.iter().map(|s| s.as_str()).collect();
                pattern.push_str(&format!("(?P<source>{})", sources.join("|")));
                rest = after;
            } else if let Some(after) = rest.strip_prefix("{namespace}") {
                pattern.push_str(&format!("(?P<namespace>{NAME})"));
                rest = after;
            } else {
                // A literal runs to the next `{` after its first character
                // (itself possibly a `{` that starts no placeholder). That
                // character may take several bytes: the literal is cut at
                // its end, never inside it.
                let first = rest.chars().next().map_or(0, char::len_utf8);
                let end = rest[first..].find('{').map_or(rest.len(), |i| first + i);
                pattern.push_str(&regex::escape(&rest[..end]));
                rest = &rest[end..];
            }
        }
        pattern.push('$');
        let pattern = Regex::new(&pattern).map_err(|source| NamingError::Pattern {
            template: template.to_owned(),
            source,
        })?;
        Ok(Self { pattern })
    }

    /// The service (and tag, datacenter, registry, namespace) a cluster
    /// name selects, or `None` when the name does not follow the template.
    pub fn parse(&self, cluster: &str) -> Option<ClusterTarget> {
        let captures = self.pattern.captures(cluster)?;
        let source = match captures.name("source").map(|m| m.as_str()) {
            None => None,
            Some(name) => Some(*SourceKind::ALL.iter().find(|s| s.as_str() == name)?),
        };
        Some(ClusterTarget {
            service: captures.name("service")?.as_str().to_owned(),
            tag: captures.name("tag").map(|m| m.as_str().to_owned()),
            without_tag: None,
            datacenter: captures.name("dc").map(|m| m.as_str().to_owned()),
            source,
            namespace: captures.name("namespace").map(|m| m.as_str().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str, tag: Option<&str>, dc: Option<&str>) -> Option<ClusterTarget> {
        Some(ClusterTarget {
            tag: tag.map(str::to_owned),
            datacenter: dc.map(str::to_owned),
            ..ClusterTarget::service(service)
        })
    }

    #[test]
    fn default_template_is_the_service_name_with_an_optional_tag() {
        let naming = ClusterNaming::new("{service}").expect("valid");
        assert_eq!(naming.parse("web"), target("web", None, None));
        assert_eq!(
            naming.parse("web.canary"),
            target("web", Some("canary"), None)
        );
        assert_eq!(naming.parse("a.b.c"), None);
        assert_eq!(naming.parse(""), None);
    }

    #[test]
    fn prefixes_and_datacenters() {
        let naming = ClusterNaming::new("consul-{service}@{dc}").expect("valid");
        assert_eq!(
            naming.parse("consul-web@dc2"),
            target("web", None, Some("dc2"))
        );
        assert_eq!(
            naming.parse("consul-web.v2@dc1"),
            target("web", Some("v2"), Some("dc1"))
        );
        assert_eq!(naming.parse("web@dc2"), None);
    }

    #[test]
    fn template_literals_are_not_patterns() {
        let naming = ClusterNaming::new("svc.{service}").expect("valid");
        assert_eq!(naming.parse("svcXweb"), None);
        assert_eq!(naming.parse("svc.web"), target("web", None, None));
    }

    #[test]
    fn literals_may_hold_any_character_wherever_they_start() {
        // A literal starting with a multibyte character, before and after
        // the placeholder, as well as inside one.
        let naming = ClusterNaming::new("é{service}·{dc}ü").expect("valid");
        assert_eq!(naming.parse("éweb·dc2ü"), target("web", None, Some("dc2")));
        assert_eq!(naming.parse("eweb·dc2ü"), None);
        let naming = ClusterNaming::new("cé-{service}").expect("valid");
        assert_eq!(naming.parse("cé-web"), target("web", None, None));
    }

    #[test]
    fn the_registry_and_the_namespace_can_be_part_of_the_name() {
        let naming = ClusterNaming::new("{source}-{service}.{namespace}").expect("valid");
        assert_eq!(
            naming.parse("nomad-web.prod"),
            Some(ClusterTarget {
                source: Some(SourceKind::Nomad),
                namespace: Some("prod".to_owned()),
                ..ClusterTarget::service("web")
            })
        );
        assert_eq!(
            naming.parse("consul-web.default"),
            Some(ClusterTarget {
                source: Some(SourceKind::Consul),
                namespace: Some("default".to_owned()),
                ..ClusterTarget::service("web")
            })
        );
        // Only the registries the server knows make a name.
        assert_eq!(naming.parse("etcd-web.prod"), None);
        // Without `{source}`, a name selects every registry.
        let merged = ClusterNaming::new("{service}").expect("valid");
        assert_eq!(merged.parse("web").and_then(|t| t.source), None);
    }

    #[test]
    fn invalid_templates_are_named() {
        let error = ClusterNaming::new("static").expect_err("no service");
        assert!(error.to_string().contains("`static`"), "{error}");
        assert!(ClusterNaming::new("{service}-{service}").is_err());
        assert!(ClusterNaming::new("{service}.{dc}.{dc}").is_err());
        let error = ClusterNaming::new("{source}{service}{source}").expect_err("twice");
        assert!(
            error
                .to_string()
                .contains("`{source}` may appear at most once"),
            "{error}"
        );
    }
}

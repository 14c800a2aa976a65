//! Reading one service's tags into its `ServiceDecl`.
//!
//! Every instance's tags are read on their own first, then reconciled: a
//! rolling deploy has instances with old and new tags at once, and the
//! gateway must neither flap between them nor drop a route some instance
//! still serves. A tag with the prefix that cannot be read is a
//! `TagProblem` naming the key and what is wrong; it spoils only the route
//! (or cluster option) it belongs to, never the service's other tags.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::model::{
    ClusterOptions, HostPattern, ListenerSpec, PathMatch, RouteDecl, ServiceDecl, TagPrefix,
    TagProblem, TagScope,
};
use crate::options::{self, ROUTE_KEYS, RouteOptionSet};
use crate::syntax;

/// One instance's tags, as the registry lists them.
#[derive(Debug, Clone, Copy)]
pub struct InstanceTags<'a> {
    pub id: &'a str,
    pub tags: &'a [String],
}

/// Whether some tag is meant for the gateway, i.e. starts with `<prefix>.`:
/// such a service is worth watching even before its tags are read.
pub fn mentions_prefix(prefix: &TagPrefix, tags: &[String]) -> bool {
    tags.iter().any(|tag| strip_prefix(prefix, tag).is_some())
}

fn strip_prefix<'t>(prefix: &TagPrefix, tag: &'t str) -> Option<&'t str> {
    tag.strip_prefix(prefix.as_str())?.strip_prefix('.')
}

/// What the part of a tag after `<prefix>.` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag<'t> {
    /// `route=HOST/PATH opt=value ...`
    OneLine(Option<&'t str>),
    /// `http.routes.NAME.KEY=VALUE`
    Long {
        name: &'t str,
        key: &'t str,
        value: Option<&'t str>,
    },
    /// `cluster.KEY=VALUE`
    Cluster {
        key: &'t str,
        value: Option<&'t str>,
    },
    /// `canary`
    Canary(Option<&'t str>),
    Unknown {
        key: &'t str,
    },
}

fn classify(rest: &str) -> Tag<'_> {
    let (key, value) = match rest.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (rest, None),
    };
    match key {
        "route" => Tag::OneLine(value),
        "canary" => Tag::Canary(value),
        _ => {
            if let Some(long) = key.strip_prefix("http.routes.") {
                match long.split_once('.') {
                    Some((name, key)) => Tag::Long { name, key, value },
                    None => Tag::Unknown { key },
                }
            } else if let Some(key) = key.strip_prefix("cluster.") {
                Tag::Cluster { key, value }
            } else {
                Tag::Unknown { key }
            }
        }
    }
}

/// A declaration as one instance carries it: the tags it was read from
/// (sorted; they identify the variant when instances are compared) and
/// what they say, or `None` when they could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variant<T> {
    tags: Vec<String>,
    value: Option<T>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InstanceDecl {
    canary: bool,
    routes: BTreeMap<String, Variant<RouteDecl>>,
    cluster: Variant<ClusterOptions>,
    problems: Vec<TagProblem>,
}

fn problem(tag: &str, reason: impl Into<String>, scope: TagScope) -> TagProblem {
    TagProblem {
        tag: tag.to_owned(),
        reason: reason.into(),
        scope,
    }
}

/// One long-form key of one route: `(key, value, tag)`.
type LongEntry<'t> = (&'t str, Option<&'t str>, &'t str);

fn parse_instance(prefix: &TagPrefix, tags: &[String]) -> InstanceDecl {
    // Sorted, so that what a tag list declares does not depend on the order
    // the registry happens to list the tags in.
    let tags: BTreeSet<&str> = tags.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    let mut canary = false;
    let mut one_line: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    let mut long: BTreeMap<&str, Vec<LongEntry<'_>>> = BTreeMap::new();
    let mut cluster: BTreeMap<&str, Vec<(Option<&str>, &str)>> = BTreeMap::new();

    for tag in tags {
        let Some(rest) = strip_prefix(prefix, tag) else {
            continue;
        };
        match classify(rest) {
            Tag::OneLine(value) => match value.and_then(|v| v.split_whitespace().next()) {
                Some(name) => one_line
                    .entry(name)
                    .or_default()
                    .push((tag, value.unwrap_or_default())),
                None => problems.push(problem(
                    tag,
                    format!("route: give HOST/PATH and options, as `{prefix}.route=shop.example.com/api timeout=5s`"),
                    TagScope::Service,
                )),
            },
            Tag::Long { name, key, value } => {
                long.entry(name).or_default().push((key, value, tag));
            }
            Tag::Cluster { key, value } => cluster.entry(key).or_default().push((value, tag)),
            Tag::Canary(None) => canary = true,
            Tag::Canary(Some(_)) => problems.push(problem(
                tag,
                format!("canary: an instance flag, written `{prefix}.canary` without a value"),
                TagScope::Service,
            )),
            Tag::Unknown { key } => problems.push(problem(
                tag,
                format!(
                    "`{key}` is not a known key (route=, http.routes.NAME.KEY=, cluster.KEY=, canary)"
                ),
                TagScope::Service,
            )),
        }
    }

    let mut routes = BTreeMap::new();
    for (name, entries) in long {
        if !syntax::is_name(name) {
            for (_, _, tag) in entries {
                problems.push(problem(
                    tag,
                    format!(
                        "http.routes: `{name}` is not a route name (letters, digits, `-` and `_`)"
                    ),
                    TagScope::Service,
                ));
            }
            continue;
        }
        let variant = long_route(name, &entries, &mut problems);
        routes.insert(name.to_owned(), variant);
    }
    for (name, declared) in one_line {
        if routes.contains_key(name) {
            for (tag, _) in declared {
                problems.push(problem(
                    tag,
                    format!("route: `{name}` is also the name of a long-form route (http.routes.{name}.*); rename one"),
                    TagScope::Service,
                ));
            }
            continue;
        }
        let variant = one_line_route(name, &declared, &mut problems);
        routes.insert(name.to_owned(), variant);
    }

    let cluster = cluster_variant(&cluster, &mut problems);
    InstanceDecl {
        canary,
        routes,
        cluster,
        problems,
    }
}

/// `route=HOST/PATH opt=value ...`, named by its `HOST/PATH` as written.
fn one_line_route(
    name: &str,
    declared: &[(&str, &str)],
    problems: &mut Vec<TagProblem>,
) -> Variant<RouteDecl> {
    let tags: Vec<String> = declared.iter().map(|(tag, _)| (*tag).to_owned()).collect();
    let scope = || TagScope::Route(name.to_owned());
    let invalid = Variant {
        tags: tags.clone(),
        value: None,
    };
    if let [(first, _), rest @ ..] = declared
        && !rest.is_empty()
    {
        for (tag, _) in rest {
            problems.push(problem(
                    tag,
                    format!("route: `{name}` is declared twice with different options (also `{first}`); keep one"),
                    scope(),
                ));
        }
        return invalid;
    }
    let Some((tag, value)) = declared.first() else {
        return invalid;
    };

    let mut reasons = Vec::new();
    let (host_text, path_text) = match name.find('/') {
        Some(at) => name.split_at(at),
        None => (name, "/"),
    };
    let host = syntax::host_pattern(host_text)
        .map_err(|err| reasons.push(format!("route: {err}")))
        .ok();
    let path = syntax::path_prefix(path_text)
        .map_err(|err| reasons.push(format!("route: {err}")))
        .ok();
    let mut set = RouteOptionSet::default();
    for option in value.split_whitespace().skip(1) {
        match option.split_once('=') {
            Some((key, value)) => {
                if let Err(err) = set.set(key, value) {
                    reasons.push(err.to_string());
                }
            }
            None => reasons.push(format!("`{option}`: write options as key=value")),
        }
    }
    let result = match (host, path) {
        (Some(host), Some(path)) if reasons.is_empty() => {
            let path = PathMatch::Prefix(path);
            match set.finish(&host, &path) {
                Ok(options) => Some(RouteDecl {
                    name: name.to_owned(),
                    tags: tags.clone(),
                    host,
                    path,
                    options,
                }),
                Err(err) => {
                    reasons.push(err.to_string());
                    None
                }
            }
        }
        _ => None,
    };
    if result.is_none() {
        problems.push(problem(tag, reasons.join("; "), scope()));
    }
    Variant {
        tags,
        value: result,
    }
}

/// `http.routes.NAME.KEY=VALUE` tags of one NAME.
fn long_route(
    name: &str,
    entries: &[LongEntry<'_>],
    problems: &mut Vec<TagProblem>,
) -> Variant<RouteDecl> {
    let tags: Vec<String> = entries
        .iter()
        .map(|(_, _, tag)| (*tag).to_owned())
        .collect();
    let scope = || TagScope::Route(name.to_owned());
    let before = problems.len();
    let mut host: Option<(HostPattern, &str)> = None;
    let mut path: Option<(PathMatch, &str, &str)> = None;
    let mut set = RouteOptionSet::default();
    let mut option_tags: BTreeMap<&str, &str> = BTreeMap::new();

    for &(key, value, tag) in entries {
        let Some(value) = value else {
            problems.push(problem(
                tag,
                format!("{key}: has no value (write {key}=VALUE)"),
                scope(),
            ));
            continue;
        };
        let outcome: Result<(), String> = match key {
            "host" => match host {
                Some(_) => Err("host: given twice".to_owned()),
                None => syntax::host_pattern(value)
                    .map(|pattern| host = Some((pattern, tag)))
                    .map_err(|err| format!("host: {err}")),
            },
            "path" | "path_exact" | "path_regex" => match &path {
                Some((_, other, _)) => Err(format!(
                    "{key}: the route already has {other}=; give one of path, path_exact and path_regex"
                )),
                None => {
                    let parsed = match key {
                        "path" => syntax::path_prefix(value).map(PathMatch::Prefix),
                        "path_exact" => syntax::path(value).map(PathMatch::Exact),
                        _ => syntax::regex(value).map(PathMatch::Regex),
                    };
                    parsed
                        .map(|parsed| path = Some((parsed, key, tag)))
                        .map_err(|err| format!("{key}: {err}"))
                }
            },
            _ if RouteOptionSet::is_key(key) => {
                option_tags.insert(key, tag);
                set.set(key, value).map_err(|err| err.to_string())
            }
            _ => Err(format!(
                "`{key}` is not a route key (host, path, path_exact, path_regex, {})",
                ROUTE_KEYS.join(", ")
            )),
        };
        if let Err(reason) = outcome {
            problems.push(problem(tag, reason, scope()));
        }
    }
    if problems.len() > before {
        return Variant { tags, value: None };
    }

    let host = host.map_or(HostPattern::Any, |(host, _)| host);
    let path = path.map_or_else(|| PathMatch::Prefix("/".to_owned()), |(path, _, _)| path);
    match set.finish(&host, &path) {
        Ok(options) => Variant {
            tags: tags.clone(),
            value: Some(RouteDecl {
                name: name.to_owned(),
                tags,
                host,
                path,
                options,
            }),
        },
        Err(err) => {
            let tag = option_tags
                .get(err.key.as_str())
                .copied()
                .unwrap_or(entries[0].2);
            problems.push(problem(tag, err.to_string(), scope()));
            Variant { tags, value: None }
        }
    }
}

fn cluster_variant(
    tags_by_key: &BTreeMap<&str, Vec<(Option<&str>, &str)>>,
    problems: &mut Vec<TagProblem>,
) -> Variant<ClusterOptions> {
    let mut values = BTreeMap::new();
    let mut tag_of = BTreeMap::new();
    let mut tags = Vec::new();
    for (key, given) in tags_by_key {
        tags.extend(given.iter().map(|(_, tag)| (*tag).to_owned()));
        match given.as_slice() {
            [(Some(value), tag)] => {
                values.insert((*key).to_owned(), (*value).to_owned());
                tag_of.insert(*key, *tag);
            }
            [(None, tag)] => problems.push(problem(
                tag,
                format!("cluster.{key}: has no value (write cluster.{key}=VALUE)"),
                TagScope::Cluster,
            )),
            [_, rest @ ..] => {
                // Which of two values was meant cannot be known: neither is used.
                for (_, tag) in given {
                    problems.push(problem(
                        tag,
                        format!("cluster.{key}: given {} times; keep one", rest.len() + 1),
                        TagScope::Cluster,
                    ));
                }
            }
            [] => {}
        }
    }
    tags.sort();
    let (cluster, errors) = options::cluster_options(&values);
    for err in errors {
        let tag = tag_of.get(err.key.as_str()).copied().unwrap_or_default();
        problems.push(problem(tag, format!("cluster.{err}"), TagScope::Cluster));
    }
    Variant {
        tags,
        value: Some(cluster),
    }
}

/// Picks the variant most instances carry, ties to the lexicographically
/// first (by its tags), so every gateway and every restart picks the same.
/// Returns the winner, the number of instances carrying it, and the number
/// of distinct variants.
fn majority<'v, T>(
    variants: impl IntoIterator<Item = &'v Variant<T>>,
) -> Option<(&'v Variant<T>, usize, usize)>
where
    T: 'v,
{
    let mut counts: BTreeMap<&[String], (usize, &Variant<T>)> = BTreeMap::new();
    for variant in variants {
        counts.entry(&variant.tags).or_insert((0, variant)).0 += 1;
    }
    let distinct = counts.len();
    // BTreeMap iterates in tag order, and `max_by_key` keeps the last
    // maximum: iterate in reverse so the first in tag order wins ties.
    counts
        .into_values()
        .rev()
        .max_by_key(|(count, _)| *count)
        .map(|(count, variant)| (variant, count, distinct))
}

/// Reads every instance's tags and reconciles them into the service's
/// declaration (see the module docs and `lib.rs` for the rules).
pub fn service_decl(prefix: &TagPrefix, instances: &[InstanceTags<'_>]) -> ServiceDecl {
    let mut parsed: Vec<(&str, InstanceDecl)> = instances
        .iter()
        .map(|instance| (instance.id, parse_instance(prefix, instance.tags)))
        .collect();
    parsed.sort_by(|a, b| a.0.cmp(b.0));
    let has_canary = parsed.iter().any(|(_, decl)| decl.canary);
    // Canary instances run the version being tried: they get a share of
    // the traffic, but they do not get to change the stable declaration.
    let stable: Vec<&(&str, InstanceDecl)> = if parsed.iter().any(|(_, decl)| !decl.canary) {
        parsed.iter().filter(|(_, decl)| !decl.canary).collect()
    } else {
        parsed.iter().collect()
    };
    let voters = stable.len();

    let mut notes = Vec::new();
    let names: BTreeSet<&String> = stable
        .iter()
        .flat_map(|(_, decl)| decl.routes.keys())
        .collect();
    let mut routes = Vec::new();
    for name in names {
        let variants: Vec<&Variant<RouteDecl>> = stable
            .iter()
            .filter_map(|(_, decl)| decl.routes.get(name))
            .collect();
        let declaring = variants.len();
        let Some((winner, count, distinct)) = majority(variants) else {
            continue;
        };
        if distinct > 1 || declaring < voters {
            notes.push(format!(
                "route `{name}`: declared by {declaring} of {voters} instances in {distinct} variant(s); the variant of {count} is used{}",
                if winner.value.is_none() { ", and it cannot be read" } else { "" }
            ));
        }
        if let Some(route) = &winner.value {
            routes.push(route.clone());
        }
    }

    let cluster = match majority(stable.iter().map(|(_, decl)| &decl.cluster)) {
        Some((winner, count, distinct)) => {
            if distinct > 1 {
                notes.push(format!(
                    "cluster options: {distinct} variants over {voters} instances; the variant of {count} is used"
                ));
            }
            winner.value.clone().unwrap_or_default()
        }
        None => ClusterOptions::default(),
    };

    let mut problems: Vec<TagProblem> = parsed
        .iter()
        .flat_map(|(_, decl)| decl.problems.iter().cloned())
        .collect();
    problems.sort();
    problems.dedup();
    // Kept per service for as long as it routes: room for routes never
    // pushed is kilobytes each at thousands of services.
    routes.shrink_to_fit();
    problems.shrink_to_fit();

    ServiceDecl {
        routes,
        cluster,
        problems,
        has_canary,
        disagreement: (!notes.is_empty()).then(|| {
            format!(
                "the instances' tags disagree (a rolling deploy?): {}",
                notes.join("; ")
            )
        }),
    }
}

/// Why a `--listener` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerSpecError {
    #[error("listener `{0}`: write NAME=HOST:PORT or NAME=HOST:PORT,tls")]
    Form(String),
    #[error("listener `{spec}`: `{name}` is not a listener name (letters, digits, `-` and `_`)")]
    Name { spec: String, name: String },
    #[error("listener `{spec}`: `{host}` is not an IP address to listen on (e.g. 0.0.0.0 or [::])")]
    Host { spec: String, host: String },
    #[error("listener `{spec}`: `{port}` is not a port (1 to 65535)")]
    Port { spec: String, port: String },
    #[error("listener `{spec}`: `{flag}` is not a listener flag (only `tls`)")]
    Flag { spec: String, flag: String },
}

/// `NAME=HOST:PORT` or `NAME=HOST:PORT,tls`; HOST is an IP address (Envoy
/// listens on addresses, not names), IPv6 in brackets.
impl FromStr for ListenerSpec {
    type Err = ListenerSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let form = || ListenerSpecError::Form(spec.to_owned());
        let (name, rest) = spec.split_once('=').ok_or_else(form)?;
        if !syntax::is_name(name) {
            return Err(ListenerSpecError::Name {
                spec: spec.to_owned(),
                name: name.to_owned(),
            });
        }
        let (address, tls) = match rest.split_once(',') {
            None => (rest, false),
            Some((address, "tls")) => (address, true),
            Some((_, flag)) => {
                return Err(ListenerSpecError::Flag {
                    spec: spec.to_owned(),
                    flag: flag.to_owned(),
                });
            }
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(form)?;
        let ip: Option<IpAddr> = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        };
        let ip = ip.ok_or_else(|| ListenerSpecError::Host {
            spec: spec.to_owned(),
            host: host.to_owned(),
        })?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| ListenerSpecError::Port {
                spec: spec.to_owned(),
                port: port.to_owned(),
            })?;
        Ok(ListenerSpec {
            name: name.to_owned(),
            host: ip.to_string(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod tests;

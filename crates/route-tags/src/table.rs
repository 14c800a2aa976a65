//! Merging every service's declaration into one route table.
//!
//! `RouteTable::build` is a pure function of the declared listeners, every
//! routed service's `ServiceDecl` and the table published last. It does not
//! depend on the order the registry lists services in, so every gateway and
//! every restart serves the same table for the same tags. The rules, and why:
//!
//! 1. **Listeners.** Every `--listener` gets a table, in the order given,
//!    even an empty one: what Envoy listens on is the operator's choice, not
//!    the services'.
//! 2. **Which listeners serve a route.** `listener=a,b` names them; a name
//!    that is not declared is reported (`NoListener`) and the others still
//!    serve it. Without `listener=`, a TLS host is forwarded by every TLS
//!    listener and answered with a redirect to https by every plain one, and
//!    any other host is served by the plain listeners only: a host nobody
//!    asked TLS for has no certificate to present. A TLS host with no TLS
//!    listener is reported and served nowhere, since a redirect to https
//!    nothing answers would only hide the mistake. A route of a TLS host
//!    whose `listener=` names only plain listeners is reported as well:
//!    rule 5 leaves it nothing there but the redirect.
//! 3. **Virtual hosts.** Routes are merged per host, one virtual host per
//!    host per listener, sorted by host; a host is one name once the parser
//!    lower-cased it, so a domain is never in two virtual hosts (Envoy
//!    rejects that).
//! 4. **TLS hosts.** A host is TLS when any route of that host, of any
//!    service, says `tls=true`: a certificate names the host, not a route,
//!    and plain http on one path of a TLS host would leak its cookies.
//! 5. **Plain listeners and TLS hosts.** There the virtual host holds the
//!    routes under `/.well-known/acme-challenge/` (HTTP-01 validation must
//!    reach the certificate's issuer over plain http), then one `/` route
//!    redirecting to https (named `https-redirect`, attributed to the host's
//!    alphabetically first service).
//! 6. **Routes without a host** join every named virtual host of the
//!    listeners that serve them, ordered like the host's own routes, and form
//!    the catch-all virtual host: Envoy picks one virtual host per request,
//!    so a route meant for every host must be in each.
//! 7. **Order within a virtual host** (Envoy takes the first match):
//!    higher `priority` first; then exact paths before prefixes before
//!    regular expressions; among exact paths and among prefixes the longer
//!    path first; then the route with more constraints (headers plus
//!    methods) first; then by service name; then by route name. The more
//!    specific route comes first so that it is reachable at all.
//! 8. **Claims.** Two routes claim the same spot when host, path, headers
//!    and methods are equal on one listener. If every claimant gives
//!    `weight=`, they share one route whose backends are weighted
//!    (blue/green), with the winner's options. Otherwise the winner keeps the
//!    spot and every other claimant is reported (`Conflict`) and not served.
//!    Of two routes of one service on one spot, the later route name loses.
//! 9. **The winner of a claim**: the route already served wins; a new claim
//!    never takes a route away. Among claimants none of which was served,
//!    the lexicographically smaller service name wins.
//! 10. **Canary.** A service whose instances include canaries and whose
//!     route says `canary=N` is two backends: the stable instances with
//!     (100 - N) times its weight and the canaries with N times it; a
//!     backend with no share is left out; every other backend counts 100
//!     times its weight, so canaries and blue/green weights combine in
//!     proportion. Without `canary=` the canaries get
//!     no traffic: running a canary instance must not by itself divert users.
//! 11. **Redirect routes** (`redirect=`) answer by themselves and need no
//!     cluster.
//! 12. **Unreadable tags** are reported (`InvalidTag`). A route whose tags
//!     cannot be read keeps its last good version from the previous table,
//!     and a service whose cluster tags cannot be read keeps its previous
//!     cluster options: a typo in a deploy must not take a working route
//!     down. A tag that spoils nothing in particular is only reported.
//! 13. **Clusters** are exactly the services some forwarding route sends
//!     traffic to, sorted by service, with a canary cluster when some route
//!     sends traffic to its canaries.
//! 14. **Problems** are sorted and deduplicated, so the status page and the
//!     logs do not change when nothing did.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Backend, ClusterDecl, ClusterOptions, HeaderMatch, HostPattern, ListenerSpec, ListenerTable,
    PathMatch, Problem, ProblemKind, RouteAction, RouteDecl, RouteTable, ServiceDecl, TableRoute,
    TagScope, VirtualHostTable,
};

/// One routed service as the table sees it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInput<'a> {
    pub service: &'a str,
    pub decl: &'a ServiceDecl,
}

/// The path prefix of ACME's HTTP-01 challenge, which must stay reachable
/// over plain http on a TLS host.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge";

/// The name of the route that sends a TLS host's plain-http requests to https.
const HTTPS_REDIRECT: &str = "https-redirect";

/// A route the build considers: its service and the declaration in force
/// (the current one, or the last good one of rule 12).
#[derive(Debug, Clone, Copy)]
struct Candidate<'a> {
    service: &'a str,
    decl: &'a RouteDecl,
    has_canary: bool,
}

impl Candidate<'_> {
    fn first_tag(&self) -> String {
        self.decl.tags.first().cloned().unwrap_or_default()
    }

    fn spot(&self) -> Spot<'_> {
        Spot {
            host: &self.decl.host,
            path: &self.decl.path,
            headers: &self.decl.options.headers,
            methods: &self.decl.options.methods,
        }
    }

    fn is_acme_challenge(&self) -> bool {
        Self::is_acme_path(&self.decl.path)
    }

    /// Under `/.well-known/acme-challenge/`, at a segment boundary.
    fn is_acme_path(path: &PathMatch) -> bool {
        match path {
            PathMatch::Exact(path) | PathMatch::Prefix(path) => {
                path == ACME_CHALLENGE
                    || path
                        .strip_prefix(ACME_CHALLENGE)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            PathMatch::Regex(_) => false,
        }
    }

    /// The backends of this route alone (rule 10).
    fn backends(&self) -> Vec<Backend> {
        let weight = self.decl.options.weight.unwrap_or(1);
        let shares = match (self.has_canary, self.decl.options.canary_percent) {
            (true, Some(percent)) => {
                let percent = u32::from(percent);
                vec![
                    (false, (100 - percent).saturating_mul(weight)),
                    (true, percent.saturating_mul(weight)),
                ]
            }
            // Every backend is counted in hundredths of its weight, so a
            // canaried backend and a plain one of a blue/green pair keep
            // their declared proportions (90 with 10 % canary beside 10:
            // 81 : 9 : 10).
            _ => vec![(false, 100u32.saturating_mul(weight))],
        };
        shares
            .into_iter()
            .filter(|(_, weight)| *weight > 0)
            .map(|(canary, weight)| Backend {
                service: self.service.to_owned(),
                canary,
                weight,
            })
            .collect()
    }

    fn table_route(&self, action: RouteAction) -> TableRoute {
        TableRoute {
            service: self.service.to_owned(),
            route_name: self.decl.name.clone(),
            path: self.decl.path.clone(),
            options: self.decl.options.clone(),
            action,
            from_any_host: false,
        }
    }
}

/// What two routes must share to claim the same place (rule 8). Headers
/// and methods are kept sorted by the parser, so equal sets compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Spot<'a> {
    host: &'a HostPattern,
    path: &'a PathMatch,
    headers: &'a [HeaderMatch],
    methods: &'a [String],
}

/// An owned `Spot`, to look claims up in the previous table.
type SpotKey = (HostPattern, PathMatch, Vec<HeaderMatch>, Vec<String>);

/// Which services held each spot in the previous table (rule 9).
fn incumbents(previous: &RouteTable) -> BTreeMap<SpotKey, BTreeSet<String>> {
    let mut held: BTreeMap<SpotKey, BTreeSet<String>> = BTreeMap::new();
    for listener in &previous.listeners {
        for vhost in &listener.virtual_hosts {
            for route in &vhost.routes {
                // A joined route is held at its own empty host, and the
                // https redirect is the table's, not a service's claim.
                if route.from_any_host || route.action == RouteAction::RedirectToHttps {
                    continue;
                }
                let key = (
                    vhost.host.clone(),
                    route.path.clone(),
                    route.options.headers.clone(),
                    route.options.methods.clone(),
                );
                let holders = held.entry(key).or_default();
                holders.insert(route.service.clone());
                if let RouteAction::Forward { backends } = &route.action {
                    holders.extend(backends.iter().map(|backend| backend.service.clone()));
                }
            }
        }
    }
    held
}

/// The sort key of rule 7: priority (higher first), kind of path (exact,
/// prefix, regex), path length (longer first), constraints (more first),
/// service, route name; the path and `from_any_host` only make it total.
type RouteOrder<'r> = (
    Reverse<i32>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    &'r str,
    &'r str,
    &'r PathMatch,
    bool,
);

fn route_order(route: &TableRoute) -> RouteOrder<'_> {
    let (kind, length) = match &route.path {
        PathMatch::Exact(path) => (0, path.len()),
        PathMatch::Prefix(path) => (1, path.len()),
        PathMatch::Regex(_) => (2, 0),
    };
    (
        Reverse(route.options.priority),
        kind,
        Reverse(length),
        Reverse(route.options.headers.len() + route.options.methods.len()),
        &route.service,
        &route.route_name,
        // Only to make the order total.
        &route.path,
        route.from_any_host,
    )
}

fn sort_routes(routes: &mut [TableRoute]) {
    routes.sort_by(|a, b| route_order(a).cmp(&route_order(b)));
}

fn describe_spot(spot: &Spot<'_>) -> String {
    let mut text = format!("host `{}` path `{}`", spot.host, spot.path);
    if !spot.headers.is_empty() || !spot.methods.is_empty() {
        text.push_str(" with the same headers and methods");
    }
    text
}

/// Decides one spot (rules 8 and 9): the route served there, if any.
fn resolve_spot(
    spot: &Spot<'_>,
    mut claimants: Vec<Candidate<'_>>,
    incumbents: &BTreeMap<SpotKey, BTreeSet<String>>,
    problems: &mut Vec<Problem>,
) -> Option<TableRoute> {
    claimants.sort_by(|a, b| (a.service, &a.decl.name).cmp(&(b.service, &b.decl.name)));
    let mut kept: Vec<Candidate<'_>> = Vec::new();
    for claimant in claimants {
        match kept.last() {
            Some(first) if first.service == claimant.service => problems.push(Problem {
                service: claimant.service.to_owned(),
                tag: claimant.first_tag(),
                kind: ProblemKind::Conflict {
                    winner: first.service.to_owned(),
                },
                reason: format!(
                    "route `{}`: {} is also declared by route `{}` of the same service, which keeps it (of two routes of one service on one spot the later name loses)",
                    claimant.decl.name,
                    describe_spot(spot),
                    first.decl.name
                ),
            }),
            _ => kept.push(claimant),
        }
    }

    let key = (
        spot.host.clone(),
        spot.path.clone(),
        spot.headers.to_vec(),
        spot.methods.to_vec(),
    );
    let incumbent = incumbents
        .get(&key)
        .and_then(|held| kept.iter().find(|c| held.contains(c.service)))
        .copied();
    let winner = incumbent.or_else(|| kept.first().copied())?;
    let why = if incumbent.is_some() {
        "it is already served, and a new claim never takes a route away"
    } else {
        "none of the claims was served before, and its service name sorts first"
    };

    if kept.len() > 1 && kept.iter().all(|c| c.decl.options.weight.is_some()) {
        let backends = kept.iter().flat_map(Candidate::backends).collect();
        return Some(winner.table_route(RouteAction::Forward { backends }));
    }
    for loser in kept.iter().filter(|c| c.service != winner.service) {
        problems.push(Problem {
            service: loser.service.to_owned(),
            tag: loser.first_tag(),
            kind: ProblemKind::Conflict {
                winner: winner.service.to_owned(),
            },
            reason: format!(
                "route `{}`: {} is also claimed by `{}`, which keeps it: {why} (give every claim weight= to share it)",
                loser.decl.name,
                describe_spot(spot),
                winner.service
            ),
        });
    }
    let action = match &winner.decl.options.redirect {
        Some(redirect) => RouteAction::Redirect(redirect.clone()),
        None => RouteAction::Forward {
            backends: winner.backends(),
        },
    };
    Some(winner.table_route(action))
}

/// Everything the build derives from all services before it looks at a
/// listener.
struct Merge<'a> {
    tls_hosts: BTreeSet<&'a HostPattern>,
    incumbents: BTreeMap<SpotKey, BTreeSet<String>>,
}

/// One listener's table from the routes assigned to it.
fn listener_table(
    listener: &ListenerSpec,
    assigned: &[Candidate<'_>],
    merge: &Merge<'_>,
    problems: &mut Vec<Problem>,
) -> ListenerTable {
    let redirects_tls = !listener.tls;
    let mut hosts: BTreeSet<&HostPattern> = BTreeSet::new();
    let mut redirect_services: BTreeMap<&HostPattern, BTreeSet<&str>> = BTreeMap::new();
    let mut spots: BTreeMap<Spot<'_>, Vec<Candidate<'_>>> = BTreeMap::new();
    for candidate in assigned {
        let host = &candidate.decl.host;
        if *host != HostPattern::Any {
            hosts.insert(host);
        }
        let redirected = redirects_tls && merge.tls_hosts.contains(host);
        if redirected {
            redirect_services
                .entry(host)
                .or_default()
                .insert(candidate.service);
            if !candidate.is_acme_challenge() {
                continue;
            }
        }
        spots.entry(candidate.spot()).or_default().push(*candidate);
    }

    let mut by_host: BTreeMap<&HostPattern, Vec<TableRoute>> = BTreeMap::new();
    for (spot, claimants) in spots {
        if let Some(route) = resolve_spot(&spot, claimants, &merge.incumbents, problems) {
            by_host.entry(spot.host).or_default().push(route);
        }
    }
    let any_host = by_host.remove(&HostPattern::Any);

    let mut virtual_hosts = Vec::new();
    for host in hosts {
        let tls = merge.tls_hosts.contains(host);
        let redirected = redirects_tls && tls;
        let mut routes = by_host.remove(host).unwrap_or_default();
        for joined in any_host.iter().flatten() {
            let acme = Candidate::is_acme_path(&joined.path);
            if !redirected || acme {
                routes.push(TableRoute {
                    from_any_host: true,
                    ..joined.clone()
                });
            }
        }
        sort_routes(&mut routes);
        if redirected {
            let service = redirect_services
                .get(host)
                .and_then(|services| services.first())
                .copied()
                .unwrap_or_default();
            routes.push(TableRoute {
                service: service.to_owned(),
                route_name: HTTPS_REDIRECT.to_owned(),
                path: PathMatch::Prefix("/".to_owned()),
                options: Default::default(),
                action: RouteAction::RedirectToHttps,
                from_any_host: false,
            });
        }
        // Most hosts have one route, and a vector grown by pushing holds
        // room for four: at 5,000 hosts that is megabytes of table kept for
        // nothing, twice while a rebuild holds the old table beside the new.
        routes.shrink_to_fit();
        virtual_hosts.push(VirtualHostTable {
            host: host.clone(),
            tls,
            routes,
        });
    }
    if let Some(mut routes) = any_host {
        sort_routes(&mut routes);
        routes.shrink_to_fit();
        virtual_hosts.push(VirtualHostTable {
            host: HostPattern::Any,
            tls: false,
            routes,
        });
    }
    virtual_hosts.shrink_to_fit();
    ListenerTable {
        listener: listener.clone(),
        virtual_hosts,
    }
}

/// The listeners (by index) that serve `candidate` (rule 2).
fn serving_listeners(
    candidate: &Candidate<'_>,
    listeners: &[ListenerSpec],
    tls_hosts: &BTreeSet<&HostPattern>,
    problems: &mut Vec<Problem>,
) -> Vec<usize> {
    let options = &candidate.decl.options;
    let mut report = |reason: String| {
        problems.push(Problem {
            service: candidate.service.to_owned(),
            tag: candidate.first_tag(),
            kind: ProblemKind::NoListener,
            reason,
        });
    };
    if !options.listeners.is_empty() {
        let mut serving = Vec::new();
        for name in &options.listeners {
            match listeners.iter().position(|listener| &listener.name == name) {
                Some(index) => serving.push(index),
                None => {
                    let declared: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                    report(format!(
                        "route `{}`: listener `{name}` is not declared (declared: {})",
                        candidate.decl.name,
                        if declared.is_empty() {
                            "none".to_owned()
                        } else {
                            declared.join(", ")
                        }
                    ));
                }
            }
        }
        let host = &candidate.decl.host;
        let only_plain = !serving.is_empty() && serving.iter().all(|i| !listeners[*i].tls);
        if only_plain && tls_hosts.contains(host) && !candidate.is_acme_challenge() {
            // Rule 5 replaces the route by the https redirect there: say so
            // rather than let it vanish.
            report(format!(
                "route `{}`: host `{host}` is a TLS host (some route of it says tls=true), and a plain listener only redirects it to https; name a TLS listener in listener=",
                candidate.decl.name
            ));
        }
        return serving;
    }
    let host = &candidate.decl.host;
    if tls_hosts.contains(host) {
        if !listeners.iter().any(|listener| listener.tls) {
            report(format!(
                "route `{}`: host `{host}` is a TLS host, and no TLS listener is declared",
                candidate.decl.name
            ));
            return Vec::new();
        }
        (0..listeners.len()).collect()
    } else {
        let plain: Vec<usize> = (0..listeners.len())
            .filter(|index| !listeners[*index].tls)
            .collect();
        if plain.is_empty() {
            report(format!(
                "route `{}`: host `{host}` is not a TLS host (no route of it says tls=true), and no plain listener is declared; give tls=true or listener=",
                candidate.decl.name
            ));
        }
        plain
    }
}

impl RouteTable {
    /// Merges every service's declaration into each listener's table.
    /// `previous` is the table last published (RouteTable::default() at start): it decides
    /// incumbents in conflicts and supplies the last good version of a route or cluster whose
    /// tag is now invalid. The result does not depend on the order of `services`.
    pub fn build(
        listeners: &[ListenerSpec],
        services: &[ServiceInput<'_>],
        previous: &RouteTable,
    ) -> RouteTable {
        let mut services: Vec<ServiceInput<'_>> = services.to_vec();
        services.sort_by(|a, b| a.service.cmp(b.service));
        let mut problems = Vec::new();
        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        let mut cluster_options: BTreeMap<String, ClusterOptions> = BTreeMap::new();

        for input in &services {
            let decl = input.decl;
            let mut spoiled_routes: BTreeSet<&str> = BTreeSet::new();
            let mut cluster_spoiled = false;
            for problem in &decl.problems {
                problems.push(Problem {
                    service: input.service.to_owned(),
                    tag: problem.tag.clone(),
                    kind: ProblemKind::InvalidTag,
                    reason: problem.reason.clone(),
                });
                match &problem.scope {
                    TagScope::Route(name) => {
                        spoiled_routes.insert(name);
                    }
                    TagScope::Cluster => cluster_spoiled = true,
                    TagScope::Service => {}
                }
            }
            let mut routes: Vec<&RouteDecl> = decl.routes.iter().collect();
            for name in spoiled_routes {
                let declared_now = decl.routes.iter().any(|route| route.name == name);
                let key = (input.service.to_owned(), name.to_owned());
                if let (false, Some(last_good)) = (declared_now, previous.declared.get(&key)) {
                    routes.push(last_good);
                }
            }
            routes.sort_by(|a, b| a.name.cmp(&b.name));
            candidates.extend(routes.into_iter().map(|route| Candidate {
                service: input.service,
                decl: route,
                has_canary: decl.has_canary,
            }));

            let options = match previous.cluster_options.get(input.service) {
                Some(last_good) if cluster_spoiled => last_good.clone(),
                _ => decl.cluster.clone(),
            };
            cluster_options.insert(input.service.to_owned(), options);
        }

        let merge = Merge {
            tls_hosts: candidates
                .iter()
                .filter(|c| c.decl.options.tls)
                .map(|c| &c.decl.host)
                .collect(),
            incumbents: incumbents(previous),
        };

        let mut assigned: Vec<Vec<Candidate<'_>>> = vec![Vec::new(); listeners.len()];
        for candidate in &candidates {
            for index in serving_listeners(candidate, listeners, &merge.tls_hosts, &mut problems) {
                assigned[index].push(*candidate);
            }
        }
        let listener_tables: Vec<ListenerTable> = listeners
            .iter()
            .zip(&assigned)
            .map(|(listener, assigned)| listener_table(listener, assigned, &merge, &mut problems))
            .collect();

        let mut forwarded: BTreeMap<&str, bool> = BTreeMap::new();
        for route in listener_tables
            .iter()
            .flat_map(|listener| &listener.virtual_hosts)
            .flat_map(|vhost| &vhost.routes)
        {
            if let RouteAction::Forward { backends } = &route.action {
                for backend in backends {
                    *forwarded.entry(&backend.service).or_default() |= backend.canary;
                }
            }
        }
        let clusters = forwarded
            .into_iter()
            .map(|(service, canary)| ClusterDecl {
                service: service.to_owned(),
                options: cluster_options.get(service).cloned().unwrap_or_default(),
                canary,
            })
            .collect();

        problems.sort();
        problems.dedup();
        let declared = candidates
            .iter()
            .map(|c| ((c.service.to_owned(), c.decl.name.clone()), c.decl.clone()))
            .collect();
        RouteTable {
            listeners: listener_tables,
            clusters,
            problems,
            declared,
            cluster_options,
        }
    }

    /// Every TLS host some TLS listener serves (one certificate each), sorted, deduplicated.
    pub fn tls_hosts(&self) -> Vec<HostPattern> {
        let hosts: BTreeSet<&HostPattern> = self
            .listeners
            .iter()
            .flat_map(ListenerTable::tls_hosts)
            .collect();
        hosts.into_iter().cloned().collect()
    }

    /// Number of routes over all listeners (for a metric).
    pub fn route_count(&self) -> usize {
        self.listeners
            .iter()
            .flat_map(|listener| &listener.virtual_hosts)
            .map(|vhost| vhost.routes.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Redirect, RedirectCode, TagPrefix};
    use crate::parse::{InstanceTags, service_decl};
    use std::time::Duration;

    fn owned(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|tag| (*tag).to_owned()).collect()
    }

    /// A service with one instance carrying `tags`.
    fn decl(tags: &[&str]) -> ServiceDecl {
        let tags = owned(tags);
        service_decl(
            &TagPrefix::default(),
            &[InstanceTags {
                id: "i1",
                tags: &tags,
            }],
        )
    }

    /// A service with one stable instance carrying `tags` and one canary
    /// instance carrying them plus `edge.canary`.
    fn decl_with_canary(tags: &[&str]) -> ServiceDecl {
        let stable = owned(tags);
        let mut canary = stable.clone();
        canary.push("edge.canary".to_owned());
        service_decl(
            &TagPrefix::default(),
            &[
                InstanceTags {
                    id: "i1",
                    tags: &stable,
                },
                InstanceTags {
                    id: "i2",
                    tags: &canary,
                },
            ],
        )
    }

    fn listeners(specs: &[&str]) -> Vec<ListenerSpec> {
        specs
            .iter()
            .map(|spec| spec.parse().expect("a valid listener"))
            .collect()
    }

    /// `web` (plain, 8080) and `websecure` (TLS, 8443).
    fn web_and_websecure() -> Vec<ListenerSpec> {
        listeners(&["web=0.0.0.0:8080", "websecure=0.0.0.0:8443,tls"])
    }

    fn build_with(
        listeners: &[ListenerSpec],
        services: &[(&str, &ServiceDecl)],
        previous: &RouteTable,
    ) -> RouteTable {
        let inputs: Vec<ServiceInput<'_>> = services
            .iter()
            .map(|(service, decl)| ServiceInput { service, decl })
            .collect();
        RouteTable::build(listeners, &inputs, previous)
    }

    fn build(listeners: &[ListenerSpec], services: &[(&str, &ServiceDecl)]) -> RouteTable {
        build_with(listeners, services, &RouteTable::default())
    }

    fn exact(host: &str) -> HostPattern {
        HostPattern::Exact(host.to_owned())
    }

    fn prefix(path: &str) -> PathMatch {
        PathMatch::Prefix(path.to_owned())
    }

    fn listener<'t>(table: &'t RouteTable, name: &str) -> &'t ListenerTable {
        table
            .listeners
            .iter()
            .find(|l| l.listener.name == name)
            .unwrap_or_else(|| panic!("no listener {name} in {table:#?}"))
    }

    fn vhost<'t>(table: &'t RouteTable, name: &str, host: &HostPattern) -> &'t VirtualHostTable {
        listener(table, name)
            .virtual_hosts
            .iter()
            .find(|vh| vh.host == *host)
            .unwrap_or_else(|| panic!("no vhost {host} on {name} in {table:#?}"))
    }

    fn hosts(table: &RouteTable, name: &str) -> Vec<HostPattern> {
        listener(table, name)
            .virtual_hosts
            .iter()
            .map(|vh| vh.host.clone())
            .collect()
    }

    /// `(service, route name)` of each route, in order.
    fn names(vh: &VirtualHostTable) -> Vec<(String, String)> {
        vh.routes
            .iter()
            .map(|r| (r.service.clone(), r.route_name.clone()))
            .collect()
    }

    fn backend(service: &str, canary: bool, weight: u32) -> Backend {
        Backend {
            service: service.to_owned(),
            canary,
            weight,
        }
    }

    fn backends(route: &TableRoute) -> &[Backend] {
        match &route.action {
            RouteAction::Forward { backends } => backends,
            other => panic!("{route:?} does not forward: {other:?}"),
        }
    }

    fn kinds(table: &RouteTable) -> Vec<(String, ProblemKind)> {
        table
            .problems
            .iter()
            .map(|p| (p.service.clone(), p.kind.clone()))
            .collect()
    }

    #[test]
    fn every_listener_gets_a_table_in_the_order_given() {
        let shop = decl(&["edge.route=shop.example.com"]);
        let specs = listeners(&[
            "web=0.0.0.0:8080",
            "admin=127.0.0.1:9000",
            "websecure=0.0.0.0:8443,tls",
        ]);
        let table = build(&specs, &[("shop", &shop)]);
        let order: Vec<&str> = table
            .listeners
            .iter()
            .map(|l| l.listener.name.as_str())
            .collect();
        assert_eq!(order, vec!["web", "admin", "websecure"]);
        assert_eq!(table.listeners[0].listener, specs[0]);
        // Not TLS, so both plain listeners serve it and the TLS one nothing.
        assert_eq!(hosts(&table, "web"), vec![exact("shop.example.com")]);
        assert_eq!(hosts(&table, "admin"), vec![exact("shop.example.com")]);
        assert!(listener(&table, "websecure").virtual_hosts.is_empty());
        assert!(table.problems.is_empty(), "{:?}", table.problems);
    }

    #[test]
    fn named_listeners_serve_exactly_and_an_undeclared_one_is_reported() {
        let shop = decl(&["edge.route=shop.example.com listener=admin,nowhere"]);
        let specs = listeners(&["web=0.0.0.0:8080", "admin=127.0.0.1:9000"]);
        let table = build(&specs, &[("shop", &shop)]);
        assert!(listener(&table, "web").virtual_hosts.is_empty());
        assert_eq!(hosts(&table, "admin"), vec![exact("shop.example.com")]);
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        let problem = &table.problems[0];
        assert_eq!(problem.kind, ProblemKind::NoListener);
        assert_eq!(problem.service, "shop");
        assert_eq!(
            problem.tag,
            "edge.route=shop.example.com listener=admin,nowhere"
        );
        assert!(problem.reason.contains("`nowhere`"), "{}", problem.reason);
        assert!(problem.reason.contains("web, admin"), "{}", problem.reason);
    }

    #[test]
    fn a_route_whose_listeners_are_all_undeclared_is_not_served() {
        let shop = decl(&["edge.route=shop.example.com listener=nowhere"]);
        let table = build(&web_and_websecure(), &[("shop", &shop)]);
        assert_eq!(table.route_count(), 0);
        assert!(table.clusters.is_empty());
        assert_eq!(
            kinds(&table),
            vec![("shop".to_owned(), ProblemKind::NoListener)]
        );
    }

    #[test]
    fn a_tls_host_is_forwarded_on_tls_listeners_and_redirected_on_plain_ones() {
        let shop = decl(&["edge.route=shop.example.com tls=true"]);
        let table = build(&web_and_websecure(), &[("shop", &shop)]);
        let secure = vhost(&table, "websecure", &exact("shop.example.com"));
        assert!(secure.tls);
        assert_eq!(
            backends(&secure.routes[0]),
            [backend("shop", false, 100)].as_slice()
        );
        let plain = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(plain.routes.len(), 1);
        assert_eq!(plain.routes[0].action, RouteAction::RedirectToHttps);
        assert_eq!(table.tls_hosts(), vec![exact("shop.example.com")]);
    }

    #[test]
    fn a_tls_host_route_named_only_to_plain_listeners_is_reported() {
        let shop = decl(&["edge.route=shop.example.com tls=true"]);
        let legacy = decl(&["edge.route=shop.example.com/legacy listener=web"]);
        let table = build(
            &web_and_websecure(),
            &[("shop", &shop), ("legacy", &legacy)],
        );
        let plain = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(
            names(plain),
            vec![("legacy".to_owned(), "https-redirect".to_owned())]
        );
        assert_eq!(
            kinds(&table),
            vec![("legacy".to_owned(), ProblemKind::NoListener)]
        );
        assert!(
            table.problems[0]
                .reason
                .contains("only redirects it to https"),
            "{}",
            table.problems[0].reason
        );
    }

    #[test]
    fn a_host_without_tls_is_served_on_plain_listeners_only() {
        let blog = decl(&["edge.route=blog.example.com"]);
        let table = build(&web_and_websecure(), &[("blog", &blog)]);
        assert_eq!(hosts(&table, "web"), vec![exact("blog.example.com")]);
        assert!(!vhost(&table, "web", &exact("blog.example.com")).tls);
        assert!(listener(&table, "websecure").virtual_hosts.is_empty());
        assert!(table.tls_hosts().is_empty());
    }

    #[test]
    fn a_tls_host_without_a_tls_listener_is_reported_and_not_served() {
        let shop = decl(&["edge.route=shop.example.com tls=true"]);
        let table = build(&listeners(&["web=0.0.0.0:8080"]), &[("shop", &shop)]);
        assert_eq!(table.route_count(), 0);
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        assert_eq!(table.problems[0].kind, ProblemKind::NoListener);
        assert!(
            table.problems[0]
                .reason
                .contains("no TLS listener is declared"),
            "{}",
            table.problems[0].reason
        );
    }

    #[test]
    fn routes_of_one_host_share_one_virtual_host_sorted_by_host() {
        let api = decl(&["edge.route=Shop.Example.com/api"]);
        let web = decl(&[
            "edge.route=shop.example.com",
            "edge.route=*.example.com",
            "edge.route=admin.example.com",
        ]);
        let table = build(&web_and_websecure(), &[("web", &web), ("api", &api)]);
        assert_eq!(
            hosts(&table, "web"),
            vec![
                exact("admin.example.com"),
                exact("shop.example.com"),
                HostPattern::Wildcard("*.example.com".to_owned()),
            ]
        );
        assert_eq!(
            names(vhost(&table, "web", &exact("shop.example.com"))),
            vec![
                ("api".to_owned(), "Shop.Example.com/api".to_owned()),
                ("web".to_owned(), "shop.example.com".to_owned()),
            ]
        );
    }

    #[test]
    fn one_route_with_tls_makes_its_whole_host_tls() {
        let shop = decl(&["edge.route=shop.example.com tls=true"]);
        let api = decl(&["edge.route=shop.example.com/api"]);
        let table = build(&web_and_websecure(), &[("shop", &shop), ("api", &api)]);
        let secure = vhost(&table, "websecure", &exact("shop.example.com"));
        assert!(secure.tls);
        assert_eq!(
            names(secure),
            vec![
                ("api".to_owned(), "shop.example.com/api".to_owned()),
                ("shop".to_owned(), "shop.example.com".to_owned()),
            ]
        );
        // The api route gets no plain-http path of its own.
        let plain = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(plain.routes.len(), 1);
        assert_eq!(plain.routes[0].action, RouteAction::RedirectToHttps);
    }

    #[test]
    fn a_tls_host_on_a_plain_listener_keeps_acme_challenges_then_redirects() {
        let shop = decl(&[
            "edge.route=shop.example.com tls=true",
            "edge.route=shop.example.com/.well-known/acme-challenge/",
        ]);
        let billing = decl(&["edge.route=shop.example.com/billing"]);
        let acme = decl(&["edge.route=/.well-known/acme-challenge/"]);
        let table = build(
            &web_and_websecure(),
            &[("shop", &shop), ("billing", &billing), ("acme", &acme)],
        );
        let plain = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(
            names(plain),
            vec![
                ("acme".to_owned(), "/.well-known/acme-challenge/".to_owned()),
                (
                    "shop".to_owned(),
                    "shop.example.com/.well-known/acme-challenge/".to_owned()
                ),
                ("billing".to_owned(), "https-redirect".to_owned()),
            ]
        );
        assert!(plain.routes[0].from_any_host);
        assert!(!plain.routes[1].from_any_host);
        assert_eq!(
            backends(&plain.routes[1]),
            [backend("shop", false, 100)].as_slice()
        );
        let redirect = &plain.routes[2];
        assert_eq!(redirect.path, prefix("/"));
        assert_eq!(redirect.action, RouteAction::RedirectToHttps);
    }

    #[test]
    fn empty_host_routes_join_every_named_host_and_form_the_catch_all() {
        let shop = decl(&["edge.route=shop.example.com"]);
        let blog = decl(&["edge.route=blog.example.com/posts"]);
        let health = decl(&["edge.route=/healthz"]);
        let table = build(
            &web_and_websecure(),
            &[("shop", &shop), ("blog", &blog), ("health", &health)],
        );
        assert_eq!(
            hosts(&table, "web"),
            vec![
                exact("blog.example.com"),
                exact("shop.example.com"),
                HostPattern::Any
            ]
        );
        // Joined and ordered like the host's own: the longer prefix first.
        let shop_vh = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(
            names(shop_vh),
            vec![
                ("health".to_owned(), "/healthz".to_owned()),
                ("shop".to_owned(), "shop.example.com".to_owned()),
            ]
        );
        assert!(shop_vh.routes[0].from_any_host);
        // `/healthz` is longer than `/posts`: a joined route is not put last.
        let blog_vh = vhost(&table, "web", &exact("blog.example.com"));
        assert_eq!(
            names(blog_vh),
            vec![
                ("health".to_owned(), "/healthz".to_owned()),
                ("blog".to_owned(), "blog.example.com/posts".to_owned()),
            ]
        );
        let any = vhost(&table, "web", &HostPattern::Any);
        assert_eq!(
            names(any),
            vec![("health".to_owned(), "/healthz".to_owned())]
        );
        assert!(!any.routes[0].from_any_host);
        // No empty-host route is served on the TLS listener: no catch-all.
        assert!(listener(&table, "websecure").virtual_hosts.is_empty());

        let without = build(&web_and_websecure(), &[("shop", &shop)]);
        assert_eq!(hosts(&without, "web"), vec![exact("shop.example.com")]);
    }

    #[test]
    fn routes_are_ordered_by_priority_kind_length_constraints_service_and_name() {
        let a = decl(&[
            "edge.http.routes.low.host=x.example.com",
            "edge.http.routes.low.path_exact=/a/very/long/exact/path",
            "edge.http.routes.low.priority=-1",
            "edge.http.routes.regex.host=x.example.com",
            "edge.http.routes.regex.path_regex=/.*",
            "edge.http.routes.regex.priority=5",
            "edge.http.routes.short.host=x.example.com",
            "edge.http.routes.short.path=/a",
            "edge.http.routes.long.host=x.example.com",
            "edge.http.routes.long.path=/a/b",
            "edge.http.routes.exact.host=x.example.com",
            "edge.http.routes.exact.path_exact=/z",
            "edge.http.routes.get.host=x.example.com",
            "edge.http.routes.get.path=/a",
            "edge.http.routes.get.methods=GET",
            "edge.http.routes.zzz.host=x.example.com",
            "edge.http.routes.zzz.path=/q",
        ]);
        let b = decl(&[
            "edge.http.routes.other.host=x.example.com",
            "edge.http.routes.other.path=/q",
            "edge.http.routes.other.header=X-Tenant:blue",
            "edge.http.routes.aaa.host=x.example.com",
            "edge.http.routes.aaa.path=/p",
        ]);
        let table = build(&web_and_websecure(), &[("b", &b), ("a", &a)]);
        let order: Vec<(String, String)> = names(vhost(&table, "web", &exact("x.example.com")));
        let expected: Vec<(String, String)> = [
            ("a", "regex"), // priority 5
            ("a", "exact"), // exact before prefix
            ("a", "long"),  // longer prefix
            ("a", "get"),   // /a with a method before /a without
            ("b", "other"), // /q with a header before the unconstrained ones;
            ("a", "short"), // /a, /q and /p are as long: by service,
            ("a", "zzz"),   // then by route name,
            ("b", "aaa"),   // so b's /p comes last although `aaa` sorts first
            ("a", "low"),   // priority -1
        ]
        .iter()
        .map(|(s, n)| ((*s).to_owned(), (*n).to_owned()))
        .collect();
        assert_eq!(order, expected, "{table:#?}");
    }

    #[test]
    fn weighted_claims_of_one_spot_share_one_route() {
        let blue = decl(&["edge.route=shop.example.com weight=3 timeout=5s"]);
        let green = decl(&["edge.route=shop.example.com weight=1 timeout=9s"]);
        let table = build(&web_and_websecure(), &[("green", &green), ("blue", &blue)]);
        let vh = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(vh.routes.len(), 1);
        let route = &vh.routes[0];
        assert_eq!(route.service, "blue");
        assert_eq!(route.options.timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            backends(route),
            [backend("blue", false, 300), backend("green", false, 100)].as_slice()
        );
        assert!(table.problems.is_empty(), "{:?}", table.problems);
        let clusters: Vec<&str> = table.clusters.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(clusters, vec!["blue", "green"]);
    }

    #[test]
    fn a_canary_inside_a_blue_green_pair_keeps_the_declared_proportions() {
        let blue = decl_with_canary(&["edge.route=shop.example.com weight=90 canary=10"]);
        let green = decl(&["edge.route=shop.example.com weight=10"]);
        let table = build(&web_and_websecure(), &[("blue", &blue), ("green", &green)]);
        let vh = vhost(&table, "web", &exact("shop.example.com"));
        // 81 % stable blue, 9 % canary blue, 10 % green.
        assert_eq!(
            backends(&vh.routes[0]),
            [
                backend("blue", false, 8100),
                backend("blue", true, 900),
                backend("green", false, 1000)
            ]
            .as_slice()
        );
    }

    #[test]
    fn an_unweighted_second_claim_is_a_conflict_the_smaller_name_wins() {
        let alpha = decl(&["edge.route=shop.example.com/api"]);
        let beta = decl(&["edge.route=shop.example.com/api weight=2"]);
        let table = build(&web_and_websecure(), &[("beta", &beta), ("alpha", &alpha)]);
        let vh = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(
            names(vh),
            vec![("alpha".to_owned(), "shop.example.com/api".to_owned())]
        );
        assert_eq!(backends(&vh.routes[0]), [backend("alpha", false, 100)]);
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        let problem = &table.problems[0];
        assert_eq!(problem.service, "beta");
        assert_eq!(problem.tag, "edge.route=shop.example.com/api weight=2");
        assert_eq!(
            problem.kind,
            ProblemKind::Conflict {
                winner: "alpha".to_owned()
            }
        );
        assert!(
            problem
                .reason
                .contains("host `shop.example.com` path `/api`"),
            "{}",
            problem.reason
        );
        assert!(problem.reason.contains("sorts first"), "{}", problem.reason);
        let clusters: Vec<&str> = table.clusters.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(clusters, vec!["alpha"]);
    }

    #[test]
    fn of_two_routes_of_one_service_on_one_spot_the_later_name_loses() {
        let shop = decl(&[
            "edge.route=shop.example.com/api",
            "edge.http.routes.api.host=shop.example.com",
            "edge.http.routes.api.path=/api",
        ]);
        let table = build(&web_and_websecure(), &[("shop", &shop)]);
        let vh = vhost(&table, "web", &exact("shop.example.com"));
        assert_eq!(names(vh), vec![("shop".to_owned(), "api".to_owned())]);
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        assert_eq!(table.problems[0].tag, "edge.route=shop.example.com/api");
        assert_eq!(
            table.problems[0].kind,
            ProblemKind::Conflict {
                winner: "shop".to_owned()
            }
        );
    }

    #[test]
    fn routes_that_differ_in_headers_or_methods_do_not_claim_one_spot() {
        let alpha = decl(&["edge.route=shop.example.com/api"]);
        let beta = decl(&["edge.route=shop.example.com/api header=X-Beta:yes"]);
        let gamma = decl(&["edge.route=shop.example.com/api methods=POST"]);
        let table = build(
            &web_and_websecure(),
            &[("alpha", &alpha), ("beta", &beta), ("gamma", &gamma)],
        );
        assert_eq!(
            vhost(&table, "web", &exact("shop.example.com"))
                .routes
                .len(),
            3
        );
        assert!(table.problems.is_empty(), "{:?}", table.problems);
    }

    #[test]
    fn the_route_already_served_keeps_its_spot() {
        let zeta = decl(&["edge.route=shop.example.com/api"]);
        let alpha = decl(&["edge.route=shop.example.com/api"]);
        let specs = web_and_websecure();
        let first = build(&specs, &[("zeta", &zeta)]);
        let second = build_with(&specs, &[("alpha", &alpha), ("zeta", &zeta)], &first);
        let vh = vhost(&second, "web", &exact("shop.example.com"));
        assert_eq!(
            names(vh),
            vec![("zeta".to_owned(), "shop.example.com/api".to_owned())]
        );
        assert_eq!(
            kinds(&second),
            vec![(
                "alpha".to_owned(),
                ProblemKind::Conflict {
                    winner: "zeta".to_owned()
                }
            )]
        );
        assert!(
            second.problems[0].reason.contains("already served"),
            "{}",
            second.problems[0].reason
        );
        // Without a previous table the smaller name would have won.
        let fresh = build(&specs, &[("alpha", &alpha), ("zeta", &zeta)]);
        assert_eq!(
            vhost(&fresh, "web", &exact("shop.example.com")).routes[0].service,
            "alpha"
        );
    }

    fn first_backends(table: &RouteTable) -> Vec<Backend> {
        backends(&vhost(table, "web", &exact("shop.example.com")).routes[0]).to_vec()
    }

    #[test]
    fn a_canary_percentage_splits_the_backend() {
        let specs = web_and_websecure();
        let split = decl_with_canary(&["edge.route=shop.example.com canary=20 weight=2"]);
        let table = build(&specs, &[("shop", &split)]);
        assert_eq!(
            first_backends(&table),
            vec![backend("shop", false, 160), backend("shop", true, 40)]
        );
        assert!(table.clusters[0].canary);

        let all = decl_with_canary(&["edge.route=shop.example.com canary=100"]);
        let table = build(&specs, &[("shop", &all)]);
        assert_eq!(first_backends(&table), vec![backend("shop", true, 100)]);

        let none = decl_with_canary(&["edge.route=shop.example.com canary=0"]);
        let table = build(&specs, &[("shop", &none)]);
        assert_eq!(first_backends(&table), vec![backend("shop", false, 100)]);
        assert!(!table.clusters[0].canary);
    }

    #[test]
    fn canaries_get_no_traffic_without_a_percentage_nor_without_instances() {
        let specs = web_and_websecure();
        let unasked = decl_with_canary(&["edge.route=shop.example.com"]);
        assert!(unasked.has_canary);
        let table = build(&specs, &[("shop", &unasked)]);
        assert_eq!(first_backends(&table), vec![backend("shop", false, 100)]);
        assert!(!table.clusters[0].canary);

        let no_instances = decl(&["edge.route=shop.example.com canary=30"]);
        let table = build(&specs, &[("shop", &no_instances)]);
        assert_eq!(first_backends(&table), vec![backend("shop", false, 100)]);
    }

    #[test]
    fn a_redirect_route_redirects_and_needs_no_cluster() {
        let old = decl(&["edge.route=old.example.com redirect=https://new.example.com/"]);
        let table = build(&web_and_websecure(), &[("old", &old)]);
        let route = &vhost(&table, "web", &exact("old.example.com")).routes[0];
        assert_eq!(
            route.action,
            RouteAction::Redirect(Redirect {
                scheme: Some("https".to_owned()),
                host: Some("new.example.com".to_owned()),
                port: None,
                path: Some("/".to_owned()),
                code: RedirectCode::MovedPermanently,
            })
        );
        assert!(table.clusters.is_empty());
    }

    #[test]
    fn an_unreadable_route_keeps_its_last_good_version() {
        let specs = web_and_websecure();
        let good = decl(&["edge.route=shop.example.com/api timeout=5s"]);
        let first = build(&specs, &[("shop", &good)]);
        let broken = decl(&["edge.route=shop.example.com/api timeout=soon"]);
        assert!(broken.routes.is_empty());
        let second = build_with(&specs, &[("shop", &broken)], &first);
        let route = &vhost(&second, "web", &exact("shop.example.com")).routes[0];
        assert_eq!(route.route_name, "shop.example.com/api");
        assert_eq!(route.options.timeout, Some(Duration::from_secs(5)));
        assert_eq!(second.problems.len(), 1, "{:?}", second.problems);
        let problem = &second.problems[0];
        assert_eq!(problem.kind, ProblemKind::InvalidTag);
        assert_eq!(problem.tag, "edge.route=shop.example.com/api timeout=soon");
        assert_eq!(problem.reason, broken.problems[0].reason);
        // And it stays the last good version while the tag stays broken.
        let third = build_with(&specs, &[("shop", &broken)], &second);
        assert_eq!(third.route_count(), 1);

        // Without a previous version there is nothing to keep.
        let fresh = build(&specs, &[("shop", &broken)]);
        assert_eq!(fresh.route_count(), 0);
    }

    #[test]
    fn unreadable_cluster_tags_keep_the_previous_cluster_options() {
        let specs = web_and_websecure();
        let good = decl(&[
            "edge.route=shop.example.com",
            "edge.cluster.connect_timeout=2s",
        ]);
        let first = build(&specs, &[("shop", &good)]);
        assert_eq!(
            first.clusters[0].options.connect_timeout,
            Some(Duration::from_secs(2))
        );
        let broken = decl(&[
            "edge.route=shop.example.com",
            "edge.cluster.connect_timeout=soon",
        ]);
        let second = build_with(&specs, &[("shop", &broken)], &first);
        assert_eq!(
            second.clusters[0].options.connect_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            kinds(&second),
            vec![("shop".to_owned(), ProblemKind::InvalidTag)]
        );
        let fresh = build(&specs, &[("shop", &broken)]);
        assert_eq!(fresh.clusters[0].options.connect_timeout, None);
    }

    #[test]
    fn a_tag_of_the_whole_service_is_only_reported() {
        let shop = decl(&["edge.route=shop.example.com", "edge.colour=blue"]);
        let table = build(&web_and_websecure(), &[("shop", &shop)]);
        assert_eq!(table.route_count(), 1);
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        assert_eq!(table.problems[0].tag, "edge.colour=blue");
        assert_eq!(table.problems[0].kind, ProblemKind::InvalidTag);
    }

    #[test]
    fn clusters_are_the_forwarded_services_sorted() {
        let zeta = decl(&["edge.route=z.example.com", "edge.cluster.lb=random"]);
        let alpha = decl(&["edge.route=a.example.com"]);
        let old = decl(&["edge.route=old.example.com redirect=/new"]);
        let unrouted = decl(&["edge.cluster.lb=random"]);
        let table = build(
            &web_and_websecure(),
            &[
                ("zeta", &zeta),
                ("old", &old),
                ("alpha", &alpha),
                ("unrouted", &unrouted),
            ],
        );
        let clusters: Vec<&str> = table.clusters.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(clusters, vec!["alpha", "zeta"]);
        assert_eq!(table.clusters[1].options, zeta.cluster);
        assert_ne!(table.clusters[1].options, ClusterOptions::default());
    }

    #[test]
    fn problems_are_sorted_and_deduplicated_and_order_does_not_matter() {
        // The conflict is found on both plain listeners: reported once.
        let specs = listeners(&[
            "web=0.0.0.0:8080",
            "alt=0.0.0.0:8081",
            "websecure=0.0.0.0:8443,tls",
        ]);
        let alpha = decl(&["edge.route=shop.example.com", "edge.colour=red"]);
        let beta = decl(&["edge.route=shop.example.com"]);
        let gamma = decl(&[
            "edge.route=shop.example.com/api weight=1",
            "edge.route=/healthz",
        ]);
        let delta = decl(&["edge.route=shop.example.com/api weight=4 listener=nope"]);
        let services = [
            ("delta", &delta),
            ("beta", &beta),
            ("gamma", &gamma),
            ("alpha", &alpha),
        ];
        let table = build(&specs, &services);
        for plain in ["web", "alt"] {
            let vh = vhost(&table, plain, &exact("shop.example.com"));
            assert_eq!(vh.routes.iter().filter(|r| r.service == "alpha").count(), 1);
        }
        let mut sorted = table.problems.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(table.problems, sorted);
        assert_eq!(
            kinds(&table),
            vec![
                ("alpha".to_owned(), ProblemKind::InvalidTag),
                (
                    "beta".to_owned(),
                    ProblemKind::Conflict {
                        winner: "alpha".to_owned()
                    }
                ),
                ("delta".to_owned(), ProblemKind::NoListener),
            ]
        );
        let mut reversed = services;
        reversed.reverse();
        assert_eq!(build(&specs, &reversed), table);
        let mut rotated = services;
        rotated.rotate_left(1);
        assert_eq!(build(&specs, &rotated), table);
    }

    #[test]
    fn tls_hosts_and_route_count_cover_every_listener() {
        let shop = decl(&["edge.route=shop.example.com tls=true"]);
        let wild = decl(&["edge.route=*.example.com tls=true"]);
        let blog = decl(&["edge.route=blog.example.com"]);
        let specs = listeners(&[
            "web=0.0.0.0:8080",
            "websecure=0.0.0.0:8443,tls",
            "other=0.0.0.0:9443,tls",
        ]);
        let table = build(&specs, &[("shop", &shop), ("wild", &wild), ("blog", &blog)]);
        assert_eq!(
            table.tls_hosts(),
            vec![
                exact("shop.example.com"),
                HostPattern::Wildcard("*.example.com".to_owned())
            ]
        );
        // web: shop redirect, wild redirect, blog; each TLS listener: shop, wild.
        assert_eq!(table.route_count(), 7);
    }
}

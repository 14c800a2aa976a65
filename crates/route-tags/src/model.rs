//! What tags ask for, in the gateway's own terms.
//!
//! These types sit between a service registry's tags and Envoy's protobuf:
//! `parse` reads one service's tags into them, `table` merges every
//! service's declarations into one route table, and each service that
//! serves the table (consul-eds-server's translation, envoy-acme-sds's
//! host list) reads the result. Nothing here knows Consul's JSON, Nomad's
//! API or Envoy's types.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The tag prefix, without its dot (`edge` reads `edge.route=...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TagPrefix(String);

impl TagPrefix {
    pub const DEFAULT: &'static str = "edge";

    /// A prefix is a non-empty run of letters, digits, `-` and `_`, given
    /// without the dot that separates it from the key.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid {
            Ok(Self(prefix.to_owned()))
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TagPrefix {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tag prefix `{0}`: use letters, digits, `-` and `_` only, without the trailing dot (e.g. `edge`)"
)]
pub struct InvalidPrefix(pub String);

impl fmt::Display for TagPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which requests a route's host part selects. Hosts are kept lower-case,
/// without a trailing dot and without a port, so two spellings of one name
/// are one host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum HostPattern {
    /// `shop.example.com`.
    Exact(String),
    /// `*.example.com`, stored as `*.example.com`: any depth of subdomain
    /// (Envoy's suffix match), never the bare `example.com`.
    Wildcard(String),
    /// No host: the route joins every virtual host of its listeners.
    Any,
}

impl HostPattern {
    /// The name Envoy's `domains` and a certificate use (`*` for `Any`).
    pub fn domain(&self) -> &str {
        match self {
            HostPattern::Exact(name) | HostPattern::Wildcard(name) => name,
            HostPattern::Any => "*",
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("(any host)"),
            other => f.write_str(other.domain()),
        }
    }
}

/// Which paths a route selects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum PathMatch {
    /// Exactly this path (`path_exact`).
    Exact(String),
    /// This path and everything below it at a segment boundary: `/api`
    /// matches `/api` and `/api/x`, not `/apix` (Envoy's
    /// `path_separated_prefix`; `/` matches everything).
    Prefix(String),
    /// An RE2 regular expression over the whole path (`path_regex`).
    Regex(String),
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(path) => write!(f, "= {path}"),
            PathMatch::Prefix(path) => f.write_str(path),
            PathMatch::Regex(pattern) => write!(f, "~ {pattern}"),
        }
    }
}

/// A header a request must carry (`header=Name:value`, exact match;
/// `header=Name` only asks that it is present).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HeaderMatch {
    /// Lower-case.
    pub name: String,
    pub value: Option<String>,
}

/// How the path is changed before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Rewrite {
    /// `strip=/api`: this leading part of the path is removed at a segment
    /// boundary (`/api/x` -> `/x`, `/api` -> `/`).
    Strip(String),
    /// `rewrite=/v2`: the matched prefix is replaced (`/api/x` -> `/v2/x`).
    Prefix(String),
    /// `rewrite_regex=PATTERN` + `rewrite_to=SUBSTITUTION`.
    Regex {
        pattern: String,
        substitution: String,
    },
}

/// The redirect status codes Envoy can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RedirectCode {
    MovedPermanently,  // 301
    Found,             // 302
    SeeOther,          // 303
    TemporaryRedirect, // 307
    PermanentRedirect, // 308
}

impl RedirectCode {
    pub fn status(self) -> u16 {
        match self {
            RedirectCode::MovedPermanently => 301,
            RedirectCode::Found => 302,
            RedirectCode::SeeOther => 303,
            RedirectCode::TemporaryRedirect => 307,
            RedirectCode::PermanentRedirect => 308,
        }
    }
}

/// `redirect=URL` (`redirect_code=`, default 301): the route answers with a
/// redirect instead of forwarding. The URL may give any of scheme, host and
/// path; what it leaves out is kept from the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub code: RedirectCode,
}

/// `rate_limit=N` (requests per second) and `rate_limit_burst=M`: a token
/// bucket held by each Envoy, not shared between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RateLimit {
    pub requests_per_second: u32,
    /// Tokens the bucket holds; defaults to `requests_per_second`.
    pub burst: u32,
}

/// Everything a route tag may set besides its match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RouteOptions {
    /// `listener=web,websecure`; empty: every listener the TLS setting allows.
    pub listeners: Vec<String>,
    /// `tls=true`: the route's host is a TLS host.
    pub tls: bool,
    /// `priority=N`: higher first within a virtual host (default 0).
    pub priority: i32,
    /// `header=Name:value` (repeatable through the list form).
    pub headers: Vec<HeaderMatch>,
    /// `methods=GET,POST`, upper-case; empty: any method.
    pub methods: Vec<String>,
    pub rewrite: Option<Rewrite>,
    pub redirect: Option<Redirect>,
    /// `timeout=5s`: the whole upstream exchange (Envoy's route timeout;
    /// Envoy's default 15 s when unset).
    pub timeout: Option<Duration>,
    /// `idle_timeout=60s`: a stream with no activity this long is reset.
    pub idle_timeout: Option<Duration>,
    /// `retries=N`.
    pub retries: Option<u32>,
    /// `retry_on=5xx,connect-failure` (Envoy's `retry_on` names);
    /// with `retries` and no `retry_on`: `5xx,reset,connect-failure`.
    pub retry_on: Vec<String>,
    /// `websocket=true`.
    pub websocket: bool,
    pub rate_limit: Option<RateLimit>,
    /// `canary=N`: N % of the route's traffic goes to the service's
    /// instances tagged `<prefix>.canary`.
    pub canary_percent: Option<u8>,
    /// `weight=N`: the share of this service among the services that claim
    /// the same host and path (blue/green). Without it, a second claim is a
    /// conflict.
    pub weight: Option<u32>,
}

/// One route a service declares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RouteDecl {
    /// The route's name: `NAME` of the long form; for the one-line form its
    /// `HOST/PATH` as written (so the name does not depend on tag order).
    pub name: String,
    /// The tags it was read from, as written, for reports.
    pub tags: Vec<String>,
    pub host: HostPattern,
    pub path: PathMatch,
    pub options: RouteOptions,
}

/// The protocol Envoy speaks to the service's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// `http1` (default).
    #[default]
    Http1,
    /// `h2c`: HTTP/2 in clear text.
    H2c,
    /// `h2`: HTTP/2 over TLS (implies upstream TLS).
    H2,
    /// `grpc`: HTTP/2 (clear text unless `tls=true`), gRPC's status codes.
    Grpc,
}

/// How requests are spread over the instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    /// `lb=ring_hash` / `lb=maglev` with `hash_header=` or `hash_cookie=`
    /// (sticky sessions). Without either, the source address is hashed.
    Hash {
        maglev: bool,
        key: HashKey,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "by", content = "name", rename_all = "snake_case")]
pub enum HashKey {
    Header(String),
    /// Envoy sets the cookie when the request has none (`hash_cookie_ttl`,
    /// default 1 h).
    Cookie {
        name: String,
        ttl: Duration,
    },
    SourceAddress,
}

/// Envoy's circuit breakers for the default priority (`None`: Envoy's own
/// default of 1024 each, 3 retries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct CircuitBreakers {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    /// `max_connections_per_endpoint`: Envoy's per-host threshold.
    pub max_connections_per_endpoint: Option<u32>,
}

/// Passive health checking: instances answering errors are ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierDetection {
    /// Envoy's own defaults: what `outlier_consecutive_5xx` and its
    /// siblings leave out, and what a cluster gets when it must have outlier
    /// detection but its tags ask for none.
    pub const ENVOY_DEFAULTS: Self = Self {
        consecutive_5xx: 5,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 10,
    };
}

/// Active health checking by Envoy itself, besides Consul's checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ActiveHealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// TLS from Envoy to the instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UpstreamTls {
    /// `tls_sni=`; default: none.
    pub sni: Option<String>,
    /// `tls_ca_file=`: a CA bundle on Envoy's host to verify the instances
    /// with; without it the instances' certificates are not verified, and
    /// the status page says so.
    pub ca_file: Option<String>,
}

/// Everything a service's `<prefix>.cluster.KEY=VALUE` tags set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ClusterOptions {
    pub protocol: UpstreamProtocol,
    /// `connect_timeout=`; default 5 s.
    pub connect_timeout: Option<Duration>,
    pub load_balancing: LoadBalancing,
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_check: Option<ActiveHealthCheck>,
    pub tls: Option<UpstreamTls>,
}

/// A tag that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TagProblem {
    /// The tag as written.
    pub tag: String,
    pub reason: String,
    /// What the tag leaves undeclared, so the table knows which last good
    /// version to keep.
    pub scope: TagScope,
}

/// The part of a service's declaration an unreadable tag spoils.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum TagScope {
    /// The route of this name (long-form NAME, or one-line `HOST/PATH`) is
    /// not declared.
    Route(String),
    /// Some cluster option fell back to its default.
    Cluster,
    /// Nothing the service declares: an unknown key or a misspelt flag.
    Service,
}

/// What one service's tags declare, once its instances' tags are reconciled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceDecl {
    pub routes: Vec<RouteDecl>,
    pub cluster: ClusterOptions,
    /// Tags with the prefix that were not understood; the rest still holds.
    pub problems: Vec<TagProblem>,
    /// Whether some instances carry `<prefix>.canary`.
    pub has_canary: bool,
    /// Set when the instances' tags disagree (a rolling deploy): which rule
    /// chose the declaration above, for the status page.
    pub disagreement: Option<String>,
}

impl ServiceDecl {
    /// Whether the service asks to be routed at all.
    pub fn is_routed(&self) -> bool {
        !self.routes.is_empty()
    }
}

/// One of Envoy's listeners, as declared by `--listener NAME=HOST:PORT[,tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ListenerSpec {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

// ---------------------------------------------------------------------------
// The merged route table: what `table::RouteTable::build` makes of every
// service's declaration, and what each listener then serves.
// ---------------------------------------------------------------------------

/// Where a route's traffic goes: one or more services, each split between
/// its stable and its canary instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Backend {
    pub service: String,
    /// The instances tagged `<prefix>.canary` rather than the others.
    pub canary: bool,
    /// Relative weight among the route's backends (never 0: a backend with
    /// no share is left out).
    pub weight: u32,
}

/// What a route does with a request it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteAction {
    /// Forward to these backends (weights sum to at least 1).
    Forward { backends: Vec<Backend> },
    /// The route's own `redirect=`.
    Redirect(Redirect),
    /// A TLS host reached on a plain listener: 308 to the same URL over
    /// https.
    RedirectToHttps,
}

/// One route as a listener serves it, in the order Envoy tries them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TableRoute {
    /// The declaring service (for blue/green: the winner of the claim
    /// whose options the route carries).
    pub service: String,
    pub route_name: String,
    pub path: PathMatch,
    pub options: RouteOptions,
    pub action: RouteAction,
    /// The route came from an empty host and joins this virtual host.
    pub from_any_host: bool,
}

/// One virtual host of a listener's route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualHostTable {
    /// `Any` is the catch-all virtual host (`*`), holding the empty-host
    /// routes for requests no named host matches.
    pub host: HostPattern,
    /// Any route of this host says `tls=true`.
    pub tls: bool,
    pub routes: Vec<TableRoute>,
}

/// Everything one listener serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTable {
    pub listener: ListenerSpec,
    /// Sorted by host; names are unique (Envoy rejects a domain in two
    /// virtual hosts).
    pub virtual_hosts: Vec<VirtualHostTable>,
}

impl ListenerTable {
    /// The TLS hosts this listener needs a certificate for (TLS listeners
    /// only; one filter chain each).
    pub fn tls_hosts(&self) -> impl Iterator<Item = &HostPattern> {
        self.virtual_hosts
            .iter()
            .filter(|vh| self.listener.tls && vh.tls && vh.host != HostPattern::Any)
            .map(|vh| &vh.host)
    }
}

/// Why a declaration is not (or not wholly) served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProblemKind {
    /// The tag could not be read.
    InvalidTag,
    /// Another service holds the same host + path; `winner` keeps it.
    Conflict { winner: String },
    /// The route names a listener that is not declared, or none of its
    /// listeners allows it.
    NoListener,
}

/// One reported problem: the service, the tag and the reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Problem {
    pub service: String,
    pub tag: String,
    pub kind: ProblemKind,
    pub reason: String,
}

/// A routed service's cluster, as the table needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterDecl {
    pub service: String,
    pub options: ClusterOptions,
    /// A route sends some traffic to the canary instances, so the service
    /// needs its canary cluster too.
    pub canary: bool,
}

/// The whole gateway: every listener's table, every cluster a route uses,
/// and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    pub listeners: Vec<ListenerTable>,
    /// Sorted by service; exactly the services some route forwards to.
    pub clusters: Vec<ClusterDecl>,
    pub problems: Vec<Problem>,
    /// Every route declaration the table was built from, by (service,
    /// route name): the last good version of a route whose tag turns
    /// unreadable in the next build. Not published, only carried over.
    #[serde(skip)]
    pub declared: BTreeMap<(String, String), RouteDecl>,
    /// Every routed service's cluster options, for the same reason.
    #[serde(skip)]
    pub cluster_options: BTreeMap<String, ClusterOptions>,
}

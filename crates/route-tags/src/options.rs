//! The options of a route (`timeout=5s`, `strip=/api`, ...) and of a
//! service's cluster (`<prefix>.cluster.lb=maglev`), each read and checked
//! on its own, then together: combinations Envoy would reject, or that
//! would silently do nothing, are refused with the key that causes them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::duration::parse_duration;
use crate::model::{
    ActiveHealthCheck, CircuitBreakers, ClusterOptions, HashKey, HeaderMatch, HostPattern,
    LoadBalancing, OutlierDetection, PathMatch, RateLimit, Redirect, RedirectCode, Rewrite,
    RouteOptions, UpstreamProtocol, UpstreamTls,
};
use crate::syntax;

/// One option that could not be used: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct OptionError {
    pub key: String,
    pub reason: String,
}

impl OptionError {
    pub fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Every key a route may set besides its match, in the order the docs list
/// them.
pub const ROUTE_KEYS: &[&str] = &[
    "listener",
    "tls",
    "priority",
    "header",
    "methods",
    "strip",
    "rewrite",
    "rewrite_regex",
    "rewrite_to",
    "redirect",
    "redirect_code",
    "timeout",
    "idle_timeout",
    "retries",
    "retry_on",
    "websocket",
    "rate_limit",
    "rate_limit_burst",
    "canary",
    "weight",
];

/// What a redirect can do without a forwarding option having a meaning:
/// these keys only make sense when the route forwards.
const FORWARDING_KEYS: &[&str] = &[
    "strip",
    "rewrite",
    "rewrite_regex",
    "rewrite_to",
    "timeout",
    "idle_timeout",
    "retries",
    "retry_on",
    "websocket",
    "canary",
    "weight",
];

/// The `retry_on` conditions of Envoy's router (HTTP and gRPC) that a
/// route can meet.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Conditions Envoy knows that no route could meet: Envoy would accept
/// them and never retry, so a tag naming one is refused with the reason.
const RETRY_ON_WITHOUT_EFFECT: &[(&str, &str)] = &[
    (
        "retriable-status-codes",
        "needs a list of status codes, which no key gives; use 5xx or gateway-error",
    ),
    (
        "retriable-headers",
        "needs a list of response headers, which no key gives; use 5xx or gateway-error",
    ),
    (
        "http3-post-connect-failure",
        "applies to HTTP/3 upstreams only, and no protocol= is HTTP/3",
    ),
];

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{value}` is not true or false")),
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number in range"))
}

fn positive(value: &str) -> Result<u32, String> {
    match number::<u32>(value)? {
        0 => Err("must be at least 1".to_owned()),
        n => Ok(n),
    }
}

fn duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|err| err.to_string())
}

fn list(value: &str) -> Result<Vec<&str>, String> {
    let items: Vec<&str> = value.split(',').collect();
    if items.iter().any(|item| item.is_empty()) {
        Err(format!("`{value}` has an empty item (write a,b,c)"))
    } else {
        Ok(items)
    }
}

/// Where a `redirect=` sends the client, before the code is known.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RedirectTarget {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
}

/// `https://host:port/path`, `//host/path` or `/path`: what is left out is
/// kept from the request.
fn redirect_target(value: &str) -> Result<RedirectTarget, String> {
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return Err(format!("`{value}`: the scheme is http or https"));
            }
            (Some(scheme), Some(rest))
        }
        None => (None, value.strip_prefix("//")),
    };
    let (authority, path) = match rest {
        Some(rest) => match rest.find('/') {
            Some(at) => (Some(&rest[..at]), Some(&rest[at..])),
            None => (Some(rest), None),
        },
        None => (None, Some(value)),
    };
    let (host, port) = match authority {
        None => (None, None),
        Some(authority) => {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => {
                    let port = port
                        .parse::<u16>()
                        .ok()
                        .filter(|port| *port > 0)
                        .ok_or_else(|| format!("`{value}`: `{port}` is not a port"))?;
                    (host, Some(port))
                }
                None => (authority, None),
            };
            let host = host.to_ascii_lowercase();
            let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
            if !syntax::is_dns_name(&host) {
                return Err(format!("`{value}`: `{host}` is not a host name"));
            }
            (Some(host), port)
        }
    };
    let path = match path {
        None => None,
        Some(path) => {
            // A redirect may set the query, so `?` is allowed here; a
            // fragment is never sent to a server.
            let bad = !path.starts_with('/')
                || path
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '#');
            if bad {
                return Err(format!(
                    "`{value}` is not a redirect (write https://host/path, //host/path or /path)"
                ));
            }
            Some(path.to_owned())
        }
    };
    Ok(RedirectTarget {
        scheme,
        host,
        port,
        path,
    })
}

fn redirect_code(value: &str) -> Result<RedirectCode, String> {
    Ok(match value {
        "301" => RedirectCode::MovedPermanently,
        "302" => RedirectCode::Found,
        "303" => RedirectCode::SeeOther,
        "307" => RedirectCode::TemporaryRedirect,
        "308" => RedirectCode::PermanentRedirect,
        _ => return Err(format!("`{value}` is not one of 301, 302, 303, 307, 308")),
    })
}

/// A route's options, read one key at a time; `finish` checks them
/// together against the route's match.
#[derive(Debug, Default)]
pub struct RouteOptionSet {
    options: RouteOptions,
    /// The keys given, to refuse a key given twice and to name the key a
    /// combination fails on.
    given: Vec<&'static str>,
    strip: Option<String>,
    rewrite: Option<String>,
    rewrite_regex: Option<String>,
    rewrite_to: Option<String>,
    redirect: Option<RedirectTarget>,
    redirect_code: Option<RedirectCode>,
    rate_limit: Option<u32>,
    rate_limit_burst: Option<u32>,
}

impl RouteOptionSet {
    pub fn is_key(key: &str) -> bool {
        ROUTE_KEYS.contains(&key)
    }

    fn has(&self, key: &str) -> bool {
        self.given.contains(&key)
    }

    /// Reads one `key=value`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        let Some(known) = ROUTE_KEYS.iter().copied().find(|k| *k == key) else {
            return Err(OptionError::new(
                key,
                format!("not a route option (known: {})", ROUTE_KEYS.join(", ")),
            ));
        };
        if self.has(known) {
            return Err(OptionError::new(key, "given twice"));
        }
        self.read(known, value)
            .map_err(|reason| OptionError::new(key, reason))?;
        self.given.push(known);
        Ok(())
    }

    fn read(&mut self, key: &'static str, value: &str) -> Result<(), String> {
        let options = &mut self.options;
        match key {
            "listener" => {
                let mut names = Vec::new();
                for name in list(value)? {
                    names.push(syntax::name(name).map_err(|err| err.to_string())?);
                }
                names.sort();
                names.dedup();
                options.listeners = names;
            }
            "tls" => options.tls = boolean(value)?,
            "priority" => options.priority = number(value)?,
            "header" => {
                let mut headers = Vec::new();
                for item in list(value)? {
                    let (name, value) = match item.split_once(':') {
                        Some((name, value)) => (name, Some(value)),
                        None => (item, None),
                    };
                    let name = syntax::header_name(name).map_err(|err| err.to_string())?;
                    let value = value
                        .map(syntax::header_value)
                        .transpose()
                        .map_err(|err| format!("header `{name}`: {err}"))?;
                    headers.push(HeaderMatch { name, value });
                }
                headers.sort();
                headers.dedup();
                options.headers = headers;
            }
            "methods" => {
                let mut methods = Vec::new();
                for method in list(value)? {
                    if !syntax::is_token(method) {
                        return Err(format!("`{method}` is not a method name"));
                    }
                    methods.push(method.to_ascii_uppercase());
                }
                methods.sort();
                methods.dedup();
                options.methods = methods;
            }
            "strip" => {
                let path = syntax::path_prefix(value).map_err(|err| err.to_string())?;
                if path == "/" {
                    return Err("`/` strips nothing; give the leading part to remove".to_owned());
                }
                self.strip = Some(path);
            }
            "rewrite" => {
                self.rewrite = Some(syntax::path(value).map_err(|err| err.to_string())?);
            }
            "rewrite_regex" => {
                self.rewrite_regex = Some(syntax::regex(value).map_err(|err| err.to_string())?);
            }
            "rewrite_to" => self.rewrite_to = Some(value.to_owned()),
            "redirect" => self.redirect = Some(redirect_target(value)?),
            "redirect_code" => self.redirect_code = Some(redirect_code(value)?),
            "timeout" => options.timeout = Some(duration(value)?),
            "idle_timeout" => options.idle_timeout = Some(duration(value)?),
            "retries" => options.retries = Some(number(value)?),
            "retry_on" => {
                let mut conditions = Vec::new();
                for condition in list(value)? {
                    if let Some((_, why)) = RETRY_ON_WITHOUT_EFFECT
                        .iter()
                        .find(|(known, _)| *known == condition)
                    {
                        return Err(format!("`{condition}` {why}"));
                    }
                    if !RETRY_ON.contains(&condition) {
                        return Err(format!(
                            "`{condition}` is not a retry condition (known: {})",
                            RETRY_ON.join(", ")
                        ));
                    }
                    conditions.push(condition.to_owned());
                }
                conditions.sort();
                conditions.dedup();
                options.retry_on = conditions;
            }
            "websocket" => options.websocket = boolean(value)?,
            "rate_limit" => self.rate_limit = Some(positive(value)?),
            "rate_limit_burst" => self.rate_limit_burst = Some(positive(value)?),
            "canary" => {
                let percent: u8 = value
                    .parse()
                    .ok()
                    .filter(|percent| *percent <= 100)
                    .ok_or_else(|| format!("`{value}` is not a percentage from 0 to 100"))?;
                options.canary_percent = Some(percent);
            }
            "weight" => options.weight = Some(positive(value)?),
            _ => unreachable!("every key of ROUTE_KEYS is read"),
        }
        Ok(())
    }

    /// Checks the options together and against the route's match.
    pub fn finish(self, host: &HostPattern, path: &PathMatch) -> Result<RouteOptions, OptionError> {
        let mut options = self.options;
        let given = &self.given;
        let first_given = |keys: &[&'static str]| -> Option<&'static str> {
            keys.iter().copied().find(|key| given.contains(key))
        };

        let rewrites: Vec<&str> = ["strip", "rewrite", "rewrite_regex"]
            .into_iter()
            .filter(|key| given.contains(key))
            .collect();
        if rewrites.len() > 1 {
            return Err(OptionError::new(
                rewrites[1],
                format!(
                    "the path is changed once: give one of strip, rewrite and rewrite_regex, not {}",
                    rewrites.join(" and ")
                ),
            ));
        }
        if self.rewrite_regex.is_some() != self.rewrite_to.is_some() {
            return Err(match self.rewrite_regex {
                Some(_) => {
                    OptionError::new("rewrite_regex", "needs rewrite_to= (the substitution)")
                }
                None => OptionError::new("rewrite_to", "needs rewrite_regex= (the pattern)"),
            });
        }
        if let Some(strip) = self.strip {
            match path {
                PathMatch::Prefix(prefix) if syntax::covers(&strip, prefix) => {}
                PathMatch::Prefix(prefix) => {
                    return Err(OptionError::new(
                        "strip",
                        format!(
                            "`{strip}` is not a leading part of the route's path `{prefix}` (at a `/`), so some requests would keep it"
                        ),
                    ));
                }
                _ => {
                    return Err(OptionError::new(
                        "strip",
                        "needs a path prefix route (`path=`); use rewrite_regex with path_exact or path_regex",
                    ));
                }
            }
            options.rewrite = Some(Rewrite::Strip(strip));
        }
        if let Some(rewrite) = self.rewrite {
            if matches!(path, PathMatch::Regex(_)) {
                return Err(OptionError::new(
                    "rewrite",
                    "replaces the matched prefix, and a path_regex route has none; use rewrite_regex",
                ));
            }
            options.rewrite = Some(Rewrite::Prefix(rewrite));
        }
        if let (Some(pattern), Some(substitution)) = (self.rewrite_regex, self.rewrite_to) {
            options.rewrite = Some(Rewrite::Regex {
                pattern,
                substitution,
            });
        }

        match self.redirect {
            Some(target) => {
                if let Some(key) = first_given(FORWARDING_KEYS) {
                    return Err(OptionError::new(
                        key,
                        "this route has `redirect=`: it answers the client itself and forwards nothing, so this option would never apply",
                    ));
                }
                options.redirect = Some(Redirect {
                    scheme: target.scheme,
                    host: target.host,
                    port: target.port,
                    path: target.path,
                    code: self.redirect_code.unwrap_or(RedirectCode::MovedPermanently),
                });
            }
            None if self.redirect_code.is_some() => {
                return Err(OptionError::new(
                    "redirect_code",
                    "needs redirect= (the URL to send the client to)",
                ));
            }
            None => {}
        }

        match (self.rate_limit, self.rate_limit_burst) {
            (Some(rps), burst) => {
                options.rate_limit = Some(RateLimit {
                    requests_per_second: rps,
                    burst: burst.unwrap_or(rps),
                });
            }
            (None, Some(_)) => {
                return Err(OptionError::new(
                    "rate_limit_burst",
                    "needs rate_limit= (requests per second)",
                ));
            }
            (None, None) => {}
        }

        if options.tls && *host == HostPattern::Any {
            return Err(OptionError::new(
                "tls",
                "a route without a host cannot ask for TLS: no certificate could name it",
            ));
        }
        Ok(options)
    }
}

/// Every key of `<prefix>.cluster.KEY`.
pub const CLUSTER_KEYS: &[&str] = &[
    "protocol",
    "connect_timeout",
    "lb",
    "hash_header",
    "hash_cookie",
    "hash_cookie_ttl",
    "max_connections",
    "max_pending_requests",
    "max_requests",
    "max_retries",
    "max_connections_per_endpoint",
    "outlier_consecutive_5xx",
    "outlier_interval",
    "outlier_ejection_time",
    "outlier_max_ejection_percent",
    "health_check_path",
    "health_check_interval",
    "health_check_timeout",
    "health_check_unhealthy_threshold",
    "health_check_healthy_threshold",
    "tls",
    "tls_sni",
    "tls_ca_file",
];

/// Envoy's outlier detection defaults, used for what the tags leave out.
const OUTLIER_DEFAULT: OutlierDetection = OutlierDetection::ENVOY_DEFAULTS;

const HASH_COOKIE_TTL: Duration = Duration::from_secs(3600);
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a service's cluster options (`key -> value`, each key once).
/// A bad option is left at its default and reported; the others hold.
pub fn cluster_options(values: &BTreeMap<String, String>) -> (ClusterOptions, Vec<OptionError>) {
    let mut errors = Vec::new();
    let mut take = |key: &str, result: Result<(), String>| {
        if let Err(reason) = result {
            errors.push(OptionError::new(key, reason));
        }
    };
    for key in values.keys() {
        if !CLUSTER_KEYS.contains(&key.as_str()) {
            take(
                key,
                Err(format!(
                    "not a cluster option (known: {})",
                    CLUSTER_KEYS.join(", ")
                )),
            );
        }
    }

    let mut options = ClusterOptions::default();
    macro_rules! option {
        ($key:literal, $parse:expr) => {
            match values.get($key) {
                None => None,
                Some(value) => match $parse(value.as_str()) {
                    Ok(parsed) => Some(parsed),
                    Err(reason) => {
                        take($key, Err(reason));
                        None
                    }
                },
            }
        };
    }

    if let Some(protocol) = option!("protocol", |v: &str| match v {
        "http1" => Ok(UpstreamProtocol::Http1),
        "h2c" => Ok(UpstreamProtocol::H2c),
        "h2" => Ok(UpstreamProtocol::H2),
        "grpc" => Ok(UpstreamProtocol::Grpc),
        _ => Err(format!("`{v}` is not one of http1, h2c, h2, grpc")),
    }) {
        options.protocol = protocol;
    }
    options.connect_timeout = option!("connect_timeout", duration);

    let lb = option!("lb", |v: &str| match v {
        "round_robin" | "least_request" | "random" | "ring_hash" | "maglev" => Ok(v.to_owned()),
        _ => Err(format!(
            "`{v}` is not one of round_robin, least_request, random, ring_hash, maglev"
        )),
    });
    let hash_header = option!("hash_header", |v: &str| syntax::header_name(v)
        .map_err(|err| err.to_string()));
    let hash_cookie = option!("hash_cookie", |v: &str| if syntax::is_token(v) {
        Ok(v.to_owned())
    } else {
        Err(format!("`{v}` is not a cookie name"))
    });
    let hash_cookie_ttl = option!("hash_cookie_ttl", duration);
    let hashing = matches!(lb.as_deref(), Some("ring_hash" | "maglev"));
    for (key, given) in [
        ("hash_header", values.contains_key("hash_header")),
        ("hash_cookie", values.contains_key("hash_cookie")),
    ] {
        if given && !hashing {
            take(
                key,
                Err("needs lb=ring_hash or lb=maglev (other balancers ignore the hash)".to_owned()),
            );
        }
    }
    if values.contains_key("hash_header") && values.contains_key("hash_cookie") {
        take(
            "hash_cookie",
            Err(
                "give one of hash_header and hash_cookie: a request is hashed by one key"
                    .to_owned(),
            ),
        );
    }
    if values.contains_key("hash_cookie_ttl") && !values.contains_key("hash_cookie") {
        take("hash_cookie_ttl", Err("needs hash_cookie=".to_owned()));
    }
    options.load_balancing = match lb.as_deref() {
        None | Some("round_robin") => LoadBalancing::RoundRobin,
        Some("least_request") => LoadBalancing::LeastRequest,
        Some("random") => LoadBalancing::Random,
        Some(kind) => LoadBalancing::Hash {
            maglev: kind == "maglev",
            key: match (hash_header, hash_cookie) {
                (Some(name), None) => HashKey::Header(name),
                (None, Some(name)) => HashKey::Cookie {
                    name,
                    ttl: hash_cookie_ttl.unwrap_or(HASH_COOKIE_TTL),
                },
                // Both given is reported above; the header is the one
                // that needs no cookie to be set.
                (Some(name), Some(_)) => HashKey::Header(name),
                (None, None) => HashKey::SourceAddress,
            },
        },
    };

    options.circuit_breakers = CircuitBreakers {
        max_connections: option!("max_connections", positive),
        max_pending_requests: option!("max_pending_requests", positive),
        max_requests: option!("max_requests", positive),
        // 0 is meaningful here: no retries at all.
        max_retries: option!("max_retries", number::<u32>),
        max_connections_per_endpoint: option!("max_connections_per_endpoint", positive),
    };

    let consecutive_5xx = option!("outlier_consecutive_5xx", positive);
    let interval = option!("outlier_interval", duration);
    let ejection = option!("outlier_ejection_time", duration);
    let max_percent = option!("outlier_max_ejection_percent", |v: &str| number::<u32>(v)
        .and_then(|n| if n <= 100 {
            Ok(n)
        } else {
            Err(format!("`{v}` is not a percentage from 0 to 100"))
        }));
    if values.keys().any(|key| key.starts_with("outlier_")) {
        options.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: consecutive_5xx.unwrap_or(OUTLIER_DEFAULT.consecutive_5xx),
            interval: interval.unwrap_or(OUTLIER_DEFAULT.interval),
            base_ejection_time: ejection.unwrap_or(OUTLIER_DEFAULT.base_ejection_time),
            max_ejection_percent: max_percent.unwrap_or(OUTLIER_DEFAULT.max_ejection_percent),
        });
    }

    let hc_path = option!("health_check_path", |v: &str| syntax::path(v)
        .map_err(|err| err.to_string()));
    let hc_interval = option!("health_check_interval", duration);
    let hc_timeout = option!("health_check_timeout", duration);
    let hc_unhealthy = option!("health_check_unhealthy_threshold", positive);
    let hc_healthy = option!("health_check_healthy_threshold", positive);
    if let Some(path) = hc_path {
        options.health_check = Some(ActiveHealthCheck {
            path,
            interval: hc_interval.unwrap_or(HEALTH_CHECK_INTERVAL),
            timeout: hc_timeout.unwrap_or(HEALTH_CHECK_TIMEOUT),
            unhealthy_threshold: hc_unhealthy.unwrap_or(3),
            healthy_threshold: hc_healthy.unwrap_or(2),
        });
    } else if !values.contains_key("health_check_path") {
        for key in values.keys().filter(|key| key.starts_with("health_check_")) {
            take(
                key,
                Err("needs health_check_path= (what Envoy requests)".to_owned()),
            );
        }
    }

    let tls = option!("tls", boolean);
    let sni = option!("tls_sni", |v: &str| {
        let host = v.to_ascii_lowercase();
        if syntax::is_dns_name(&host) {
            Ok(host)
        } else {
            Err(format!("`{v}` is not a host name"))
        }
    });
    let ca_file = option!("tls_ca_file", |v: &str| if v.starts_with('/') {
        Ok(v.to_owned())
    } else {
        Err(format!("`{v}` is not an absolute file path"))
    });
    let h2 = options.protocol == UpstreamProtocol::H2;
    if h2 && tls == Some(false) {
        take(
            "tls",
            Err("protocol=h2 is HTTP/2 over TLS; use protocol=h2c for clear text".to_owned()),
        );
    }
    let upstream_tls = tls == Some(true) || h2;
    if !upstream_tls {
        for key in ["tls_sni", "tls_ca_file"] {
            if values.contains_key(key) {
                take(key, Err("needs tls=true (or protocol=h2)".to_owned()));
            }
        }
    }
    if upstream_tls {
        options.tls = Some(UpstreamTls { sni, ca_file });
    }

    errors.sort_by(|a, b| a.key.cmp(&b.key));
    errors.dedup();
    (options, errors)
}

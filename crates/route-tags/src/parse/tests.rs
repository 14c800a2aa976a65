use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::model::{
    HashKey, HeaderMatch, LoadBalancing, Redirect, RedirectCode, Rewrite, UpstreamProtocol,
};

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|tag| (*tag).to_owned()).collect()
}

/// The declaration of a service with one instance carrying `list`.
fn decl(list: &[&str]) -> ServiceDecl {
    let tags = tags(list);
    service_decl(
        &TagPrefix::default(),
        &[InstanceTags {
            id: "i1",
            tags: &tags,
        }],
    )
}

fn route<'d>(decl: &'d ServiceDecl, name: &str) -> &'d RouteDecl {
    decl.routes
        .iter()
        .find(|route| route.name == name)
        .unwrap_or_else(|| panic!("no route {name} in {decl:#?}"))
}

/// The one reason given for `tag`.
fn reason(decl: &ServiceDecl, tag: &str) -> String {
    let reasons: Vec<&TagProblem> = decl.problems.iter().filter(|p| p.tag == tag).collect();
    assert_eq!(reasons.len(), 1, "problems for {tag}: {:#?}", decl.problems);
    reasons[0].reason.clone()
}

#[test]
fn one_line_route_reads_host_path_and_options() {
    let d = decl(&["edge.route=Shop.Example.com/api/ strip=/api timeout=5s"]);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let r = route(&d, "Shop.Example.com/api/");
    assert_eq!(r.host, HostPattern::Exact("shop.example.com".into()));
    assert_eq!(r.path, PathMatch::Prefix("/api".into()));
    assert_eq!(r.options.rewrite, Some(Rewrite::Strip("/api".into())));
    assert_eq!(r.options.timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        r.tags,
        tags(&["edge.route=Shop.Example.com/api/ strip=/api timeout=5s"])
    );
}

#[test]
fn one_line_route_without_path_is_slash_and_without_host_is_any() {
    let d = decl(&[
        "edge.route=shop.example.com",
        "edge.route=/.well-known/acme-challenge/",
    ]);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(
        route(&d, "shop.example.com").path,
        PathMatch::Prefix("/".into())
    );
    let acme = route(&d, "/.well-known/acme-challenge/");
    assert_eq!(acme.host, HostPattern::Any);
    assert_eq!(
        acme.path,
        PathMatch::Prefix("/.well-known/acme-challenge".into())
    );
}

#[test]
fn long_form_reads_every_key_of_one_name() {
    let d = decl(&[
        "edge.http.routes.api.host=*.Example.com",
        "edge.http.routes.api.path_regex=^/v[0-9]+/.*$",
        "edge.http.routes.api.header=X-Canary:yes,x-debug",
        "edge.http.routes.api.methods=get,POST",
        "edge.http.routes.api.priority=-3",
        "edge.http.routes.api.listener=web,admin,web",
        "edge.http.routes.api.retries=2",
        "edge.http.routes.api.retry_on=5xx,connect-failure",
        "edge.http.routes.api.rate_limit=10",
        "edge.http.routes.api.canary=20",
        "edge.http.routes.api.weight=3",
        "edge.http.routes.api.websocket=true",
        "edge.http.routes.api.idle_timeout=1m",
    ]);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let r = route(&d, "api");
    assert_eq!(r.host, HostPattern::Wildcard("*.example.com".into()));
    assert_eq!(r.path, PathMatch::Regex("^/v[0-9]+/.*$".into()));
    let o = &r.options;
    assert_eq!(
        o.headers,
        vec![
            HeaderMatch {
                name: "x-canary".into(),
                value: Some("yes".into())
            },
            HeaderMatch {
                name: "x-debug".into(),
                value: None
            },
        ]
    );
    assert_eq!(o.methods, vec!["GET", "POST"]);
    assert_eq!(o.priority, -3);
    assert_eq!(o.listeners, vec!["admin", "web"]);
    assert_eq!(o.retries, Some(2));
    assert_eq!(o.retry_on, vec!["5xx", "connect-failure"]);
    assert_eq!(
        o.rate_limit.map(|r| (r.requests_per_second, r.burst)),
        Some((10, 10))
    );
    assert_eq!(o.canary_percent, Some(20));
    assert_eq!(o.weight, Some(3));
    assert!(o.websocket);
    assert_eq!(o.idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(r.tags.len(), 13);
}

#[test]
fn long_form_without_host_or_path_is_any_host_and_slash() {
    let d = decl(&["edge.http.routes.fallback.priority=-100"]);
    let r = route(&d, "fallback");
    assert_eq!(r.host, HostPattern::Any);
    assert_eq!(r.path, PathMatch::Prefix("/".into()));
}

#[test]
fn a_bad_value_names_the_key_and_spares_the_other_routes() {
    let bad = "edge.route=a.example.com/x timeout=5x";
    let d = decl(&[bad, "edge.route=b.example.com"]);
    assert_eq!(
        reason(&d, bad),
        "timeout: `5x` is not a duration (use 250ms, 5s, 1m)"
    );
    assert_eq!(
        d.problems[0].scope,
        TagScope::Route("a.example.com/x".into())
    );
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].name, "b.example.com");
}

#[test]
fn one_bad_long_form_key_spoils_only_its_route() {
    let d = decl(&[
        "edge.http.routes.api.host=api.example.com",
        "edge.http.routes.api.timeout=0s",
        "edge.http.routes.web.host=www.example.com",
    ]);
    assert_eq!(
        reason(&d, "edge.http.routes.api.timeout=0s"),
        "timeout: `0s` is zero; give a duration of more than 0"
    );
    assert_eq!(d.problems[0].scope, TagScope::Route("api".into()));
    let names: Vec<&str> = d.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["web"]);
}

#[test]
fn unknown_keys_are_problems_and_foreign_tags_are_ignored() {
    let d = decl(&[
        "edge.rout=a.example.com",
        "edge.http.routes.api.hots=a.example.com",
        "edge.cluster.lbb=maglev",
        "edge.route=a.example.com tiemout=5s",
        "edge.route=c.example.com redirect",
        "edge.http.x",
        "edgex.route=b.example.com",
        "traefik.enable=true",
        "edge",
    ]);
    assert!(reason(&d, "edge.rout=a.example.com").contains("`rout` is not a known key"));
    assert!(
        reason(&d, "edge.http.routes.api.hots=a.example.com")
            .starts_with("`hots` is not a route key")
    );
    assert!(reason(&d, "edge.cluster.lbb=maglev").starts_with("cluster.lbb: not a cluster option"));
    assert!(
        reason(&d, "edge.route=a.example.com tiemout=5s")
            .starts_with("tiemout: not a route option")
    );
    assert!(reason(&d, "edge.route=c.example.com redirect").contains("key=value"));
    assert!(reason(&d, "edge.http.x").contains("`http.x` is not a known key"));
    assert_eq!(d.problems.len(), 6, "{:#?}", d.problems);
    assert!(d.routes.is_empty());
}

#[test]
fn hosts_and_paths_envoy_would_refuse_are_problems() {
    for (tag, words) in [
        ("edge.route=a.example.com:8443/x", "without a port"),
        ("edge.route=a.*.com/x", "a `*` may only open a host"),
        ("edge.route=*/x", "a `*` may only open a host"),
        ("edge.route=a_b.com/x", "is not a host name"),
        ("edge.http.routes.r.path=api", "path: `api` is not a path"),
        (
            "edge.http.routes.r.path_exact=/a?b",
            "path_exact: `/a?b`: a path holds no",
        ),
        (
            "edge.http.routes.r.path_regex=(?<id>x)",
            "write the named group as `(?P<id>...)`",
        ),
        (
            "edge.http.routes.r.path_regex=a{2000}",
            "RE2 repeats at most 1000",
        ),
        ("edge.http.routes.r.header=X Y", "not a header name"),
        (
            "edge.http.routes.r.header=:authority:x",
            "not a header name",
        ),
        ("edge.http.routes.r.methods=GET,", "empty item"),
        (
            "edge.http.routes.r.canary=101",
            "not a percentage from 0 to 100",
        ),
        ("edge.http.routes.r.weight=0", "weight: must be at least 1"),
        (
            "edge.http.routes.r.redirect_code=300",
            "not one of 301, 302, 303, 307, 308",
        ),
        (
            "edge.http.routes.r.retry_on=5xx,sometimes",
            "`sometimes` is not a retry condition",
        ),
        // Envoy accepts these and then never retries: no key gives the
        // codes or headers they need, and no upstream is HTTP/3.
        (
            "edge.http.routes.r.retry_on=5xx,retriable-status-codes",
            "`retriable-status-codes` needs a list of status codes",
        ),
        (
            "edge.http.routes.r.retry_on=retriable-headers",
            "`retriable-headers` needs a list of response headers",
        ),
        (
            "edge.http.routes.r.retry_on=http3-post-connect-failure",
            "applies to HTTP/3 upstreams only",
        ),
        ("edge.http.routes.r.listener=web.1", "not a name"),
        ("edge.http.routes.r.tls=yes", "`yes` is not true or false"),
        (
            "edge.http.routes.r.priority=high",
            "priority: `high` is not a whole number",
        ),
        (
            "edge.http.routes.r.redirect=ftp://x.com",
            "the scheme is http or https",
        ),
        (
            "edge.http.routes.r.redirect=https://x.com:0/",
            "is not a port",
        ),
    ] {
        let d = decl(&[tag]);
        let got = reason(&d, tag);
        assert!(got.contains(words), "{tag}: {got}");
        assert!(d.routes.is_empty(), "{tag}");
    }
}

#[test]
fn exactly_one_path_key() {
    let d = decl(&[
        "edge.http.routes.r.path=/a",
        "edge.http.routes.r.path_exact=/b",
    ]);
    let got = reason(&d, "edge.http.routes.r.path_exact=/b");
    assert!(
        got.contains("give one of path, path_exact and path_regex"),
        "{got}"
    );
    assert!(d.routes.is_empty());
    let d = decl(&[
        "edge.http.routes.r.host=a.com",
        "edge.http.routes.r.host=b.com",
    ]);
    assert_eq!(
        reason(&d, "edge.http.routes.r.host=b.com"),
        "host: given twice"
    );
}

#[test]
fn strip_must_lead_the_route_path_at_a_segment_boundary() {
    let ok = decl(&["edge.route=a.com/api/v1 strip=/api"]);
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    for (tag, words) in [
        (
            "edge.route=a.com/api strip=/ap",
            "is not a leading part of the route's path `/api`",
        ),
        (
            "edge.route=a.com/api strip=/api/v1",
            "is not a leading part",
        ),
        ("edge.route=a.com/api strip=/", "strips nothing"),
        ("edge.http.routes.r.path_exact=/x", ""),
    ] {
        if words.is_empty() {
            continue;
        }
        let d = decl(&[tag]);
        let got = reason(&d, tag);
        assert!(
            got.starts_with("strip: ") && got.contains(words),
            "{tag}: {got}"
        );
    }
    let d = decl(&[
        "edge.http.routes.r.path_exact=/x",
        "edge.http.routes.r.strip=/x",
    ]);
    assert!(reason(&d, "edge.http.routes.r.strip=/x").contains("needs a path prefix route"));
}

#[test]
fn one_path_change_per_route() {
    let tag = "edge.route=a.com/api strip=/api rewrite=/v2";
    assert!(reason(&decl(&[tag]), tag).contains("give one of strip, rewrite and rewrite_regex"));
    let tag = "edge.route=a.com/api rewrite_regex=^/api/(.*) ";
    assert!(reason(&decl(&[tag]), tag).contains("rewrite_regex: needs rewrite_to="));
    let tag = "edge.route=a.com/api rewrite_to=/x";
    assert!(reason(&decl(&[tag]), tag).contains("rewrite_to: needs rewrite_regex="));
    let d = decl(&["edge.route=a.com/api rewrite_regex=^/api/(.*)$ rewrite_to=/\\1"]);
    assert_eq!(
        d.routes[0].options.rewrite,
        Some(Rewrite::Regex {
            pattern: "^/api/(.*)$".into(),
            substitution: "/\\1".into()
        })
    );
    let tag = "edge.http.routes.r.rewrite=/v2";
    let d = decl(&["edge.http.routes.r.path_regex=^/x$", tag]);
    assert!(reason(&d, tag).contains("use rewrite_regex"));
}

#[test]
fn redirects_read_their_url_and_refuse_forwarding_options() {
    let d = decl(&[
        "edge.route=old.example.com redirect=https://new.example.com:8443/shop?x=1 redirect_code=308",
    ]);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(
        d.routes[0].options.redirect,
        Some(Redirect {
            scheme: Some("https".into()),
            host: Some("new.example.com".into()),
            port: Some(8443),
            path: Some("/shop?x=1".into()),
            code: RedirectCode::PermanentRedirect,
        })
    );
    let d = decl(&["edge.route=a.com/old redirect=/new"]);
    let redirect = d.routes[0].options.redirect.clone().unwrap();
    assert_eq!(
        (redirect.host, redirect.path.as_deref()),
        (None, Some("/new"))
    );
    assert_eq!(redirect.code, RedirectCode::MovedPermanently);
    let d = decl(&["edge.route=a.com redirect=//b.com"]);
    let redirect = d.routes[0].options.redirect.clone().unwrap();
    assert_eq!(
        (redirect.scheme, redirect.host.as_deref()),
        (None, Some("b.com"))
    );

    let tag = "edge.route=a.com/old redirect=/new rewrite=/v2";
    let got = reason(&decl(&[tag]), tag);
    assert!(
        got.starts_with("rewrite: this route has `redirect=`"),
        "{got}"
    );
    assert!(got.contains("forwards nothing"), "{got}");
    let tag = "edge.route=a.com redirect_code=302";
    assert!(reason(&decl(&[tag]), tag).contains("redirect_code: needs redirect="));
    let tag = "edge.route=a.com redirect=new.html";
    assert!(reason(&decl(&[tag]), tag).contains("is not a redirect"));
}

#[test]
fn option_combinations_that_would_do_nothing_are_refused() {
    let tag = "edge.route=a.com rate_limit_burst=5";
    assert!(reason(&decl(&[tag]), tag).contains("rate_limit_burst: needs rate_limit="));
    let tag = "edge.route=/x tls=true";
    assert!(reason(&decl(&[tag]), tag).starts_with("tls: a route without a host"));
    let tag = "edge.route=a.com timeout=1s timeout=2s";
    assert_eq!(reason(&decl(&[tag]), tag), "timeout: given twice");
    let d = decl(&["edge.route=a.com rate_limit=10 rate_limit_burst=30"]);
    let limit = d.routes[0].options.rate_limit.unwrap();
    assert_eq!((limit.requests_per_second, limit.burst), (10, 30));
}

#[test]
fn a_one_line_route_given_twice_is_refused() {
    let d = decl(&[
        "edge.route=a.com/x timeout=1s",
        "edge.route=a.com/x timeout=2s",
    ]);
    assert!(reason(&d, "edge.route=a.com/x timeout=2s").contains("declared twice"));
    assert!(d.routes.is_empty());
    assert_eq!(d.problems[0].scope, TagScope::Route("a.com/x".into()));
}

#[test]
fn cluster_options_are_read_and_checked_together() {
    let d = decl(&[
        "edge.cluster.protocol=h2",
        "edge.cluster.lb=maglev",
        "edge.cluster.hash_cookie=session",
        "edge.cluster.connect_timeout=250ms",
        "edge.cluster.max_connections=100",
        "edge.cluster.max_retries=0",
        "edge.cluster.outlier_consecutive_5xx=3",
        "edge.cluster.health_check_path=/healthz",
        "edge.cluster.tls_sni=Backend.internal",
    ]);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let c = &d.cluster;
    assert_eq!(c.protocol, UpstreamProtocol::H2);
    assert_eq!(
        c.load_balancing,
        LoadBalancing::Hash {
            maglev: true,
            key: HashKey::Cookie {
                name: "session".into(),
                ttl: Duration::from_secs(3600)
            }
        }
    );
    assert_eq!(c.connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(c.circuit_breakers.max_connections, Some(100));
    assert_eq!(c.circuit_breakers.max_retries, Some(0));
    let outlier = c.outlier_detection.unwrap();
    assert_eq!(
        (outlier.consecutive_5xx, outlier.max_ejection_percent),
        (3, 10)
    );
    assert_eq!(c.health_check.as_ref().unwrap().path, "/healthz");
    // h2 is HTTP/2 over TLS, so TLS is on without tls=true.
    assert_eq!(
        c.tls.as_ref().and_then(|t| t.sni.as_deref()),
        Some("backend.internal")
    );

    let d = decl(&["edge.cluster.lb=ring_hash"]);
    assert_eq!(
        d.cluster.load_balancing,
        LoadBalancing::Hash {
            maglev: false,
            key: HashKey::SourceAddress
        }
    );
}

#[test]
fn bad_cluster_options_fall_back_and_are_reported() {
    for (list, tag, words) in [
        (
            &["edge.cluster.hash_header=x-user"][..],
            "edge.cluster.hash_header=x-user",
            "needs lb=ring_hash or lb=maglev",
        ),
        (
            &["edge.cluster.protocol=h2", "edge.cluster.tls=false"][..],
            "edge.cluster.tls=false",
            "use protocol=h2c",
        ),
        (
            &["edge.cluster.tls_ca_file=/ca.pem"][..],
            "edge.cluster.tls_ca_file=/ca.pem",
            "needs tls=true",
        ),
        (
            &["edge.cluster.health_check_interval=5s"][..],
            "edge.cluster.health_check_interval=5s",
            "needs health_check_path=",
        ),
        (
            &["edge.cluster.protocol=http3"][..],
            "edge.cluster.protocol=http3",
            "not one of http1, h2c, h2, grpc",
        ),
        (
            &["edge.cluster.max_connections=0"][..],
            "edge.cluster.max_connections=0",
            "must be at least 1",
        ),
        (
            &[
                "edge.cluster.lb=maglev",
                "edge.cluster.hash_header=a",
                "edge.cluster.hash_cookie=b",
            ][..],
            "edge.cluster.hash_cookie=b",
            "give one of hash_header and hash_cookie",
        ),
        (
            &["edge.cluster.lb=x", "edge.cluster.lb=y"][..],
            "edge.cluster.lb=y",
            "given 2 times",
        ),
    ] {
        let d = decl(list);
        let got = reason(&d, tag);
        assert!(got.contains(words), "{tag}: {got}");
        assert!(got.starts_with("cluster."), "{got}");
        assert!(d.problems.iter().all(|p| p.scope == TagScope::Cluster));
    }
    let d = decl(&["edge.cluster.protocol=http3", "edge.cluster.lb=random"]);
    assert_eq!(d.cluster.protocol, UpstreamProtocol::Http1);
    assert_eq!(d.cluster.load_balancing, LoadBalancing::Random);
}

#[test]
fn the_canary_flag_marks_an_instance() {
    let d = decl(&["edge.canary"]);
    assert!(d.has_canary);
    let d = decl(&["edge.canary=true"]);
    assert!(!d.has_canary);
    assert!(reason(&d, "edge.canary=true").contains("without a value"));
}

fn service(instances: &[(&str, &[&str])]) -> ServiceDecl {
    let owned: Vec<(String, Vec<String>)> = instances
        .iter()
        .map(|(id, list)| ((*id).to_owned(), tags(list)))
        .collect();
    let views: Vec<InstanceTags<'_>> = owned
        .iter()
        .map(|(id, tags)| InstanceTags { id, tags })
        .collect();
    service_decl(&TagPrefix::default(), &views)
}

#[test]
fn the_variant_most_instances_carry_wins() {
    let d = service(&[
        ("a", &["edge.http.routes.api.timeout=10s"]),
        ("b", &["edge.http.routes.api.timeout=5s"]),
        ("c", &["edge.http.routes.api.timeout=5s"]),
    ]);
    assert_eq!(d.routes[0].options.timeout, Some(Duration::from_secs(5)));
    let note = d.disagreement.unwrap();
    assert!(
        note.contains("route `api`") && note.contains("the variant of 2 is used"),
        "{note}"
    );
}

#[test]
fn a_tie_goes_to_the_lexicographically_first_variant() {
    let d = service(&[
        ("a", &["edge.http.routes.api.timeout=5s"]),
        ("b", &["edge.http.routes.api.timeout=10s"]),
    ]);
    // "...timeout=10s" sorts before "...timeout=5s".
    assert_eq!(d.routes[0].options.timeout, Some(Duration::from_secs(10)));
    let swapped = service(&[
        ("b", &["edge.http.routes.api.timeout=10s"]),
        ("a", &["edge.http.routes.api.timeout=5s"]),
    ]);
    assert_eq!(d, swapped);
}

#[test]
fn a_route_stays_while_any_instance_declares_it() {
    let d = service(&[
        ("a", &["edge.route=a.com", "edge.route=new.com"]),
        ("b", &["edge.route=a.com"]),
        ("c", &["edge.route=a.com"]),
    ]);
    let names: Vec<&str> = d.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["a.com", "new.com"]);
    assert!(d.disagreement.unwrap().contains("declared by 1 of 3"));
    let agree = service(&[("a", &["edge.route=a.com"]), ("b", &["edge.route=a.com"])]);
    assert_eq!(agree.disagreement, None);
}

#[test]
fn an_unreadable_majority_leaves_the_route_out() {
    let d = service(&[
        ("a", &["edge.route=a.com timeout=5x"]),
        ("b", &["edge.route=a.com timeout=5x"]),
        ("c", &["edge.route=a.com timeout=5s"]),
    ]);
    assert!(d.routes.is_empty());
    assert_eq!(d.problems.len(), 1);
    assert!(d.disagreement.unwrap().contains("cannot be read"));
}

#[test]
fn cluster_options_follow_the_majority_too() {
    let d = service(&[
        ("a", &["edge.route=a.com", "edge.cluster.lb=random"]),
        ("b", &["edge.route=a.com"]),
        ("c", &["edge.route=a.com", "edge.cluster.lb=random"]),
    ]);
    assert_eq!(d.cluster.load_balancing, LoadBalancing::Random);
    assert!(d.disagreement.unwrap().contains("cluster options"));
}

#[test]
fn canary_instances_do_not_vote_while_stable_ones_exist() {
    let d = service(&[
        ("a", &["edge.route=a.com timeout=5s"]),
        (
            "c1",
            &[
                "edge.route=a.com timeout=9s",
                "edge.route=try.com",
                "edge.canary",
            ],
        ),
        ("c2", &["edge.route=a.com timeout=9s", "edge.canary"]),
    ]);
    assert!(d.has_canary);
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].options.timeout, Some(Duration::from_secs(5)));
    assert_eq!(d.disagreement, None);

    let only_canaries = service(&[("c1", &["edge.route=try.com", "edge.canary"])]);
    assert!(only_canaries.has_canary);
    assert_eq!(only_canaries.routes[0].name, "try.com");
}

#[test]
fn mentions_prefix_needs_the_dot() {
    let prefix = TagPrefix::new("gw").unwrap();
    assert!(mentions_prefix(&prefix, &tags(&["x", "gw.route=a.com"])));
    assert!(mentions_prefix(&prefix, &tags(&["gw.anything"])));
    assert!(!mentions_prefix(
        &prefix,
        &tags(&["gw", "gwx.route=a.com", "edge.route=a.com"])
    ));
    let d = service_decl(
        &prefix,
        &[InstanceTags {
            id: "a",
            tags: &tags(&["gw.route=a.com", "edge.route=b.com"]),
        }],
    );
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].name, "a.com");
}

#[test]
fn listener_specs_parse() {
    assert_eq!(
        "web=0.0.0.0:80".parse(),
        Ok(ListenerSpec {
            name: "web".into(),
            host: "0.0.0.0".into(),
            port: 80,
            tls: false
        })
    );
    assert_eq!(
        "websecure=[::]:443,tls".parse(),
        Ok(ListenerSpec {
            name: "websecure".into(),
            host: "::".into(),
            port: 443,
            tls: true
        })
    );
    for (spec, expected) in [
        ("web", "write NAME=HOST:PORT"),
        ("web=0.0.0.0", "write NAME=HOST:PORT"),
        ("w.b=0.0.0.0:80", "not a listener name"),
        ("=0.0.0.0:80", "not a listener name"),
        ("web=example.com:80", "not an IP address"),
        ("web=::1:80", "not an IP address"),
        ("web=0.0.0.0:0", "not a port"),
        ("web=0.0.0.0:70000", "not a port"),
        ("web=0.0.0.0:443,ssl", "not a listener flag"),
    ] {
        let err = spec.parse::<ListenerSpec>().unwrap_err().to_string();
        assert!(err.contains(expected), "{spec}: {err}");
    }
}

/// Tags built from the pieces real tags are made of, so that generated
/// tags reach the deep parts of the parser, not only "unknown key".
fn tag_strategy() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "host",
        "path",
        "path_exact",
        "path_regex",
        "strip",
        "rewrite",
        "redirect",
        "timeout",
        "canary",
        "weight",
        "header",
        "tls",
        "listener",
        "rewrite_regex",
        "rewrite_to",
        "redirect_code",
        "methods",
        "priority",
    ]);
    let cluster_key = prop::sample::select(crate::options::CLUSTER_KEYS.to_vec());
    let value = "[a-z0-9/*.:,=_\\-?#\\[\\](){}^$ ]{0,16}";
    prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| format!("edge.http.routes.r.{k}={v}")),
        (
            "[a-z*.]{0,10}(/[a-z]{0,4}){0,3}",
            prop::collection::vec((key, value), 0..3)
        )
            .prop_map(|(route, options)| {
                let options: Vec<String> =
                    options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("edge.route={route} {}", options.join(" "))
            }),
        (cluster_key, value).prop_map(|(k, v)| format!("edge.cluster.{k}={v}")),
        Just("edge.canary".to_owned()),
        "\\PC{0,30}",
        "edge\\.\\PC{0,30}",
    ]
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_string(list in prop::collection::vec(tag_strategy(), 0..8)) {
        let d = service_decl(&TagPrefix::default(), &[InstanceTags { id: "a", tags: &list }]);
        // Every problem names a tag the instance carries.
        for p in &d.problems {
            prop_assert!(list.contains(&p.tag), "{:?}", p);
        }
        for r in &d.routes {
            prop_assert!(r.tags.iter().all(|t| list.contains(t)));
        }
    }

    #[test]
    fn the_order_of_tags_and_instances_does_not_matter(
        a in prop::collection::vec(tag_strategy(), 0..6),
        b in prop::collection::vec(tag_strategy(), 0..6),
        seed in any::<u64>(),
    ) {
        let forward = service_decl(&TagPrefix::default(), &[
            InstanceTags { id: "a", tags: &a },
            InstanceTags { id: "b", tags: &b },
        ]);
        let mut a2 = a.clone();
        let mut b2 = b.clone();
        let rotate = (seed as usize) % a2.len().max(1);
        if !a2.is_empty() {
            a2.rotate_left(rotate);
        }
        b2.reverse();
        let backward = service_decl(&TagPrefix::default(), &[
            InstanceTags { id: "b", tags: &b2 },
            InstanceTags { id: "a", tags: &a2 },
        ]);
        prop_assert_eq!(forward, backward);
    }

    #[test]
    fn listener_spec_parse_never_panics(spec in "\\PC{0,30}") {
        let _ = spec.parse::<ListenerSpec>();
    }
}

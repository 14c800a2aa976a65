//! This service's admin pages: readiness, `/debug/snapshot` and a status page.

use std::collections::BTreeMap;
use std::fmt::Write;

use route_tags::{ProblemKind, RouteAction};
use service_support::admin::{AdminResponse, AdminRoutes};

use crate::gateway::cluster_name;
use crate::gateway::view::{GatewayStatus, GatewayView};
use crate::model::EndpointHealth;
use crate::state::{ClusterView, Freshness, Readiness, ServedState};

#[derive(Debug, Clone)]
pub struct EdsAdmin {
    state: ServedState,
    gateway: Option<GatewayView>,
}

impl EdsAdmin {
    pub fn new(state: ServedState) -> Self {
        Self {
            state,
            gateway: None,
        }
    }

    /// Gateway mode: the route table is shown too.
    pub fn with_gateway(mut self, view: GatewayView) -> Self {
        self.gateway = Some(view);
        self
    }
}

impl AdminRoutes for EdsAdmin {
    fn readiness(&self) -> AdminResponse {
        match self.state.readiness() {
            Readiness::Ready => AdminResponse::text(200, "ready\n"),
            Readiness::Starting => {
                AdminResponse::text(503, "starting: first Consul sync not done\n")
            }
            Readiness::Degraded { services } => AdminResponse::text(
                429,
                format!(
                    "degraded: Consul reads failing for {}; serving their last known endpoints\n",
                    services.join(", ")
                ),
            ),
        }
    }

    fn route(&self, path: &str) -> Option<AdminResponse> {
        match path {
            "/debug/snapshot" => Some(snapshot_json(&self.state)),
            "/debug/routes" => Some(routes_json(self.gateway.as_ref(), &self.state)),
            "/" => Some(status_page(&self.state, self.gateway.as_ref())),
            _ => None,
        }
    }
}

fn snapshot_json(state: &ServedState) -> AdminResponse {
    let body = serde_json::json!({
        "readiness": state.readiness(),
        "clusters": state.clusters(),
    });
    AdminResponse::json(
        serde_json::to_string_pretty(&body)
            .unwrap_or_else(|e| format!("{{\"error\": \"encoding the snapshot failed: {e}\"}}")),
    )
}

/// Healthy and total endpoints of a cluster, as the route table shows them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct EndpointCount {
    healthy: usize,
    total: usize,
}

fn endpoint_counts(state: &ServedState) -> BTreeMap<String, EndpointCount> {
    state
        .clusters()
        .iter()
        .map(|view: &ClusterView| {
            let healthy = view
                .endpoints
                .iter()
                .filter(|e| matches!(e.health, EndpointHealth::Healthy | EndpointHealth::Degraded))
                .count();
            let total = view.endpoints.len() + view.excluded.len();
            (view.cluster.clone(), EndpointCount { healthy, total })
        })
        .collect()
}

fn routes_json(gateway: Option<&GatewayView>, state: &ServedState) -> AdminResponse {
    let Some(gateway) = gateway else {
        return AdminResponse::text(404, "not in gateway mode (--gateway)\n");
    };
    let status = gateway.get();
    let body = serde_json::json!({
        "published": status.published,
        "listeners": status.table.listeners,
        "clusters": status.table.clusters,
        "problems": status.table.problems,
        "services": status.services,
        "listeners_without_hosts": status.listeners_without_hosts,
        "endpoints": endpoint_counts(state),
    });
    AdminResponse::json(
        serde_json::to_string_pretty(&body)
            .unwrap_or_else(|e| format!("{{\"error\": \"encoding the routes failed: {e}\"}}")),
    )
}

/// The route table as a person reads it: listener -> host -> path ->
/// service, with endpoint counts, then what is not served and why.
fn routes_section(status: &GatewayStatus, counts: &BTreeMap<String, EndpointCount>) -> String {
    let mut rows = String::new();
    for listener in &status.table.listeners {
        let spec = &listener.listener;
        let label = format!(
            "{} <span class=\"dim\">{}:{}{}</span>",
            escape(&spec.name),
            escape(&spec.host),
            spec.port,
            if spec.tls { " tls" } else { "" }
        );
        if listener.virtual_hosts.is_empty() {
            let _ = write!(
                rows,
                "<tr><td>{label}</td><td colspan=\"4\" class=\"dim\">no routes</td></tr>"
            );
        }
        for host in &listener.virtual_hosts {
            for route in &host.routes {
                let target = match &route.action {
                    RouteAction::Forward { backends } => backends
                        .iter()
                        .map(|backend| {
                            let cluster = cluster_name(&backend.service, backend.canary);
                            let count = counts.get(&cluster).copied().unwrap_or_default();
                            let class = if count.healthy == 0 { "bad" } else { "ok" };
                            let share = if backends.len() > 1 {
                                format!(" <span class=\"dim\">weight {}</span>", backend.weight)
                            } else {
                                String::new()
                            };
                            format!(
                                "{}{share} <span class=\"{class}\">{}/{} healthy</span>",
                                escape(&cluster),
                                count.healthy,
                                count.total
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("<br>"),
                    RouteAction::Redirect(redirect) => {
                        format!("redirect {}", redirect.code.status())
                    }
                    RouteAction::RedirectToHttps => "308 to https".to_owned(),
                };
                let _ = write!(
                    rows,
                    "<tr><td>{label}</td><td>{}{}</td><td>{}</td><td>{target}</td><td class=\"dim\">{}</td></tr>",
                    escape(&host.host.to_string()),
                    if host.tls {
                        " <span class=\"tls\">TLS</span>"
                    } else {
                        ""
                    },
                    escape(&route.path.to_string()),
                    escape(&route.route_name),
                );
            }
        }
    }
    let mut problems = String::new();
    for problem in &status.table.problems {
        let kind = match &problem.kind {
            ProblemKind::InvalidTag => "invalid tag".to_owned(),
            ProblemKind::Conflict { winner } => format!("conflict (kept: {})", escape(winner)),
            ProblemKind::NoListener => "no listener".to_owned(),
        };
        let _ = write!(
            problems,
            "<tr class=\"problem\"><td>{}</td><td>{kind}</td><td><code>{}</code></td><td>{}</td></tr>",
            escape(&problem.service),
            escape(&problem.tag),
            escape(&problem.reason)
        );
    }
    let problems = if problems.is_empty() {
        "<p class=\"ok\">Every route tag is served.</p>".to_owned()
    } else {
        format!(
            "<h3>Not served as written</h3><table><tr><th>service</th><th>problem</th><th>tag</th><th>reason</th></tr>{problems}</table>"
        )
    };
    let state = if status.published {
        ""
    } else {
        "<p class=\"bad\">Not published yet: waiting for the first Consul reads.</p>"
    };
    format!(
        "<h2>Routes</h2>{state}<table><tr><th>listener</th><th>host</th><th>path</th><th>service</th><th>route</th></tr>{rows}</table>{problems}"
    )
}

fn status_page(state: &ServedState, gateway: Option<&GatewayView>) -> AdminResponse {
    let readiness = match state.readiness() {
        Readiness::Ready => "ready".to_owned(),
        Readiness::Starting => "starting".to_owned(),
        Readiness::Degraded { services } => format!("degraded ({})", services.join(", ")),
    };
    let (routes, routes_link) = match gateway {
        Some(view) => (
            routes_section(&view.get(), &endpoint_counts(state)),
            " · <a href=\"/debug/routes\">routes JSON</a>",
        ),
        None => (String::new(), ""),
    };
    let mut rows = String::new();
    for view in state.clusters() {
        let freshness = match &view.freshness {
            Freshness::Pending => "pending".to_owned(),
            Freshness::Synced { index } => format!("synced at index {index}"),
            Freshness::Degraded { error, .. } => format!("degraded: {}", escape(error)),
        };
        let endpoints: Vec<String> = view
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{}:{} {:?} w{}",
                    escape(&e.address),
                    e.port,
                    e.health,
                    e.weight
                )
            })
            .collect();
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&view.cluster),
            escape(&view.service),
            freshness,
            endpoints.join("<br>"),
            view.excluded.len()
        );
    }
    AdminResponse::html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>consul-eds-server</title>\
         <style>body{{font-family:sans-serif}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}}\
         .dim{{color:#777}}.tls{{font-size:75%;background:#e8f0fe;color:#1a4fa0;padding:1px 4px;border-radius:3px}}.ok{{color:#176f2c}}.bad{{color:#b3261e;font-weight:bold}}tr.problem td{{background:#fdecea}}</style></head>\
         <body><h1>consul-eds-server</h1><p>Status: <b>{readiness}</b> · \
         <a href=\"/debug/snapshot\">snapshot JSON</a>{routes_link} · <a href=\"/metrics\">metrics</a></p>\
         {routes}<h2>Clusters</h2>\
         <table><tr><th>cluster</th><th>service</th><th>Consul</th><th>endpoints</th><th>excluded</th></tr>{rows}</table>\
         </body></html>"
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterView;
    use std::sync::Arc;

    #[test]
    fn readiness_codes_follow_consul_check_conventions() {
        let state = ServedState::default();
        let admin = EdsAdmin::new(state.clone());
        assert_eq!(admin.readiness().status, 503);
        state.mark_first_sync_done();
        assert_eq!(admin.readiness().status, 200);
        state.upsert(ClusterView {
            cluster: "web".to_owned(),
            service: "web".to_owned(),
            freshness: Freshness::Degraded {
                error: "connection refused".to_owned(),
                since_unix: 0,
            },
            endpoints: std::sync::Arc::new([]),
            excluded: vec![],
        });
        let degraded = admin.readiness();
        assert_eq!(degraded.status, 429);
        assert!(degraded.body.contains("web"), "{}", degraded.body);
    }

    #[test]
    fn status_page_escapes_consul_data() {
        let state = ServedState::default();
        state.upsert(ClusterView {
            cluster: "<script>".to_owned(),
            service: "x".to_owned(),
            freshness: Freshness::Pending,
            endpoints: std::sync::Arc::new([]),
            excluded: vec![],
        });
        let page = EdsAdmin::new(state).route("/").expect("page");
        assert!(page.body.contains("&lt;script&gt;"));
        assert!(!page.body.contains("<script>"));
    }

    #[test]
    fn the_snapshot_shows_shared_names_and_localities_as_plain_values() {
        use crate::model::{Endpoint, EndpointHealth, Locality};
        let state = ServedState::default();
        let locality = std::sync::Arc::new(Locality {
            region: "dc1".to_owned(),
            zone: "eu-1a".to_owned(),
            sub_zone: String::new(),
        });
        state.upsert(ClusterView {
            cluster: "web".to_owned(),
            service: "web".to_owned(),
            freshness: Freshness::Synced { index: 7 },
            endpoints: vec![Endpoint {
                instance_id: "web-1".into(),
                node: "n1".into(),
                address: "10.0.0.1".into(),
                port: 8080,
                health: EndpointHealth::Healthy,
                weight: 1,
                locality,
                priority: 0,
                reason: "checks passing",
            }]
            .into(),
            excluded: vec![],
        });
        let body = EdsAdmin::new(state)
            .route("/debug/snapshot")
            .expect("snapshot")
            .body;
        let snapshot: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            snapshot["clusters"][0]["endpoints"],
            serde_json::json!([{
                "instance_id": "web-1",
                "node": "n1",
                "address": "10.0.0.1",
                "port": 8080,
                "health": "healthy",
                "weight": 1,
                "locality": {"region": "dc1", "zone": "eu-1a", "sub_zone": ""},
                "priority": 0,
                "reason": "checks passing",
            }])
        );
    }

    #[test]
    fn gateway_mode_shows_the_route_table_and_what_is_not_served() {
        use crate::gateway::view::{GatewayStatus, GatewayView};
        use route_tags::{InstanceTags, ListenerSpec, RouteTable, ServiceInput, TagPrefix};
        let prefix = TagPrefix::new("edge").expect("prefix");
        let decl = |tags: &[&str]| {
            let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            route_tags::service_decl(
                &prefix,
                &[InstanceTags {
                    id: "i-1",
                    tags: &tags,
                }],
            )
        };
        let shop = decl(&["edge.route=shop.test/ tls=true"]);
        let bad = decl(&["edge.route=bad.test/ timeout=<soon>"]);
        let listeners = [
            "web=127.0.0.1:80".parse::<ListenerSpec>().expect("spec"),
            "websecure=127.0.0.1:443,tls".parse().expect("spec"),
        ];
        let table = RouteTable::build(
            &listeners,
            &[
                ServiceInput {
                    service: "shop",
                    decl: &shop,
                },
                ServiceInput {
                    service: "bad",
                    decl: &bad,
                },
            ],
            &RouteTable::default(),
        );
        let view = GatewayView::default();
        view.set(GatewayStatus {
            published: true,
            listeners: listeners.to_vec(),
            table: Arc::new(table),
            ..GatewayStatus::default()
        });
        let state = ServedState::default();
        let admin = EdsAdmin::new(state.clone()).with_gateway(view);
        let page = admin.route("/").expect("page").body;
        assert!(page.contains("<h2>Routes</h2>"), "{page}");
        assert!(
            page.contains("308 to https"),
            "the plain listener redirects: {page}"
        );
        assert!(
            page.contains("shop <span class=\"bad\">0/0 healthy</span>"),
            "no endpoint is shown as bad: {page}"
        );
        assert!(
            page.contains("class=\"problem\""),
            "the bad tag is highlighted"
        );
        assert!(
            page.contains("timeout=&lt;soon&gt;"),
            "tags are escaped: {page}"
        );
        let routes: serde_json::Value =
            serde_json::from_str(&admin.route("/debug/routes").expect("json").body).expect("JSON");
        assert_eq!(routes["problems"][0]["service"], "bad");
        assert_eq!(routes["problems"][0]["kind"]["kind"], "invalid_tag");
        assert_eq!(routes["listeners"][1]["listener"]["name"], "websecure");
        // Without --gateway there is no route table to show.
        assert_eq!(
            EdsAdmin::new(state)
                .route("/debug/routes")
                .expect("answer")
                .status,
            404
        );
    }
}

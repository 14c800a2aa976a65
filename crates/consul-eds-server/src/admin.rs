//! This service's admin pages: readiness, `/debug/snapshot` and a status page.

use std::fmt::Write;

use service_support::admin::{AdminResponse, AdminRoutes};

use crate::state::{Freshness, Readiness, ServedState};

#[derive(Debug, Clone)]
pub struct EdsAdmin {
    state: ServedState,
}

impl EdsAdmin {
    pub fn new(state: ServedState) -> Self {
        Self { state }
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
            "/" => Some(status_page(&self.state)),
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

fn status_page(state: &ServedState) -> AdminResponse {
    let readiness = match state.readiness() {
        Readiness::Ready => "ready".to_owned(),
        Readiness::Starting => "starting".to_owned(),
        Readiness::Degraded { services } => format!("degraded ({})", services.join(", ")),
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
         <style>body{{font-family:sans-serif}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top}}</style></head>\
         <body><h1>consul-eds-server</h1><p>Status: <b>{readiness}</b> · \
         <a href=\"/debug/snapshot\">snapshot JSON</a> · <a href=\"/metrics\">metrics</a></p>\
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
}

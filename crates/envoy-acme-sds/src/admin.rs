//! This service's admin pages: a status page at `/`, `/readyz` and
//! `/debug/certificates` (the admin server adds `/metrics` and `/healthz`).
//!
//! Ready means every configured certificate is served over SDS. Nothing here
//! ever shows a private key: the pages are built from metadata only, and
//! from how the stored keys lie at rest (sealed or not), never their bytes.

use std::fmt::Write;
use std::sync::Arc;

use serde::Serialize;
use service_support::admin::{AdminResponse, AdminRoutes};
use tokio::sync::watch;

use crate::election::Leadership;
use crate::sds::{CertificateView, SecretPublisher};
use crate::store::codec::KeysAtRest;

#[derive(Debug, Clone)]
pub struct SdsAdmin {
    publisher: Arc<SecretPublisher>,
    /// `None` with disk storage (this instance always renews).
    leadership: Option<watch::Receiver<Leadership>>,
    instance: String,
    /// How the stored keys lie at rest; `None` until known (or with disk
    /// storage, where nothing follows the store).
    keys_at_rest: Option<watch::Receiver<Option<KeysAtRest>>>,
}

#[derive(Serialize)]
struct DebugCertificates<'a> {
    instance: &'a str,
    renews: bool,
    missing: Vec<String>,
    /// `null` while unknown.
    keys_at_rest: Option<KeysAtRestView>,
    certificates: Vec<CertificateView>,
}

#[derive(Serialize)]
struct KeysAtRestView {
    /// Every stored private key is sealed with the configured key.
    all_sealed: bool,
    summary: String,
    #[serde(flatten)]
    counts: KeysAtRest,
}

impl SdsAdmin {
    pub fn new(
        publisher: Arc<SecretPublisher>,
        leadership: Option<watch::Receiver<Leadership>>,
        instance: impl Into<String>,
    ) -> Self {
        Self {
            publisher,
            leadership,
            instance: instance.into(),
            keys_at_rest: None,
        }
    }

    /// Shows how the stored keys lie at rest, as `keys_at_rest` is told.
    #[must_use]
    pub fn with_keys_at_rest(mut self, keys_at_rest: watch::Receiver<Option<KeysAtRest>>) -> Self {
        self.keys_at_rest = Some(keys_at_rest);
        self
    }

    fn renews(&self) -> bool {
        self.leadership
            .as_ref()
            .is_none_or(|leadership| leadership.borrow().is_leader())
    }

    fn keys_at_rest(&self) -> Option<KeysAtRest> {
        self.keys_at_rest.as_ref().and_then(|seen| *seen.borrow())
    }

    fn certificates(&self) -> AdminResponse {
        let page = DebugCertificates {
            instance: &self.instance,
            renews: self.renews(),
            missing: self
                .publisher
                .missing()
                .iter()
                .map(ToString::to_string)
                .collect(),
            keys_at_rest: self.keys_at_rest().map(|counts| KeysAtRestView {
                all_sealed: counts.all_sealed(),
                summary: counts.summary(),
                counts,
            }),
            certificates: self.publisher.views(),
        };
        match serde_json::to_string_pretty(&page) {
            Ok(body) => AdminResponse::json(body),
            Err(error) => AdminResponse::text(500, format!("encoding the page failed: {error}\n")),
        }
    }

    fn status_page(&self) -> AdminResponse {
        let missing = self.publisher.missing();
        let readiness = if missing.is_empty() {
            "ready".to_owned()
        } else {
            let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
            format!("waiting for {}", names.join(", "))
        };
        let role = if self.renews() {
            "renews (holds the renewal lock)"
        } else {
            "serves (another replica renews)"
        };
        let keys = match self.keys_at_rest() {
            Some(keys) if keys.all_sealed() => format!("<b>{}</b>", escape(&keys.summary())),
            Some(keys) => format!("<b class=\"bad\">{}</b>", escape(&keys.summary())),
            None => "not known (followed with Consul storage only)".to_owned(),
        };
        let mut rows = String::new();
        for view in self.publisher.views() {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&view.secret),
                escape(&view.names.join(", ")),
                escape(&view.serial),
                format_date(view.not_after),
                format_date(view.next_renewal),
            );
        }
        AdminResponse::html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>envoy-acme-sds</title>\
             <style>body{{font-family:sans-serif}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;\
             vertical-align:top;text-align:left}}.bad{{color:#b00}}</style></head>\
             <body><h1>envoy-acme-sds</h1>\
             <p>Instance <b>{instance}</b>: {role}. Status: <b>{readiness}</b> · \
             <a href=\"/debug/certificates\">certificates JSON</a> · <a href=\"/metrics\">metrics</a></p>\
             <p>Keys at rest: {keys}</p>\
             <table><tr><th>secret</th><th>names</th><th>serial</th><th>not after</th>\
             <th>next renewal</th></tr>{rows}</table></body></html>",
            instance = escape(&self.instance),
            readiness = escape(&readiness),
        ))
    }
}

fn format_date(date: time::OffsetDateTime) -> String {
    date.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl AdminRoutes for SdsAdmin {
    fn readiness(&self) -> AdminResponse {
        let missing = self.publisher.missing();
        if missing.is_empty() {
            AdminResponse::text(200, "ready: every certificate is served\n")
        } else {
            let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
            AdminResponse::text(
                503,
                format!("not ready: no certificate yet for {}\n", names.join(", ")),
            )
        }
    }

    fn route(&self, path: &str) -> Option<AdminResponse> {
        match path {
            "/" => Some(self.status_page()),
            "/debug/certificates" => Some(self.certificates()),
            _ => None,
        }
    }
}

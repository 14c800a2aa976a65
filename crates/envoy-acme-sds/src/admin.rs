//! This service's admin pages: `/readyz` and `/debug/certificates` (the
//! admin server adds `/metrics` and `/healthz`).
//!
//! Ready means every configured certificate is served over SDS. Nothing here
//! ever shows a private key: the page is built from metadata only.

use std::sync::Arc;

use serde::Serialize;
use service_support::admin::{AdminResponse, AdminRoutes};
use tokio::sync::watch;

use crate::election::Leadership;
use crate::sds::{CertificateView, SecretPublisher};

#[derive(Debug, Clone)]
pub struct SdsAdmin {
    publisher: Arc<SecretPublisher>,
    /// `None` with disk storage (this instance always renews).
    leadership: Option<watch::Receiver<Leadership>>,
    instance: String,
}

#[derive(Serialize)]
struct DebugCertificates<'a> {
    instance: &'a str,
    renews: bool,
    missing: Vec<String>,
    certificates: Vec<CertificateView>,
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
        }
    }

    fn certificates(&self) -> AdminResponse {
        let page = DebugCertificates {
            instance: &self.instance,
            renews: self
                .leadership
                .as_ref()
                .is_none_or(|leadership| leadership.borrow().is_leader()),
            missing: self
                .publisher
                .missing()
                .iter()
                .map(ToString::to_string)
                .collect(),
            certificates: self.publisher.views(),
        };
        match serde_json::to_string_pretty(&page) {
            Ok(body) => AdminResponse::json(body),
            Err(error) => AdminResponse::text(500, format!("encoding the page failed: {error}\n")),
        }
    }
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
            "/debug/certificates" => Some(self.certificates()),
            _ => None,
        }
    }
}

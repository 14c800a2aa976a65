//! This service's admin pages: a status page at `/`, `/readyz` and
//! `/debug/certificates` (the admin server adds `/metrics` and `/healthz`).
//!
//! Ready means every configured certificate is served over SDS. Nothing here
//! ever shows a private key: the pages are built from metadata only, and
//! from how the stored keys lie at rest (sealed or not), never their bytes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use service_support::admin::{AdminResponse, AdminRoutes};
use tokio::sync::watch;

use crate::election::{Leadership, LockHolder};
use crate::outcomes::{LastOutcome, LastOutcomes};
use crate::renewer::AccountStatus;
use crate::routed::policy::HostPlan;
use crate::routed::{RefusedHost, RoutedView};
use crate::sds::{CertificateView, RoutedSecretView, SecretPublisher, ServedAs};
use crate::store::codec::KeysAtRest;
use time::OffsetDateTime;

#[derive(Debug, Clone)]
pub struct SdsAdmin {
    publisher: Arc<SecretPublisher>,
    /// `None` with disk storage (this instance always renews).
    leadership: Option<watch::Receiver<Leadership>>,
    instance: String,
    /// How the stored keys lie at rest; `None` until known (or with disk
    /// storage, where nothing follows the store).
    keys_at_rest: Option<watch::Receiver<Option<KeysAtRest>>>,
    /// The routed hosts as last read, and the unrouted grace
    /// (`--follow-routes` only).
    routed: Option<(watch::Receiver<Arc<RoutedView>>, Duration)>,
    /// Each certificate's last outcome (the renewing replica's only).
    outcomes: Option<LastOutcomes>,
    /// This replica's ACME account, as the renewer last reached it.
    account: Option<watch::Receiver<AccountStatus>>,
    /// Which replica holds the renewal lock (shared storage only).
    lock_holder: Option<watch::Receiver<LockHolder>>,
}

/// One routed host as `/debug/certificates` shows it.
#[derive(Serialize)]
struct RoutedHostView {
    host: String,
    services: Vec<String>,
    /// `ordered`, `covered` or `refused`.
    plan: &'static str,
    /// The covering certificate, or why the host is refused.
    detail: Option<String>,
    /// `own`, `covered` or `placeholder`.
    served_as: Option<ServedAs>,
    serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    unrouted_since: Option<OffsetDateTime>,
    /// Whether its certificate is still renewed (routed, or within the grace).
    renewed: bool,
    /// The last order or check, on the renewing replica.
    last_outcome: Option<LastOutcome>,
}

#[derive(Serialize)]
struct DebugCertificates<'a> {
    instance: &'a str,
    renews: bool,
    missing: Vec<String>,
    /// `null` while unknown.
    keys_at_rest: Option<KeysAtRestView>,
    certificates: Vec<CertificateView>,
    /// Absent without `--follow-routes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    routed: Option<Vec<RoutedHostView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<Vec<RefusedHost>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acme_account: Option<AccountStatus>,
    /// Which replica holds the renewal lock; absent with disk storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_holder: Option<String>,
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
            routed: None,
            outcomes: None,
            account: None,
            lock_holder: None,
        }
    }

    /// Shows which replica holds the renewal lock.
    #[must_use]
    pub fn with_lock_holder(mut self, holder: watch::Receiver<LockHolder>) -> Self {
        self.lock_holder = Some(holder);
        self
    }

    /// The lock holder's name, or why there is none; `None` with disk
    /// storage, where there is no lock.
    fn lock_holder(&self) -> Option<String> {
        let holder = self.lock_holder.as_ref()?.borrow().clone();
        Some(match holder {
            LockHolder::Held { name } => name,
            LockHolder::Free => "nobody (the lock is free)".to_owned(),
            LockHolder::Unknown => "not known yet (the lock has not been read)".to_owned(),
        })
    }

    /// Shows how this replica's ACME account stands.
    #[must_use]
    pub fn with_account(mut self, account: watch::Receiver<AccountStatus>) -> Self {
        self.account = Some(account);
        self
    }

    fn account(&self) -> Option<AccountStatus> {
        self.account.as_ref().map(|seen| seen.borrow().clone())
    }

    /// Shows each certificate's last outcome, as `outcomes` records them.
    #[must_use]
    pub fn with_outcomes(mut self, outcomes: LastOutcomes) -> Self {
        self.outcomes = Some(outcomes);
        self
    }

    /// The last outcome of `name`, as a table cell.
    fn last_outcome_cell(&self, name: &str) -> String {
        match self.outcomes.as_ref().and_then(|o| o.get(name)) {
            Some(last) if last.result == "failed" => format!(
                "<span class=\"bad\">failed</span> {}: {}",
                format_date(last.at),
                escape(&last.detail)
            ),
            Some(last) => format!(
                "{} {}: {}",
                last.result,
                format_date(last.at),
                escape(&last.detail)
            ),
            None if self.renews() => "not yet".to_owned(),
            None => "(another replica renews)".to_owned(),
        }
    }

    /// Shows the routed hosts as `view` is told, renewed for `grace` once unrouted.
    #[must_use]
    pub fn with_routed(mut self, view: watch::Receiver<Arc<RoutedView>>, grace: Duration) -> Self {
        self.routed = Some((view, grace));
        self
    }

    fn routed_hosts(&self) -> Option<(Vec<RoutedHostView>, Vec<RefusedHost>)> {
        let (view, grace) = self.routed.as_ref()?;
        let view = view.borrow().clone();
        let served: BTreeMap<String, RoutedSecretView> = self
            .publisher
            .routed_views()
            .into_iter()
            .map(|v| (v.host.clone(), v))
            .collect();
        let now = OffsetDateTime::now_utc();
        let hosts = view
            .hosts
            .iter()
            .map(|(host, entry)| {
                let detail = match &entry.plan {
                    HostPlan::Covered { by } => Some(by.as_str().to_owned()),
                    HostPlan::Refused(refusal) => Some(refusal.to_string()),
                    HostPlan::Order { .. } => None,
                };
                let secret = served.get(host);
                RoutedHostView {
                    host: host.clone(),
                    services: entry.routing.services.iter().cloned().collect(),
                    plan: entry.plan.label(),
                    detail,
                    served_as: secret.map(|s| s.served_as),
                    serial: secret.map(|s| s.serial.clone()),
                    not_before: secret.map(|s| s.not_before),
                    not_after: secret.map(|s| s.not_after),
                    unrouted_since: entry.routing.unrouted_since,
                    renewed: matches!(entry.plan, HostPlan::Order { .. })
                        && entry.renews_at(now, *grace),
                    last_outcome: self.outcomes.as_ref().and_then(|o| o.get(host)),
                }
            })
            .collect();
        Some((hosts, view.refused()))
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
        let mut page = DebugCertificates {
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
            routed: None,
            refused: None,
            acme_account: self.account(),
            lock_holder: self.lock_holder(),
        };

        if let Some((routed, refused)) = self.routed_hosts() {
            page.routed = Some(routed);
            page.refused = Some(refused);
        }
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
        let role = match (self.renews(), self.lock_holder()) {
            (true, Some(_)) => "renews (holds the renewal lock)".to_owned(),
            (true, None) => "renews (disk storage: no lock)".to_owned(),
            (false, Some(holder)) => format!(
                "serves; the renewal lock is held by <b>{}</b>",
                escape(&holder)
            ),
            (false, None) => "serves (another replica renews)".to_owned(),
        };
        let keys = match self.keys_at_rest() {
            Some(keys) if keys.all_sealed() => format!("<b>{}</b>", escape(&keys.summary())),
            Some(keys) => format!("<b class=\"bad\">{}</b>", escape(&keys.summary())),
            None => "not known (followed with Consul storage only)".to_owned(),
        };
        let account = match self.account() {
            None => String::new(),
            Some(AccountStatus::NotConnected) => {
                "<p>ACME account: not asked for yet (this replica has not held the renewal lock)</p>"
                    .to_owned()
            }
            Some(AccountStatus::Ready { directory }) => {
                format!("<p>ACME account: ready at {}</p>", escape(&directory))
            }
            Some(AccountStatus::Unreachable { error, retry_at }) => format!(
                "<p>ACME account: <b class=\"bad\">unreachable, nothing is ordered or renewed</b>: {} \
                 (next attempt {})</p>",
                escape(&error),
                format_date(retry_at)
            ),
        };
        let now = OffsetDateTime::now_utc();
        let mut rows = String::new();
        for view in self.publisher.views() {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&view.secret),
                escape(&view.names.join(", ")),
                escape(&view.serial),
                timeline(
                    now,
                    view.not_before,
                    view.not_after,
                    Some(view.next_renewal)
                ),
                format_date(view.not_after),
                format_date(view.next_renewal),
                self.last_outcome_cell(&view.secret),
            );
        }
        if rows.is_empty() {
            rows.push_str(
                "<tr><td colspan=\"7\">none served: no certificate is configured, or none is stored yet</td></tr>",
            );
        }
        let routed = self.routed_section();
        AdminResponse::html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>envoy-acme-sds</title>\
             <style>body{{font-family:sans-serif}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;\
             vertical-align:top;text-align:left}}.bad{{color:#b00}}\
             .tl{{position:relative;width:160px;height:10px;background:#dfe9df;margin:3px 0}}\
             .tl .used{{height:100%;background:#7a7}}.tl.late .used{{background:#c55}}\
             .tl .renew{{position:absolute;top:-3px;width:2px;height:16px;background:#224}}\
             small{{color:#555}}</style></head>\
             <body><h1>envoy-acme-sds</h1>\
             <p>Instance <b>{instance}</b>: {role}. Status: <b>{readiness}</b> · \
             <a href=\"/debug/certificates\">certificates JSON</a> · <a href=\"/metrics\">metrics</a></p>\
             <p>Keys at rest: {keys}</p>{account}\
             <h2>Configured certificates</h2>\
             <table><tr><th>secret</th><th>names</th><th>serial</th><th>lifetime</th><th>not after</th>\
             <th>next renewal</th><th>last result</th></tr>{rows}</table>{routed}</body></html>",
            instance = escape(&self.instance),
            readiness = escape(&readiness),
        ))
    }
}

impl SdsAdmin {
    /// The routed hosts' tables of the status page (empty without `--follow-routes`).
    fn routed_section(&self) -> String {
        let Some((hosts, refused)) = self.routed_hosts() else {
            return String::new();
        };
        let now = OffsetDateTime::now_utc();
        let mut rows = String::new();
        for host in &hosts {
            let plan = match (&host.detail, host.plan) {
                (Some(by), "covered") => format!("covered by {}", escape(by)),
                (_, "refused") => "refused".to_owned(),
                _ => "own order".to_owned(),
            };
            let served = match host.served_as {
                Some(ServedAs::Own) => "own certificate".to_owned(),
                Some(ServedAs::Covered) => "covering certificate".to_owned(),
                Some(ServedAs::Placeholder) => "<b class=\"bad\">placeholder</b>".to_owned(),
                None => "nothing".to_owned(),
            };
            let routed = match host.unrouted_since {
                None => "routed".to_owned(),
                Some(since) if host.renewed => {
                    format!("unrouted since {} (still renewed)", format_date(since))
                }
                Some(since) => format!("unrouted since {} (renewal stopped)", format_date(since)),
            };
            let last = if host.plan == "ordered" {
                self.last_outcome_cell(&host.host)
            } else {
                String::new()
            };
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{plan}</td><td>{served}</td><td>{}</td><td>{}</td><td>{}</td><td>{last}</td></tr>",
                escape(&host.host),
                escape(&host.services.join(", ")),
                match (host.not_before, host.not_after) {
                    (Some(from), Some(until)) => timeline(now, from, until, None),
                    _ => String::new(),
                },
                host.not_after.map(format_date).unwrap_or_default(),
                escape(&routed),
            );
        }
        let mut refusals = String::new();
        for host in &refused {
            let _ = write!(
                refusals,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&host.host),
                escape(&host.detail),
                escape(&host.services.join(", ")),
            );
        }
        format!(
            "<h2>Routed hosts ({count})</h2>\
             <table><tr><th>host</th><th>services</th><th>how</th><th>served</th>\
             <th>lifetime</th><th>not after</th><th>routing</th><th>last result</th></tr>{rows}</table>\
             <h2>Refused hosts ({refused_count})</h2>\
             <table><tr><th>host</th><th>why</th><th>services</th></tr>{refusals}</table>",
            count = hosts.len(),
            refused_count = refused.len(),
        )
    }
}

/// A certificate's lifetime as a bar a person reads at a glance: the part
/// already lived filled (red once the renewal point is passed), the renewal
/// point marked, and the time left in words beneath.
fn timeline(
    now: OffsetDateTime,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    renewal: Option<OffsetDateTime>,
) -> String {
    let lifetime = (not_after - not_before).as_seconds_f64().max(1.0);
    let at = |moment: OffsetDateTime| {
        ((moment - not_before).as_seconds_f64() / lifetime * 100.0).clamp(0.0, 100.0)
    };
    let late = renewal.is_some_and(|renewal| now >= renewal) || now >= not_after;
    let marker = renewal.map_or_else(String::new, |renewal| {
        format!(
            "<div class=\"renew\" style=\"left:{:.1}%\" title=\"renewal {}\"></div>",
            at(renewal),
            format_date(renewal)
        )
    });
    let left = if now >= not_after {
        "<b class=\"bad\">expired</b>".to_owned()
    } else {
        format!("{} left", in_words(not_after - now))
    };
    format!(
        "<div class=\"tl{}\" title=\"{} to {}\"><div class=\"used\" style=\"width:{:.1}%\"></div>{marker}</div><small>{left}</small>",
        if late { " late" } else { "" },
        format_date(not_before),
        format_date(not_after),
        at(now),
    )
}

/// A duration as a person says it: days, or hours, or minutes.
fn in_words(duration: time::Duration) -> String {
    let (days, hours, minutes) = (
        duration.whole_days(),
        duration.whole_hours(),
        duration.whole_minutes(),
    );
    match (days, hours, minutes) {
        (2.., _, _) => format!("{days} days"),
        (_, 2.., _) => format!("{hours} hours"),
        (_, _, 2..) => format!("{minutes} minutes"),
        _ => "under 2 minutes".to_owned(),
    }
}

fn format_date(date: time::OffsetDateTime) -> String {
    // Whole seconds: a person reading the page needs no nanoseconds.
    let date = date.replace_nanosecond(0).unwrap_or(date);
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

#[cfg(test)]
mod tests {
    use xds_core::{SharedKey, SnapshotCache};

    use super::*;

    fn admin() -> SdsAdmin {
        let cache = SnapshotCache::new(SharedKey("gateways".to_owned()));
        let publisher = SecretPublisher::new(cache, "gateways", Vec::new(), "disk:/store");
        SdsAdmin::new(Arc::new(publisher), None, "replica-1")
    }

    fn page(admin: &SdsAdmin) -> String {
        admin.route("/").expect("a status page").body
    }

    #[test]
    fn an_unreachable_acme_account_is_on_the_status_page_and_in_the_json() {
        let (account, seen) = watch::channel(AccountStatus::NotConnected);
        let admin = admin().with_account(seen);
        assert!(page(&admin).contains("not asked for yet"));

        let retry_at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        account.send_replace(AccountStatus::Unreachable {
            error: "ACME account at https://ca.test/dir: connection refused".to_owned(),
            retry_at,
        });
        let html = page(&admin);
        assert!(
            html.contains("unreachable, nothing is ordered or renewed"),
            "{html}"
        );
        assert!(html.contains("https://ca.test/dir: connection refused"));
        assert!(html.contains(&format_date(retry_at)));
        let json: serde_json::Value =
            serde_json::from_str(&admin.route("/debug/certificates").expect("json").body)
                .expect("JSON");
        assert_eq!(json["acme_account"]["state"], "unreachable");

        account.send_replace(AccountStatus::Ready {
            directory: "https://ca.test/dir".to_owned(),
        });
        assert!(page(&admin).contains("ACME account: ready at https://ca.test/dir"));
    }

    #[test]
    fn an_empty_certificate_table_says_so() {
        let html = page(&admin());
        assert!(html.contains("<h2>Configured certificates</h2>"));
        assert!(html.contains("none served"), "{html}");
        // Without a renewer attached there is no account line.
        assert!(!html.contains("ACME account"));
    }

    #[test]
    fn a_follower_names_the_replica_holding_the_lock() {
        let (leadership_tx, leadership) = watch::channel(Leadership::Follower);
        let (holder, seen) = watch::channel(LockHolder::Unknown);
        let cache = SnapshotCache::new(SharedKey("gateways".to_owned()));
        let publisher = SecretPublisher::new(cache, "gateways", Vec::new(), "consul:certs");
        let admin = SdsAdmin::new(Arc::new(publisher), Some(leadership), "replica-b")
            .with_lock_holder(seen);
        assert!(page(&admin).contains("not known yet"), "{}", page(&admin));

        holder.send_replace(LockHolder::Held {
            name: "replica-<a>".to_owned(),
        });
        let html = page(&admin);
        assert!(
            html.contains("the renewal lock is held by <b>replica-&lt;a&gt;</b>"),
            "{html}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&admin.route("/debug/certificates").expect("json").body)
                .expect("JSON");
        assert_eq!(json["lock_holder"], "replica-<a>");

        holder.send_replace(LockHolder::Free);
        assert!(page(&admin).contains("nobody (the lock is free)"));
        drop(leadership_tx);
    }

    #[test]
    fn the_timeline_fills_the_lived_part_and_marks_the_renewal() {
        let not_before = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let not_after = not_before + time::Duration::days(90);
        let renewal = not_before + time::Duration::days(60);

        let early = timeline(
            not_before + time::Duration::days(9),
            not_before,
            not_after,
            Some(renewal),
        );
        assert!(early.contains("width:10.0%"), "{early}");
        assert!(early.contains("left:66.7%"), "{early}");
        assert!(early.contains("81 days left"), "{early}");
        assert!(!early.contains(" late"), "{early}");

        let overdue = timeline(
            not_before + time::Duration::days(89) + time::Duration::hours(12),
            not_before,
            not_after,
            Some(renewal),
        );
        assert!(overdue.contains("tl late"), "{overdue}");
        assert!(overdue.contains("12 hours left"), "{overdue}");

        let expired = timeline(
            not_after + time::Duration::days(1),
            not_before,
            not_after,
            None,
        );
        assert!(expired.contains("width:100.0%"), "{expired}");
        assert!(expired.contains("expired"), "{expired}");
    }
}

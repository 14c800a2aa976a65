//! What Envoy is served: the certificates in service, as SDS secrets in the
//! xDS snapshot cache.
//!
//! For each configured certificate a `tls_certificate` secret (chain and key
//! inline) named after it, and optionally a `validation_context` secret
//! holding the chain's CA certificates (everything after the leaf), for
//! listeners that verify clients issued by the same CA.
//!
//! The [`SecretPublisher`] only ever replaces a served certificate with
//! another checked one (a [`CertificateBundle`] cannot be built otherwise);
//! nothing here removes a secret, so a storage fault never leaves Envoy
//! without its certificate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};
use xds_core::{CacheError, SnapshotCache};

use crate::certificate::CertificateBundle;
use crate::metrics::ServiceMetrics;
use crate::pem::{encode_certificate_pem, parse_certificate_chain};
use crate::policy::default_renewal_time;
use crate::routed::placeholder::placeholder;
use crate::store::SecretName;

#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("updating the SDS secrets in the xDS cache: {0}")]
    Cache(#[from] CacheError),
}

/// One certificate as served: its secret name and optional CA secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedSecret {
    pub name: SecretName,
    /// Name of a `validation_context` secret with the certificate's CA chain.
    pub validation_context: Option<String>,
}

/// The `tls_certificate` secret (and validation context, if asked for) of `bundle`.
pub fn envoy_secrets(spec: &ServedSecret, bundle: &CertificateBundle) -> Vec<Secret> {
    let mut secrets = vec![Secret {
        name: spec.name.as_str().to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(bundle.chain_pem().to_owned())),
            private_key: Some(inline(bundle.key_pem().expose().clone())),
            ..TlsCertificate::default()
        })),
    }];
    if let Some(name) = &spec.validation_context {
        match ca_chain_pem(bundle) {
            Some(ca) => secrets.push(Secret {
                name: name.clone(),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(inline(ca)),
                        ..CertificateValidationContext::default()
                    },
                )),
            }),
            None => warn!(
                secret = %spec.name,
                validation_context = %name,
                "the chain holds no CA certificate after the leaf; validation context not served"
            ),
        }
    }
    secrets
}

/// The chain without its leaf, PEM.
fn ca_chain_pem(bundle: &CertificateBundle) -> Option<String> {
    let chain = parse_certificate_chain(bundle.chain_pem()).ok()?;
    let ca: String = chain
        .iter()
        .skip(1)
        .map(|der| encode_certificate_pem(der.as_ref()))
        .collect();
    (!ca.is_empty()).then_some(ca)
}

fn inline(text: String) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineString(text)),
        ..DataSource::default()
    }
}

/// A served certificate as `/debug/certificates` shows it: never the key.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    pub secret: String,
    pub names: Vec<String>,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// By the lifetime rule; the renewing replica may renew earlier (ARI,
    /// an operator's request).
    #[serde(with = "time::serde::rfc3339")]
    pub next_renewal: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub served_since: OffsetDateTime,
    /// Where this replica got it: `disk:<dir>` or `consul:<prefix>`.
    pub source: String,
    pub validation_context: Option<String>,
}

#[derive(Debug)]
struct Served {
    bundle: Arc<CertificateBundle>,
    since: OffsetDateTime,
}

/// How a routed host's secret is filled: the name Envoy asks for is the
/// host (see the gateway contract in ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutedSecret {
    /// Its own certificate, stored under the host's name; a placeholder
    /// until it exists.
    Own,
    /// The configured certificate `by`, served under the host's name.
    Covered { by: SecretName },
    /// No certificate will come: a placeholder for good.
    Refused,
}

/// How a routed host's secret is served right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedAs {
    /// Its own certificate.
    Own,
    /// A configured certificate covering it.
    Covered,
    /// The self-signed placeholder.
    Placeholder,
}

/// A routed host's secret as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoutedSecretView {
    pub host: String,
    pub served_as: ServedAs,
    /// The certificate covering it, when covered.
    pub covered_by: Option<String>,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

#[derive(Debug, Default)]
struct State {
    /// Real certificates, by the name they are stored under.
    served: BTreeMap<SecretName, Served>,
    /// The routed hosts' names and how each is filled.
    routed: BTreeMap<SecretName, RoutedSecret>,
    /// Generated once per name, kept while the name is routed.
    placeholders: BTreeMap<SecretName, Arc<CertificateBundle>>,
}

/// Keeps the SDS secrets in the cache equal to the certificates in service.
#[derive(Debug)]
pub struct SecretPublisher {
    cache: SnapshotCache,
    node_key: String,
    wanted: Vec<ServedSecret>,
    source: String,
    /// Whether a stored certificate not configured is served too (routed
    /// hosts: its host may be routed, or was, and is served until expiry).
    serve_every_stored: bool,
    state: Mutex<State>,
    metrics: Option<ServiceMetrics>,
    /// Whether every wanted certificate is served.
    complete: watch::Sender<bool>,
}

impl SecretPublisher {
    /// Serves `wanted` (and nothing else) to the nodes of `node_key`.
    pub fn new(
        cache: SnapshotCache,
        node_key: impl Into<String>,
        wanted: Vec<ServedSecret>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            cache,
            node_key: node_key.into(),
            complete: watch::Sender::new(wanted.is_empty()),
            wanted,
            source: source.into(),
            serve_every_stored: false,
            state: Mutex::new(State::default()),
            metrics: None,
        }
    }

    #[must_use]
    pub fn with_metrics(mut self, metrics: ServiceMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Also serves every stored certificate offered, configured or not
    /// (`--follow-routes`): routed hosts' certificates are stored under
    /// their host's name, and one stays served until it expires, routed
    /// or not, as every replica reads them from the store.
    #[must_use]
    pub fn serving_every_stored(mut self) -> Self {
        self.serve_every_stored = true;
        self
    }

    pub fn wanted(&self) -> &[ServedSecret] {
        &self.wanted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `bundle` under `name`, unless that certificate is served
    /// already or `name` is not configured. Returns whether Envoy gets an update.
    pub fn offer(
        &self,
        name: &SecretName,
        bundle: Arc<CertificateBundle>,
    ) -> Result<bool, SdsError> {
        let configured = self.wanted.iter().any(|spec| spec.name == *name);
        if !configured && !self.serve_every_stored {
            return Ok(false);
        }
        let mut state = self.lock();
        if state
            .served
            .get(name)
            .is_some_and(|current| current.bundle.metadata() == bundle.metadata())
        {
            return Ok(false);
        }
        let previous = state.served.insert(
            name.clone(),
            Served {
                bundle: Arc::clone(&bundle),
                since: OffsetDateTime::now_utc(),
            },
        );
        if let Err(error) = self.publish(&mut state) {
            // The cache refuses the whole set or takes it; only then is it "served".
            match previous {
                Some(previous) => state.served.insert(name.clone(), previous),
                None => state.served.remove(name),
            };
            return Err(error);
        }
        info!(
            secret = %name,
            serial = %bundle.metadata().serial,
            not_after = %bundle.metadata().not_after,
            "certificate served over SDS"
        );
        if let Some(metrics) = &self.metrics {
            metrics.certificate_served(name, bundle.metadata());
        }
        let complete = self
            .wanted
            .iter()
            .all(|spec| state.served.contains_key(&spec.name));
        self.complete.send_if_modified(|current| {
            let changed = *current != complete;
            *current = complete;
            changed
        });
        Ok(true)
    }

    /// Serves a secret under every routed host's name at once: its own
    /// certificate, the covering one, or a placeholder. A name no longer
    /// routed keeps its real certificate (until it expires) and loses only
    /// its placeholder. Returns whether Envoy gets an update.
    pub fn set_routed(&self, routed: BTreeMap<SecretName, RoutedSecret>) -> Result<bool, SdsError> {
        let mut state = self.lock();
        if state.routed == routed {
            return Ok(false);
        }
        let previous = std::mem::replace(&mut state.routed, routed);
        let routed_names: Vec<SecretName> = state.routed.keys().cloned().collect();
        state
            .placeholders
            .retain(|name, _| routed_names.contains(name));
        if let Err(error) = self.publish(&mut state) {
            state.routed = previous;
            return Err(error);
        }
        Ok(true)
    }

    /// Builds every secret from `state` and hands the set to the cache,
    /// generating the placeholders it needs.
    fn publish(&self, state: &mut State) -> Result<(), SdsError> {
        let mut secrets: Vec<Secret> = Vec::new();
        let mut named: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for spec in &self.wanted {
            if let Some(served) = state.served.get(&spec.name) {
                for secret in envoy_secrets(spec, &served.bundle) {
                    named.insert(secret.name.clone());
                    secrets.push(secret);
                }
            }
        }
        // A routed host a configured certificate covers is served that one,
        // even if a certificate of its own is stored (ordered before the
        // configured one covered it): the covering one is the one renewed.
        for (name, how) in &state.routed {
            if let RoutedSecret::Covered { by } = how
                && let Some(covering) = state.served.get(by)
                && named.insert(name.as_str().to_owned())
            {
                secrets.extend(envoy_secrets(
                    &ServedSecret {
                        name: name.clone(),
                        validation_context: None,
                    },
                    &covering.bundle,
                ));
            }
        }
        for (name, served) in &state.served {
            if named.insert(name.as_str().to_owned()) {
                secrets.extend(envoy_secrets(
                    &ServedSecret {
                        name: name.clone(),
                        validation_context: None,
                    },
                    &served.bundle,
                ));
            }
        }
        let mut placeholders = 0_usize;
        for (name, how) in &state.routed {
            if !named.insert(name.as_str().to_owned()) {
                continue;
            }
            let covering = match how {
                RoutedSecret::Covered { by } => state.served.get(by).map(|s| &s.bundle),
                RoutedSecret::Own | RoutedSecret::Refused => None,
            };
            let bundle = match covering {
                Some(bundle) => Arc::clone(bundle),
                None => {
                    placeholders += 1;
                    match state.placeholders.get(name) {
                        Some(bundle) => Arc::clone(bundle),
                        None => match placeholder(name.as_str()) {
                            Ok(bundle) => {
                                let bundle = Arc::new(bundle);
                                state.placeholders.insert(name.clone(), Arc::clone(&bundle));
                                bundle
                            }
                            Err(error) => {
                                warn!(%error, "no placeholder served");
                                continue;
                            }
                        },
                    }
                }
            };
            secrets.extend(envoy_secrets(
                &ServedSecret {
                    name: name.clone(),
                    validation_context: None,
                },
                &bundle,
            ));
        }
        self.cache.set_secrets(&self.node_key, &secrets)?;
        if let Some(metrics) = &self.metrics {
            metrics.set_placeholders(placeholders);
        }
        Ok(())
    }

    /// The served certificate of `name`.
    pub fn current(&self, name: &SecretName) -> Option<Arc<CertificateBundle>> {
        self.lock()
            .served
            .get(name)
            .map(|served| Arc::clone(&served.bundle))
    }

    /// Configured certificates not served yet.
    pub fn missing(&self) -> Vec<SecretName> {
        let state = self.lock();
        self.wanted
            .iter()
            .filter(|spec| !state.served.contains_key(&spec.name))
            .map(|spec| spec.name.clone())
            .collect()
    }

    /// Becomes `true` once every configured certificate is served.
    pub fn subscribe_complete(&self) -> watch::Receiver<bool> {
        self.complete.subscribe()
    }

    /// Every real certificate served, configured ones first.
    pub fn views(&self) -> Vec<CertificateView> {
        let state = self.lock();
        let view = |name: &SecretName, entry: &Served, validation_context: Option<String>| {
            let metadata = entry.bundle.metadata();
            CertificateView {
                secret: name.as_str().to_owned(),
                names: metadata.names.iter().map(ToString::to_string).collect(),
                serial: metadata.serial.clone(),
                not_before: metadata.not_before,
                not_after: metadata.not_after,
                next_renewal: default_renewal_time(metadata),
                served_since: entry.since,
                source: self.source.clone(),
                validation_context,
            }
        };
        let mut views: Vec<CertificateView> = self
            .wanted
            .iter()
            .filter_map(|spec| {
                let entry = state.served.get(&spec.name)?;
                Some(view(&spec.name, entry, spec.validation_context.clone()))
            })
            .collect();
        for (name, entry) in &state.served {
            if !self.wanted.iter().any(|spec| spec.name == *name) {
                views.push(view(name, entry, None));
            }
        }
        views
    }

    /// Every routed host's secret, as served now.
    pub fn routed_views(&self) -> Vec<RoutedSecretView> {
        let state = self.lock();
        state
            .routed
            .iter()
            .filter_map(|(name, how)| {
                let (served_as, covered_by, bundle) = if let RoutedSecret::Covered { by } = how
                    && let Some(covering) = state.served.get(by)
                {
                    (
                        ServedAs::Covered,
                        Some(by.as_str().to_owned()),
                        &covering.bundle,
                    )
                } else if let Some(own) = state.served.get(name) {
                    (ServedAs::Own, None, &own.bundle)
                } else {
                    (ServedAs::Placeholder, None, state.placeholders.get(name)?)
                };
                Some(RoutedSecretView {
                    host: name.as_str().to_owned(),
                    served_as,
                    covered_by,
                    serial: bundle.metadata().serial.clone(),
                    not_before: bundle.metadata().not_before,
                    not_after: bundle.metadata().not_after,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::IssuanceFacts;
    use crate::certificate::tests::issue_test_certificate;
    use xds_core::{ResourceType, SharedKey};

    fn bundle(names: &[&str]) -> Arc<CertificateBundle> {
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("now");
        let (chain, key) = issue_test_certificate(names, now, time::Duration::days(90));
        Arc::new(
            CertificateBundle::from_issued(chain, key, now, IssuanceFacts::default())
                .expect("bundle"),
        )
    }

    fn spec(name: &str, validation: Option<&str>) -> ServedSecret {
        ServedSecret {
            name: SecretName::new(name).expect("name"),
            validation_context: validation.map(str::to_owned),
        }
    }

    #[test]
    fn tls_certificate_and_validation_context_carry_chain_key_and_ca() {
        let bundle = bundle(&["example.com"]);
        let secrets = envoy_secrets(&spec("example.com", Some("example-ca")), &bundle);
        assert_eq!(secrets.len(), 2);
        let Some(secret::Type::TlsCertificate(tls)) = &secrets[0].r#type else {
            panic!("not a TLS certificate: {:?}", secrets[0].name);
        };
        assert_eq!(secrets[0].name, "example.com");
        let text =
            |source: &Option<DataSource>| match source.as_ref().and_then(|s| s.specifier.clone()) {
                Some(Specifier::InlineString(text)) => text,
                _ => panic!("not inline"),
            };
        assert_eq!(text(&tls.certificate_chain), bundle.chain_pem());
        assert_eq!(&text(&tls.private_key), bundle.key_pem().expose());
        let Some(secret::Type::ValidationContext(validation)) = &secrets[1].r#type else {
            panic!("not a validation context");
        };
        assert_eq!(secrets[1].name, "example-ca");
        let ca = text(&validation.trusted_ca);
        let chain = parse_certificate_chain(bundle.chain_pem()).expect("chain");
        let ca_chain = parse_certificate_chain(&ca).expect("ca chain");
        assert_eq!(ca_chain.len(), chain.len() - 1);
        assert_eq!(ca_chain[0].as_ref(), chain[1].as_ref());
    }

    #[test]
    fn publisher_serves_configured_names_and_becomes_complete() {
        let cache = SnapshotCache::new(SharedKey("gateways".to_owned()));
        let publisher = SecretPublisher::new(
            cache.clone(),
            "gateways",
            vec![spec("a.example.com", None), spec("b.example.com", None)],
            "disk:/var/lib/envoy-acme-sds",
        );
        let mut complete = publisher.subscribe_complete();
        assert!(!*complete.borrow_and_update());
        let a = SecretName::new("a.example.com").expect("name");
        let b = SecretName::new("b.example.com").expect("name");
        let other = SecretName::new("other.example.com").expect("name");

        let first = bundle(&["a.example.com"]);
        assert!(publisher.offer(&a, Arc::clone(&first)).expect("offer"));
        assert!(!publisher.offer(&a, Arc::clone(&first)).expect("same again"));
        assert!(
            !publisher
                .offer(&other, bundle(&["other.example.com"]))
                .expect("unconfigured")
        );
        assert_eq!(publisher.missing(), vec![b.clone()]);
        assert!(!*complete.borrow_and_update());

        publisher
            .offer(&b, bundle(&["b.example.com"]))
            .expect("offer");
        assert!(publisher.missing().is_empty());
        assert!(*complete.borrow_and_update());
        let snapshot = cache.snapshot("gateways").expect("snapshot");
        let names: Vec<&str> = snapshot
            .resources(ResourceType::Secret)
            .map(|r| r.name())
            .collect();
        assert_eq!(names, vec!["a.example.com", "b.example.com"]);

        let views = publisher.views();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].serial, first.metadata().serial);
        let json = serde_json::to_string(&views).expect("json");
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        assert!(
            json.contains("\"source\":\"disk:/var/lib/envoy-acme-sds\""),
            "{json}"
        );
    }

    /// The leaf of the secret `name` in the cache: its serial, hex.
    fn served_serial(cache: &SnapshotCache, name: &str) -> Option<String> {
        let snapshot = cache.snapshot("gateways")?;
        let resource = snapshot
            .resources(ResourceType::Secret)
            .find(|r| r.name() == name)?;
        let any = resource.to_any().ok()?;
        let secret = <Secret as prost::Message>::decode(any.value.as_slice()).ok()?;
        let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
            return None;
        };
        let Some(Specifier::InlineString(chain)) = tls.certificate_chain?.specifier else {
            return None;
        };
        let der = parse_certificate_chain(&chain).ok()?;
        let (_, leaf) = x509_parser::parse_x509_certificate(der[0].as_ref()).ok()?;
        Some(
            leaf.raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    #[test]
    fn every_routed_name_is_answered_at_once_and_a_real_certificate_replaces_the_placeholder() {
        let cache = SnapshotCache::new(SharedKey("gateways".to_owned()));
        let publisher = SecretPublisher::new(
            cache.clone(),
            "gateways",
            vec![spec("*.example.com", None)],
            "consul:certs",
        )
        .serving_every_stored();
        let wildcard = SecretName::new("*.example.com").expect("name");
        let new = SecretName::new("new.demo.test").expect("name");
        let shop = SecretName::new("shop.example.com").expect("name");
        let evil = SecretName::new("evil.other.test").expect("name");
        let covering = bundle(&["*.example.com"]);
        publisher
            .offer(&wildcard, Arc::clone(&covering))
            .expect("offer");

        let routed = BTreeMap::from([
            (new.clone(), RoutedSecret::Own),
            (
                shop.clone(),
                RoutedSecret::Covered {
                    by: wildcard.clone(),
                },
            ),
            (evil.clone(), RoutedSecret::Refused),
        ]);
        assert!(publisher.set_routed(routed.clone()).expect("routed"));
        assert!(!publisher.set_routed(routed.clone()).expect("same again"));
        let snapshot = cache.snapshot("gateways").expect("snapshot");
        let mut names: Vec<&str> = snapshot
            .resources(ResourceType::Secret)
            .map(|r| r.name())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "*.example.com",
                "evil.other.test",
                "new.demo.test",
                "shop.example.com"
            ]
        );
        let served_as = |host: &str| {
            publisher
                .routed_views()
                .into_iter()
                .find(|v| v.host == host)
                .map(|v| v.served_as)
        };
        assert_eq!(served_as("new.demo.test"), Some(ServedAs::Placeholder));
        assert_eq!(served_as("evil.other.test"), Some(ServedAs::Placeholder));
        assert_eq!(served_as("shop.example.com"), Some(ServedAs::Covered));
        // The covered host is the wildcard's own certificate, under its name.
        let wildcard_serial = served_serial(&cache, "*.example.com").expect("wildcard");
        assert_eq!(
            served_serial(&cache, "shop.example.com").as_deref(),
            Some(wildcard_serial.as_str())
        );
        // The placeholder stays the same one until replaced.
        let placeholder = served_serial(&cache, "new.demo.test").expect("placeholder");
        assert!(
            publisher
                .set_routed(BTreeMap::from([(new.clone(), RoutedSecret::Own)]))
                .expect("fewer")
        );
        assert!(publisher.set_routed(routed.clone()).expect("back"));
        assert_eq!(
            served_serial(&cache, "new.demo.test").as_deref(),
            Some(placeholder.as_str())
        );

        // The host's own certificate arrives from the store: it replaces
        // the placeholder, the other names untouched.
        let own = bundle(&["new.demo.test"]);
        assert!(publisher.offer(&new, Arc::clone(&own)).expect("offer"));
        assert_eq!(served_as("new.demo.test"), Some(ServedAs::Own));
        assert_eq!(
            served_serial(&cache, "shop.example.com").as_deref(),
            Some(wildcard_serial.as_str())
        );

        // Once a configured certificate covers it, that one is served
        // under its name, though its own is stored.
        let wildcard_for_new = bundle(&["*.demo.test"]);
        let demo = SecretName::new("*.demo.test").expect("name");
        publisher
            .offer(&demo, Arc::clone(&wildcard_for_new))
            .expect("offer");
        assert!(
            publisher
                .set_routed(BTreeMap::from([(
                    new.clone(),
                    RoutedSecret::Covered { by: demo.clone() }
                )]))
                .expect("covered now")
        );
        assert_eq!(
            served_serial(&cache, "new.demo.test"),
            served_serial(&cache, "*.demo.test")
        );
        assert_eq!(served_as("new.demo.test"), Some(ServedAs::Covered));
        assert!(publisher.set_routed(routed.clone()).expect("own again"));

        // No longer routed: the real certificate stays served (until it
        // expires), the placeholder of the refused host goes.
        assert!(
            publisher
                .set_routed(BTreeMap::new())
                .expect("nothing routed")
        );
        let snapshot = cache.snapshot("gateways").expect("snapshot");
        let mut names: Vec<&str> = snapshot
            .resources(ResourceType::Secret)
            .map(|r| r.name())
            .collect();
        names.sort_unstable();
        assert_eq!(names, vec!["*.demo.test", "*.example.com", "new.demo.test"]);
        assert!(publisher.routed_views().is_empty());
        assert!(
            publisher
                .views()
                .iter()
                .any(|v| v.secret == "new.demo.test")
        );
    }

    #[test]
    fn without_follow_routes_only_configured_names_are_served() {
        let cache = SnapshotCache::new(SharedKey("gateways".to_owned()));
        let publisher = SecretPublisher::new(
            cache.clone(),
            "gateways",
            vec![spec("a.example.com", None)],
            "consul:certs",
        );
        let other = SecretName::new("other.example.com").expect("name");
        assert!(
            !publisher
                .offer(&other, bundle(&["other.example.com"]))
                .expect("offer")
        );
        assert!(publisher.views().is_empty());
    }
}

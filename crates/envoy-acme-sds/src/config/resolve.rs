//! From the merged [`Layer`] to [`Settings`]: defaults applied, referenced
//! files read, text turned into the types the service runs with.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use nomad_client::NomadConfig;
use service_support::consul::ConsulArgs;

use super::{
    CertificateSettings, ChallengeSettings, ConfigError, Layer, NomadRoutes, RouteSource,
    RoutesSettings, Settings, StorageArgs, StorageLocation, StorageSettings, defaults, invalid,
    rules,
};
use crate::acme::{AcmeConfig, ExternalAccountBinding, LETS_ENCRYPT_STAGING};
use crate::challenge::ChallengeKind;
use crate::challenge::tsig_file::read_tsig_key;
use crate::domain::NameSet;
use crate::keys::KeyType;
use crate::manager::CertificateSpec;
use crate::routed::policy::AllowedSuffix;
use crate::secret::Secret;
use crate::store::SecretName;
use crate::store::encryption::KeyEncryption;
use route_tags::TagPrefix;

impl Layer {
    /// Reads the file (if any) and every referenced file, and checks it all.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => Layer::read_file(path)?,
            None => Layer::default(),
        };
        let flag_certs = self.certs.len();
        self.clone().or(file).into_settings(flag_certs)
    }

    /// `flag_certs`: how many of the certificates came from `--cert`.
    fn into_settings(self, flag_certs: usize) -> Result<Settings, ConfigError> {
        let storage = resolve_storage(self.storage.clone(), self.consul.clone())?;
        rules::consul_keys_sealed(&storage)?;
        let acme = self.resolve_acme()?;
        let challenge = self.resolve_challenge()?;
        let certificates = self.resolve_certificates(flag_certs)?;
        rules::certificates_fit(&certificates, &challenge, self.follow_routes)?;
        let routes = self.resolve_routes()?;
        let session_ttl = self.session_ttl.unwrap_or(defaults::SESSION_TTL);
        rules::session_ttl_allowed(session_ttl)?;
        let lock_delay = self.lock_delay.unwrap_or(defaults::LOCK_DELAY);
        rules::lock_delay_allowed(lock_delay)?;
        Ok(Settings {
            acme,
            certificates,
            challenge,
            storage,
            lock_delay,
            session_ttl,
            instance_name: self.instance_name.clone().unwrap_or_else(host_name),
            sds_listen: self.sds.listen(),
            sds_tls: self.sds.tls_options()?,
            admin_listen: self.admin.listen(),
            log_format: self.log_format.unwrap_or_default(),
            shutdown_grace: self.shutdown_grace.unwrap_or(defaults::SHUTDOWN_GRACE),
            routes,
        })
    }

    fn resolve_routes(&self) -> Result<Option<RoutesSettings>, ConfigError> {
        rules::routes_fit(self)?;
        if !self.follow_routes {
            return Ok(None);
        }
        let prefix_text = self.tag_prefix.as_deref().unwrap_or(defaults::TAG_PREFIX);
        let prefix =
            TagPrefix::new(prefix_text).map_err(|e| invalid("--tag-prefix", e.to_string()))?;
        let allowed = self
            .allowed_domains
            .iter()
            .map(|suffix| {
                AllowedSuffix::parse(suffix)
                    .map_err(|e| invalid("--allowed-domains", format!("`{suffix}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sources = if self.sources.is_empty() {
            vec![RouteSource::Consul]
        } else {
            self.sources.clone()
        };
        rules::route_sources_fit(self, &sources)?;
        let consul = if sources.contains(&RouteSource::Consul) {
            Some(self.consul.client_config()?)
        } else {
            None
        };
        let nomad = if sources.contains(&RouteSource::Nomad) {
            Some(self.resolve_nomad()?)
        } else {
            None
        };
        Ok(Some(RoutesSettings {
            prefix,
            allowed,
            orders_per_hour: self.orders_per_hour.unwrap_or(defaults::ORDERS_PER_HOUR),
            unrouted_grace: self.unrouted_grace.unwrap_or(defaults::UNROUTED_GRACE),
            consul,
            nomad,
            key_type: self.key_type.unwrap_or_default(),
            profile: self.acme_profile.clone(),
            zone: self.rfc2136.rfc2136_zone.clone(),
        }))
    }

    /// Nomad's CLI variables (`NOMAD_TOKEN`, `NOMAD_REGION`, TLS files),
    /// with the address and the token file from the settings.
    fn resolve_nomad(&self) -> Result<NomadRoutes, ConfigError> {
        let namespaces = if self.nomad_namespace.is_empty() {
            vec![defaults::NOMAD_NAMESPACE.to_owned()]
        } else {
            rules::nomad_namespaces(&self.nomad_namespace)?
        };
        let mut client = NomadConfig::from_env()?;
        let address = self.nomad_addr.as_deref().unwrap_or(defaults::NOMAD_ADDR);
        client.address =
            address
                .parse()
                .map_err(|source| nomad_client::ConfigError::InvalidAddress {
                    name: "--nomad-addr",
                    source,
                })?;
        if let Some(path) = &self.nomad_token_file {
            client = client.with_token_file(path)?;
        }
        Ok(NomadRoutes { client, namespaces })
    }

    fn resolve_acme(&self) -> Result<AcmeConfig, ConfigError> {
        let directory = self
            .acme_directory
            .clone()
            .unwrap_or_else(|| LETS_ENCRYPT_STAGING.to_owned());
        if !url_like(&directory) {
            return Err(invalid(
                "--acme-directory",
                format!("`{directory}` is not an https:// URL"),
            ));
        }
        let mut acme = AcmeConfig::new(directory);
        acme.contact = self.email.clone();
        if let Some(path) = &self.acme_ca_file {
            acme.ca_root_pem = Some(read_text("--acme-ca-file", path)?);
        }
        rules::eab_complete(self)?;
        if let (Some(key_id), Some(path)) = (&self.eab_kid, &self.eab_hmac_key_file) {
            let text = Secret::new(read_text("--eab-hmac-key-file", path)?);
            let hmac_key = decode_base64_any(text.expose().trim()).ok_or_else(|| {
                invalid(
                    "--eab-hmac-key-file",
                    format!("{} does not hold a base64 or base64url key", path.display()),
                )
            })?;
            acme.external_account = Some(ExternalAccountBinding {
                key_id: key_id.clone(),
                hmac_key: Secret::new(hmac_key),
            });
        }
        Ok(acme)
    }

    fn resolve_challenge(&self) -> Result<ChallengeSettings, ConfigError> {
        let kind: ChallengeKind = self.challenge.unwrap_or_default().into();
        rules::one_challenge_publisher(self)?;
        if let Some(program) = &self.exec_hook {
            return Ok(ChallengeSettings::Exec {
                program: program.clone(),
                kind,
            });
        }
        match kind {
            ChallengeKind::Http01 => Ok(ChallengeSettings::Http01 {
                listen: self.http01_listen.unwrap_or(defaults::HTTP01_LISTEN),
            }),
            ChallengeKind::Dns01 => {
                let server = self.rfc2136.rfc2136_server.ok_or_else(|| {
                    invalid(
                        "--rfc2136-server",
                        "dns-01 needs a DNS server accepting updates (or an --exec-hook)",
                    )
                })?;
                let key_file = self.rfc2136.tsig_key_file.as_ref().ok_or_else(|| {
                    invalid(
                        "--tsig-key-file",
                        "dns-01 through RFC 2136 needs a TSIG key",
                    )
                })?;
                Ok(ChallengeSettings::Rfc2136 {
                    server,
                    tsig: read_tsig_key(key_file)?,
                })
            }
        }
    }

    /// Those of `--cert` first (the first `flag_certs` of `certs`), then the
    /// file's tables, which fall back to the layer's key type, profile and zone.
    fn resolve_certificates(
        &self,
        flag_certs: usize,
    ) -> Result<Vec<CertificateSettings>, ConfigError> {
        let default_key_type = self.key_type.unwrap_or_default();
        let default_zone = self.rfc2136.rfc2136_zone.as_ref();
        let mut certificates = Vec::new();
        for (index, text) in self.certs.iter().enumerate() {
            let field = format!("--cert #{} (`{text}`)", index + 1);
            let (name, domains) = match text.split_once('=') {
                Some((name, domains)) => (Some(name.trim().to_owned()), domains),
                None => (None, text.as_str()),
            };
            let domains: Vec<&str> = domains
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect();
            certificates.push(build_certificate(
                &field,
                name,
                &domains,
                default_key_type,
                self.acme_profile.clone(),
                None,
                default_zone.cloned(),
            )?);
        }
        if let Some(validation) = &self.validation_context_secret {
            rules::validation_context_has_one_cert(flag_certs)?;
            if let Some(only) = certificates.first_mut() {
                only.validation_context = Some(validation.clone());
            }
        }
        for (index, entry) in self.certificates.iter().enumerate() {
            let domains: Vec<&str> = entry.domains.iter().map(String::as_str).collect();
            certificates.push(build_certificate(
                &format!("certificate[{index}]"),
                entry.name.clone(),
                &domains,
                entry.key_type.unwrap_or(default_key_type),
                entry.profile.clone().or(self.acme_profile.clone()),
                entry.validation_context_secret.clone(),
                entry.zone.clone().or(default_zone.cloned()),
            )?);
        }
        Ok(certificates)
    }
}

fn build_certificate(
    field: &str,
    name: Option<String>,
    domains: &[&str],
    key_type: KeyType,
    profile: Option<String>,
    validation_context: Option<String>,
    zone: Option<String>,
) -> Result<CertificateSettings, ConfigError> {
    let names = NameSet::parse(domains).map_err(|e| invalid(field, e.to_string()))?;
    let mut spec = CertificateSpec::new(names).map_err(|e| invalid(field, e.to_string()))?;
    if let Some(name) = name {
        spec.secret_name = SecretName::new(name).map_err(|e| invalid(field, e.to_string()))?;
    }
    spec.key_type = key_type;
    spec.profile = profile;
    let zone = zone.unwrap_or_else(|| {
        // The shortest name's base: `example.com` for `example.com,*.example.com`.
        spec.names
            .iter()
            .map(|n| n.base().to_owned())
            .min_by_key(|base| base.split('.').count())
            .unwrap_or_default()
    });
    if let Some(validation) = &validation_context {
        SecretName::new(validation.clone())
            .map_err(|e| invalid(format!("{field} validation context"), e.to_string()))?;
    }
    Ok(CertificateSettings {
        spec,
        validation_context,
        zone,
    })
}

/// Resolves the merged storage settings (also used by `renew`).
pub fn resolve_storage(
    storage: StorageArgs,
    consul: ConsulArgs,
) -> Result<StorageSettings, ConfigError> {
    let text = storage
        .storage
        .ok_or_else(|| invalid("--storage", "required: disk:<dir> or consul:<kv-prefix>"))?;
    let location = StorageLocation::from_str(&text).map_err(|r| invalid("--storage", r))?;
    let encryption = storage
        .encryption_key_file
        .as_ref()
        .map(|path| KeyEncryption::from_key_file(path).map(Arc::new))
        .transpose()?;
    let previous_encryption = storage
        .previous_encryption_key_file
        .as_ref()
        .map(|path| KeyEncryption::from_key_file(path).map(Arc::new))
        .transpose()
        .map_err(ConfigError::PreviousEncryption)?;
    if previous_encryption.is_some() && encryption.is_none() {
        // The file can name the previous key without the current one.
        return Err(invalid(
            "--previous-encryption-key-file",
            "needs --encryption-key-file: the previous key only opens, the current one reseals",
        ));
    }
    let consul = match &location {
        StorageLocation::Disk(_) => None,
        StorageLocation::Consul { .. } => Some(consul.client_config()?),
    };
    Ok(StorageSettings {
        location,
        encryption,
        previous_encryption,
        plaintext_keys_allowed: storage.allow_plaintext_keys,
        consul,
    })
}

fn read_text(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadReferenced {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn url_like(text: &str) -> bool {
    text.starts_with("https://") && text.len() > "https://".len()
}

fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| STANDARD.decode(text))
        .ok()
}

/// The host name, for the lock holder's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

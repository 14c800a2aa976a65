//! Rules across settings: what no single flag's parser can see. Each is
//! checked on the merged layer (or the certificates resolved from it), so a
//! flag and a file key that break a rule together are caught alike; each
//! error names the flag it concerns.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    CertificateSettings, ChallengeSettings, ConfigError, Layer, RouteSource, StorageLocation,
    StorageSettings, invalid,
};
use crate::election::MIN_SESSION_TTL;

/// An exec hook publishes challenges itself; an RFC 2136 server as well
/// would leave it unclear which one answers.
pub fn one_challenge_publisher(layer: &Layer) -> Result<(), ConfigError> {
    if layer.exec_hook.is_some() && layer.rfc2136.rfc2136_server.is_some() {
        return Err(invalid(
            "--exec-hook",
            "give either an exec hook or an RFC 2136 server, not both",
        ));
    }
    Ok(())
}

/// An External Account Binding needs both its key id and its key.
pub fn eab_complete(layer: &Layer) -> Result<(), ConfigError> {
    if layer.eab_kid.is_some() != layer.eab_hmac_key_file.is_some() {
        return Err(invalid(
            "--eab-kid",
            "--eab-kid and --eab-hmac-key-file go together",
        ));
    }
    Ok(())
}

/// `--validation-context-secret` names one certificate's CA secret, so it
/// needs exactly one `--cert` to belong to.
pub fn validation_context_has_one_cert(flag_certs: usize) -> Result<(), ConfigError> {
    if flag_certs != 1 {
        return Err(invalid(
            "--validation-context-secret",
            "applies to exactly one --cert; give each certificate its own in the config file",
        ));
    }
    Ok(())
}

/// In Consul KV a private key is readable by every token with KV read on
/// the prefix, and broad read policies (`key_prefix ""`) are common: keys
/// are sealed there unless the operator says otherwise out loud.
pub fn consul_keys_sealed(storage: &StorageSettings) -> Result<(), ConfigError> {
    let consul = matches!(storage.location, StorageLocation::Consul { .. });
    if consul && storage.encryption.is_none() && !storage.plaintext_keys_allowed {
        return Err(invalid(
            "--encryption-key-file",
            "required with consul: storage, since anyone with KV read on the prefix could read \
             every private key stored in plaintext; give a 32-byte key file, or \
             --allow-plaintext-keys to store them in plaintext knowingly",
        ));
    }
    Ok(())
}

/// Routed hosts are ordered only under the operator's own domains, so
/// following routes without saying which they are is refused; and the
/// routed settings mean nothing without `--follow-routes`.
pub fn routes_fit(layer: &Layer) -> Result<(), ConfigError> {
    if layer.follow_routes {
        if layer.allowed_domains.is_empty() {
            return Err(invalid(
                "--allowed-domains",
                "required with --follow-routes: the domains routed hosts may be ordered for \
                 (e.g. --allowed-domains example.com), so a service's tag cannot make us order \
                 a name we do not own",
            ));
        }
        return Ok(());
    }
    let stray = [
        ("--tag-prefix", layer.tag_prefix.is_some()),
        ("--allowed-domains", !layer.allowed_domains.is_empty()),
        ("--orders-per-hour", layer.orders_per_hour.is_some()),
        ("--unrouted-grace", layer.unrouted_grace.is_some()),
        ("--sources", !layer.sources.is_empty()),
        ("--nomad-token-file", layer.nomad_token_file.is_some()),
    ];
    if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
        return Err(invalid(*flag, "applies only with --follow-routes"));
    }
    Ok(())
}

/// The registries routes are read from: each named once. The Nomad
/// settings that only this service's own variable sets (the token file)
/// are refused without Nomad as a source; `NOMAD_ADDR` and
/// `NOMAD_NAMESPACE` are Nomad's CLI variables, often set in a shell for
/// other reasons, so they are only read, never refused.
pub fn route_sources_fit(layer: &Layer, sources: &[RouteSource]) -> Result<(), ConfigError> {
    for (i, source) in sources.iter().enumerate() {
        if sources[..i].contains(source) {
            return Err(invalid("--sources", format!("names `{source}` twice")));
        }
    }
    if !sources.contains(&RouteSource::Nomad) && layer.nomad_token_file.is_some() {
        return Err(invalid(
            "--nomad-token-file",
            "applies only with --sources nomad or consul,nomad",
        ));
    }
    Ok(())
}

/// The Nomad namespaces read: trimmed, each once, at least one; `*` (every
/// namespace the token can read, read through the checked listing) only
/// alone.
pub fn nomad_namespaces(given: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut namespaces: Vec<String> = Vec::new();
    for namespace in given.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !namespaces.iter().any(|n| n == namespace) {
            namespaces.push(namespace.to_owned());
        }
    }
    if namespaces.is_empty() {
        return Err(invalid(
            "--nomad-namespace",
            "empty; name at least one namespace (Nomad's own is `default`)",
        ));
    }
    if namespaces.len() > 1 && namespaces.iter().any(|n| n == nomad_client::ALL_NAMESPACES) {
        return Err(invalid(
            "--nomad-namespace",
            "`*` already reads every namespace the token can read; give it alone or list \
             names without it",
        ));
    }
    Ok(namespaces)
}

/// Consul refuses shorter session TTLs.
pub fn session_ttl_allowed(ttl: Duration) -> Result<(), ConfigError> {
    if ttl < MIN_SESSION_TTL {
        return Err(invalid(
            "--session-ttl",
            "Consul refuses session TTLs under 10s",
        ));
    }
    Ok(())
}

/// The longest lock delay Consul accepts; it refuses every session asking
/// for more, so no replica could ever hold the renewal lock.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

pub fn lock_delay_allowed(delay: Duration) -> Result<(), ConfigError> {
    if delay > MAX_LOCK_DELAY {
        return Err(invalid(
            "--lock-delay",
            format!(
                "Consul refuses lock delays over {}s",
                MAX_LOCK_DELAY.as_secs()
            ),
        ));
    }
    Ok(())
}

/// At least one certificate; every secret name (certificates and their
/// validation contexts) served once; wildcards only where dns-01 proves them.
/// With `--follow-routes` the list may be empty: routed hosts bring their own.
pub fn certificates_fit(
    certificates: &[CertificateSettings],
    challenge: &ChallengeSettings,
    follow_routes: bool,
) -> Result<(), ConfigError> {
    if certificates.is_empty() && !follow_routes {
        return Err(invalid(
            "--cert",
            "no certificate configured (give --cert or [[certificate]] in --config)",
        ));
    }
    let mut seen = BTreeSet::new();
    for certificate in certificates {
        let names = [
            Some(certificate.spec.secret_name.as_str()),
            certificate.validation_context.as_deref(),
        ];
        for name in names.into_iter().flatten() {
            if !seen.insert(name) {
                return Err(invalid(
                    "--cert",
                    format!("the secret name `{name}` is used twice"),
                ));
            }
        }
    }
    if challenge.is_http01()
        && let Some(certificate) = certificates
            .iter()
            .find(|c| c.spec.names.iter().any(|n| n.is_wildcard()))
    {
        return Err(invalid(
            "--challenge",
            format!(
                "certificate `{}` has a wildcard name, which only dns-01 can validate",
                certificate.spec.secret_name
            ),
        ));
    }
    Ok(())
}

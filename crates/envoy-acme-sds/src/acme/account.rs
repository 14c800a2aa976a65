//! The ACME account (RFC 8555 §7.3): loaded from the [`CertificateStore`]
//! when stored, created at the CA and stored otherwise, so replicas and
//! restarts reuse one account.

use std::sync::Arc;

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use tracing::{debug, info};

use super::http::{AcmeHttpClient, HttpError, PollHints};
use super::{AcmeConfig, CaFailure};
use crate::secret::Secret;
use crate::store::{AccountId, CertificateStore, StoreError, StoredAccount};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("ACME account at {directory}: {source}")]
    Ca {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("stored ACME account for {directory} is unusable: {reason}")]
    Corrupt { directory: String, reason: String },
    #[error("account storage: {0}")]
    Store(#[from] StoreError),
}

impl CaFailure for AccountError {
    fn ca_error(&self) -> Option<&instant_acme::Error> {
        match self {
            Self::Ca { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The account for `config.directory_url`: the stored one, or a new one,
/// stored before it is used.
pub(super) async fn load_or_create(
    config: &AcmeConfig,
    store: &dyn CertificateStore,
    poll_hints: &Arc<PollHints>,
) -> Result<Account, AccountError> {
    let id = AccountId::for_directory(&config.directory_url);
    match store.load_account(&id).await? {
        Some(stored) => load(config, &stored, poll_hints).await,
        None => create(config, store, &id, poll_hints).await,
    }
}

async fn load(
    config: &AcmeConfig,
    stored: &StoredAccount,
    poll_hints: &Arc<PollHints>,
) -> Result<Account, AccountError> {
    let directory = &config.directory_url;
    // Never echo the parse error: it could quote the key.
    let credentials: AccountCredentials = serde_json::from_str(stored.credentials_json.expose())
        .map_err(|e| AccountError::Corrupt {
            directory: directory.clone(),
            reason: format!("credentials JSON invalid ({:?})", e.classify()),
        })?;
    let http = AcmeHttpClient::new(config, Arc::clone(poll_hints))?;
    let account = Account::builder_with_http(Box::new(http))
        .from_credentials(credentials)
        .await
        .map_err(|source| AccountError::Ca {
            directory: directory.clone(),
            source,
        })?;
    debug!(account = account.id(), "ACME account loaded from storage");
    Ok(account)
}

async fn create(
    config: &AcmeConfig,
    store: &dyn CertificateStore,
    id: &AccountId,
    poll_hints: &Arc<PollHints>,
) -> Result<Account, AccountError> {
    let directory = &config.directory_url;
    let contact = contact_uris(&config.contact);
    let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new_account = NewAccount {
        contact: &contact_refs,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let eab = config
        .external_account
        .as_ref()
        .map(|eab| ExternalAccountKey::new(eab.key_id.clone(), eab.hmac_key.expose()));
    let (account, credentials) = retry_bad_nonce!(async {
        let http = AcmeHttpClient::new(config, Arc::clone(poll_hints))?;
        Account::builder_with_http(Box::new(http))
            .create(&new_account, directory.clone(), eab.as_ref())
            .await
            .map_err(|source| AccountError::Ca {
                directory: directory.clone(),
                source,
            })
    })?;
    let credentials_json =
        serde_json::to_string(&credentials).map_err(|e| AccountError::Corrupt {
            directory: directory.clone(),
            reason: format!("cannot serialize credentials ({:?})", e.classify()),
        })?;
    store
        .save_account(
            id,
            &StoredAccount {
                directory_url: directory.clone(),
                contact,
                credentials_json: Secret::new(credentials_json),
            },
        )
        .await?;
    info!(account = account.id(), directory = %directory, "ACME account created");
    Ok(account)
}

/// Profiles the CA's directory advertises, sorted.
pub(super) fn profiles(account: &Account) -> Vec<String> {
    let mut names: Vec<String> = account.profiles().map(|p| p.name.to_owned()).collect();
    names.sort();
    names
}

/// Contact addresses as URIs: `mailto:` is added to bare e-mail addresses.
fn contact_uris(contact: &[String]) -> Vec<String> {
    contact
        .iter()
        .map(|c| {
            if c.contains(':') {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::LETS_ENCRYPT_STAGING;

    #[test]
    fn contacts_become_mailto_uris() {
        let config = AcmeConfig {
            contact: vec![
                "ops@example.com".to_owned(),
                "mailto:a@example.com".to_owned(),
            ],
            ..AcmeConfig::default()
        };
        assert_eq!(
            contact_uris(&config.contact),
            vec!["mailto:ops@example.com", "mailto:a@example.com"]
        );
        assert_eq!(config.directory_url, LETS_ENCRYPT_STAGING);
    }
}

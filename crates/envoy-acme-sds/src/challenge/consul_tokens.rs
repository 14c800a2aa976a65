//! A [`TokenStore`] in Consul KV, for HTTP-01 with replicas behind one address.
//!
//! The CA may reach any replica, not the one that placed the order; with the
//! key authorizations under `<prefix>/http01/<token>`, every replica's
//! HTTP-01 listener answers. Key authorizations are not secret (the CA
//! publishes the token, and the response is served in clear), so these
//! writes are not fenced: a stale one is harmless, and the order's owner
//! removes its tokens after validation.

use async_trait::async_trait;
use consul_client::{Client, QueryOptions};

use super::http01::{Http01Error, TokenStore};

/// HTTP-01 key authorizations under `<prefix>/http01/`.
#[derive(Debug, Clone)]
pub struct ConsulTokenStore {
    client: Client,
    /// `<prefix>/http01/`.
    dir: String,
}

impl ConsulTokenStore {
    /// `prefix` is the storage prefix (`consul:<prefix>`), shared with the certificates.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            dir: format!("{}/http01/", prefix.trim_matches('/')),
        }
    }

    fn key(&self, token: &str) -> String {
        format!("{}{token}", self.dir)
    }
}

fn store_error(what: &str, error: &consul_client::Error) -> Http01Error {
    Http01Error::Store(format!("{what}: {error}"))
}

#[async_trait]
impl TokenStore for ConsulTokenStore {
    async fn put(&self, token: &str, key_authorization: &str) -> Result<(), Http01Error> {
        self.client
            .kv_put(&self.key(token), key_authorization.to_owned())
            .await
            .map_err(|e| store_error("storing the HTTP-01 token", &e))
    }

    async fn get(&self, token: &str) -> Result<Option<String>, Http01Error> {
        let response = self
            .client
            .kv_get(&self.key(token), &QueryOptions::default())
            .await
            .map_err(|e| store_error("reading the HTTP-01 token", &e))?;
        Ok(response
            .value
            .and_then(|pair| pair.value)
            .map(|value| String::from_utf8_lossy(&value).into_owned()))
    }

    async fn remove(&self, token: &str) -> Result<(), Http01Error> {
        self.client
            .kv_delete(&self.key(token))
            .await
            .map_err(|e| store_error("removing the HTTP-01 token", &e))
    }
}

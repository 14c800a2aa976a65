//! `/v1/kv/*`: keys and values. Values travel base64-encoded in Consul's
//! JSON; callers see raw bytes.

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use crate::api::key_segments;
use crate::api::session::SessionId;
use crate::client::Call;
use crate::codec::base64_value;
use crate::endpoint::EndpointKind;
use crate::{Client, Error, QueryOptions, QueryResponse};

/// A key with its value and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub key: String,
    /// `None` when the key has no value (Consul's `null`), which differs
    /// from an empty value.
    #[serde(default, with = "base64_value")]
    pub value: Option<Bytes>,
    #[serde(default)]
    pub flags: u64,
    /// The session holding the key's lock, if any.
    #[serde(default)]
    pub session: Option<SessionId>,
    /// How many times the lock has been acquired.
    #[serde(default)]
    pub lock_index: u64,
    #[serde(default)]
    pub create_index: u64,
    /// The index to pass to a check-and-set.
    #[serde(default)]
    pub modify_index: u64,
}

/// When a write applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KvCondition {
    #[default]
    Always,
    /// `?cas=`: only if the key's `ModifyIndex` is still this; 0 means only
    /// if the key does not exist.
    Cas { index: u64 },
    /// `?acquire=`: takes the key's lock for the session, if free (or
    /// already the session's).
    Acquire(SessionId),
    /// `?release=`: gives the lock up, if the session holds it.
    Release(SessionId),
}

/// A write's options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvWrite {
    /// `?flags=`: an opaque number stored with the key.
    pub flags: Option<u64>,
    pub condition: KvCondition,
}

impl Client {
    /// `GET /v1/kv/<key>`; `None` when the key does not exist (the answer
    /// still carries an index, so a watch can block on the key's creation).
    pub async fn kv_get(
        &self,
        key: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Option<KvPair>>, Error> {
        let call = Call::get(EndpointKind::KvGet, key_segments(&["kv"], key))
            .options(options)
            .accept(StatusCode::NOT_FOUND);
        let reply = self.execute(call).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(QueryResponse {
                value: None,
                meta: reply.meta,
            });
        }
        Ok(reply
            .into_response::<Vec<KvPair>>()?
            .map(|pairs| pairs.into_iter().next()))
    }

    /// `GET /v1/kv/<prefix>?recurse`: every key under `prefix`, sorted.
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Vec<KvPair>>, Error> {
        let call = Call::get(EndpointKind::KvList, key_segments(&["kv"], prefix))
            .flag("recurse")
            .options(options)
            .accept(StatusCode::NOT_FOUND);
        let reply = self.execute(call).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(QueryResponse {
                value: Vec::new(),
                meta: reply.meta,
            });
        }
        reply.into_response()
    }

    /// `PUT /v1/kv/<key>` with `write`'s flags and condition. `Ok(false)`
    /// means the condition did not hold: a stale CAS index, a lock held by
    /// another session, a release by a session that does not hold it.
    pub async fn kv_write(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        write: &KvWrite,
    ) -> Result<bool, Error> {
        let mut call =
            Call::put(EndpointKind::KvPut, key_segments(&["kv"], key)).raw_body(value.into());
        if let Some(flags) = write.flags {
            call = call.param("flags", flags.to_string());
        }
        call = match &write.condition {
            KvCondition::Always => call,
            KvCondition::Cas { index } => call.param("cas", index.to_string()),
            KvCondition::Acquire(session) => call.param("acquire", session.as_str()),
            KvCondition::Release(session) => call.param("release", session.as_str()),
        };
        self.execute(call).await?.boolean()
    }

    /// Sets `key` unconditionally.
    pub async fn kv_put(&self, key: &str, value: impl Into<Bytes>) -> Result<(), Error> {
        let call =
            Call::put(EndpointKind::KvPut, key_segments(&["kv"], key)).raw_body(value.into());
        self.execute(call).await?.expect_true()
    }

    /// Sets `key` if its `ModifyIndex` is still `index` (0: if it does not
    /// exist). `Ok(false)` is a lost race, not an error.
    pub async fn kv_put_cas(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        index: u64,
    ) -> Result<bool, Error> {
        self.kv_write_if(key, value, KvCondition::Cas { index })
            .await
    }

    /// Takes `key`'s lock for `session` and sets its value; `Ok(false)` if
    /// another session holds it or the lock delay is running.
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        session: &SessionId,
    ) -> Result<bool, Error> {
        self.kv_write_if(key, value, KvCondition::Acquire(session.clone()))
            .await
    }

    /// Releases `key`'s lock held by `session`, setting its value.
    pub async fn kv_release(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        session: &SessionId,
    ) -> Result<bool, Error> {
        self.kv_write_if(key, value, KvCondition::Release(session.clone()))
            .await
    }

    /// [`Self::kv_write`] with no flags.
    async fn kv_write_if(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        condition: KvCondition,
    ) -> Result<bool, Error> {
        let write = KvWrite {
            flags: None,
            condition,
        };
        self.kv_write(key, value, &write).await
    }

    /// `DELETE /v1/kv/<key>`; deleting an absent key succeeds.
    pub async fn kv_delete(&self, key: &str) -> Result<(), Error> {
        let call = Call::delete(EndpointKind::KvDelete, key_segments(&["kv"], key));
        self.execute(call).await?.expect_true()
    }

    /// Deletes `key` if its `ModifyIndex` is still `index`.
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool, Error> {
        let call = Call::delete(EndpointKind::KvDelete, key_segments(&["kv"], key))
            .param("cas", index.to_string());
        self.execute(call).await?.boolean()
    }

    /// Deletes every key under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<(), Error> {
        let call =
            Call::delete(EndpointKind::KvDelete, key_segments(&["kv"], prefix)).flag("recurse");
        self.execute(call).await?.expect_true()
    }
}

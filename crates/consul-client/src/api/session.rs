//! `/v1/session/*`: sessions, the liveness that KV locks are tied to.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::client::Call;
use crate::codec::{go_duration_opt, nanoseconds, null_as_default};
use crate::endpoint::EndpointKind;
use crate::{Client, Error, QueryOptions, QueryResponse};

/// A session's ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happens to the locks a session holds when it is invalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The keys stay, unlocked.
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

/// `PUT /v1/session/create`'s body. Unset fields take Consul's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The node the session belongs to; the agent's own by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Invalidated unless renewed within this (10 s to 24 h); none by default.
    #[serde(
        rename = "TTL",
        with = "go_duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// After invalidation, its locks cannot be taken for this long (15 s by
    /// default), so a holder that lost its session has time to notice.
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<Duration>,
    pub behavior: SessionBehavior,
    /// Check IDs whose failure invalidates the session; `None` means Consul's
    /// default (`serfHealth`), `Some(vec![])` none (a TTL-only session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
}

/// A session as Consul reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(rename = "ID")]
    pub id: SessionId,
    #[serde(default)]
    pub name: String,
    pub node: String,
    #[serde(default, deserialize_with = "nanoseconds::deserialize")]
    pub lock_delay: Duration,
    pub behavior: SessionBehavior,
    /// As given at creation (`"15s"`); empty without a TTL.
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<String>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: SessionId,
}

impl Client {
    /// `PUT /v1/session/create`.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<SessionId, Error> {
        let call = Call::put(EndpointKind::SessionCreate, ["session", "create"]).json_body(request);
        Ok(self.execute(call).await?.json::<Created>()?.id)
    }

    /// `PUT /v1/session/renew/<id>`: resets the TTL. `None` when the session
    /// no longer exists (expired or destroyed): its locks are gone.
    pub async fn session_renew(&self, id: &SessionId) -> Result<Option<SessionInfo>, Error> {
        let call = Call::put(
            EndpointKind::SessionRenew,
            ["session", "renew", id.as_str()],
        )
        .accept(StatusCode::NOT_FOUND);
        let reply = self.execute(call).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(reply
            .json::<Option<Vec<SessionInfo>>>()?
            .and_then(|sessions| sessions.into_iter().next()))
    }

    /// `PUT /v1/session/destroy/<id>`: invalidates the session now.
    pub async fn session_destroy(&self, id: &SessionId) -> Result<(), Error> {
        let call = Call::put(
            EndpointKind::SessionDestroy,
            ["session", "destroy", id.as_str()],
        );
        self.execute(call).await?.expect_true()
    }

    /// `GET /v1/session/info/<id>`; `None` when it does not exist.
    pub async fn session_info(
        &self,
        id: &SessionId,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Option<SessionInfo>>, Error> {
        let call =
            Call::get(EndpointKind::SessionInfo, ["session", "info", id.as_str()]).options(options);
        Ok(self
            .execute(call)
            .await?
            .into_response::<Option<Vec<SessionInfo>>>()?
            .map(|sessions| sessions.and_then(|s| s.into_iter().next())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uses_consuls_names_and_duration_strings() {
        let request = SessionRequest {
            name: Some("acme-lock".to_owned()),
            ttl: Some(Duration::from_secs(15)),
            lock_delay: Some(Duration::from_millis(1500)),
            behavior: SessionBehavior::Delete,
            checks: Some(Vec::new()),
            ..SessionRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&request).expect("serialisable"),
            serde_json::json!({
                "Name": "acme-lock", "TTL": "15s", "LockDelay": "1500ms",
                "Behavior": "delete", "Checks": []
            })
        );
    }
}

//! `/v1/txn`: several KV operations applied atomically, all or none.

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::api::kv::KvPair;
use crate::api::session::SessionId;
use crate::client::Call;
use crate::codec::{base64_value, null_as_default};
use crate::endpoint::EndpointKind;
use crate::{Client, Error, QueryOptions};

/// One operation of a transaction (Consul's KV verbs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// `set`: sets the key.
    KvSet {
        key: String,
        value: Bytes,
        flags: u64,
    },
    /// `cas`: sets the key if its `ModifyIndex` is `index`.
    KvCas {
        key: String,
        value: Bytes,
        flags: u64,
        index: u64,
    },
    /// `lock`: takes the key's lock for `session` and sets it.
    KvLock {
        key: String,
        value: Bytes,
        session: SessionId,
    },
    /// `unlock`: releases the key's lock held by `session` and sets it.
    KvUnlock {
        key: String,
        value: Bytes,
        session: SessionId,
    },
    /// `get`: reads the key; fails the transaction if it does not exist.
    KvGet { key: String },
    /// `get-tree`: reads every key under the prefix.
    KvGetTree { prefix: String },
    /// `check-index`: fails unless the key's `ModifyIndex` is `index`.
    KvCheckIndex { key: String, index: u64 },
    /// `check-session`: fails unless `session` holds the key's lock — the
    /// fence for writes by a lock holder.
    KvCheckSession { key: String, session: SessionId },
    /// `check-not-exists`: fails if the key exists.
    KvCheckNotExists { key: String },
    /// `delete`.
    KvDelete { key: String },
    /// `delete-tree`: deletes every key under the prefix.
    KvDeleteTree { prefix: String },
    /// `delete-cas`: deletes if the key's `ModifyIndex` is `index`.
    KvDeleteCas { key: String, index: u64 },
}

/// One failed operation of a rolled-back transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnOpError {
    /// Position of the operation in the request.
    pub op_index: usize,
    /// Consul's reason, e.g. `failed session check for key "a", current session ""`.
    pub what: String,
}

/// What became of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied; one entry per operation that returns one (writes return
    /// the key without its value, reads with it).
    Committed(Vec<KvPair>),
    /// HTTP 409: nothing was applied, for these reasons.
    RolledBack(Vec<TxnOpError>),
}

impl TxnOutcome {
    pub fn is_committed(&self) -> bool {
        matches!(self, Self::Committed(_))
    }
}

#[derive(Serialize)]
struct OpWire<'a> {
    #[serde(rename = "KV")]
    kv: KvOpWire<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvOpWire<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(with = "base64_value", skip_serializing_if = "Option::is_none")]
    value: Option<&'a Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
}

impl TxnOp {
    fn wire(&self) -> OpWire<'_> {
        let op = |verb, key| KvOpWire {
            verb,
            key,
            value: None,
            flags: None,
            index: None,
            session: None,
        };
        let kv = match self {
            Self::KvSet { key, value, flags } => KvOpWire {
                value: Some(value),
                flags: Some(*flags),
                ..op("set", key)
            },
            Self::KvCas {
                key,
                value,
                flags,
                index,
            } => KvOpWire {
                value: Some(value),
                flags: Some(*flags),
                index: Some(*index),
                ..op("cas", key)
            },
            Self::KvLock {
                key,
                value,
                session,
            } => KvOpWire {
                value: Some(value),
                session: Some(session.as_str()),
                ..op("lock", key)
            },
            Self::KvUnlock {
                key,
                value,
                session,
            } => KvOpWire {
                value: Some(value),
                session: Some(session.as_str()),
                ..op("unlock", key)
            },
            Self::KvGet { key } => op("get", key),
            Self::KvGetTree { prefix } => op("get-tree", prefix),
            Self::KvCheckIndex { key, index } => KvOpWire {
                index: Some(*index),
                ..op("check-index", key)
            },
            Self::KvCheckSession { key, session } => KvOpWire {
                session: Some(session.as_str()),
                ..op("check-session", key)
            },
            Self::KvCheckNotExists { key } => op("check-not-exists", key),
            Self::KvDelete { key } => op("delete", key),
            Self::KvDeleteTree { prefix } => op("delete-tree", prefix),
            Self::KvDeleteCas { key, index } => KvOpWire {
                index: Some(*index),
                ..op("delete-cas", key)
            },
        };
        OpWire { kv }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResponseWire {
    #[serde(default, deserialize_with = "null_as_default")]
    results: Vec<ResultWire>,
    #[serde(default, deserialize_with = "null_as_default")]
    errors: Vec<TxnOpError>,
}

#[derive(Deserialize)]
struct ResultWire {
    #[serde(rename = "KV")]
    kv: Option<KvPair>,
}

impl Client {
    /// `PUT /v1/txn`. A rolled-back transaction (HTTP 409) is an answer,
    /// [`TxnOutcome::RolledBack`], with each failed operation's reason.
    pub async fn txn(&self, ops: &[TxnOp], options: &QueryOptions) -> Result<TxnOutcome, Error> {
        let wire: Vec<OpWire<'_>> = ops.iter().map(TxnOp::wire).collect();
        let call = Call::put(EndpointKind::Txn, ["txn"])
            .options(options)
            .json_body(&wire)
            .accept(StatusCode::CONFLICT);
        let reply = self.execute(call).await?;
        let response: ResponseWire = reply.json()?;
        if reply.status == StatusCode::CONFLICT || !response.errors.is_empty() {
            return Ok(TxnOutcome::RolledBack(response.errors));
        }
        Ok(TxnOutcome::Committed(
            response
                .results
                .into_iter()
                .filter_map(|result| result.kv)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_json;

    #[test]
    fn ops_serialise_to_consuls_verbs() {
        let session = SessionId::new("s-1");
        let ops = [
            TxnOp::KvCheckSession {
                key: "locks/acme".to_owned(),
                session: session.clone(),
            },
            TxnOp::KvSet {
                key: "certs/a".to_owned(),
                value: Bytes::from_static(b"\x00pem"),
                flags: 7,
            },
            TxnOp::KvDeleteCas {
                key: "old".to_owned(),
                index: 12,
            },
        ];
        let wire: Vec<OpWire<'_>> = ops.iter().map(TxnOp::wire).collect();
        assert_eq!(
            serde_json::to_value(&wire).expect("serialisable"),
            serde_json::json!([
                {"KV": {"Verb": "check-session", "Key": "locks/acme", "Session": "s-1"}},
                {"KV": {"Verb": "set", "Key": "certs/a", "Value": "AHBlbQ==", "Flags": 7}},
                {"KV": {"Verb": "delete-cas", "Key": "old", "Index": 12}}
            ])
        );
    }

    #[test]
    fn rolled_back_answers_decode_their_errors() {
        let body = br#"{"Results": null, "Errors": [{"OpIndex": 1, "What": "failed"}]}"#;
        let wire: ResponseWire = decode_json("PUT /v1/txn", body).expect("valid");
        assert!(wire.results.is_empty());
        assert_eq!(
            wire.errors,
            vec![TxnOpError {
                op_index: 1,
                what: "failed".to_owned()
            }]
        );
    }
}

//! How Consul's JSON maps onto Rust: base64 KV values, `null` for empty
//! collections, Go duration strings, and decoding that names the bad field.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serializer};

use crate::Error;
pub(crate) use crate::json_array::DecodeFailure;

/// Parses a JSON body, naming the JSON path of the first bad value.
pub(crate) fn decode_json<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, Error> {
    decode_at(body, None).map_err(|failure| failure.into_error(endpoint))
}

/// Parses element `index` of a JSON array; a failure's path starts with
/// `[index]`, as if the whole array had been decoded.
pub(crate) fn decode_element<'a, T: Deserialize<'a>>(
    index: usize,
    text: &'a [u8],
) -> Result<T, DecodeFailure> {
    decode_at(text, Some(index))
}

fn decode_at<'a, T: Deserialize<'a>>(
    text: &'a [u8],
    element: Option<usize>,
) -> Result<T, DecodeFailure> {
    // Tracking the path of every field costs about a third of the decoding
    // time of a large answer; answers are nearly always well-formed, so the
    // path is only worked out, by decoding again, when decoding failed.
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    if let Ok(value) = T::deserialize(&mut deserializer) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        // `.` is serde_path_to_error's name for the document root.
        let path = match (element, path.as_str()) {
            (None, ".") => "(root)".to_owned(),
            (None, _) => path,
            (Some(index), ".") => format!("[{index}]"),
            (Some(index), _) if path.starts_with('[') => format!("[{index}]{path}"),
            (Some(index), _) => format!("[{index}].{path}"),
        };
        DecodeFailure {
            path,
            message: error.into_inner().to_string(),
        }
    })
}

impl DecodeFailure {
    pub(crate) fn into_error(self, endpoint: &str) -> Error {
        Error::Decode {
            endpoint: endpoint.to_owned(),
            path: self.path,
            message: self.message,
        }
    }
}

/// Consul (Go) writes `null` for an empty slice or map; Rust callers want an
/// empty collection, not an `Option` to unwrap at every use.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// KV values: base64 in JSON, raw bytes for callers. `null` is "no value",
/// which Consul distinguishes from an empty one.
pub(crate) mod base64_value {
    use super::*;

    pub(crate) fn deserialize<'de, D>(deserializer: D) -> Result<Option<Bytes>, D::Error>
    where
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => BASE64
                .decode(text.as_bytes())
                .map(|bytes| Some(Bytes::from(bytes)))
                .map_err(|error| serde::de::Error::custom(format!("invalid base64: {error}"))),
        }
    }

    pub(crate) fn serialize<S>(value: &Option<&Bytes>, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
    {
        match value {
            Some(bytes) => serializer.serialize_str(&BASE64.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it (`"15s"`, `"1500ms"`),
/// the form Consul accepts for TTLs, intervals and lock delays.
pub(crate) fn go_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

pub(crate) mod go_duration_opt {
    use super::*;

    pub(crate) fn serialize<S>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
    {
        match value {
            Some(duration) => serializer.serialize_str(&go_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }
}

/// Durations Consul reports as integer nanoseconds (Go's `time.Duration`).
pub(crate) mod nanoseconds {
    use super::*;

    pub(crate) fn deserialize<'de, D>(deserializer: D) -> Result<Duration, D::Error>
    where
        D: Deserializer<'de>,
    {
        Ok(Duration::from_nanos(
            Option::<u64>::deserialize(deserializer)?.unwrap_or(0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Pair {
        #[serde(default, deserialize_with = "base64_value::deserialize")]
        value: Option<Bytes>,
        #[serde(default, deserialize_with = "null_as_default")]
        tags: Vec<String>,
    }

    #[test]
    fn decode_errors_name_the_json_path() {
        let error =
            decode_json::<Vec<Pair>>("GET /v1/kv/a", br#"[{"Value": "aGk="}, {"Value": "%%"}]"#)
                .expect_err("invalid base64 is rejected");
        match error {
            Error::Decode { path, message, .. } => {
                assert_eq!(path, "[1].Value");
                assert!(message.contains("base64"), "{message}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn truncated_json_is_an_error_at_the_root_or_field() {
        let error = decode_json::<Vec<Pair>>("GET /v1/kv/a", b"[{\"Value\": ")
            .expect_err("truncated JSON is rejected");
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    }

    #[test]
    fn null_collections_and_values_decode_to_empty() {
        let pairs: Vec<Pair> = decode_json(
            "GET /v1/kv/a",
            br#"[{"Value": null, "Tags": null}, {"Value": "AAH/"}]"#,
        )
        .expect("valid");
        assert_eq!(pairs[0].value, None);
        assert!(pairs[0].tags.is_empty());
        assert_eq!(pairs[1].value.as_deref(), Some(&[0u8, 1, 255][..]));
    }

    #[test]
    fn go_durations_keep_their_precision() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_nanos(1_000_001)), "1000001ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}

//! What a request asks for, read from its query string and headers the way
//! Nomad's HTTP agent reads them (`command/agent/http.go`: `parse`,
//! `parseWait`, `parseConsistency`, `parseRegion`, `parseNamespace`,
//! `parseToken`).

use std::time::Duration;

use hyper::HeaderMap;

/// Nomad's `structs.MaxBlockingRPCQueryTime`: a longer `wait` is cut to it.
pub(super) const MAX_QUERY_TIME: Duration = Duration::from_secs(300);
/// Nomad's `structs.DefaultBlockingRPCQueryTime`: the wait when none (or a
/// non-positive one) is given.
pub(super) const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// Nomad's `structs.JitterFraction`: up to `wait / 16` is added to a wait.
pub(super) const JITTER_FRACTION: u32 = 16;

/// Why Nomad refuses a query string; `Display` is Nomad's exact answer body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum QueryError {
    #[error("Invalid wait time")]
    Wait,
    #[error("Invalid index")]
    Index,
    #[error("Expect `true` or `false` for `stale` query string parameter, got {0}")]
    Stale(String),
}

/// The query options of one read request.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct QueryOptions {
    /// `?region=`, or the agent's own.
    pub region: String,
    /// `?namespace=`, or `default`; `*` is kept as given.
    pub namespace: String,
    /// `X-Nomad-Token`, else an `Authorization: Bearer` value; empty if none.
    pub token: String,
    /// `?index=`: 0 makes the query non-blocking.
    pub min_index: u64,
    /// `?wait=` in Go's duration syntax, `None` when absent; negative
    /// durations are kept as zero (Nomad then waits its default).
    pub wait: Option<Duration>,
}

impl std::fmt::Debug for QueryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryOptions")
            .field("region", &self.region)
            .field("namespace", &self.namespace)
            .field("has_token", &!self.token.is_empty())
            .field("min_index", &self.min_index)
            .field("wait", &self.wait)
            .finish()
    }
}

impl QueryOptions {
    pub fn parse(query: &str, headers: &HeaderMap, own_region: &str) -> Result<Self, QueryError> {
        let stale = first_value(query, "stale");
        if let Some(stale) = stale.filter(|value| !value.is_empty())
            && parse_go_bool(&stale).is_none()
        {
            return Err(QueryError::Stale(stale));
        }
        let wait = match first_value(query, "wait").filter(|value| !value.is_empty()) {
            None => None,
            Some(wait) => Some(parse_go_duration(&wait).ok_or(QueryError::Wait)?),
        };
        let min_index = match first_value(query, "index").filter(|value| !value.is_empty()) {
            None => 0,
            Some(index) => index.parse().map_err(|_| QueryError::Index)?,
        };
        Ok(Self {
            region: first_value(query, "region")
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| own_region.to_owned()),
            namespace: first_value(query, "namespace")
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            token: token(headers).unwrap_or_default(),
            min_index,
            wait,
        })
    }

    /// How long a blocking query waits before answering unchanged
    /// (`QueryOptions.TimeToBlock`), before jitter.
    pub fn time_to_block(&self) -> Duration {
        match self.wait {
            Some(wait) if wait > MAX_QUERY_TIME => MAX_QUERY_TIME,
            Some(wait) if !wait.is_zero() => wait,
            _ => DEFAULT_QUERY_TIME,
        }
    }
}

/// Whether the request carried a token header Nomad would read.
pub(super) fn has_token(headers: &HeaderMap) -> bool {
    token(headers).is_some_and(|token| !token.is_empty())
}

/// `parseToken`: `X-Nomad-Token` first; else `Authorization: <scheme> <value>`
/// with the scheme `Bearer` (any case), whose first word is the token.
fn token(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
    };
    if let Some(token) = header("x-nomad-token") {
        return Some(token.trim().to_owned());
    }
    let authorization = header("authorization")?;
    let (scheme, value) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(value.split_whitespace().next().unwrap_or("").to_owned())
}

/// The first value of `name` in a query string (Go's `url.Values.Get`),
/// percent-decoded; a name without `=` has the empty value.
fn first_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode(key) == name)
        .map(|(_, value)| percent_decode(value))
}

/// `application/x-www-form-urlencoded` decoding; a malformed escape is kept
/// as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => decoded.push(b' '),
            b'%' if let Some(byte) = text
                .get(at + 1..at + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok()) =>
            {
                decoded.push(byte);
                at += 2;
            }
            other => decoded.push(other),
        }
        at += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` (`5s`, `1m30s`, `1.5h`, `300ms`, `-2s`, `0`);
/// a negative duration comes back as zero, which Nomad treats alike.
pub(super) fn parse_go_duration(text: &str) -> Option<Duration> {
    const UNITS: [(&str, u128); 9] = [
        ("ns", 1),
        ("us", 1_000),
        ("\u{b5}s", 1_000),
        ("\u{3bc}s", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
        ("", 0),
    ];
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    // Nanoseconds as a fraction: whole part and up to 18 digits after the point.
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_end);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(end)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .filter(|scale| *scale > 0)?;
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut nanos = whole.checked_mul(scale)?;
        let mut place = scale;
        for digit in fraction.bytes().take(18) {
            place /= 10;
            nanos += u128::from(digit - b'0') * place;
        }
        total = total.checked_add(nanos)?;
        rest = after;
    }
    // Go's Duration is an int64 of nanoseconds.
    if total > i64::MAX as u128 {
        return None;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    u64::try_from(total).ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        let cases = [
            ("5s", Some(Duration::from_secs(5))),
            ("300ms", Some(Duration::from_millis(300))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1.5h", Some(Duration::from_secs(5400))),
            ("2\u{b5}s", Some(Duration::from_micros(2))),
            (".5s", Some(Duration::from_millis(500))),
            ("0", Some(Duration::ZERO)),
            ("-3s", Some(Duration::ZERO)),
            ("5", None),
            ("s", None),
            ("", None),
            ("5 s", None),
            ("5d", None),
            ("1.s", Some(Duration::from_secs(1))),
            ("3000000h", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), expected, "{text:?}");
        }
    }

    #[test]
    fn options_default_to_the_agents_region_and_the_default_namespace() {
        let options = QueryOptions::parse("", &HeaderMap::new(), "global").expect("parse");
        assert_eq!(options.region, "global");
        assert_eq!(options.namespace, "default");
        assert_eq!(options.min_index, 0);
        assert_eq!(options.time_to_block(), DEFAULT_QUERY_TIME);
    }

    #[test]
    fn query_values_are_percent_decoded_and_the_first_one_wins() {
        let options = QueryOptions::parse(
            "namespace=%2A&namespace=default&index=7&wait=10m",
            &HeaderMap::new(),
            "global",
        )
        .expect("parse");
        assert_eq!(options.namespace, "*");
        assert_eq!(options.min_index, 7);
        assert_eq!(options.time_to_block(), MAX_QUERY_TIME);
    }

    #[test]
    fn bad_index_wait_and_stale_are_refused_with_nomads_words() {
        let parse = |query: &str| QueryOptions::parse(query, &HeaderMap::new(), "global");
        assert_eq!(parse("index=-1"), Err(QueryError::Index));
        assert_eq!(parse("index=abc"), Err(QueryError::Index));
        assert_eq!(parse("wait=5"), Err(QueryError::Wait));
        assert_eq!(
            parse("stale=maybe").map(drop).unwrap_err().to_string(),
            "Expect `true` or `false` for `stale` query string parameter, got maybe"
        );
        assert!(parse("stale").is_ok());
    }

    #[test]
    fn the_token_comes_from_x_nomad_token_before_a_bearer_authorization() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "bEaReR  second  extra".parse().unwrap());
        assert_eq!(token(&headers).as_deref(), Some("second"));
        headers.insert("x-nomad-token", " first ".parse().unwrap());
        assert_eq!(token(&headers).as_deref(), Some("first"));

        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(token(&basic), None);
        assert!(!has_token(&basic));
    }
}

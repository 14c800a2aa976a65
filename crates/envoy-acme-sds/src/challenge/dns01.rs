//! DNS-01 through RFC 2136 dynamic updates, authenticated with TSIG (RFC 8945).
//!
//! All TXT records of one order go out in a single UPDATE message: servers
//! such as knot serialise updates behind the zone's NOTIFY schedule, so a
//! second update would wait for the first one's NOTIFY (most of a second).
//! After the update the solver asks the authoritative server until it serves
//! every value, then lets the CA validate: a CA that looks too early fails the
//! authorization and the order with it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{Challenge, ChallengeKind, ChallengeSolver, SolverError};
use crate::secret::Secret;

/// Allowed clock skew between us and the DNS server for TSIG, in seconds
/// (RFC 8945 recommends 300).
const TSIG_FUDGE: u16 = 300;

#[derive(Debug, thiserror::Error)]
pub enum Dns01Error {
    #[error("`{name}` is not inside the zone `{zone}` this solver updates")]
    OutsideZone { name: String, zone: String },
    #[error("invalid DNS name `{name}`: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("TSIG key: {0}")]
    Tsig(String),
    #[error("connecting to {server}: {reason}")]
    Connect { server: SocketAddr, reason: String },
    #[error("{what} to {server} failed: {reason}")]
    Exchange {
        what: &'static str,
        server: SocketAddr,
        reason: String,
    },
    #[error(
        "{server} refused the update with {rcode}{tsig_error} (check the TSIG key name, secret and algorithm, and the zone's update ACL)"
    )]
    Refused {
        server: SocketAddr,
        rcode: String,
        /// The TSIG error the server reported, e.g. `, TSIG error BADSIG`.
        tsig_error: String,
    },
    #[error("the response of {server} to the update failed TSIG verification: {reason}")]
    Unverified { server: SocketAddr, reason: String },
    #[error("TXT records {names:?} not served by {server} after {after:?}")]
    NotVisible {
        names: Vec<String>,
        server: SocketAddr,
        after: Duration,
    },
}

/// A TSIG key as BIND's and knot's configuration files spell it.
#[derive(Clone)]
pub struct TsigKey {
    name: Name,
    algorithm: TsigAlgorithm,
    secret: Secret<Vec<u8>>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name.to_ascii())
            .field("algorithm", &self.algorithm.to_name().to_ascii())
            .field("secret", &self.secret)
            .finish()
    }
}

impl TsigKey {
    /// `algorithm` is `hmac-sha256`, `hmac-sha384` or `hmac-sha512`;
    /// `secret_base64` the key as in `key { secret "..."; }`.
    pub fn new(name: &str, algorithm: &str, secret_base64: &str) -> Result<Self, Dns01Error> {
        let name = parse_fqdn(name)?;
        let algorithm = match algorithm
            .trim_end_matches('.')
            .to_ascii_lowercase()
            .as_str()
        {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(Dns01Error::Tsig(format!(
                    "unsupported algorithm `{other}` (use hmac-sha256, hmac-sha384 or hmac-sha512)"
                )));
            }
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_base64.trim())
            .map_err(|_| Dns01Error::Tsig("the secret is not valid base64".to_owned()))?;
        if secret.is_empty() {
            return Err(Dns01Error::Tsig("the secret is empty".to_owned()));
        }
        Ok(Self {
            name,
            algorithm,
            secret: Secret::new(secret),
        })
    }

    fn signer(&self) -> Result<TSigner, Dns01Error> {
        TSigner::new(
            self.secret.expose().clone(),
            self.algorithm.clone(),
            self.name.clone(),
            TSIG_FUDGE,
        )
        .map_err(|e| Dns01Error::Tsig(e.to_string()))
    }
}

/// Where and how to publish DNS-01 records.
#[derive(Debug, Clone)]
pub struct Rfc2136Config {
    /// The primary server accepting updates for `zone`.
    pub server: SocketAddr,
    /// The zone the `_acme-challenge` records are created in.
    pub zone: String,
    pub tsig: TsigKey,
    /// TTL of the TXT records; short, since they live for seconds.
    pub ttl: u32,
    /// The server asked whether the records are visible; the primary by default.
    /// Point it at the nameserver the CA will ask when secondaries lag.
    pub check_server: Option<SocketAddr>,
    /// How long to wait for the records to become visible.
    pub propagation_timeout: Duration,
    /// Timeout of one DNS exchange.
    pub request_timeout: Duration,
}

impl Rfc2136Config {
    pub fn new(server: SocketAddr, zone: impl Into<String>, tsig: TsigKey) -> Self {
        Self {
            server,
            zone: zone.into(),
            tsig,
            ttl: 60,
            check_server: None,
            propagation_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The DNS-01 solver speaking RFC 2136 to the zone's primary server.
#[derive(Debug)]
pub struct Rfc2136Solver {
    config: Rfc2136Config,
    zone: Name,
}

impl Rfc2136Solver {
    pub fn new(config: Rfc2136Config) -> Result<Self, Dns01Error> {
        let zone = parse_fqdn(&config.zone)?;
        // Fail on an unusable key at start-up rather than at the first renewal.
        config.tsig.signer()?;
        Ok(Self { config, zone })
    }

    /// The TXT records of `challenges`, grouped by owner name (an apex and its
    /// wildcard share one), each value once.
    fn records(&self, challenges: &[Challenge]) -> Result<BTreeMap<Name, Vec<String>>, Dns01Error> {
        let mut records: BTreeMap<Name, Vec<String>> = BTreeMap::new();
        for challenge in challenges {
            let name = parse_fqdn(&challenge.dns01_record_name())?;
            if !self.zone.zone_of(&name) {
                return Err(Dns01Error::OutsideZone {
                    name: challenge.dns01_record_name(),
                    zone: self.config.zone.clone(),
                });
            }
            let values = records.entry(name).or_default();
            let value = challenge.dns01_value();
            if !values.contains(&value) {
                values.push(value);
            }
        }
        Ok(records)
    }

    /// One UPDATE adding (or deleting) all `records`.
    fn update_message(&self, records: &BTreeMap<Name, Vec<String>>, add: bool) -> Message {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        message.add_zone(zone);
        for (name, values) in records {
            for value in values {
                let mut record = Record::from_rdata(
                    name.clone(),
                    self.config.ttl,
                    RData::TXT(TXT::new(vec![value.clone()])),
                );
                if !add {
                    // RFC 2136 §2.5.4: delete this RR from its RRset.
                    record.dns_class = DNSClass::NONE;
                    record.ttl = 0;
                }
                message.add_update(record);
            }
        }
        message.edns = Some(Edns::new());
        message
    }

    async fn send_update(&self, message: Message) -> Result<(), Dns01Error> {
        let server = self.config.server;
        let signer = self.config.tsig.signer()?;
        let response = exchange(
            server,
            Some(&signer),
            message,
            self.config.request_timeout,
            "update",
        )
        .await?;
        match response.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            rcode => Err(Dns01Error::Refused {
                server,
                rcode: rcode.to_string(),
                tsig_error: response
                    .signature
                    .as_ref()
                    .and_then(|tsig| tsig.data.error.as_ref())
                    .map(|error| format!(", TSIG error {error:?}"))
                    .unwrap_or_default(),
            }),
        }
    }

    /// Polls the check server until every value is served under its name.
    async fn wait_until_visible(
        &self,
        records: &BTreeMap<Name, Vec<String>>,
    ) -> Result<(), Dns01Error> {
        let server = self.config.check_server.unwrap_or(self.config.server);
        let started = Instant::now();
        let mut interval = Duration::from_millis(50);
        let mut pending: Vec<&Name> = records.keys().collect();
        loop {
            let mut still_pending = Vec::new();
            for name in pending {
                let served = self.served_txt_values(server, name).await?;
                let expected = records.get(name).map(Vec::as_slice).unwrap_or_default();
                if !expected.iter().all(|value| served.contains(value)) {
                    still_pending.push(name);
                }
            }
            if still_pending.is_empty() {
                debug!(elapsed = ?started.elapsed(), "DNS-01 records visible");
                return Ok(());
            }
            if started.elapsed() >= self.config.propagation_timeout {
                return Err(Dns01Error::NotVisible {
                    names: still_pending.iter().map(|n| n.to_ascii()).collect(),
                    server,
                    after: self.config.propagation_timeout,
                });
            }
            pending = still_pending;
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(Duration::from_secs(2));
        }
    }

    async fn served_txt_values(
        &self,
        server: SocketAddr,
        name: &Name,
    ) -> Result<Vec<String>, Dns01Error> {
        let mut message = Message::query();
        message.metadata.recursion_desired = false;
        message.add_query(Query::query(name.clone(), RecordType::TXT));
        let response = exchange(
            server,
            None,
            message,
            self.config.request_timeout,
            "TXT query",
        )
        .await?;
        Ok(response
            .answers
            .iter()
            .filter(|record| record.name == *name)
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }
}

#[async_trait]
impl ChallengeSolver for Rfc2136Solver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Dns01
    }

    async fn present(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        let records = self.records(challenges)?;
        if records.is_empty() {
            return Ok(());
        }
        self.send_update(self.update_message(&records, true))
            .await?;
        info!(
            server = %self.config.server,
            names = ?records.keys().map(Name::to_ascii).collect::<Vec<_>>(),
            "DNS-01 TXT records added"
        );
        Ok(())
    }

    async fn await_visible(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        let records = self.records(challenges)?;
        if records.is_empty() {
            return Ok(());
        }
        self.wait_until_visible(&records).await?;
        Ok(())
    }

    async fn cleanup(&self, challenges: &[Challenge]) -> Result<(), SolverError> {
        let records = self.records(challenges)?;
        if records.is_empty() {
            return Ok(());
        }
        // Deleting an absent RR is a no-op for the server (RFC 2136 §2.5.4).
        self.send_update(self.update_message(&records, false))
            .await?;
        debug!(server = %self.config.server, "DNS-01 TXT records removed");
        Ok(())
    }
}

fn parse_fqdn(name: &str) -> Result<Name, Dns01Error> {
    let mut parsed = Name::from_ascii(name).map_err(|e| Dns01Error::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// One request/response over TCP (RFC 7766 framing), TSIG-signed when
/// `signer` is given. TCP rather than UDP: an update must not be resent
/// blindly, and a TCP exchange fails fast and clearly.
///
/// A signed request's successful response must carry a valid TSIG. An error
/// response is returned as is: servers answer a bad signature with an
/// unsigned NOTAUTH, whose TSIG error code is what the operator needs to see.
async fn exchange(
    server: SocketAddr,
    signer: Option<&TSigner>,
    mut message: Message,
    timeout: Duration,
    what: &'static str,
) -> Result<Message, Dns01Error> {
    let failed = |reason: String| Dns01Error::Exchange {
        what,
        server,
        reason,
    };
    let mut verifier = match signer {
        Some(signer) => message
            .finalize(signer, unix_time_now())
            .map_err(|e| Dns01Error::Tsig(e.to_string()))?,
        None => None,
    };
    let request = message.to_vec().map_err(|e| failed(e.to_string()))?;
    let length =
        u16::try_from(request.len()).map_err(|_| failed("message too large".to_owned()))?;
    let round_trip = async {
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(|e| Dns01Error::Connect {
                server,
                reason: e.to_string(),
            })?;
        stream
            .write_all(&length.to_be_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
        stream
            .write_all(&request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut length = [0u8; 2];
        stream
            .read_exact(&mut length)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut response = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream
            .read_exact(&mut response)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok::<_, Dns01Error>(response)
    };
    let bytes = tokio::time::timeout(timeout, round_trip)
        .await
        .map_err(|_| failed(format!("no response within {timeout:?}")))??;
    let response =
        Message::from_vec(&bytes).map_err(|e| failed(format!("malformed response: {e}")))?;
    if response.metadata.id != message.metadata.id {
        return Err(failed("response to another request".to_owned()));
    }
    if response.metadata.response_code == ResponseCode::NoError
        && let Some(verifier) = verifier.as_mut()
    {
        verifier
            .verify(&bytes)
            .map_err(|e| Dns01Error::Unverified {
                server,
                reason: e.to_string(),
            })?;
    }
    Ok(response)
}

fn unix_time_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainName;

    fn solver() -> Rfc2136Solver {
        let key =
            TsigKey::new("update-key", "hmac-sha256", "c2VjcmV0c2VjcmV0c2VjcmV0").expect("key");
        Rfc2136Solver::new(Rfc2136Config::new(
            "127.0.0.1:53".parse().expect("addr"),
            "example.test",
            key,
        ))
        .expect("solver")
    }

    fn challenge(name: &str, key_authorization: &str) -> Challenge {
        Challenge::new(
            DomainName::parse(name).expect("name"),
            "token".to_owned(),
            key_authorization.to_owned(),
        )
    }

    #[test]
    fn apex_and_wildcard_share_one_record_name_in_one_update() {
        let solver = solver();
        let challenges = [
            challenge("example.test", "a.thumb"),
            challenge("*.example.test", "b.thumb"),
            challenge("www.example.test", "c.thumb"),
        ];
        let records = solver.records(&challenges).expect("records");
        assert_eq!(records.len(), 2);
        let apex = parse_fqdn("_acme-challenge.example.test").expect("name");
        assert_eq!(records[&apex].len(), 2);
        let message = solver.update_message(&records, true);
        assert_eq!(message.metadata.op_code, OpCode::Update);
        assert_eq!(message.updates().len(), 3);
        assert!(
            message
                .updates()
                .iter()
                .all(|r| r.dns_class == DNSClass::IN && r.ttl == 60)
        );
        let delete = solver.update_message(&records, false);
        assert!(
            delete
                .updates()
                .iter()
                .all(|r| r.dns_class == DNSClass::NONE && r.ttl == 0)
        );
    }

    #[test]
    fn names_outside_the_zone_are_refused_before_any_update() {
        let solver = solver();
        let err = solver
            .records(&[challenge("example.org", "a.thumb")])
            .expect_err("outside zone");
        assert!(matches!(err, Dns01Error::OutsideZone { .. }), "{err}");
    }

    #[test]
    fn tsig_key_errors_are_clear_and_debug_hides_the_secret() {
        assert!(TsigKey::new("k", "hmac-md5", "c2VjcmV0").is_err());
        assert!(TsigKey::new("k", "hmac-sha256", "not base64!").is_err());
        let key = TsigKey::new("k", "HMAC-SHA512.", "c2VjcmV0c2VjcmV0").expect("key");
        let debug = format!("{key:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}

//! An in-process stand-in for Nomad's HTTP API of native service discovery
//! (services with `provider = "nomad"`), for tests of its clients.
//!
//! No Nomad binary can be run in this project's tests (see
//! `docs/adr/0007-nomad-api-stand-in.md`), so this server reproduces what
//! Nomad 1.6.5 (the last open-source 1.6 release) answers, read from its
//! source: `command/agent/http.go`, `command/agent/service_registration_endpoint.go`,
//! `command/agent/alloc_endpoint.go`, `nomad/service_registration_endpoint.go`,
//! `nomad/rpc.go` (`blockingRPC`, `forward`), `nomad/acl.go`,
//! `nomad/state/state_store_service_registration.go` and
//! `nomad/structs/service_registration.go`.
//!
//! Served:
//! - `GET /v1/services`: `[{"Namespace","Services":[{"ServiceName","Tags"}]}]`,
//!   `[]` for a namespace without registrations; `?namespace=*` lists every
//!   namespace the token may read and drops the others silently (with none
//!   readable: `200 []` and `X-Nomad-Index: 0`, as Nomad answers).
//! - `GET /v1/service/:name`: the registrations (`ID`, `ServiceName`,
//!   `Namespace`, `NodeID`, `Datacenter`, `JobID`, `AllocID`, `Tags`,
//!   `Address`, `Port`, `CreateIndex`, `ModifyIndex`) by ID. `*` is not a
//!   wildcard here: Nomad looks up a namespace literally called `*` and
//!   answers `200 []`.
//! - `GET /v1/client/allocation/:id/checks`: check ID -> result (Nomad
//!   1.4+), not blocking, `404 Unknown allocation "id"` for an unknown one.
//! - Blocking queries (`?index=N&wait=D`, Go duration syntax, default and
//!   maximum 300s, plus up to `wait/16` of jitter). The index is the whole
//!   registrations table's, floored at 1; a query whose index is already
//!   above `N` answers at once. A blocked query wakes only when the part of
//!   the table it read changes (one service name, one namespace, or all for
//!   `*`), as go-memdb's watch channels wake it, and at its deadline it
//!   answers with the index of its last read. So a query on one service is
//!   not woken by another's change, but the next query carrying the old index
//!   returns at once with unchanged content and a higher index. An index above
//!   the table's (after a restore, [`FakeNomad::reset_index`]) blocks until
//!   the deadline and then answers with the lower index.
//! - `X-Nomad-Index`, `X-Nomad-KnownLeader: true`, `X-Nomad-LastContact: 0`
//!   on successful reads (a leader's answers).
//! - The token from `X-Nomad-Token`, else `Authorization: Bearer`; with ACLs
//!   on, `403 Permission denied` for a missing, unknown or insufficient token
//!   on the service endpoints (`403 ACL token not found` for an unknown one on
//!   the checks endpoint, which the client agent answers).
//! - `?region=` other than the agent's: `500 No path to region`.
//! - `400 Invalid index`, `400 Invalid wait time`, a bad `?stale`; `405
//!   Invalid method`; `400 missing service name` / `invalid URI`; `404` with
//!   an empty body for unknown paths.
//!
//! Not reproduced: `?filter=`, pagination (`per_page`, `next_token`),
//! `?choose=`, `?stale` (every answer is the leader's), `DELETE
//! /v1/service/:name/:id` (answered 405), ACL policies (a token lists the
//! namespaces it may read, `*` for all; [`FakeNomad::set_token`] changes
//! them while it runs), workload-identity claims, HTTP/2,
//! Raft (there is one server, and an index moves by one per write). Nomad
//! orders `/v1/services` by Go map iteration, that is randomly; here it is
//! sorted. A namespace exists here when it is `default` or holds
//! registrations; it matters only for `*` listings.

mod query;
mod state;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use self::query::{QueryError, QueryOptions, has_token};
use self::state::{Answer, Table, Watch};
use crate::tls::tls_acceptor;
use crate::{HarnessError, Result};

/// How the stand-in is set up.
#[derive(Debug, Clone)]
pub struct FakeNomadOptions {
    /// The agent's region; `?region=` naming another fails.
    pub region: String,
    /// ACLs on, with these tokens; `None` serves everyone.
    pub acl: Option<Acl>,
    /// HTTPS instead of HTTP.
    pub tls: Option<FakeNomadTls>,
    /// Where to listen; `None`: a free port. Given the address of a stand-in
    /// just dropped, it is that Nomad restarted (or restored) empty, at the
    /// same address.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for FakeNomadOptions {
    fn default() -> Self {
        Self {
            region: "global".to_owned(),
            acl: None,
            tls: None,
            listen: None,
        }
    }
}

/// The tokens an ACL-enabled agent knows, each with the namespaces it may
/// read (`read-job`); `*` stands for every namespace.
#[derive(Clone, Default)]
pub struct Acl {
    tokens: Vec<(String, BTreeSet<String>)>,
}

impl Acl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the token `secret`, which may read `namespaces`.
    pub fn token(mut self, secret: &str, namespaces: &[&str]) -> Self {
        let namespaces = namespaces.iter().map(|ns| (*ns).to_owned()).collect();
        self.tokens.retain(|(known, _)| known != secret);
        self.tokens.push((secret.to_owned(), namespaces));
        self
    }

    fn lookup(&self, secret: &str) -> Option<&BTreeSet<String>> {
        self.tokens
            .iter()
            .find(|(known, _)| known == secret)
            .map(|(_, namespaces)| namespaces)
    }
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out; what each token may read is enough to debug.
        let readable: Vec<&BTreeSet<String>> = self
            .tokens
            .iter()
            .map(|(_, namespaces)| namespaces)
            .collect();
        f.debug_struct("Acl").field("tokens", &readable).finish()
    }
}

/// The agent's HTTPS identity, and whether clients must present a
/// certificate (Nomad's `verify_https_client`).
#[derive(Debug, Clone)]
pub struct FakeNomadTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Client certificates must be signed by this CA; `None` asks for none.
    pub client_ca_pem: Option<String>,
}

impl FakeNomadTls {
    pub fn new(cert_pem: &str, key_pem: &str) -> Self {
        Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            client_ca_pem: None,
        }
    }

    /// Requires a client certificate signed by `ca_pem`.
    pub fn require_client_certificates(mut self, ca_pem: &str) -> Self {
        self.client_ca_pem = Some(ca_pem.to_owned());
        self
    }
}

/// One service registration, as a Nomad client registers it for an
/// allocation's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    pub service_name: String,
    pub namespace: String,
    pub node_id: String,
    pub datacenter: String,
    pub job_id: String,
    pub alloc_id: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
}

impl Registration {
    /// A registration of `service_name` at `address:port`, in namespace
    /// `default`, datacenter `dc1`, job `service_name`, with fresh node and
    /// allocation IDs and the ID Nomad would give it.
    pub fn new(service_name: &str, address: &str, port: u16) -> Self {
        let alloc_id = uuid();
        Self {
            id: service_id(&alloc_id, service_name),
            service_name: service_name.to_owned(),
            namespace: "default".to_owned(),
            node_id: uuid(),
            datacenter: "dc1".to_owned(),
            job_id: service_name.to_owned(),
            alloc_id,
            tags: Vec::new(),
            address: address.to_owned(),
            port,
        }
    }

    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    pub fn node_id(mut self, node_id: &str) -> Self {
        self.node_id = node_id.to_owned();
        self
    }

    pub fn datacenter(mut self, datacenter: &str) -> Self {
        self.datacenter = datacenter.to_owned();
        self
    }

    pub fn job_id(mut self, job_id: &str) -> Self {
        self.job_id = job_id.to_owned();
        self
    }

    /// Moves the registration to another allocation; an ID still derived
    /// from the old allocation follows it.
    pub fn alloc_id(mut self, alloc_id: &str) -> Self {
        if self.id == service_id(&self.alloc_id, &self.service_name) {
            self.id = service_id(alloc_id, &self.service_name);
        }
        self.alloc_id = alloc_id.to_owned();
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        self
    }
}

/// `_nomad-task-<alloc>-<task>-<service>-<port label>`, Nomad's
/// `MakeAllocServiceID`, for a task `app` and a port labelled `http`.
fn service_id(alloc_id: &str, service_name: &str) -> String {
    format!("_nomad-task-{alloc_id}-app-{service_name}-http")
}

/// A random UUID in Nomad's textual form.
fn uuid() -> String {
    let hex = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A check's last result (`structs.CheckStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Success,
    Failure,
    Pending,
}

impl CheckStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Pending => "pending",
        }
    }
}

/// Whether a failing check holds deployments back (`healthiness`, the
/// check's `on_update = "require_healthy"`) or not (`readiness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    Healthiness,
    Readiness,
}

impl CheckMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Healthiness => "healthiness",
            Self::Readiness => "readiness",
        }
    }
}

/// One check result of an allocation (`structs.CheckQueryResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocCheck {
    /// Nomad's is an MD5 of the check's definition, in hex.
    pub id: String,
    pub check: String,
    pub service: String,
    pub group: String,
    /// Empty for a group-level service (then left out of the JSON).
    pub task: String,
    pub mode: CheckMode,
    pub status: CheckStatus,
    /// The HTTP status of an HTTP check; 0 (left out of the JSON) otherwise.
    pub status_code: u16,
    pub output: String,
    /// Unix seconds of the result.
    pub timestamp: i64,
}

impl AllocCheck {
    /// A group-level `http` check named `check` of `service` with `status`,
    /// timestamped now.
    pub fn new(service: &str, check: &str, status: CheckStatus) -> Self {
        let (status_code, output) = match status {
            CheckStatus::Success => (200, "nomad: http ok"),
            CheckStatus::Failure => (503, "nomad: http 503"),
            CheckStatus::Pending => (0, ""),
        };
        Self {
            id: random_hex(16),
            check: check.to_owned(),
            service: service.to_owned(),
            group: "app".to_owned(),
            task: String::new(),
            mode: CheckMode::Healthiness,
            status,
            status_code,
            output: output.to_owned(),
            timestamp: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    pub fn task(mut self, task: &str) -> Self {
        self.task = task.to_owned();
        self
    }

    pub fn mode(mut self, mode: CheckMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn status_code(mut self, status_code: u16) -> Self {
        self.status_code = status_code;
        self
    }

    pub fn output(mut self, output: &str) -> Self {
        self.output = output.to_owned();
        self
    }

    fn to_json(&self) -> Value {
        let mut result = json!({
            "ID": self.id,
            "Check": self.check,
            "Service": self.service,
            "Group": self.group,
            "Mode": self.mode.as_str(),
            "Status": self.status.as_str(),
            "Output": self.output,
            "Timestamp": self.timestamp,
        });
        // Both carry `json:",omitempty"` in Nomad's struct.
        if self.status_code != 0 {
            result["StatusCode"] = json!(self.status_code);
        }
        if !self.task.is_empty() {
            result["Task"] = json!(self.task);
        }
        result
    }
}

/// One request the stand-in answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, so a test can check no token travels in it.
    pub query: String,
    /// Whether a token header Nomad reads came (its value is not kept).
    pub had_token: bool,
    pub status: u16,
}

/// What a test changes while the server runs, beside the table.
#[derive(Debug, Default)]
struct Controls {
    failure: Option<u16>,
    delay: Duration,
    requests: Vec<RecordedRequest>,
}

#[derive(Debug)]
struct Shared {
    region: String,
    /// Changed by [`FakeNomad::set_token`]; each request reads it once.
    acl: Mutex<Option<Acl>>,
    table: Mutex<Table>,
    controls: Mutex<Controls>,
    /// Bumped after every change of the table, so blocked queries look again.
    changes: watch::Sender<u64>,
    blocking_in_flight: AtomicUsize,
}

/// The stand-in, serving on 127.0.0.1; stops, dropping every connection,
/// when dropped.
pub struct FakeNomad {
    shared: Arc<Shared>,
    address: String,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeNomad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNomad")
            .field("address", &self.address)
            .field("region", &self.shared.region)
            .field("acl", &self.shared.acl)
            .finish_non_exhaustive()
    }
}

impl FakeNomad {
    /// Plain HTTP, no ACLs, region `global`.
    pub async fn start() -> Result<Self> {
        Self::start_with(FakeNomadOptions::default()).await
    }

    pub async fn start_with(options: FakeNomadOptions) -> Result<Self> {
        let listen = options
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(listen)
            .await
            .map_err(HarnessError::io("Nomad API listener"))?;
        let local = listener
            .local_addr()
            .map_err(HarnessError::io("Nomad API listener"))?;
        let acceptor = match &options.tls {
            Some(tls) => Some(tls_acceptor(
                &tls.cert_pem,
                &tls.key_pem,
                tls.client_ca_pem.as_deref(),
                &local.to_string(),
            )?),
            None => None,
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            region: options.region,
            acl: Mutex::new(options.acl),
            table: Mutex::new(Table::default()),
            controls: Mutex::new(Controls::default()),
            changes: watch::channel(0).0,
            blocking_in_flight: AtomicUsize::new(0),
        });
        let serving = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Owned here: aborting the accept loop drops every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = Arc::clone(&serving);
                        let acceptor = acceptor.clone();
                        connections.spawn(async move {
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(tls) = acceptor.accept(stream).await {
                                        serve(tls, shared).await;
                                    }
                                }
                                None => serve(stream, shared).await,
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self {
            shared,
            address: format!("{scheme}://{local}"),
            task,
        })
    }

    /// `http://127.0.0.1:<port>`, or `https://` with TLS.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Inserts or replaces by (namespace, ID); returns the table index after
    /// it (unchanged when the registration was already there as given).
    pub fn register(&self, registration: Registration) -> u64 {
        self.shared.change(|table| table.upsert(registration))
    }

    /// Removes one registration (unknown ones: no change); returns the index.
    pub fn deregister(&self, namespace: &str, id: &str) -> u64 {
        self.shared.change(|table| table.delete(namespace, id))
    }

    /// Removes every registration of the allocation in one write, and its
    /// check results, as Nomad does when an allocation stops.
    pub fn stop_allocation(&self, alloc_id: &str) -> u64 {
        self.shared.change(|table| table.stop_allocation(alloc_id))
    }

    /// What `/v1/client/allocation/:id/checks` answers from now on; the
    /// allocation is known from then on (in the namespace of its
    /// registrations, else `default`).
    pub fn set_allocation_checks(&self, alloc_id: &str, checks: Vec<AllocCheck>) {
        self.shared.table().set_checks(alloc_id, checks);
    }

    /// The registrations table's index (0 before the first write; answers
    /// floor it at 1).
    pub fn index(&self) -> u64 {
        self.shared.table().index()
    }

    /// As after a snapshot restore: the index becomes `to` and blocked
    /// queries read again (and, their index now above the table's, wait out
    /// their deadline).
    pub fn reset_index(&self, to: u64) {
        self.shared.change(|table| table.restore_index(to));
    }

    /// Gives the token `secret` the namespaces `namespaces` from now on
    /// (adding it if unknown), as an operator changing its policy: later
    /// requests are allowed what it allows, and a `*` listing leaves out
    /// the namespaces it no longer reads. A blocked query keeps what its
    /// token was allowed when it came in: Nomad resolves the token once per
    /// request (`listAllServiceRegistrations`, `handleMixedAuthEndpoint`),
    /// before it blocks. Without ACLs, nothing changes.
    pub fn set_token(&self, secret: &str, namespaces: &[&str]) {
        let mut acl = self
            .shared
            .acl
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = acl.take() {
            *acl = Some(known.token(secret, namespaces));
        }
    }

    /// Every request answers `status` (with a plain-text body) until `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.controls().failure = status;
    }

    /// Every request waits `delay` before being looked at.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.controls().delay = delay;
    }

    /// Every request answered so far, in order of answering.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.controls().requests.clone()
    }

    /// Blocking queries waiting for a change right now.
    pub fn blocking_queries_in_flight(&self) -> usize {
        self.shared.blocking_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeNomad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(shared.handle(request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// What an endpoint answers.
#[derive(Debug)]
enum Reply {
    /// `200` JSON; with the query meta headers when `index` is given.
    Json { index: Option<u64>, body: Value },
    /// An error, as Nomad writes them: status and plain text.
    Text { status: StatusCode, body: String },
}

impl Reply {
    fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self::Text {
            status,
            body: body.into(),
        }
    }

    fn permission_denied() -> Self {
        Self::text(StatusCode::FORBIDDEN, "Permission denied")
    }

    fn invalid_method() -> Self {
        Self::text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method")
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Self::Json { index, body } => {
                let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Some(index) = index {
                    headers.insert("x-nomad-index", index.into());
                    headers.insert("x-nomad-lastcontact", HeaderValue::from_static("0"));
                    headers.insert("x-nomad-knownleader", HeaderValue::from_static("true"));
                }
                response
            }
            Self::Text { status, body } => {
                let empty = body.is_empty();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                if !empty {
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                response
            }
        }
    }
}

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Self {
        Self::Json {
            index: Some(answer.index),
            body: answer.body,
        }
    }
}

impl From<QueryError> for Reply {
    fn from(error: QueryError) -> Self {
        Self::text(StatusCode::BAD_REQUEST, error.to_string())
    }
}

/// What the caller's token lets it read.
#[derive(Debug)]
enum Access {
    /// ACLs are off.
    Everything,
    /// These namespaces (`*`: all); none for an anonymous caller.
    Namespaces(BTreeSet<String>),
}

impl Access {
    /// `AllowNsOp(namespace, read-job)`; for `*`, whether any namespace is
    /// readable.
    fn can_read(&self, namespace: &str) -> bool {
        match self {
            Self::Everything => true,
            Self::Namespaces(readable) if namespace == "*" => !readable.is_empty(),
            Self::Namespaces(readable) => readable.contains("*") || readable.contains(namespace),
        }
    }

    /// The existing namespaces a `*` listing shows: `None` for all, an empty
    /// set when the token may read none of them.
    fn readable_of(&self, existing: BTreeSet<String>) -> Option<BTreeSet<String>> {
        match self {
            Self::Everything => None,
            Self::Namespaces(_) => Some(
                existing
                    .into_iter()
                    .filter(|namespace| self.can_read(namespace))
                    .collect(),
            ),
        }
    }
}

/// Why a token was refused before any permission was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UnknownToken;

/// Removes one from the count of blocked queries when the query answers or
/// its connection goes.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn controls(&self) -> MutexGuard<'_, Controls> {
        self.controls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change<R>(&self, change: impl FnOnce(&mut Table) -> R) -> R {
        let result = change(&mut self.table());
        self.changes.send_modify(|count| *count += 1);
        result
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let delay = self.controls().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let failure = self.controls().failure;
        let reply = match failure {
            Some(code) => Reply::text(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                format!("failure injected by the test: {code}"),
            ),
            None => self.route(&request).await,
        };
        let response = reply.into_response();
        self.controls().requests.push(RecordedRequest {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().unwrap_or("").to_owned(),
            had_token: has_token(request.headers()),
            status: response.status().as_u16(),
        });
        response
    }

    /// Nomad's mux: `/v1/services` exactly, `/v1/service/` and
    /// `/v1/client/allocation/` as prefixes, everything else a bare 404.
    async fn route(&self, request: &Request<Incoming>) -> Reply {
        let path = request.uri().path();
        let is_get = request.method() == Method::GET;
        if path == "/v1/services" {
            if !is_get {
                return Reply::invalid_method();
            }
            return self.read(request, ServiceRead::List).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/service/") {
            let parts: Vec<&str> = rest.split('/').collect();
            return match parts.as_slice() {
                [_] if !is_get => Reply::invalid_method(),
                [""] => Reply::text(StatusCode::BAD_REQUEST, "missing service name"),
                [name] => self.read(request, ServiceRead::ByName(name)).await,
                // Deleting a registration is not served (see the module doc).
                [_, _] => Reply::invalid_method(),
                _ => Reply::text(StatusCode::BAD_REQUEST, "invalid URI"),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/client/allocation/") {
            return match rest.split('/').collect::<Vec<_>>().as_slice() {
                [alloc_id, "checks"] => self.checks(request, alloc_id),
                _ => Reply::text(StatusCode::NOT_FOUND, "resource not found"),
            };
        }
        Reply::text(StatusCode::NOT_FOUND, "")
    }

    /// Parsing, region forwarding and authentication, in Nomad's order.
    fn authenticate(
        &self,
        request: &Request<Incoming>,
    ) -> std::result::Result<(QueryOptions, std::result::Result<Access, UnknownToken>), Reply> {
        let query = request.uri().query().unwrap_or("");
        let options = QueryOptions::parse(query, request.headers(), &self.region)?;
        if options.region != self.region {
            return Err(Reply::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to region",
            ));
        }
        let acl = self.acl.lock().unwrap_or_else(PoisonError::into_inner);
        let access = match &*acl {
            None => Ok(Access::Everything),
            Some(_) if options.token.is_empty() => Ok(Access::Namespaces(BTreeSet::new())),
            Some(acl) => acl
                .lookup(&options.token)
                .map(|readable| Access::Namespaces(readable.clone()))
                .ok_or(UnknownToken),
        };
        Ok((options, access))
    }

    async fn read(&self, request: &Request<Incoming>, read: ServiceRead<'_>) -> Reply {
        let (options, access) = match self.authenticate(request) {
            Ok(authenticated) => authenticated,
            Err(reply) => return reply,
        };
        let Ok(access) = access else {
            return Reply::permission_denied();
        };
        let namespace = options.namespace.clone();
        let wildcard_list = matches!(read, ServiceRead::List) && namespace == "*";
        if !wildcard_list && !access.can_read(&namespace) {
            return Reply::permission_denied();
        }
        let run = |table: &Table| match read {
            ServiceRead::List if wildcard_list => {
                match access.readable_of(table.namespaces()) {
                    Some(readable) if readable.is_empty() => Answer {
                        // Nomad returns before reading the table's index.
                        index: 0,
                        body: json!([]),
                        watch: Watch::Nothing,
                    },
                    readable => table.services_across(readable.as_ref()),
                }
            }
            ServiceRead::List => table.services_in(&namespace),
            ServiceRead::ByName(name) => table.service(&namespace, name),
        };
        self.blocking(&options, run).await.into()
    }

    /// `blockingRPC`: read; while the index is not above the requested one,
    /// wait for the read part of the table to change, or the deadline.
    async fn blocking(&self, options: &QueryOptions, run: impl Fn(&Table) -> Answer) -> Answer {
        let read = || {
            let table = self.table();
            // Subscribed under the lock: no change can slip in unseen.
            let changes = self.changes.subscribe();
            let answer = run(&table);
            let seen = table.watch_sequence(&answer.watch);
            (answer, seen, changes)
        };
        let (mut answer, mut seen, mut changes) = read();
        if options.min_index == 0 || answer.index > options.min_index {
            return answer;
        }
        let wait = options.time_to_block();
        let jitter_range = wait.as_nanos() / u128::from(query::JITTER_FRACTION);
        let jitter = match u64::try_from(jitter_range) {
            Ok(0) | Err(_) => Duration::ZERO,
            Ok(range) => Duration::from_nanos(rand::random::<u64>() % range),
        };
        let deadline = tokio::time::Instant::now() + wait + jitter;
        let _in_flight = InFlight::enter(&self.blocking_in_flight);
        while answer.index <= options.min_index {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.table().watch_sequence(&answer.watch) != seen {
                        (answer, seen, changes) = read();
                    }
                }
            }
        }
        answer
    }

    /// `/v1/client/allocation/:id/checks`, answered by the client agent
    /// running the allocation: the allocation first, then the token.
    fn checks(&self, request: &Request<Incoming>, alloc_id: &str) -> Reply {
        if request.method() != Method::GET {
            return Reply::invalid_method();
        }
        let (_, access) = match self.authenticate(request) {
            Ok(authenticated) => authenticated,
            Err(reply) => return reply,
        };
        let table = self.table();
        let Some(namespace) = table.alloc_namespace(alloc_id) else {
            return Reply::text(
                StatusCode::NOT_FOUND,
                format!("Unknown allocation \"{alloc_id}\""),
            );
        };
        match access {
            Err(UnknownToken) => Reply::text(StatusCode::FORBIDDEN, "ACL token not found"),
            Ok(access) if !access.can_read(namespace) => Reply::permission_denied(),
            Ok(_) => Reply::Json {
                index: None,
                body: table.checks_json(alloc_id),
            },
        }
    }
}

/// Which registrations read asks for.
#[derive(Debug, Clone, Copy)]
enum ServiceRead<'a> {
    List,
    ByName(&'a str),
}

#[cfg(test)]
mod tests;

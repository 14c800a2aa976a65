//! A constant-rate HTTP load generator that classifies every outcome.
//!
//! A request fails "for a reason other than the backend's own deliberate
//! error" when it gets anything but a 2xx or a 500 marked with
//! [`DELIBERATE_ERROR_HEADER`]; that count is what gateway tests assert on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::DELIBERATE_ERROR_HEADER;

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub url: Uri,
    pub requests_per_second: u32,
    pub duration: Duration,
    /// Requests in flight at most; beyond it the generator waits (and says so).
    pub max_in_flight: usize,
    pub timeout: Duration,
}

/// What happened to the requests sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    /// 500s the backend marked as deliberate.
    pub deliberate_errors: u64,
    /// Everything else, by reason (`status 503`, `timeout`, `connect: ...`).
    pub failures: BTreeMap<String, u64>,
    /// Latencies of completed requests, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The latency at quantile `q` (0.0..=1.0), if any request completed.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(Duration::from_micros(self.latencies_us[index]))
    }

    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} deliberate-500 {} failed {} p50 {:?} p99 {:?}{}",
            self.sent,
            self.ok,
            self.deliberate_errors,
            self.failed(),
            self.latency_quantile(0.5).unwrap_or_default(),
            self.latency_quantile(0.99).unwrap_or_default(),
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" reasons {:?}", self.failures)
            }
        )
    }
}

/// Sends `plan.requests_per_second` requests per second for `plan.duration`.
pub async fn run(plan: LoadPlan) -> LoadReport {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let permits = Arc::new(Semaphore::new(plan.max_in_flight.max(1)));
    let interval = Duration::from_secs_f64(1.0 / f64::from(plan.requests_per_second.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = Instant::now() + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < deadline {
        ticker.tick().await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let url = plan.url.clone();
        let report = report.clone();
        let timeout = plan.timeout;
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(timeout, request(&client, url)).await;
            let elapsed = started.elapsed();
            let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
            report.sent += 1;
            match outcome {
                Err(_) => *report.failures.entry("timeout".to_owned()).or_default() += 1,
                Ok(Err(reason)) => *report.failures.entry(reason).or_default() += 1,
                Ok(Ok(Outcome::Ok)) => {
                    report.ok += 1;
                    report.latencies_us.push(elapsed.as_micros() as u64);
                }
                Ok(Ok(Outcome::Deliberate)) => {
                    report.deliberate_errors += 1;
                    report.latencies_us.push(elapsed.as_micros() as u64);
                }
            }
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut report = Arc::try_unwrap(report)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_else(|shared| shared.lock().unwrap_or_else(|e| e.into_inner()).clone());
    report.latencies_us.sort_unstable();
    report
}

enum Outcome {
    Ok,
    Deliberate,
}

async fn request(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: Uri,
) -> Result<Outcome, String> {
    let response = client.get(url).await.map_err(|e| {
        // The error chain's innermost cause is the useful part ("connection refused").
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            reason = inner.to_string();
            source = inner.source();
        }
        format!("transport: {reason}")
    })?;
    let status = response.status();
    let deliberate = response.headers().contains_key(DELIBERATE_ERROR_HEADER);
    // Read the body so the connection returns to the pool.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(Outcome::Ok)
    } else if status.as_u16() == 500 && deliberate {
        Ok(Outcome::Deliberate)
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

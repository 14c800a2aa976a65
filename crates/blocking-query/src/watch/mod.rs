//! Blocking-query watches as `Stream`s of [`WatchEvent`]s.
//!
//! [`watch`] takes a function that performs one query with the index (and
//! `wait`) it is given and returns the answer's value, index and whatever
//! else the API says about it; it calls it again and again, following the
//! index rules, rate-limiting itself and backing off on errors. The
//! protocol clients wrap it: `consul-client` for Consul's endpoints,
//! `nomad-client` for Nomad's.
//!
//! Layout: [`index`] holds the index rules (pure), [`backoff`] the retry
//! delays (pure), `machine` the state machine (pure), `unchanged` the
//! content filter (pure), and this module the driver that performs
//! requests and sleeps.

pub mod backoff;
mod event;
pub mod index;
mod machine;
mod unchanged;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::time::Instant;

pub use backoff::Backoff;
pub use event::{Continuity, WatchEvent};

use self::machine::{State, Timing};
use self::unchanged::ContentFilter;

/// What one request of a watch must ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryIndex {
    /// `?index=`: 0 for a plain read that answers at once; above 0 for a
    /// blocking query, held until the data's index exceeds it.
    pub index: u64,
    /// `?wait=` of a blocking query (ignored by a plain read).
    pub wait: Duration,
}

/// One successful answer, as the watch needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T, M> {
    pub value: T,
    /// The answer's index header as sent, `None` when missing (see
    /// [`index::sanitize`] for what the watch makes of it).
    pub index: Option<u64>,
    /// Whatever else the API said about the answer (headers), passed on in
    /// [`WatchEvent::Value::meta`].
    pub meta: M,
}

/// How a watch queries and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// `?wait=` of each blocking query (Consul caps it at 10 minutes, Nomad
    /// at 5).
    pub wait: Duration,
    /// The rate limit, so a fast-changing index cannot make the watch spin:
    /// no three requests start within one `min_interval`. A change is
    /// followed up at once unless the two requests before already started
    /// within the last `min_interval`; an index that keeps moving is read
    /// at most twice per interval.
    pub min_interval: Duration,
    /// Delays between attempts while requests fail; reset by a success.
    pub backoff: Backoff,
}

/// Both Consul's and Nomad's default `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            wait: DEFAULT_WAIT,
            min_interval: Duration::from_millis(50),
            backoff: Backoff::default(),
        }
    }
}

/// A running watch yielding values of type `T`, errors of type `E` and
/// answer metadata of type `M`. Dropping it cancels the request in flight.
///
/// Like any `Stream` it only works while polled: the next blocking query
/// goes out when the consumer asks for the next event. Drive it
/// continuously (in its own task) so a query is always in flight.
///
/// A server that restarts under an in-flight query fails it, and the retry
/// (a plain read) notices the lower index at once. A server replaced in the
/// gap *between* two queries (or while the watch is not polled) receives a
/// blocking query on an index it has not reached; Consul and Nomad hold
/// such a query for its whole `wait`, and the reset is seen when it answers.
pub struct Watch<T, E, M> {
    events: BoxStream<'static, WatchEvent<T, E, M>>,
}

impl<T, E, M> fmt::Debug for Watch<T, E, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl<T, E, M> Stream for Watch<T, E, M> {
    type Item = WatchEvent<T, E, M>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
}

impl<T, E, M> Watch<T, E, M>
where
    T: PartialEq + Send + Sync + 'static,
    E: Send + 'static,
    M: Send + 'static,
{
    /// Drops the values whose content equals the last one yielded while the
    /// index merely moved on ([`Continuity::Advanced`]).
    ///
    /// For APIs whose index covers more than the data read: Nomad's
    /// `/v1/service/:name` carries the index of the whole registrations
    /// table, so another service's change makes the next blocking query
    /// return at once with a higher index and the same registrations. A
    /// value that breaks continuity ([`Continuity::breaks_continuity`]) and
    /// every [`WatchEvent::Degraded`] is always passed on: the consumer
    /// must learn of a reset or a recovery even when the data looks the
    /// same.
    pub fn skip_unchanged(self) -> Self {
        let mut filter = ContentFilter::default();
        let events = self
            .events
            .filter(move |event| futures::future::ready(filter.admit(event)));
        Self {
            events: events.boxed(),
        }
    }
}

/// Watches whatever `fetch` reads: it is called with the index and wait of
/// each request and must send them (as `?index=` and `?wait=` when the index
/// is above 0). The stream never ends by itself.
pub fn watch<T, E, M, F, Fut>(config: WatchConfig, fetch: F) -> Watch<T, E, M>
where
    T: Send + Sync + 'static,
    E: fmt::Display + Send + 'static,
    M: Send + 'static,
    F: FnMut(QueryIndex) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Answer<T, M>, E>> + Send + 'static,
{
    let config = Arc::new(config);
    let events = futures::stream::unfold(
        (State::Initial, fetch, config),
        |(mut state, mut fetch, config)| async move {
            loop {
                let next = state.next_request();
                // A deadline already past (the usual case: the query blocked
                // longer than the interval) is not slept on: tokio rounds
                // deadlines up to its millisecond tick and may fire them only
                // on the timer driver's next turn.
                if let Some(at) = next.not_before.filter(|at| *at > Instant::now()) {
                    tokio::time::sleep_until(at).await;
                }
                let request = QueryIndex {
                    index: next.index,
                    wait: config.wait,
                };
                let started = Instant::now();
                let outcome = fetch(request).await;
                let timing = Timing {
                    started,
                    finished: Instant::now(),
                };
                if let Err(error) = &outcome {
                    tracing::debug!(%error, "watch request failed");
                }
                let (next_state, event) = state.step(outcome, timing, &config, rand::random());
                state = next_state;
                if let Some(event) = event {
                    return Some((event, (state, fetch, config)));
                }
            }
        },
    );
    Watch {
        events: events.boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::future::BoxFuture;

    type Reply<T> = BoxFuture<'static, Result<Answer<T, ()>, String>>;

    /// The blocking-query semantics in memory: an index that a test moves,
    /// answered at once for a plain read or an index already passed, and
    /// otherwise when the index moves (or after `wait`). The value is what
    /// `content` makes of the index.
    fn fake_server<T: Send + 'static>(
        index: &tokio::sync::watch::Sender<u64>,
        content: fn(u64) -> T,
    ) -> impl FnMut(QueryIndex) -> Reply<T> + Send + 'static {
        let index = index.clone();
        move |request| {
            let mut current = index.subscribe();
            async move {
                if request.index > 0 {
                    let moved = current.wait_for(|now| *now > request.index);
                    let _ = tokio::time::timeout(request.wait, moved).await;
                }
                let now = *current.borrow();
                Ok(Answer {
                    value: content(now),
                    index: Some(now),
                    meta: (),
                })
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_shortly_after_the_last_one_seen_is_read_at_once() {
        // The convergence bench's loop: a change, then the next one about
        // 30 ms after the watch reported it (less than `min_interval`). The
        // watch runs in its own task, as consul-eds-server drives it, so its
        // next blocking query is in flight whenever the rate limit allows.
        let (index, _) = tokio::sync::watch::channel(1u64);
        let config = WatchConfig {
            min_interval: Duration::from_millis(50),
            ..WatchConfig::default()
        };
        let mut changes = watch(config, fake_server(&index, |n| n));
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(event) = changes.next().await {
                if let WatchEvent::Value { index, .. } = event {
                    let _ = seen_tx.send((index, Instant::now()));
                }
            }
        });
        let (first, _) = seen.recv().await.expect("the initial read");
        assert_eq!(first, 1);

        let mut late = Vec::new();
        for n in 2..=12u64 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let changed = Instant::now();
            index.send_replace(n);
            let (seen_index, at) = seen.recv().await.expect("the watch keeps running");
            assert_eq!(seen_index, n, "every change is reported, in order");
            late.push(at - changed);
        }
        driver.abort();
        assert!(
            late.iter().all(|d| d.is_zero()),
            "each change must be read as it happens, not after the rate limit's \
             wait; delays: {late:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn skip_unchanged_yields_only_what_differs_from_the_last_value() {
        // Content changes only at even indexes: odd ones are another
        // service's change moving a shared index.
        let (index, _) = tokio::sync::watch::channel(2u64);
        let mut values =
            watch(WatchConfig::default(), fake_server(&index, |n| n / 2)).skip_unchanged();
        let first = values.next().await.expect("initial");
        assert!(matches!(
            first,
            WatchEvent::Value {
                index: 2,
                continuity: Continuity::Initial,
                ..
            }
        ));
        index.send_replace(3);
        let quiet = tokio::time::timeout(Duration::from_secs(60), values.next()).await;
        assert!(
            quiet.is_err(),
            "index 3 carries the same content: {quiet:?}"
        );
        index.send_replace(4);
        match values.next().await.expect("a change") {
            WatchEvent::Value {
                value,
                index,
                continuity,
                ..
            } => assert_eq!((*value, index, continuity), (2, 4, Continuity::Advanced)),
            other => panic!("expected a value, got {other:?}"),
        }
    }
}

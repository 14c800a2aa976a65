//! The DC-wide view's targeted reads: which covered service is read next,
//! and how many are read at once.
//!
//! Rules:
//! - At most one read per service is in flight, so a service's answers
//!   arrive in the order they were read: an older answer arriving after a
//!   newer one would look like Consul's index going backwards. A read asked
//!   for while one is in flight follows it.
//! - At most [`READS_IN_FLIGHT`] at once, of which a sweep takes at most
//!   [`SWEEP_READS_IN_FLIGHT`]: reads a change or a new subscriber asks for
//!   go before a sweep's and never wait for a whole round of them.
//!
//! No I/O of its own: the read is a function the view passes in, so the
//! rules are tested with futures a test completes by hand.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

/// Targeted reads in flight at once: enough to sweep thousands of services
/// in about a second, few enough to leave the agent's budget to others.
pub(super) const READS_IN_FLIGHT: usize = 16;
/// Of those, the most a sweep may take: the rest stay free for reads that
/// a change or a new subscriber asks for, even while a slow agent holds
/// every sweep read for a while.
pub(super) const SWEEP_READS_IN_FLIGHT: usize = 12;

/// Why a service is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Priority {
    /// A periodic sweep of every covered service.
    Sweep,
    /// A change concerns the service, or it has a new subscriber.
    Prompt,
}

#[derive(Debug)]
enum ReadState {
    Queued(Priority),
    /// `again`: asked for once more meanwhile, with this priority.
    InFlight {
        again: Option<Priority>,
    },
}

type Read<A> = Box<dyn Fn(Arc<str>) -> BoxFuture<'static, A> + Send>;

/// Queued and running reads, each answer of type `A`.
pub(super) struct TargetedReads<A> {
    read: Read<A>,
    prompt: VecDeque<Arc<str>>,
    /// May hold names already read since (moved to `prompt`): those are
    /// skipped, their state says so.
    sweep: VecDeque<Arc<str>>,
    /// Services queued or in flight; any other is idle.
    states: HashMap<Arc<str>, ReadState>,
    in_flight: FuturesUnordered<BoxFuture<'static, (Arc<str>, Priority, A)>>,
    sweeps_in_flight: usize,
}

impl<A: Send + 'static> TargetedReads<A> {
    pub(super) fn new<F, Fut>(read: F) -> Self
    where
        F: Fn(Arc<str>) -> Fut + Send + 'static,
        Fut: Future<Output = A> + Send + 'static,
    {
        Self {
            read: Box::new(move |service| Box::pin(read(service))),
            prompt: VecDeque::new(),
            sweep: VecDeque::new(),
            states: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            sweeps_in_flight: 0,
        }
    }

    #[cfg(test)]
    /// Whether no read is queued or in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.states.is_empty()
    }

    /// Asks for a read of `service`, started at once if the limits allow.
    pub(super) fn ask(&mut self, service: &str, priority: Priority) {
        match self.states.get_mut(service) {
            None => {
                let service: Arc<str> = service.into();
                self.states
                    .insert(Arc::clone(&service), ReadState::Queued(priority));
                self.queue(priority).push_back(service);
            }
            Some(ReadState::Queued(queued)) => {
                if priority > *queued {
                    *queued = priority;
                    self.prompt.push_back(service.into());
                }
            }
            Some(ReadState::InFlight { again }) => {
                *again = (*again).max(Some(priority));
            }
        }
        self.start();
    }

    /// The next answer, with the service it is for. Never ready while
    /// nothing is in flight. Cancel-safe: an answer taken is returned in
    /// the same poll.
    pub(super) async fn next(&mut self) -> (Arc<str>, A) {
        let Some((service, priority, answer)) = self.in_flight.next().await else {
            return std::future::pending().await;
        };
        if priority == Priority::Sweep {
            self.sweeps_in_flight -= 1;
        }
        if let Some(ReadState::InFlight { again: Some(again) }) = self.states.remove(&service) {
            self.states
                .insert(Arc::clone(&service), ReadState::Queued(again));
            self.queue(again).push_back(Arc::clone(&service));
        }
        self.start();
        (service, answer)
    }

    fn queue(&mut self, priority: Priority) -> &mut VecDeque<Arc<str>> {
        match priority {
            Priority::Prompt => &mut self.prompt,
            Priority::Sweep => &mut self.sweep,
        }
    }

    fn start(&mut self) {
        while self.in_flight.len() < READS_IN_FLIGHT {
            let Some((service, priority)) = self.pop() else {
                return;
            };
            self.states
                .insert(Arc::clone(&service), ReadState::InFlight { again: None });
            if priority == Priority::Sweep {
                self.sweeps_in_flight += 1;
            }
            let read = (self.read)(Arc::clone(&service));
            self.in_flight
                .push(Box::pin(async move { (service, priority, read.await) }));
        }
    }

    /// The next queued read the limits allow.
    fn pop(&mut self) -> Option<(Arc<str>, Priority)> {
        for priority in [Priority::Prompt, Priority::Sweep] {
            if priority == Priority::Sweep && self.sweeps_in_flight >= SWEEP_READS_IN_FLIGHT {
                return None;
            }
            while let Some(service) = self.queue(priority).pop_front() {
                if matches!(self.states.get(&service), Some(ReadState::Queued(p)) if *p == priority)
                {
                    return Some((service, priority));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// A started read: its service, and what answers it.
    type Gate = (String, oneshot::Sender<()>);

    /// Reads that each wait until the test answers them.
    #[derive(Clone, Default)]
    struct Gates(Arc<Mutex<Vec<Gate>>>);

    impl Gates {
        fn reads(&self) -> TargetedReads<()> {
            let gates = self.clone();
            TargetedReads::new(move |service: Arc<str>| {
                let (open, opened) = oneshot::channel();
                gates.lock().push((service.to_string(), open));
                async move {
                    let _ = opened.await;
                }
            })
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Gate>> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// The services whose reads were started, in order.
        fn started(&self) -> Vec<String> {
            self.lock().iter().map(|(s, _)| s.clone()).collect()
        }

        fn answer(&self, service: &str) {
            let mut gates = self.lock();
            let at = gates
                .iter()
                .position(|(s, _)| s == service)
                .expect("a read in flight");
            let (_, open) = gates.remove(at);
            let _ = open.send(());
        }
    }

    async fn next_answer(reads: &mut TargetedReads<()>) -> String {
        let (service, ()) = tokio::time::timeout(Duration::from_secs(5), reads.next())
            .await
            .expect("an answer");
        service.to_string()
    }

    #[tokio::test]
    async fn one_read_per_service_at_a_time_and_one_more_if_asked_meanwhile() {
        let gates = Gates::default();
        let mut reads = gates.reads();
        reads.ask("web", Priority::Prompt);
        reads.ask("web", Priority::Prompt);
        reads.ask("web", Priority::Sweep);
        assert_eq!(gates.started(), ["web"], "one read in flight");

        gates.answer("web");
        assert_eq!(next_answer(&mut reads).await, "web");
        assert_eq!(
            gates.started(),
            ["web"],
            "the read asked for meanwhile follows, once"
        );
        gates.answer("web");
        assert_eq!(next_answer(&mut reads).await, "web");
        assert!(gates.started().is_empty(), "nothing more was asked");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), reads.next())
                .await
                .is_err(),
            "no answer while nothing is in flight"
        );
    }

    #[tokio::test]
    async fn prompt_reads_go_first_and_a_sweep_leaves_room_for_them() {
        let gates = Gates::default();
        let mut reads = gates.reads();
        let covered: Vec<String> = (0..40).map(|n| format!("s{n}")).collect();
        for service in &covered {
            reads.ask(service, Priority::Sweep);
        }
        assert_eq!(
            gates.started(),
            covered[..SWEEP_READS_IN_FLIGHT],
            "a sweep takes only its share of the reads"
        );

        // A new subscriber, and a change to a service the sweep has not
        // reached yet: both are read at once.
        reads.ask("fresh", Priority::Prompt);
        reads.ask("s30", Priority::Prompt);
        let started = gates.started();
        assert_eq!(started[SWEEP_READS_IN_FLIGHT..], ["fresh", "s30"]);

        // The sweep goes on where it was, without reading s30 again.
        gates.answer("s0");
        assert_eq!(next_answer(&mut reads).await, "s0");
        assert_eq!(gates.started().last().map(String::as_str), Some("s12"));
        let mut answered = vec!["s0".to_owned()];
        while answered.len() < covered.len() + 1 {
            let started = gates.started();
            assert!(started.len() <= READS_IN_FLIGHT, "{started:?}");
            gates.answer(&started[0]);
            answered.push(next_answer(&mut reads).await);
        }
        answered.sort();
        let mut expected: Vec<String> = covered.clone();
        expected.push("fresh".to_owned());
        expected.sort();
        assert_eq!(answered, expected, "each service read exactly once");
    }
}

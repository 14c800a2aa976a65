//! The last reconciliation outcome of each certificate, for the status
//! page: only the replica that renews has any.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use time::OffsetDateTime;

use crate::manager::{Outcome, RenewalObserver};
use crate::store::SecretName;

/// One certificate's last outcome, as words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastOutcome {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `issued`, `unchanged` or `failed`.
    pub result: &'static str,
    /// The serial issued, the renewal time, or the error and the retry.
    pub detail: String,
}

/// Records every outcome; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LastOutcomes(Arc<Mutex<BTreeMap<String, LastOutcome>>>);

impl LastOutcomes {
    pub fn get(&self, name: &str) -> Option<LastOutcome> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

impl RenewalObserver for LastOutcomes {
    fn observe(&self, name: &SecretName, outcome: &Outcome) {
        let (result, detail) = match outcome {
            Outcome::Issued { serial, .. } => ("issued", format!("serial {serial}")),
            Outcome::Unchanged { renew_at, .. } => ("unchanged", format!("renews at {renew_at}")),
            Outcome::Failed {
                error,
                consecutive_failures,
                retry_at,
            } => (
                "failed",
                format!("{error} ({consecutive_failures} in a row; retry at {retry_at})"),
            ),
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name.as_str().to_owned(),
                LastOutcome {
                    at: OffsetDateTime::now_utc(),
                    result,
                    detail,
                },
            );
    }
}

/// Tells every observer in turn.
#[derive(Debug)]
pub struct Observers(pub Vec<Arc<dyn RenewalObserver>>);

impl RenewalObserver for Observers {
    fn observe(&self, name: &SecretName, outcome: &Outcome) {
        for observer in &self.0 {
            observer.observe(name, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_outcome_replaces_the_one_before() {
        let outcomes = LastOutcomes::default();
        let observers = Observers(vec![Arc::new(outcomes.clone())]);
        let name = SecretName::new("new.demo.test").expect("name");
        let now = OffsetDateTime::now_utc();
        observers.observe(
            &name,
            &Outcome::Issued {
                serial: "0a".to_owned(),
                next_check: now,
                timings: crate::timings::IssuanceTimings::default(),
            },
        );
        let last = outcomes.get("new.demo.test").expect("recorded");
        assert_eq!((last.result, last.detail.as_str()), ("issued", "serial 0a"));
        observers.observe(
            &name,
            &Outcome::Unchanged {
                renew_at: now,
                next_check: now,
            },
        );
        assert_eq!(
            outcomes.get("new.demo.test").expect("recorded").result,
            "unchanged"
        );
        assert!(outcomes.get("other").is_none());
    }
}

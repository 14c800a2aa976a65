//! Small clock helpers the services' actors share.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever when there is none.
///
/// Why: a `select!` arm for an optional timer (a coalescing flush, a sweep)
/// reads as one line with this, and an absent timer never fires.
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Seconds since the Unix epoch by the wall clock, for status pages and
/// metrics (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_until_the_deadline_and_never_without_one() {
        let start = Instant::now();
        sleep_until_opt(Some(start + Duration::from_secs(3))).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));

        let never = tokio::time::timeout(Duration::from_secs(3600), sleep_until_opt(None)).await;
        assert!(never.is_err(), "no deadline must never wake");
    }

    #[test]
    fn unix_now_is_after_2020() {
        assert!(unix_now() > 1_577_836_800);
    }
}

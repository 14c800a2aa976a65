//! When to ask the CA again about an order it is working on (validating
//! its authorizations, RFC 8555 §7.5.1, or issuing after finalization,
//! §7.4): soon at first, since a nearby CA answers within tens of
//! milliseconds, then backing off, so a public CA that takes seconds is not
//! asked many times a second; and when the CA sends `Retry-After` with the
//! order, when it says (§8.2), bounded so one odd header cannot park the
//! order for hours.
//!
//! The schedule is a pure function of the attempt and the CA's hint; the
//! loop that sleeps and asks lives with the order.

use std::time::Duration;

/// The first poll comes this soon after the request that started the wait.
const FIRST_DELAY: Duration = Duration::from_millis(50);
/// Each delay without a hint is this much longer than the one before...
const BACKOFF_NUMERATOR: u32 = 3;
const BACKOFF_DENOMINATOR: u32 = 2;
/// ...up to this: a public CA validating for a minute is asked every 2 s.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// The longest `Retry-After` honoured as said; longer ones are cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The delay before poll number `attempt` (0 for the first after the
/// request that started the wait), given the `Retry-After` the CA sent
/// with its last answer about the order, if any.
///
/// The hint is a floor: never asked sooner than the CA said, nor sooner
/// than the backoff, so a CA answering `Retry-After: 0` to every poll is
/// not asked in a tight loop.
pub(super) fn poll_delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = backoff(attempt);
    match retry_after {
        Some(hint) => hint.min(MAX_RETRY_AFTER).max(backoff),
        None => backoff,
    }
}

fn backoff(attempt: u32) -> Duration {
    let mut delay = FIRST_DELAY;
    for _ in 0..attempt {
        delay = delay * BACKOFF_NUMERATOR / BACKOFF_DENOMINATOR;
        if delay >= MAX_DELAY {
            return MAX_DELAY;
        }
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn polls_soon_then_backs_off_to_a_cap() {
        let schedule: Vec<Duration> = (0..12).map(|attempt| poll_delay(attempt, None)).collect();
        assert_eq!(
            schedule,
            [
                ms(50),
                ms(75),
                // 112.5 ms: Duration keeps the nanoseconds.
                Duration::from_micros(112_500),
                Duration::from_micros(168_750),
                Duration::from_micros(253_125),
                Duration::from_nanos(379_687_500),
                Duration::from_nanos(569_531_250),
                Duration::from_nanos(854_296_875),
                Duration::from_nanos(1_281_445_312),
                Duration::from_nanos(1_922_167_968),
                ms(2000),
                ms(2000),
            ]
        );
        // Within a quarter second a nearby CA is asked four times.
        let first_four: Duration = schedule[..4].iter().sum();
        assert!(first_four < ms(410), "{first_four:?}");
        assert_eq!(poll_delay(u32::MAX, None), MAX_DELAY);
    }

    #[test]
    fn retry_after_is_a_floor_of_up_to_a_minute() {
        assert_eq!(
            poll_delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        // A hint shorter than the backoff does not speed polling up, and
        // zero does not make it a tight loop.
        assert_eq!(poll_delay(10, Some(ms(200))), MAX_DELAY);
        assert_eq!(poll_delay(0, Some(Duration::ZERO)), ms(50));
        assert_eq!(poll_delay(1, Some(ms(60))), ms(75));
        // An hour is cut to a minute.
        assert_eq!(
            poll_delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }
}

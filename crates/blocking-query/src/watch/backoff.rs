//! How long a failing watch waits before its next attempt.

use std::time::Duration;

/// Exponential backoff with "equal jitter": the n-th consecutive failure
/// waits between half and all of `min(max, base * 2^(n-1))`.
///
/// Half is fixed so delays grow with every failure (a server under trouble is
/// left alone more and more); half is random so many watches failing
/// together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after `failures` consecutive failures
    /// (at least 1; 0 is taken as 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1);
        let grown = 2u32
            .checked_pow(exponent)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(self.max)
    }

    /// The delay after `failures` consecutive failures, `unit` being a random
    /// number in `[0, 1]` (out-of-range values are clamped).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        // In whole nanoseconds, so float rounding can never pass the ceiling.
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = (spread as f64 * unit) as u64;
        half + Duration::from_nanos(jitter.min(spread))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn doubles_from_base_up_to_max() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (1..=6).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        (1u64..10_000, 1u64..600_000).prop_map(|(base, max)| Backoff {
            base: Duration::from_millis(base),
            max: Duration::from_millis(max),
        })
    }

    proptest! {
        #[test]
        fn delay_stays_within_half_and_all_of_the_capped_ceiling(
            backoff in backoff(), failures in 0u32..200, unit in any::<f64>()
        ) {
            let ceiling = backoff.ceiling(failures);
            let delay = backoff.delay(failures, unit);
            prop_assert!(ceiling <= backoff.max);
            prop_assert!(delay >= ceiling / 2, "{:?} < half of {:?}", delay, ceiling);
            prop_assert!(delay <= ceiling, "{:?} > {:?}", delay, ceiling);
        }

        #[test]
        fn delays_never_shrink_below_the_cap(
            backoff in backoff(), failures in 1u32..40, u1 in 0.0f64..=1.0, u2 in 0.0f64..=1.0
        ) {
            prop_assert!(backoff.ceiling(failures + 1) >= backoff.ceiling(failures));
            if backoff.ceiling(failures + 1) < backoff.max {
                // Whatever the jitter, the next delay is at least this one.
                prop_assert!(backoff.delay(failures + 1, u1) >= backoff.delay(failures, u2));
            }
        }
    }
}

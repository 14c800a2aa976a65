//! Durations as tags write them: a whole number and one unit (`250ms`,
//! `5s`, `1m`, `1h`). One unit only, so a value reads the same to people and
//! to the parser; no zero, since every duration option is a timeout or an
//! interval and Envoy reads 0 as "never" or rejects it.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (use 250ms, 5s, 1m)")]
    Malformed(String),
    #[error("`{0}` is zero; give a duration of more than 0")]
    Zero(String),
    #[error("`{0}` is too long (at most 1000h)")]
    TooLong(String),
}

/// The longest duration a tag may give: far beyond any sensible timeout,
/// and well inside what Envoy's protobuf `Duration` holds.
const MAX: Duration = Duration::from_secs(1000 * 3600);

pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_owned());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(malformed());
    }
    // Twenty digits would overflow u64; anything that long is too long anyway.
    let number: u64 = number
        .parse()
        .map_err(|_| DurationError::TooLong(text.to_owned()))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(malformed()),
    };
    let millis = number
        .checked_mul(millis_per_unit)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    let duration = Duration::from_millis(millis);
    if duration.is_zero() {
        Err(DurationError::Zero(text.to_owned()))
    } else if duration > MAX {
        Err(DurationError::TooLong(text.to_owned()))
    } else {
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_unit_reads_as_documented() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn malformed_values_say_how_to_write_one() {
        for text in [
            "", "5", "s", "5x", "5 s", "1.5s", "-1s", "5S", "1h30m", "+5s",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err, DurationError::Malformed(text.to_owned()), "{text}");
            assert!(err.to_string().contains("use 250ms, 5s, 1m"));
        }
    }

    #[test]
    fn zero_and_huge_durations_are_refused() {
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero("0s".into())));
        assert_eq!(
            parse_duration("0ms"),
            Err(DurationError::Zero("0ms".into()))
        );
        assert!(matches!(
            parse_duration("1001h"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLong(_))
        ));
        assert_eq!(parse_duration("1000h"), Ok(MAX));
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,24}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn milliseconds_round_trip(ms in 1u64..=3_600_000_000) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }
    }
}

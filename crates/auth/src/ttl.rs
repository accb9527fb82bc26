//! Token lifetimes.

use std::time::Duration;

use crate::error::AuthError;

/// The longest lifetime a token may have.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Parses a lifetime such as `30m`, `1h`, `12h` or `7d` (humantime syntax) and checks it
/// is within the allowed range (1 ms to 366 days).
pub fn parse_ttl(s: &str) -> Result<Duration, AuthError> {
    let ttl = humantime::parse_duration(s.trim())
        .map_err(|e| AuthError::InvalidTtl(format!("\"{s}\": {e}")))?;
    ttl_millis(ttl)?;
    Ok(ttl)
}

/// Checks that `ttl` is within 1 ms..=366 days and returns it in milliseconds.
pub(crate) fn ttl_millis(ttl: Duration) -> Result<i64, AuthError> {
    let out_of_range = || {
        AuthError::InvalidTtl(format!(
            "{} is not between 1ms and 366 days",
            humantime::format_duration(ttl)
        ))
    };
    let millis = i64::try_from(ttl.as_millis()).map_err(|_| out_of_range())?;
    if millis == 0 || ttl > MAX_TTL {
        return Err(out_of_range());
    }
    Ok(millis)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_lifetimes() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_ttl(" 1h 30m ").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("366d").unwrap(), MAX_TTL);
    }

    #[test]
    fn rejects_bad_lifetimes() {
        for s in ["", "abc", "1", "-1h", "1x", "0s", "367d", "1000y"] {
            assert!(
                matches!(parse_ttl(s), Err(AuthError::InvalidTtl(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn millis_range() {
        assert_eq!(ttl_millis(Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(ttl_millis(MAX_TTL).unwrap(), 366 * 86_400_000);
        assert!(ttl_millis(Duration::ZERO).is_err());
        assert!(ttl_millis(Duration::from_micros(999)).is_err());
        assert!(ttl_millis(MAX_TTL + Duration::from_millis(1)).is_err());
        assert!(ttl_millis(Duration::MAX).is_err());
    }
}

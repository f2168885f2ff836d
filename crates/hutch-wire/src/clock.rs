//! Wall-clock time as the API and the records show it: milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock reads earlier than that.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2024_and_does_not_go_back() {
        let a = super::now_ms();
        assert!(a > 1_704_067_200_000, "{a}");
        assert!(super::now_ms() >= a);
    }
}

//! One line per event on stderr: `2026-01-02T03:04:05.678Z level message`. kube-rs's own
//! `tracing` events are not collected: every failure it reports reaches us as an error
//! value, which the agent logs itself with the reason and the fix.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn line(level: &str, msg: std::fmt::Arguments<'_>) {
    eprintln!("{} {level} {msg}", timestamp(SystemTime::now()));
}

#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::line("info", format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::line("warn", format_args!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::line("error", format_args!($($t)*)) } }

/// Says a recurring message once per period: the first time at once, later at most once
/// per `period`, with how often it happened in between. Keeps a broken API server or a
/// persistent conflict from flooding the log.
pub struct Throttle {
    period: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            seen: HashMap::new(),
        }
    }

    /// `Some(n)` when the message with this key should be logged now; `n` is how many
    /// times it was held back since the last time.
    pub fn allow(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        match self.seen.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.period => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }

    /// Forgets every key: a recovery, after which any new failure is news.
    pub fn clear_all(&mut self) {
        self.seen.clear();
    }

    /// Forgets a key, so the next occurrence is logged at once (the condition cleared).
    pub fn clear(&mut self, key: &str) -> bool {
        self.seen.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // leap year, Feb 29
        assert_eq!(timestamp(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800); // 2000-03-01
        assert_eq!(timestamp(t), "2000-03-01T00:00:00.000Z");
    }

    #[test]
    fn throttle_says_once_per_period() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0));
        assert!(t.clear("a"));
        assert_eq!(t.allow("a"), Some(0));
        let mut t = Throttle::new(Duration::ZERO);
        t.allow("a");
        assert_eq!(t.allow("a"), Some(0));
    }
}

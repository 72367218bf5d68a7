//! Time: a [`Clock`] trait (tests inject fixed or skewed time), the hybrid logical
//! clock that stamps ops, and RFC 3339 formatting/parsing for timestamps.
//!
//! Invariant: [`Hlc::tick`] never returns a stamp less than or equal to the last one,
//! even when the wall clock goes backwards.

use crate::model::Hlc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Current time in milliseconds since the epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        now.saturating_add(skew_for_tests())
    }
}

/// A machine whose clock runs ahead, for the fault tests: testing builds
/// add `BD_TEST_CLOCK_AHEAD_MS` to the system clock (release builds read no
/// variable).
#[cfg(feature = "testing")]
fn skew_for_tests() -> u64 {
    static AHEAD: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| {
        std::env::var("BD_TEST_CLOCK_AHEAD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
fn skew_for_tests() -> u64 {
    0
}

/// A clock that returns a set time, advanced by hand (for tests).
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

impl FixedClock {
    /// A clock stopped at `ms`.
    pub fn new(ms: u64) -> Self {
        FixedClock(AtomicU64::new(ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Hlc {
    /// The next local stamp after `self`, given the wall time `now_ms`.
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.wall {
            Hlc {
                wall: now_ms,
                logical: 0,
            }
        } else {
            Hlc {
                wall: self.wall,
                logical: self.logical.saturating_add(1),
            }
        }
    }

    /// The local clock after receiving `remote` at wall time `now_ms`.
    pub fn observe(self, remote: Hlc, now_ms: u64) -> Hlc {
        let wall = self.wall.max(remote.wall).max(now_ms);
        let logical = if wall == self.wall && wall == remote.wall {
            self.logical.max(remote.logical).saturating_add(1)
        } else if wall == self.wall {
            self.logical.saturating_add(1)
        } else if wall == remote.wall {
            remote.logical.saturating_add(1)
        } else {
            0
        };
        Hlc { wall, logical }
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds, e.g.
/// `2026-11-23T11:34:55.123Z`.
pub fn format_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let millis = ms % 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        );
    }
    // Digits written in place: `format!` with padding cost ~1,700 instructions a
    // call, and every op and every materialised issue formats a few stamps.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut b[0..4], y as u64);
    put_digits(&mut b[5..7], u64::from(m));
    put_digits(&mut b[8..10], u64::from(d));
    put_digits(&mut b[11..13], (rem / 3600) as u64);
    put_digits(&mut b[14..16], ((rem / 60) % 60) as u64);
    put_digits(&mut b[17..19], (rem % 60) as u64);
    put_digits(&mut b[20..23], millis);
    b.iter().map(|&c| char::from(c)).collect()
}

/// Writes `v` as zero-padded decimal filling `dst` (the caller sizes it).
fn put_digits(dst: &mut [u8], mut v: u64) {
    for slot in dst.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Parses RFC 3339 (any offset, any fraction) or a bare `YYYY-MM-DD` (midnight UTC)
/// into epoch milliseconds. Returns `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i64 = s.get(0..4)?.parse().ok()?;
    let month: u32 = s.get(5..7)?.parse().ok()?;
    let day: u32 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let hour: i64 = s.get(11..13)?.parse().ok()?;
    let min: i64 = s.get(14..16)?.parse().ok()?;
    let sec: i64 = s.get(17..19)?.parse().ok()?;
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    Some(((days * 86_400 + hour * 3600 + min * 60 + sec) - offset_min * 60) * 1000 + millis)
}

// Howard Hinnant's civil-date algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a duration such as `90s`, `15m`, `1h30m`, `2d` or `500ms` (a bare
/// number is seconds) into ms; `None` for anything else, zero or past a year.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    parse_duration_any_ms(s).filter(|ms| (1..=YEAR_MS).contains(ms))
}

/// [`parse_duration_ms`] without its range: zero and long durations too (for
/// a caller that says what range it takes). Each unit at most once, larger
/// units first (`1h30m`, not `30m1h` or `1h1h`).
pub fn parse_duration_any_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut last_unit = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        if unit >= last_unit {
            return None;
        }
        last_unit = unit;
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (!s.is_empty()).then_some(total)
}

const YEAR_MS: u64 = 366 * 86_400_000;

/// A duration in ms as [`parse_duration_ms`] reads it: `15m`, `1h30m`, `45s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    // Days from two on: a day's limit reads as written, `24h`.
    let days = if s >= 2 * 86_400 { 86_400 } else { u64::MAX };
    for (unit, len) in [("d", days), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_and_print_alike() {
        use super::{format_duration_ms as f, parse_duration_ms as p};
        assert_eq!(p("15m"), Some(900_000));
        assert_eq!(p("1h30m"), Some(5_400_000));
        assert_eq!(p("90"), Some(90_000));
        assert_eq!(p("500ms"), Some(500));
        for bad in [
            "", "m", "15x", "-5m", "0", "0s", "1.5h", "99999999999999999999s", "400d", "1h1h",
            "1m1h", "30s2m",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(super::parse_duration_any_ms("0s"), Some(0));
        assert_eq!(super::parse_duration_any_ms("100000h"), Some(360_000_000_000));
        for ms in [900_000, 5_400_000, 45_000, 86_400_000 + 1000, 250, 3 * 86_400_000] {
            assert_eq!(p(&f(ms)), Some(ms));
        }
        assert_eq!(f(86_400_000), "24h");
        assert_eq!(f(2 * 86_400_000 + 3_600_000), "2d1h");
    }

    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        for ms in [0u64, 1_700_000_000_123, 1_795_000_000_999, 951_782_400_000] {
            let s = format_rfc3339(ms);
            assert_eq!(parse_rfc3339(&s), Some(ms as i64), "{s}");
        }
        assert_eq!(
            format_rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        // Beyond year 9999 the general path takes over.
        assert_eq!(
            format_rfc3339(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
    }

    proptest::proptest! {
        #[test]
        fn digits_in_place_match_the_formatter(ms in 0u64..253_402_300_800_000) {
            let secs = (ms / 1000) as i64;
            let rem = secs.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let expected = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                (rem / 60) % 60,
                rem % 60,
                ms % 1000
            );
            proptest::prop_assert_eq!(format_rfc3339(ms), expected);
        }
    }

    #[test]
    fn parses_offsets_dates_and_nanos() {
        let utc = parse_rfc3339("2025-10-14T19:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2025-10-14T12:00:00-07:00"), Some(utc));
        assert_eq!(
            parse_rfc3339("2025-10-14T12:00:00.123456789-07:00"),
            Some(utc + 123)
        );
        assert_eq!(parse_rfc3339("2025-10-14"), Some(utc - 19 * 3_600_000));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-10-14T25:00:00Z",
            "2025-10-14T10:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn hlc_is_monotonic_when_the_wall_clock_goes_back() {
        let a = Hlc {
            wall: 100,
            logical: 0,
        };
        let b = a.tick(50);
        assert!(b > a);
        let c = b.tick(200);
        assert_eq!(
            c,
            Hlc {
                wall: 200,
                logical: 0
            }
        );
        let d = c.observe(
            Hlc {
                wall: 300,
                logical: 4,
            },
            10,
        );
        assert_eq!(
            d,
            Hlc {
                wall: 300,
                logical: 5
            }
        );
    }
}

//! Time for plugins: the wall clock, and the time stamps APIs write, as Unix time.
//!
//! Plugins compare API times (incremental reads), compute waits from rate-limit headers and
//! write dates into payloads. APIs bend RFC 3339 (a space for the `T`, no offset meaning UTC),
//! so [`parse_ms`] accepts that much and refuses anything else, including impossible dates.
//!
//! Written here rather than taken from a date crate on purpose: linking `jiff` for these few
//! functions made every plugin using them 300–365 KB (60–75 %) larger, which each install
//! compiles and each instance maps; the calendar arithmetic below is Howard Hinnant's
//! `days_from_civil` and `civil_from_days`.
//!
//! ```
//! use switchyard_sdk::time;
//!
//! assert_eq!(time::parse_ms("2024-01-05T10:10:30.5-05:00"), Some(1_704_467_430_500));
//! assert_eq!(time::parse_ms("2024-01-05 15:10:30"), time::parse_ms("2024-01-05T15:10:30Z"));
//! assert_eq!(time::rfc3339(1_704_467_430), "2024-01-05T15:10:30Z");
//! ```

use std::time::Duration;

/// Time since the Unix epoch, from the host's wall clock.
pub fn now() -> Duration {
    // Straight from `wasi:clocks/wall-clock`: std's clock goes through wasi-libc and links
    // about 7 KB more into the plugin.
    #[cfg(target_arch = "wasm32")]
    {
        let t = crate::bindings::wasi::clocks::wall_clock::now();
        Duration::new(t.seconds, t.nanoseconds)
    }
    // Native builds (plugins' unit tests); zero if the clock reads before 1970.
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Now as whole seconds since the Unix epoch (what `Retry-After` and most APIs count in).
pub fn now_unix() -> u64 {
    now().as_secs()
}

/// Now as milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    i64::try_from(now().as_millis()).unwrap_or(i64::MAX)
}

/// An API's time stamp as milliseconds since the Unix epoch: RFC 3339 / ISO 8601 with `T`, `t`
/// or a space between date and time, any fraction of a second (read to the millisecond), and
/// an offset (`Z`, `+02:00`); a stamp with no offset is read as UTC, which is what APIs that
/// leave it out mean. `None` for anything else.
pub fn parse_ms(text: &str) -> Option<i64> {
    let s = text.trim();
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from, to| num_in(s, from, to);
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // 60 is a leap second, which Unix time folds into the next.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        millis = fraction[..digits]
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0, |ms, c| ms * 10 + i64::from(c - b'0'));
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" | "" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (h, m) = (num_in(rest, 1, 3)?, num_in(rest, 4, 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil_checked(year, month, day)?;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset) * 1000 + millis)
}

/// The decimal number written in `s[from..to]`, digits only (no sign, no spaces).
fn num_in(s: &str, from: usize, to: usize) -> Option<i64> {
    let digits = s.get(from..to)?;
    digits
        .bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| digits.parse().ok())?
}

/// [`parse_ms`] to whole seconds since the Unix epoch (a fraction is dropped).
pub fn parse_unix(text: &str) -> Option<i64> {
    parse_ms(text).map(|ms| ms.div_euclid(1000))
}

/// Seconds since the Unix epoch as RFC 3339 in UTC, e.g. `2024-01-05T15:10:30Z`.
pub fn rfc3339(unix_seconds: i64) -> String {
    let (days, secs) = (
        unix_seconds.div_euclid(86_400),
        unix_seconds.rem_euclid(86_400),
    );
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The calendar year (UTC) of a moment given as seconds since the Unix epoch.
pub fn year(unix_seconds: i64) -> i64 {
    civil_from_days(unix_seconds.div_euclid(86_400)).0
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date; `None` for a date that does not exist
/// (month 13, February 30) or a year outside 0–9999 (which also keeps the arithmetic in range).
pub(crate) fn days_from_civil_checked(year: i64, month: i64, day: i64) -> Option<i64> {
    let real = (0..=9999).contains(&year)
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month);
    real.then(|| days_from_civil(year, month, day))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (year, month, day) of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_ms("2024-01-05T15:10:30Z"), Some(1_704_467_430_000));
        assert_eq!(
            parse_ms("2024-01-05T10:10:30-05:00"),
            Some(1_704_467_430_000)
        );
        assert_eq!(
            parse_ms("2024-01-05T15:10:30.123+00:00"),
            Some(1_704_467_430_123)
        );
        assert_eq!(
            parse_ms("2019-12-07T16:50:06.678Z"),
            Some(1_575_737_406_678)
        );
        assert_eq!(parse_ms("2019-12-07T16:50:06.6Z"), Some(1_575_737_406_600));
        assert_eq!(
            parse_ms("2019-12-07T16:50:06.123456789Z"),
            Some(1_575_737_406_123)
        );
        assert_eq!(parse_ms("2019-12-07t16:50:06z"), Some(1_575_737_406_000));
        assert_eq!(
            parse_ms(" 2024-01-01T10:00:00+02:00 "),
            parse_ms("2024-01-01T08:00:00Z")
        );
        assert_eq!(parse_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_ms("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(parse_unix("2024-01-05T15:10:30.999Z"), Some(1_704_467_430));
        assert_eq!(parse_unix("1969-12-31T23:59:59.5Z"), Some(-1));
    }

    #[test]
    fn reads_a_space_separator_and_no_offset_as_utc() {
        assert_eq!(parse_ms("2024-01-05 15:10:30"), Some(1_704_467_430_000));
        assert_eq!(parse_ms("2024-01-05T15:10:30.25"), Some(1_704_467_430_250));
    }

    #[test]
    fn refuses_what_is_not_a_time_stamp() {
        for text in [
            "",
            "yesterday",
            "1575737406678",
            "2024-13-05T15:10:30Z",
            "2024-02-30T15:10:30Z",
            "2023-02-29T15:10:30Z",
            "2024-04-31T15:10:30Z",
            "2024-01-05T25:10:30Z",
            "2024-01-05T15:10:30+5",
            "2024-01-05T15:10:30+05:00:00",
            "2024-01-05T15:10:30.Z",
            "2024-01-05T15:10:30 UTC",
            "+024-01-05T15:10:30Z",
            "2024-01-05T15:1é:30Z",
            "2024-01-05",
        ] {
            assert_eq!(parse_ms(text), None, "{text}");
        }
    }

    #[test]
    fn writes_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_680_893_993), "2023-04-07T18:59:53Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn writing_and_reading_agree_across_the_calendar() {
        // Every day from 1900 to 2100 (leap years, century rules), at a time of day.
        for day in -25_567..47_482_i64 {
            let t = day * 86_400 + 45_296;
            assert_eq!(parse_unix(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
    }

    #[test]
    fn the_clock_and_the_calendar_agree() {
        assert!(now_unix() >= 1_700_000_000);
        assert!((now_unix_ms() / 1000 - now_unix() as i64).abs() < 60);
        assert_eq!(year(951_782_400), 2000);
        assert_eq!(year(-1), 1969);
        assert_eq!(year(1_704_067_199), 2023);
        assert_eq!(year(1_704_067_200), 2024);
    }
}

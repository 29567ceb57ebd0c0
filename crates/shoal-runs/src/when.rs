//! Points in time as users write them for `shoal runs --since/--until`: a local date or date
//! and time (`2026-12-01`, `2026-12-01 14:30`), `today`, `yesterday`, or an age (`3d`, `12h`,
//! `90m`: that long before now).

use crate::error::{Result, RunError};
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use shoal_core::units::TimeLimit;

fn local(dt: DateTime, tz: &TimeZone) -> Option<f64> {
    let ts = dt.to_zoned(tz.clone()).ok()?.timestamp();
    Some(ts.as_millisecond() as f64 / 1000.0)
}

/// Seconds since the epoch of `text`, read in time zone `tz` with `now` as the present.
pub fn parse_in(option: &str, text: &str, now: f64, tz: &TimeZone) -> Result<f64> {
    let t = text.trim();
    let today = || -> Option<Date> {
        let now = Timestamp::from_millisecond((now * 1000.0) as i64).ok()?;
        Some(now.to_zoned(tz.clone()).date())
    };
    let found = match t {
        "today" => today().and_then(|d| local(d.to_datetime(jiff::civil::time(0, 0, 0, 0)), tz)),
        "yesterday" => today()
            .and_then(|d| d.yesterday().ok())
            .and_then(|d| local(d.to_datetime(jiff::civil::time(0, 0, 0, 0)), tz)),
        _ => t
            .parse::<DateTime>()
            .ok()
            .or_else(|| {
                t.parse::<Date>()
                    .ok()
                    .map(|d| d.to_datetime(jiff::civil::time(0, 0, 0, 0)))
            })
            .and_then(|dt| local(dt, tz)),
    };
    if let Some(secs) = found {
        return Ok(secs);
    }
    // An age needs a unit, so a bare number is never taken for seconds by mistake.
    if t.ends_with(|c: char| c.is_ascii_alphabetic()) {
        if let Ok(age) = TimeLimit::parse(option, t) {
            return Ok(now - age.0.as_secs_f64());
        }
    }
    Err(RunError::Command(format!(
        "{option} {text:?} is not a date or an age\nhint: write a local date (2026-12-01), a \
         date and time (\"2026-12-01 14:30\"), today, yesterday, or an age such as 3d, 12h, 90m"
    )))
}

/// `parse_in` in the system's time zone, now.
pub fn parse(option: &str, text: &str) -> Result<f64> {
    parse_in(
        option,
        text,
        shoal_core::fsutil::now_secs(),
        &TimeZone::system(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_ages_and_words() {
        // A fixed offset (UTC+1): no dependence on the machine's zone database.
        let tz = TimeZone::fixed(jiff::tz::offset(1));
        // 2026-12-01 12:00:00 UTC = 13:00 at UTC+1.
        let now = 1_796_126_400.0;
        let day = parse_in("--since", "2026-12-01", now, &tz).unwrap();
        assert_eq!(day, now - 13.0 * 3600.0);
        assert_eq!(parse_in("--since", "today", now, &tz).unwrap(), day);
        assert_eq!(
            parse_in("--since", "yesterday", now, &tz).unwrap(),
            day - 86400.0
        );
        assert_eq!(
            parse_in("--until", "2026-12-01 14:30", now, &tz).unwrap(),
            now + 1.5 * 3600.0
        );
        assert_eq!(
            parse_in("--until", "2026-12-01T14:30:00", now, &tz).unwrap(),
            now + 5400.0
        );
        assert_eq!(
            parse_in("--since", "3d", now, &tz).unwrap(),
            now - 3.0 * 86400.0
        );
        assert_eq!(parse_in("--since", "90m", now, &tz).unwrap(), now - 5400.0);
        for bad in ["90", "last week", "2026-13-01"] {
            let e = parse_in("--since", bad, now, &tz).unwrap_err().to_string();
            assert!(
                e.contains("not a date or an age") && e.contains("hint:"),
                "{bad}: {e}"
            );
        }
    }
}

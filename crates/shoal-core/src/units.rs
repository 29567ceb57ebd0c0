//! Typed durations and memory sizes, parsed once from the strings users write
//! (`"1-00:00:00"`, `"90s"`, `"1Gb"`), with errors that quote the bad value.

use crate::error::{CoreError, Result};
use std::fmt;
use std::time::Duration;

/// A wall-clock limit. Accepts seconds (`90`, `1.5`), suffixed values (`90s`, `15m`, `2h`, `1d`)
/// and Slurm's clock forms (`MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeLimit(pub Duration);

impl TimeLimit {
    pub fn parse(option: &str, text: &str) -> Result<Self> {
        let bad = |why: &str| {
            CoreError::invalid(
                option,
                text,
                format!("{why}; write seconds (\"90\"), a suffixed value (\"15m\", \"2h\", \"1d\") or \"D-HH:MM:SS\""),
            )
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("empty time"));
        }
        if let Ok(secs) = t.parse::<f64>() {
            if !(secs.is_finite() && secs > 0.0) {
                return Err(bad("time must be positive"));
            }
            return Ok(TimeLimit(Duration::from_secs_f64(secs)));
        }
        let suffixes = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0)];
        for (suffix, scale) in suffixes {
            if let Some(num) = t.strip_suffix(suffix) {
                if let Ok(v) = num.trim().parse::<f64>() {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(bad("time must be positive"));
                    }
                    return Ok(TimeLimit(Duration::from_secs_f64(v * scale)));
                }
            }
        }
        let (days, clock) = match t.split_once('-') {
            Some((d, rest)) => (
                d.parse::<u64>().map_err(|_| bad("days before '-' are not a number"))?,
                Some(rest),
            ),
            None => (0, Some(t)),
        };
        let parts: Vec<u64> = clock
            .unwrap_or("")
            .split(':')
            .map(|p| p.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("not a time"))?;
        let has_days = t.contains('-');
        let secs = match (has_days, parts.as_slice()) {
            (false, [m, s]) => m * 60 + s,
            (false, [h, m, s]) => h * 3600 + m * 60 + s,
            (true, [h]) => h * 3600,
            (true, [h, m]) => h * 3600 + m * 60,
            (true, [h, m, s]) => h * 3600 + m * 60 + s,
            _ => return Err(bad("not a time")),
        } + days * 86400;
        if secs == 0 {
            return Err(bad("time must be positive"));
        }
        Ok(TimeLimit(Duration::from_secs(secs)))
    }

    /// Slurm's `D-HH:MM:SS` form, rounded up to whole seconds.
    pub fn to_slurm(&self) -> String {
        let total = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        let (d, rest) = (total / 86400, total % 86400);
        format!("{d}-{:02}:{:02}:{:02}", rest / 3600, (rest % 3600) / 60, rest % 60)
    }

    /// `HH:MM:SS` as SGE's `h_rt` wants it.
    pub fn to_hms(&self) -> String {
        let total = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        format!("{}:{:02}:{:02}", total / 3600, (total % 3600) / 60, total % 60)
    }
}

/// A memory size in bytes. Accepts `512`, `512M`, `1Gb`, `1.5GB`, `2GiB`, `100KB` — units are
/// binary (K=1024) as schedulers use them; a bare number means megabytes, as in Slurm and HTCondor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemSize(pub u64);

impl MemSize {
    pub fn parse(option: &str, text: &str) -> Result<Self> {
        let bad = |why: &str| {
            CoreError::invalid(
                option,
                text,
                format!("{why}; write a size like \"512M\", \"1Gb\" or \"2GiB\" (a bare number means MB)"),
            )
        };
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| bad("not a size"))?;
        if !(value.is_finite() && value > 0.0) {
            return Err(bad("size must be positive"));
        }
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit
            .trim_end_matches("ib")
            .trim_end_matches('b')
            .to_string();
        let scale: u64 = match unit.as_str() {
            "" if t.chars().last().is_some_and(|c| c.is_ascii_digit()) => 1 << 20,
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => return Err(bad("unknown unit")),
        };
        Ok(MemSize((value * scale as f64).round() as u64))
    }

    pub fn megabytes(&self) -> u64 {
        self.0.div_ceil(1 << 20)
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.megabytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        TimeLimit::parse("time", s).unwrap().0.as_secs()
    }

    #[test]
    fn time_forms() {
        assert_eq!(secs("90"), 90);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("2h"), 7200);
        assert_eq!(secs("1d"), 86400);
        assert_eq!(secs("05:30"), 330);
        assert_eq!(secs("1:00:00"), 3600);
        assert_eq!(secs("1-00:00:00"), 86400);
        assert_eq!(secs("2-12"), 2 * 86400 + 12 * 3600);
        assert_eq!(secs("0-00:01"), 60);
    }

    #[test]
    fn time_errors_quote_value() {
        let e = TimeLimit::parse("time", "soon").unwrap_err().to_string();
        assert!(e.contains("\"soon\"") && e.contains("time"), "{e}");
        assert!(TimeLimit::parse("time", "0").is_err());
        assert!(TimeLimit::parse("time", "-5").is_err());
        assert!(TimeLimit::parse("time", "1:2:3:4").is_err());
    }

    #[test]
    fn time_render() {
        let t = TimeLimit::parse("t", "1d").unwrap();
        assert_eq!(t.to_slurm(), "1-00:00:00");
        assert_eq!(TimeLimit::parse("t", "90").unwrap().to_hms(), "0:01:30");
    }

    #[test]
    fn mem_forms() {
        let mb = |s: &str| MemSize::parse("memory", s).unwrap().megabytes();
        assert_eq!(mb("512"), 512);
        assert_eq!(mb("512M"), 512);
        assert_eq!(mb("1Gb"), 1024);
        assert_eq!(mb("1GB"), 1024);
        assert_eq!(mb("2GiB"), 2048);
        assert_eq!(mb("1.5g"), 1536);
        assert_eq!(mb("1024K"), 1);
    }

    #[test]
    fn mem_errors() {
        for bad in ["lots", "", "1Qb", "-1G", "0"] {
            let e = MemSize::parse("request_memory", bad).unwrap_err().to_string();
            assert!(e.contains("request_memory"), "{e}");
        }
    }
}

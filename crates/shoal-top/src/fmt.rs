//! How numbers read on screen: durations, ages, rates, counts and sparklines, in one place for
//! `shoal top` and `shoal show`.

/// `0.25s`, `12s`, `3m04s`, `2h05m`, `3d04h`.
pub fn dur(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    if secs < 1.0 {
        return format!("{secs:.2}s");
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// An optional duration, `-` when unknown.
pub fn opt_dur(secs: Option<f64>) -> String {
    secs.map_or_else(|| "-".into(), dur)
}

/// How long ago, coarse: `12s`, `5m`, `3h`, `2d`.
pub fn age(secs: f64) -> String {
    let d = secs.max(0.0) as u64;
    match d {
        0..=59 => format!("{d}s"),
        60..=3599 => format!("{}m", d / 60),
        3600..=86399 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86400),
    }
}

/// Tasks per second in the unit that reads best: `120/s`, `5.2/s`, `1.6/min`, `3.0/h`.
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        return "-".into();
    }
    let (v, unit) = if per_sec >= 1.0 {
        (per_sec, "s")
    } else if per_sec * 60.0 >= 1.0 {
        (per_sec * 60.0, "min")
    } else {
        (per_sec * 3600.0, "h")
    };
    if v >= 100.0 {
        format!("{v:.0}/{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}/{unit}")
    } else {
        format!("{v:.2}/{unit}")
    }
}

/// `10,000`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `4,210/10,000 (42%)`.
pub fn progress(done: u64, total: u64) -> String {
    if total == 0 {
        return format!("{}/-", count(done));
    }
    let pct = (100.0 * done as f64 / total as f64).floor();
    format!("{}/{} ({pct:.0}%)", count(done), count(total))
}

/// One block character per value, scaled to the largest.
pub fn sparkline(values: &[f64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0f64, f64::max);
    values
        .iter()
        .map(|&v| {
            if max <= 0.0 || v <= 0.0 {
                ' '
            } else {
                BLOCKS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// Local calendar time of `secs` since the epoch: `2026-01-01 00:00:00`.
pub fn local(secs: f64) -> String {
    let (y, mo, d, h, mi, se) = shoal_core::fsutil::local_time(secs as i64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}")
}

/// `s` cut to `width` characters, ending in `…` when cut.
pub fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A session id short enough for a list: `0101-120000-4f2a` from
/// `20260101-120000-4f2a…` (the full id is in the session view).
pub fn short_id(id: &str) -> String {
    let parts: Vec<&str> = id.splitn(3, '-').collect();
    match parts.as_slice() {
        [date, time, salt] if date.len() == 8 && time.len() == 6 => {
            format!("{}-{time}-{}", &date[4..], clip_plain(salt, 4))
        }
        _ => clip(id, 16),
    }
}

fn clip_plain(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Columns two spaces apart, sized to their widest cell; the columns listed in `right` are
/// right-aligned (numbers). No trailing blanks.
pub fn table(head: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if right.contains(&i) {
                    format!("{}{c}", " ".repeat(pad))
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ");
        s.trim_end().to_string() + "\n"
    };
    let mut text = line(head.to_vec());
    for r in rows {
        text.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(dur(0.254), "0.25s");
        assert_eq!(dur(3.21), "3.2s");
        assert_eq!(dur(184.0), "3m04s");
        assert_eq!(dur(7500.0), "2h05m");
        assert_eq!(dur(3.0 * 86400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(rate(120.4), "120/s");
        assert_eq!(rate(5.234), "5.23/s");
        assert_eq!(rate(16.0 / 600.0), "1.60/min");
        assert_eq!(rate(1.0 / 1200.0), "3.00/h");
        assert_eq!(rate(0.0), "-");
        assert_eq!(count(10_000), "10,000");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(progress(4210, 10_000), "4,210/10,000 (42%)");
        assert_eq!(progress(3, 0), "3/-");
        assert_eq!(sparkline(&[0.0, 1.0, 4.0, 8.0]), " ▂▅█");
        assert_eq!(
            short_id("20260101-120000-4f2a00aa11bb22cc"),
            "0101-120000-4f2a"
        );
        assert_eq!(short_id("odd"), "odd");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}

//! The progress line of a run (`shoal run`, `shoal logs --follow`): done / failed / running,
//! elapsed time and an ETA from the rate tasks have finished at since the line started.

use crate::registry::Counts;

/// Seconds as `4.2s`, `3m07s` or `2h05m`.
pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{:.1}s", secs.max(0.0)),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Tracks a run's finished count from the moment a watcher starts, so the ETA reflects this
/// launch's speed (tasks finished by an earlier launch do not count as fast).
#[derive(Debug, Clone)]
pub struct Eta {
    finished_at_start: u64,
}

fn finished(c: &Counts) -> u64 {
    c.done + c.failed + c.cancelled
}

impl Eta {
    pub fn new(start: &Counts) -> Eta {
        Eta {
            finished_at_start: finished(start),
        }
    }

    /// Seconds left at the rate seen over `elapsed` seconds; None before anything finished.
    pub fn remaining(&self, now: &Counts, elapsed: f64) -> Option<f64> {
        let since = finished(now).saturating_sub(self.finished_at_start);
        let left = now.pending + now.running;
        if left == 0 {
            return Some(0.0);
        }
        (since > 0 && elapsed > 0.0).then(|| left as f64 * elapsed / since as f64)
    }

    /// `12/100 done · 1 failed · 4 running · 1m03s · ETA 5m10s`
    pub fn line(&self, now: &Counts, elapsed: f64) -> String {
        let mut s = format!("{}/{} done", now.done, now.total());
        if now.failed > 0 {
            s += &format!(" · {} failed", now.failed);
        }
        if now.cancelled > 0 {
            s += &format!(" · {} cancelled", now.cancelled);
        }
        s += &format!(" · {} running · {}", now.running, fmt_duration(elapsed));
        s += &match self.remaining(now, elapsed) {
            Some(r) => format!(" · ETA {}", fmt_duration(r)),
            None => " · ETA ?".to_string(),
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_from_the_rate_since_start() {
        let start = Counts {
            done: 10,
            pending: 90,
            ..Default::default()
        };
        let eta = Eta::new(&start);
        assert_eq!(eta.remaining(&start, 5.0), None);
        assert_eq!(
            eta.line(&start, 5.0),
            "10/100 done · 0 running · 5.0s · ETA ?"
        );
        let now = Counts {
            done: 28,
            failed: 2,
            running: 4,
            pending: 66,
            ..Default::default()
        };
        // 20 finished in 60 s: 70 left take 210 s.
        assert_eq!(eta.remaining(&now, 60.0), Some(210.0));
        assert_eq!(
            eta.line(&now, 60.0),
            "28/100 done · 2 failed · 4 running · 1m00s · ETA 3m30s"
        );
        let end = Counts {
            done: 100,
            ..Default::default()
        };
        assert_eq!(eta.remaining(&end, 99.0), Some(0.0));
        assert_eq!(fmt_duration(7300.0), "2h01m");
    }
}

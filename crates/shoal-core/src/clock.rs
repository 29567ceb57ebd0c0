//! Liveness without trusting anybody's wall clock.
//!
//! A peer is alive while its heartbeat *counter* keeps changing, as observed on our own
//! monotonic clock — never by comparing a remote file's mtime with the local time (hosts'
//! clocks differ). And a filesystem stall (every heartbeat late at once, our own reads
//! blocked too) must not look like everyone died: [`StallClock`] only advances by a bounded
//! step per tick, so time spent blocked inside one tick barely counts.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A monotonic clock for liveness judgements that discounts the time its owner was blocked.
///
/// The owner ticks it once per loop iteration; an iteration that took longer than `max_step`
/// (the loop was stuck in a filesystem call during a stall) advances it by `max_step` only.
#[derive(Debug, Clone)]
pub struct StallClock {
    last: Instant,
    now: Duration,
    max_step: Duration,
}

impl StallClock {
    pub fn new(max_step: Duration) -> Self {
        StallClock {
            last: Instant::now(),
            now: Duration::ZERO,
            max_step,
        }
    }

    /// Advance by the real time since the last tick, at most `max_step`; returns the new time.
    pub fn tick(&mut self) -> Duration {
        let real = self.last.elapsed();
        self.last = Instant::now();
        self.advance(real)
    }

    /// Advance by `real` (bounded by `max_step`): the pure form of `tick`, for tests.
    pub fn advance(&mut self, real: Duration) -> Duration {
        self.now += real.min(self.max_step);
        self.now
    }

    pub fn now(&self) -> Duration {
        self.now
    }
}

/// Peers' heartbeat counters and when (on a [`StallClock`]) each last changed.
#[derive(Debug, Clone)]
pub struct ChangeWatch<K: Eq + Hash + Clone> {
    seen: HashMap<K, (u64, Duration)>,
}

impl<K: Eq + Hash + Clone> Default for ChangeWatch<K> {
    fn default() -> Self {
        ChangeWatch {
            seen: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> ChangeWatch<K> {
    /// Record the counter read for `key` at `now`; returns whether it changed (or is new).
    pub fn observe(&mut self, key: &K, value: u64, now: Duration) -> bool {
        match self.seen.get_mut(key) {
            Some((v, at)) if *v == value => {
                let _ = at;
                false
            }
            Some(entry) => {
                *entry = (value, now);
                true
            }
            None => {
                self.seen.insert(key.clone(), (value, now));
                true
            }
        }
    }

    /// Start watching `key` as if it had just changed (e.g. a worker that just announced).
    pub fn start(&mut self, key: &K, now: Duration) {
        self.seen.entry(key.clone()).or_insert((u64::MAX, now));
    }

    /// How long `key`'s counter has not changed, if it is watched.
    pub fn silent_for(&self, key: &K, now: Duration) -> Option<Duration> {
        self.seen.get(key).map(|(_, at)| now.saturating_sub(*at))
    }

    /// Keys silent for longer than `limit`.
    pub fn silent(&self, now: Duration, limit: Duration) -> Vec<K> {
        self.seen
            .iter()
            .filter(|(_, (_, at))| now.saturating_sub(*at) > limit)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn forget(&mut self, key: &K) {
        self.seen.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_long_blocked_tick_counts_as_one_step() {
        let mut c = StallClock::new(2 * S);
        c.advance(S);
        assert_eq!(c.now(), S);
        // 90 s stuck in one filesystem call: counts as 2 s.
        c.advance(90 * S);
        assert_eq!(c.now(), 3 * S);
    }

    #[test]
    fn liveness_follows_change_not_clock_values() {
        let mut w: ChangeWatch<&str> = ChangeWatch::default();
        let mut c = StallClock::new(5 * S);
        assert!(w.observe(&"a", 1, c.now()));
        for _ in 0..10 {
            c.advance(S);
        }
        // Same counter for 10 s: silent for 10 s, whatever the remote clock says.
        assert_eq!(w.silent_for(&"a", c.now()), Some(10 * S));
        assert!(!w.observe(&"a", 1, c.now()));
        assert_eq!(w.silent(c.now(), 5 * S), vec!["a"]);
        assert!(w.observe(&"a", 2, c.now()));
        assert!(w.silent(c.now(), 5 * S).is_empty());
    }

    #[test]
    fn a_filesystem_stall_kills_nobody() {
        // Workers beat every 5 s; timeout 30 s. The filesystem stalls 90 s: the driver's own
        // loop is blocked in one read for the whole stall, so its clock moves by one step.
        let mut w: ChangeWatch<u32> = ChangeWatch::default();
        let mut c = StallClock::new(2 * S);
        for k in 0..3 {
            w.observe(&k, 0, c.now());
        }
        c.advance(S / 10);
        c.advance(90 * S); // the blocked iteration
        assert!(w.silent(c.now(), 30 * S).is_empty());
        for k in 0..3 {
            assert!(w.observe(&k, 1, c.now()), "beats resume after the stall");
        }
    }
}

//! One number for one task: how the user's calls map onto the session's task numbers. The
//! Python driver numbers its calls (a `map`, an `apply_async`, a `submit`) 1, 2, ... and writes
//! `calls` in the session dir, one line `SESSION_FIRST COUNT CALL CALL_FIRST [NCALLS]` per
//! run of tasks (NCALLS > 1: that many consecutive calls CALL, CALL+1, ... of one task each, as
//! a loop of `submit` makes); a task is shown as its position in its call — `5` in the first call, `3:5` in the
//! third — and `shoal logs SESSION 3:5` takes that form back. A session task no line covers
//! (an older session, a line not written yet) is shown as `#N`, its session number.

use crate::error::{CoreError, Result};
use crate::SessionDir;

pub const FILE: &str = "calls";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    first: u64,
    count: u64,
    call: u64,
    call_first: u64,
    /// Consecutive one-task calls this span holds (1: tasks of one call).
    calls: u64,
}

impl Span {
    /// (call, index in it) of the span's `k`th task.
    fn at(&self, k: u64) -> (u64, u64) {
        if self.calls > 1 {
            (self.call + k, 0)
        } else {
            (self.call, self.call_first + k)
        }
    }
}

/// The calls of one session (empty when it has no `calls` file).
#[derive(Debug, Clone, Default)]
pub struct Calls {
    spans: Vec<Span>,
}

impl Calls {
    pub fn read(dir: &SessionDir) -> Calls {
        let text = std::fs::read_to_string(dir.root().join(FILE)).unwrap_or_default();
        Self::parse(&text)
    }

    /// Lines that do not parse (one cut short while being written) are skipped.
    pub fn parse(text: &str) -> Calls {
        let mut spans: Vec<Span> = text
            .lines()
            .filter_map(|line| {
                let v: Vec<u64> = line
                    .split_ascii_whitespace()
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()
                    .ok()?;
                let (first, count, call, call_first, calls) = match v[..] {
                    [f, n, c, i] => (f, n, c, i, 1),
                    [f, n, c, 0, k] if k == n => (f, n, c, 0, k),
                    _ => return None,
                };
                (call >= 1).then_some(Span {
                    first,
                    count,
                    call,
                    call_first,
                    calls,
                })
            })
            .collect();
        spans.sort_by_key(|s| s.first);
        Calls { spans }
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// How the user sees session task `task`.
    pub fn label(&self, task: u64) -> String {
        if self.spans.is_empty() {
            return task.to_string(); // a session from before calls were recorded
        }
        let i = self.spans.partition_point(|s| s.first <= task);
        match i.checked_sub(1).map(|i| self.spans[i]) {
            Some(s) if task < s.first + s.count => match s.at(task - s.first) {
                (1, index) => index.to_string(),
                (call, index) => format!("{call}:{index}"),
            },
            _ => format!("#{task}"),
        }
    }

    /// The session task a user's label names: `N` (the first call's task N), `CALL:N`, or
    /// `#N` (a session task number).
    pub fn resolve(&self, label: &str) -> Result<u64> {
        let bad = |why: &str| CoreError::InvalidOption {
            option: "TASK".into(),
            value: label.into(),
            reason: format!(
                "{why}; write N (task N of the session's first call), CALL:N (task N of \
                 call CALL, as error messages name it) or #N (session task N)"
            ),
        };
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad("not a task number"))
        };
        if let Some(raw) = label.strip_prefix('#') {
            return num(raw);
        }
        let (call, index) = match label.split_once(':') {
            Some((c, i)) => (num(c)?, num(i)?),
            None => (1, num(label)?),
        };
        if self.spans.is_empty() && call == 1 {
            return Ok(index); // a session from before calls were recorded
        }
        self.spans
            .iter()
            .find_map(|s| {
                let k = if s.calls > 1 {
                    (index == 0 && (s.call..s.call + s.calls).contains(&call))
                        .then(|| call - s.call)
                } else {
                    (s.call == call && (s.call_first..s.call_first + s.count).contains(&index))
                        .then(|| index - s.call_first)
                };
                k.map(|k| s.first + k)
            })
            .ok_or_else(|| bad("this session has no such task"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_resolves_both_ways() {
        // call 1: a map of 10 in two lines; call 2: one apply; call 3: a map interleaved.
        // Then calls 4..6 of one task each (a loop of submit), in one line.
        let c = Calls::parse("0 6 1 0\n6 4 1 6\n10 1 2 0\n11 3 3 0\n14 2 3 3\n16 3 4 0 3\ntorn");
        assert_eq!(c.label(7), "7");
        assert_eq!(c.label(10), "2:0");
        assert_eq!(c.label(15), "3:4");
        assert_eq!((c.label(16), c.label(18)), ("4:0".into(), "6:0".into()));
        assert_eq!(c.label(99), "#99");
        for t in 0..19 {
            assert_eq!(c.resolve(&c.label(t)).unwrap(), t);
        }
        assert_eq!(c.resolve("#12").unwrap(), 12);
        let e = c.resolve("2:1").unwrap_err().to_string();
        assert!(e.contains("no such task") && e.contains("CALL:N"), "{e}");
        assert!(c.resolve("x").is_err());
        let old = Calls::parse("");
        assert_eq!((old.label(4), old.resolve("4").unwrap()), ("4".into(), 4));
    }
}

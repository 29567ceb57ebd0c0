//! HTCondor's job event log (the `log = ...` file of a submit description), classic text
//! format: read incrementally from a byte offset and parsed into typed events.
//!
//! Each event is a header line `NNN (CLUSTER.PROC.SUBPROC) DATE TIME TEXT`, indented body
//! lines, and a line `...` that ends it. Only complete events are consumed, so a poll that
//! lands while the schedd is mid-write picks the rest up next time. Dates are not parsed:
//! their format changed across versions and nothing here needs them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `Cluster.Proc` of one job; its display form is the shoal worker id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    pub cluster: u64,
    pub proc: u64,
}

impl JobId {
    /// Parse `12.3` (the worker id form, also what `condor_submit -terse` prints).
    pub fn parse(text: &str) -> Option<JobId> {
        let (c, p) = text.trim().split_once('.')?;
        Some(JobId {
            cluster: c.parse().ok()?,
            proc: p.parse().ok()?,
        })
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.cluster, self.proc)
    }
}

/// What happened to a job, as far as shoal cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// 000
    Submitted,
    /// 001: the worker process started.
    Executing,
    /// 004: the process was killed (preempted, vacated, or about to be held).
    Evicted,
    /// 005: `exit_code` is `Some` for a normal exit, `signal` for death by a signal.
    Terminated {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    /// 007 (shadow exception) or 024 (reconnect failed): the run is over, the job goes
    /// back to idle.
    RunFailed { reason: String },
    /// 009: removed from the queue (`via condor_rm (by user X)` or a policy's reason).
    Aborted { reason: String },
    /// 012
    Held {
        reason: String,
        code: Option<i32>,
        subcode: Option<i32>,
    },
    /// 013
    Released,
    /// 010: the job's processes were stopped (condor_suspend, or a machine policy).
    Suspended,
    /// 011
    Unsuspended,
    /// Any other event (image size, file transfer, disconnects, ...).
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub job: JobId,
    pub kind: EventKind,
}

/// Parse one complete event (without its `...` line). `None` if the header is not an event's.
pub fn parse_event(text: &str) -> Option<Event> {
    let mut lines = text.lines();
    let header = lines.next()?.trim_end();
    let (code, rest) = header.split_once(' ')?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    let rest = rest.trim_start().strip_prefix('(')?;
    let (id, after) = rest.split_once(')')?;
    let mut parts = id.split('.');
    let job = JobId {
        cluster: parts.next()?.parse().ok()?,
        proc: parts.next()?.parse().ok()?,
    };
    // Header text after the date and time, e.g. "Job was held."
    let head_text = after
        .split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ");
    let body: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let kind = match code {
        0 => EventKind::Submitted,
        1 => EventKind::Executing,
        4 => EventKind::Evicted,
        5 => parse_terminated(&body),
        7 | 24 => EventKind::RunFailed {
            reason: body
                .iter()
                .find(|l| !l.starts_with('(') && !l.contains(" - "))
                .map(|l| format!("{head_text} {l}"))
                .unwrap_or(head_text),
        },
        9 => EventKind::Aborted {
            reason: body.first().map(|l| l.to_string()).unwrap_or_default(),
        },
        12 => {
            let mut code = None;
            let mut subcode = None;
            let mut reason = Vec::new();
            for l in &body {
                if let Some((c, s)) = parse_code_line(l) {
                    code = Some(c);
                    subcode = Some(s);
                } else {
                    reason.push(*l);
                }
            }
            EventKind::Held {
                reason: reason.join(" "),
                code,
                subcode,
            }
        }
        13 => EventKind::Released,
        10 => EventKind::Suspended,
        11 => EventKind::Unsuspended,
        other => EventKind::Other(other),
    };
    Some(Event { job, kind })
}

/// `Code 1 Subcode 0` (the hold event's second body line).
fn parse_code_line(line: &str) -> Option<(i32, i32)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["Code", c, "Subcode", s] => Some((c.parse().ok()?, s.parse().ok()?)),
        _ => None,
    }
}

fn parse_terminated(body: &[&str]) -> EventKind {
    let number_after = |line: &str, key: &str| -> Option<i32> {
        let i = line.find(key)? + key.len();
        let digits: String = line[i..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse().ok()
    };
    for l in body {
        if l.contains("Normal termination") {
            return EventKind::Terminated {
                exit_code: number_after(l, "return value"),
                signal: None,
            };
        }
        if l.contains("Abnormal termination") {
            return EventKind::Terminated {
                exit_code: None,
                signal: number_after(l, "signal"),
            };
        }
    }
    EventKind::Terminated {
        exit_code: None,
        signal: None,
    }
}

/// Follows one event log file from where the last read stopped.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogReader {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LogReader {
            path: path.into(),
            offset: 0,
            partial: String::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every complete event appended since the last call. A missing file is no events yet
    /// (condor_submit creates it, the schedd appends to it).
    pub fn read_new(&mut self) -> std::io::Result<Vec<Event>> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            // Rotated or truncated underneath us: start over rather than read garbage.
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        f.take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        Ok(self.drain_complete())
    }

    fn drain_complete(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut consumed = 0;
        let mut start = 0;
        let text = &self.partial;
        let mut pos = 0;
        while pos < text.len() {
            let Some(nl) = text[pos..].find('\n') else {
                break;
            };
            let line = &text[pos..pos + nl];
            let next = pos + nl + 1;
            if line.trim_end() == "..." {
                if let Some(ev) = parse_event(&text[start..pos]) {
                    events.push(ev);
                }
                start = next;
                consumed = next;
            }
            pos = next;
        }
        self.partial.drain(..consumed);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SAMPLE: &str = "\
000 (006.000.000) 2026-11-26 05:23:12 Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618&alias=vm>
...
001 (006.000.000) 2026-11-26 05:23:12 Job executing on host: <127.0.0.1:9618?addrs=127.0.0.1-9618>
\tSlotName: slot4@vm
\tCpus = 1
...
006 (006.000.000) 2026-11-26 05:23:14 Image size of job updated: 5268
\t4  -  MemoryUsage of job (MB)
...
005 (006.000.000) 2026-11-26 05:23:14 Job terminated.
\t(1) Normal termination (return value 3)
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage
\t0  -  Run Bytes Sent By Job
\tJob terminated of its own accord at 2026-11-26T05:23:14Z with exit-code 3.
...
005 (006.001.000) 2026-11-26 05:23:14 Job terminated.
\t(0) Abnormal termination (signal 9)
\t(0) No core file
...
004 (007.000.000) 2026-11-26 05:23:21 Job was evicted.
\t(0) CPU times
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage
...
012 (007.000.000) 2026-11-26 05:23:21 Job was held.
\tvia condor_hold (by user shoal)
\tCode 1 Subcode 0
...
013 (007.000.000) 2026-11-26 05:23:22 Job was released.
\tvia condor_release (by user shoal)
...
009 (007.001.000) 2026-11-26 05:23:27 Job was aborted.
\tvia condor_rm (by user shoal)
...
010 (008.000.000) 2026-11-26 05:23:28 Job was suspended.
\tNumber of processes actually suspended: 1
...
011 (008.000.000) 2026-11-26 05:23:29 Job was unsuspended.
...
007 (008.002.000) 11/26 05:23:30 Shadow exception!
\tError from slot1@vm: Failed to execute '/no/python'
\t0  -  Run Bytes Sent By Job
...
";

    fn id(c: u64, p: u64) -> JobId {
        JobId {
            cluster: c,
            proc: p,
        }
    }

    #[test]
    fn parses_every_event_kind() {
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), SAMPLE).unwrap();
        let ev = LogReader::new(path.path()).read_new().unwrap();
        let kinds: Vec<(JobId, EventKind)> = ev.into_iter().map(|e| (e.job, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (id(6, 0), EventKind::Submitted),
                (id(6, 0), EventKind::Executing),
                (id(6, 0), EventKind::Other(6)),
                (
                    id(6, 0),
                    EventKind::Terminated {
                        exit_code: Some(3),
                        signal: None
                    }
                ),
                (
                    id(6, 1),
                    EventKind::Terminated {
                        exit_code: None,
                        signal: Some(9)
                    }
                ),
                (id(7, 0), EventKind::Evicted),
                (
                    id(7, 0),
                    EventKind::Held {
                        reason: "via condor_hold (by user shoal)".into(),
                        code: Some(1),
                        subcode: Some(0)
                    }
                ),
                (id(7, 0), EventKind::Released),
                (
                    id(7, 1),
                    EventKind::Aborted {
                        reason: "via condor_rm (by user shoal)".into()
                    }
                ),
                (id(8, 0), EventKind::Suspended),
                (id(8, 0), EventKind::Unsuspended),
                (
                    id(8, 2),
                    EventKind::RunFailed {
                        reason:
                            "Shadow exception! Error from slot1@vm: Failed to execute '/no/python'"
                                .into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn incomplete_events_wait_for_the_rest() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut r = LogReader::new(f.path());
        // No file content yet, then half an event, then the rest in pieces.
        assert!(r.read_new().unwrap().is_empty());
        let (a, b) = SAMPLE.split_at(SAMPLE.find("...\n").unwrap() + 14);
        f.write_all(a.as_bytes()).unwrap();
        f.flush().unwrap();
        let first = r.read_new().unwrap();
        assert_eq!(first.len(), 1, "only the complete submit event: {first:?}");
        let mut rest = 0;
        for piece in b.as_bytes().chunks(37) {
            f.write_all(piece).unwrap();
            f.flush().unwrap();
            rest += r.read_new().unwrap().len();
        }
        // Everything after the first event was seen exactly once across the reads.
        assert_eq!(rest, 11);
        assert!(r.read_new().unwrap().is_empty());
    }

    #[test]
    fn counts_events_across_partial_reads() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut r = LogReader::new(f.path());
        let mut seen = 0;
        for piece in SAMPLE.as_bytes().chunks(23) {
            f.write_all(piece).unwrap();
            f.flush().unwrap();
            seen += r.read_new().unwrap().len();
        }
        assert_eq!(seen, 12);
    }

    #[test]
    fn missing_file_and_junk_are_not_errors() {
        let t = tempfile::tempdir().unwrap();
        let mut r = LogReader::new(t.path().join("nope.log"));
        assert!(r.read_new().unwrap().is_empty());
        assert_eq!(parse_event("not an event"), None);
        assert_eq!(parse_event("12 (1.0.0) x"), None);
        assert_eq!(
            parse_event("001 (x.0.0) 2026-01-01 00:00:00 Job executing"),
            None
        );
        assert_eq!(JobId::parse("12.3"), Some(id(12, 3)));
        assert_eq!(id(12, 3).to_string(), "12.3");
        assert_eq!(JobId::parse("12"), None);
    }

    #[test]
    fn hold_without_code_line_keeps_the_reason() {
        let e = parse_event(
            "012 (3.1.0) 2026-01-01 00:00:00 Job was held.\n\tError from slot1@vm: Failed to open '/root/x/logs/3.1.out' as standard output: Permission denied (errno 13)\n",
        )
        .unwrap();
        assert_eq!(
            e.kind,
            EventKind::Held {
                reason: "Error from slot1@vm: Failed to open '/root/x/logs/3.1.out' as standard output: Permission denied (errno 13)".into(),
                code: None,
                subcode: None
            }
        );
    }
}

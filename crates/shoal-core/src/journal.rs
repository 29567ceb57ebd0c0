//! The session journal: a compact, append-only record of what happened in a session (workers
//! submitted, started, ended; chunks started, finished, requeued; tasks that failed), written
//! by the driver next to `session.json` and read by `shoal top` and `shoal show`.
//!
//! ```text
//! file    = MAGIC record*                    MAGIC = "SHOALJ1\n"
//! record  = kind:u8 field*                   fields are LEB128 varints or strings
//! string  = len:varint utf8-bytes            (len-capped by the writer)
//! time    = dt:zigzag-varint                 ms since the previous record's time, on the
//!                                            driver's monotonic clock (START anchors it)
//! chunk   = zigzag-varint                    delta from the previous record's chunk id
//! worker  = varint                           index into the WORKER names defined so far
//! secs    = varint                           µs << 1 below a second, ms << 1 | 1 above
//! ```
//!
//! Kinds (fields after the kind byte): START wall-ms id backend host pid metadata-json ·
//! WORKER name · MESSAGE text · SUBMITTED time worker job · RUNNING time worker · ANNOUNCED
//! time worker host pid · ENDED time worker how reason · CHUNK_START(1) time chunk worker
//! [ntasks] · CHUNK_DONE1 time chunk worker secs (one task, succeeded) · CHUNK_DONE time chunk
//! worker duplicate ntasks nfailed secs n (index-delta secs)* · REQUEUED / LOST time chunk
//! worker ntasks · FAILED time task count message · TOTAL time tasks · END wall-ms state
//! message total done failed · STARTUP time worker secs (the worker's own measure of its
//! start-up, process start to announcement). SUBMITTED comes twice on a cluster: when the engine asks for the
//! worker (job empty), and once the submission went through, with the scheduler's name for it.
//!
//! A record is only ever appended whole by one writer (the driver); a reader that meets a
//! record cut short (the writer is mid-write, or crashed) stops before it and resumes there on
//! its next read. Worker names and error texts are defined once and referred to by index.
//! Measured (see the tests): 1,000 one-task chunks of a long sweep take about 13 KB (a start
//! and a finish record each), a 1,000-task `map` about 130 bytes, and 3.3 KB with every task's
//! duration. Nothing is written per task unless it failed or its worker timed it.
//!
//! Writing is buffered in memory and reaches the file on [`Journal::flush`] (the engine calls
//! it with every `session.json` update); a journal that cannot be written never fails the
//! session: its events are dropped.

mod summary;

pub use summary::{
    Bar, Dist, FailureGroup, HostSummary, Outcome, Summary, TaskCounts, Throughput, Timeline,
    TimelineWorker, WorkerStatus, WorkerSummary,
};

use crate::error::{CoreError, IoContext, Result};
use crate::layout::SessionDir;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The journal's name inside a session dir.
pub const FILE: &str = "journal";
const MAGIC: &[u8; 8] = b"SHOALJ1\n";

/// Longest error line and end reason kept; failures beyond `MAX_FAILURES` records and distinct
/// error texts beyond `MAX_MESSAGES` are only counted (chunk records carry every failure count).
const MAX_TEXT: usize = 240;
const MAX_FAILURES: u32 = 10_000;
const MAX_MESSAGES: u32 = 1_000;
const FLUSH_AT: usize = 64 * 1024;
/// Finished sessions' journals kept under `$SHOAL_HOME/history`.
pub const HISTORY_KEEP: usize = 500;

mod kind {
    pub const START: u8 = 1;
    pub const WORKER: u8 = 2;
    pub const MESSAGE: u8 = 3;
    pub const SUBMITTED: u8 = 4;
    pub const RUNNING: u8 = 5;
    pub const ANNOUNCED: u8 = 6;
    pub const ENDED: u8 = 7;
    pub const CHUNK_START: u8 = 8;
    pub const CHUNK_DONE1: u8 = 9;
    pub const CHUNK_DONE: u8 = 10;
    pub const REQUEUED: u8 = 11;
    pub const LOST: u8 = 12;
    pub const FAILED: u8 = 13;
    pub const TOTAL: u8 = 14;
    pub const END: u8 = 15;
    pub const CHUNK_START1: u8 = 16;
    pub const STARTUP: u8 = 17;
}

/// How a worker's life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerEnd {
    /// It exited by itself (idle, asked to stop, `maxtasksperchild`).
    Exited,
    /// Its backend reported it dead, or it exited holding work.
    Lost,
    /// The driver gave up on it (no heartbeat) and cancelled it; late results are not trusted.
    Fenced,
    /// The driver gave it back to the scheduler before it started (the work ran out).
    Retired,
}

impl WorkerEnd {
    fn code(self) -> u8 {
        match self {
            WorkerEnd::Exited => 0,
            WorkerEnd::Lost => 1,
            WorkerEnd::Fenced => 2,
            WorkerEnd::Retired => 3,
        }
    }
    fn from_code(c: u8) -> WorkerEnd {
        match c {
            1 => WorkerEnd::Lost,
            2 => WorkerEnd::Fenced,
            3 => WorkerEnd::Retired,
            _ => WorkerEnd::Exited,
        }
    }
}

/// What a session is, recorded once at its start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub backend: String,
    pub host: String,
    pub pid: u32,
    /// Wall-clock seconds since the epoch when the journal was opened.
    pub started: f64,
    pub metadata: serde_json::Value,
}

/// How a session ended, recorded by the driver's last act.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SessionEnd {
    /// Wall-clock seconds since the epoch.
    pub at: f64,
    pub state: String,
    pub message: Option<String>,
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_failed: u64,
}

/// One decoded record. Times `t` are seconds since the session started (driver clock);
/// workers and error messages are indices into [`Log::workers`] and [`Log::messages`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    WorkerSubmitted {
        t: f64,
        worker: u32,
        job: String,
    },
    WorkerRunning {
        t: f64,
        worker: u32,
    },
    WorkerAnnounced {
        t: f64,
        worker: u32,
        host: String,
        pid: u32,
    },
    WorkerEnded {
        t: f64,
        worker: u32,
        how: WorkerEnd,
        reason: String,
    },
    WorkerStartup {
        t: f64,
        worker: u32,
        secs: f64,
    },
    ChunkStarted {
        t: f64,
        chunk: u64,
        worker: u32,
        ntasks: u32,
    },
    ChunkFinished(Finished),
    ChunkRequeued {
        t: f64,
        chunk: u64,
        worker: u32,
        ntasks: u32,
    },
    ChunkLost {
        t: f64,
        chunk: u64,
        worker: u32,
        ntasks: u32,
    },
    TasksFailed {
        t: f64,
        task: u64,
        count: u32,
        message: u32,
    },
    TasksTotal {
        t: f64,
        total: u64,
    },
}

/// A chunk's result arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub t: f64,
    pub chunk: u64,
    pub worker: u32,
    pub ntasks: u32,
    pub nfailed: u32,
    /// Seconds the worker spent on the chunk (its own clock).
    pub elapsed: f64,
    /// `(task index in the chunk, seconds)` for the tasks the worker timed one by one.
    pub durations: Vec<(u32, f64)>,
    /// A requeued chunk that finished a second time: its result was not used.
    pub duplicate: bool,
}

// ---------------------------------------------------------------- encoding

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_signed(buf: &mut Vec<u8>, v: i64) {
    put_varint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(buf: &mut Vec<u8>, s: &str, cap: usize) {
    let s = clip(s, cap);
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// `s` cut to at most `cap` bytes on a character boundary.
fn clip(s: &str, cap: usize) -> &str {
    if s.len() <= cap {
        return s;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The line of an error worth showing in a list: for a Python traceback the exception line
/// (`ValueError: bad input`, the first non-indented line after the last frame), otherwise the
/// first non-empty line.
pub fn error_line(text: &str) -> &str {
    let lines: Vec<&str> = text.lines().collect();
    let after_frames = lines
        .iter()
        .rposition(|l| l.starts_with("  "))
        .map_or(0, |i| i + 1);
    lines[after_frames..]
        .iter()
        .chain(lines.iter())
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

// ---------------------------------------------------------------- writer

/// The driver's journal writer. One method per event; each appends a few bytes to a buffer.
pub struct Journal {
    file: Option<(File, PathBuf)>,
    buf: Vec<u8>,
    t0: Instant,
    last_ms: u64,
    last_chunk: u64,
    workers: HashMap<String, Mark>,
    /// Chunk -> worker index of its last start record, so repeated sightings of one claim
    /// record nothing.
    open: HashMap<u64, u32>,
    messages: HashMap<String, u32>,
    failures: u32,
    total: u64,
    /// Set by [`Journal::set_clock`]: record times come from the caller, not `t0`.
    manual_ms: Option<u64>,
}

impl Journal {
    /// Create the journal of a new session in its dir and record what the session is.
    pub fn open(dir: &SessionDir, info: &SessionInfo) -> Result<Journal> {
        let path = dir.root().join(FILE);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        let mut j = Journal::disabled();
        j.file = Some((file, path));
        j.buf.extend_from_slice(MAGIC);
        j.buf.push(kind::START);
        put_varint(&mut j.buf, (info.started.max(0.0) * 1000.0).round() as u64);
        put_str(&mut j.buf, &info.id, MAX_TEXT);
        put_str(&mut j.buf, &info.backend, MAX_TEXT);
        put_str(&mut j.buf, &info.host, MAX_TEXT);
        put_varint(&mut j.buf, u64::from(info.pid));
        let meta = serde_json::to_string(&info.metadata).unwrap_or_else(|_| "null".into());
        put_str(&mut j.buf, &meta, 16 * 1024);
        j.flush();
        Ok(j)
    }

    /// A journal that records nothing (the file could not be created).
    pub fn disabled() -> Journal {
        Journal {
            file: None,
            buf: Vec::new(),
            t0: Instant::now(),
            last_ms: 0,
            last_chunk: 0,
            workers: HashMap::new(),
            open: HashMap::new(),
            messages: HashMap::new(),
            failures: 0,
            total: 0,
            manual_ms: None,
        }
    }

    /// From now on, records carry `ms` since the session start instead of the real clock
    /// (for tests and tools that replay a session; the engine never calls it).
    pub fn set_clock(&mut self, ms: u64) {
        self.manual_ms = Some(ms);
    }

    pub fn worker_submitted(&mut self, worker: &str, job: Option<&str>) {
        let w = self.head(kind::SUBMITTED, worker);
        put_varint(&mut self.buf, w);
        put_str(&mut self.buf, job.unwrap_or(""), MAX_TEXT);
    }

    /// The backend reports the worker running (its job started).
    pub fn worker_running(&mut self, worker: &str) {
        let w = self.head(kind::RUNNING, worker);
        put_varint(&mut self.buf, w);
    }

    /// The worker process announced itself (it is up and can take work). Only the first
    /// announcement of a worker is recorded.
    pub fn worker_announced(&mut self, worker: &str, host: &str, pid: u32) {
        if self.workers.get(worker).is_some_and(|m| m.announced) {
            return;
        }
        let w = self.head(kind::ANNOUNCED, worker);
        self.mark(worker).announced = true;
        put_varint(&mut self.buf, w);
        put_str(&mut self.buf, host, MAX_TEXT);
        put_varint(&mut self.buf, u64::from(pid));
    }

    /// The worker's own measure of its start-up (process start to announcement), recorded
    /// with its first announcement.
    pub fn worker_startup(&mut self, worker: &str, secs: f64) {
        let w = self.head(kind::STARTUP, worker);
        put_varint(&mut self.buf, w);
        put_duration(&mut self.buf, secs);
    }

    /// Whether `worker` is known and its announcement not recorded yet (so the driver knows
    /// whose announcement to look for).
    pub fn needs_announcement(&self, worker: &str) -> bool {
        self.workers.get(worker).is_some_and(|m| !m.announced)
    }

    /// Only the first end of a worker is recorded (a worker fenced for its silence and then
    /// reported lost by its backend stays fenced).
    pub fn worker_ended(&mut self, worker: &str, how: WorkerEnd, reason: &str) {
        if self.workers.get(worker).is_some_and(|m| m.ended) {
            return;
        }
        let w = self.head(kind::ENDED, worker);
        self.mark(worker).ended = true;
        put_varint(&mut self.buf, w);
        self.buf.push(how.code());
        put_str(&mut self.buf, error_line(reason), MAX_TEXT);
    }

    /// A worker began the chunk of `ntasks` tasks (the driver saw its claim, or the worker
    /// acknowledged a push). Seeing the same claim again records nothing, so the driver may
    /// call this for every claim it lists.
    pub fn chunk_started(&mut self, chunk: u64, worker: &str, ntasks: u32) {
        let w = self.worker(worker);
        if self.open.insert(chunk, w) == Some(w) {
            return;
        }
        if ntasks == 1 {
            let w = self.head(kind::CHUNK_START1, worker);
            self.chunk(chunk);
            put_varint(&mut self.buf, w);
        } else {
            self.chunk_event(kind::CHUNK_START, chunk, worker, ntasks);
        }
    }

    /// A chunk's result arrived. `elapsed` is the worker's own time for the chunk;
    /// `durations` lists `(task index, seconds)` of the tasks it timed one by one (may be
    /// empty); `duplicate` marks a requeued chunk's second result, which was not used.
    pub fn chunk_finished(&mut self, f: &ChunkDone<'_>) {
        let simple = f.ntasks == 1 && f.nfailed == 0 && f.durations.is_empty() && !f.duplicate;
        let k = if simple {
            kind::CHUNK_DONE1
        } else {
            kind::CHUNK_DONE
        };
        let w = self.head(k, f.worker);
        self.chunk(f.chunk);
        put_varint(&mut self.buf, w);
        self.open.remove(&f.chunk);
        if !simple {
            self.buf.push(u8::from(f.duplicate));
            put_varint(&mut self.buf, u64::from(f.ntasks));
            put_varint(&mut self.buf, u64::from(f.nfailed));
        }
        put_duration(&mut self.buf, f.elapsed);
        if !simple {
            put_varint(&mut self.buf, f.durations.len() as u64);
            let mut last = 0u32;
            for &(i, secs) in f.durations {
                put_varint(&mut self.buf, u64::from(i.saturating_sub(last)));
                put_duration(&mut self.buf, secs);
                last = i;
            }
        }
        self.maybe_flush();
    }

    /// A chunk went back to the queue because its worker was lost (its tasks will be retried).
    pub fn chunk_requeued(&mut self, chunk: u64, worker: &str, ntasks: u32) {
        self.chunk_event(kind::REQUEUED, chunk, worker, ntasks);
    }

    /// A chunk's workers kept dying: its tasks failed without running again.
    pub fn chunk_lost(&mut self, chunk: u64, worker: &str, ntasks: u32) {
        self.chunk_event(kind::LOST, chunk, worker, ntasks);
    }

    /// `count` tasks from session task number `task` on failed with `error` (a traceback or
    /// a message; only its [`error_line`] is kept).
    pub fn tasks_failed(&mut self, task: u64, count: u32, error: &str) {
        if self.failures >= MAX_FAILURES || self.file.is_none() {
            return;
        }
        self.failures += 1;
        let m = self.message(error_line(error));
        self.time(kind::FAILED);
        put_varint(&mut self.buf, task);
        put_varint(&mut self.buf, u64::from(count));
        put_varint(&mut self.buf, u64::from(m));
    }

    /// Tasks submitted so far; recorded only when it changed (call it as often as you like).
    pub fn tasks_total(&mut self, total: u64) {
        if total == self.total {
            return;
        }
        self.total = total;
        self.time(kind::TOTAL);
        put_varint(&mut self.buf, total);
    }

    /// Write what is buffered. Errors disable the journal instead of failing the session.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some((f, _)) = &mut self.file {
            if f.write_all(&self.buf).is_err() {
                self.file = None;
            }
        }
        self.buf.clear();
    }

    fn maybe_flush(&mut self) {
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn chunk_event(&mut self, k: u8, chunk: u64, worker: &str, ntasks: u32) {
        if k != kind::CHUNK_START {
            self.open.remove(&chunk);
        }
        let w = self.head(k, worker);
        self.chunk(chunk);
        put_varint(&mut self.buf, w);
        put_varint(&mut self.buf, u64::from(ntasks));
    }

    /// Define `worker` if new, then start a record of kind `k` with its time.
    fn head(&mut self, k: u8, worker: &str) -> u64 {
        let w = self.worker(worker);
        self.time(k);
        u64::from(w)
    }

    fn time(&mut self, k: u8) {
        let ms = self
            .manual_ms
            .unwrap_or_else(|| self.t0.elapsed().as_millis() as u64);
        self.buf.push(k);
        put_signed(&mut self.buf, ms as i64 - self.last_ms as i64);
        self.last_ms = ms;
    }

    fn chunk(&mut self, chunk: u64) {
        put_signed(&mut self.buf, chunk as i64 - self.last_chunk as i64);
        self.last_chunk = chunk;
    }

    fn worker(&mut self, name: &str) -> u32 {
        if let Some(m) = self.workers.get(name) {
            return m.index;
        }
        let index = self.workers.len() as u32;
        self.workers.insert(
            name.to_string(),
            Mark {
                index,
                announced: false,
                ended: false,
            },
        );
        self.buf.push(kind::WORKER);
        put_str(&mut self.buf, name, MAX_TEXT);
        index
    }

    fn mark(&mut self, name: &str) -> &mut Mark {
        self.worker(name);
        self.workers.get_mut(name).expect("defined above")
    }

    fn message(&mut self, text: &str) -> u32 {
        let text = clip(text, MAX_TEXT);
        if let Some(&m) = self.messages.get(text) {
            return m;
        }
        let n = self.messages.len() as u32;
        let text = if n >= MAX_MESSAGES {
            "(error text not recorded: too many distinct errors)"
        } else {
            text
        };
        if let Some(&m) = self.messages.get(text) {
            return m;
        }
        self.messages.insert(text.to_string(), n);
        self.buf.push(kind::MESSAGE);
        put_str(&mut self.buf, text, MAX_TEXT);
        n
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What the writer remembers of a worker: its index and which one-time events it recorded.
struct Mark {
    index: u32,
    announced: bool,
    ended: bool,
}

/// A finished chunk, for [`Journal::chunk_finished`].
#[derive(Debug, Clone, Default)]
pub struct ChunkDone<'a> {
    pub chunk: u64,
    pub worker: &'a str,
    pub ntasks: u32,
    pub nfailed: u32,
    pub elapsed: f64,
    pub durations: &'a [(u32, f64)],
    pub duplicate: bool,
}

/// Durations: microseconds below a second, milliseconds above (the low bit says which), so
/// a tiny task keeps its precision and an hour-long one costs 4 bytes, not 5.
fn put_duration(buf: &mut Vec<u8>, secs: f64) {
    let us = (secs.max(0.0) * 1e6).round() as u64;
    if us < 1 << 20 {
        put_varint(buf, us << 1);
    } else {
        put_varint(buf, ((secs * 1e3).round() as u64) << 1 | 1);
    }
}

/// Append how the session ended to its journal (after the writer is gone: the record
/// carries wall-clock time, not a delta). Best effort, like every journal write.
pub fn end_session(dir: &SessionDir, end: &SessionEnd) {
    let path = dir.root().join(FILE);
    let Ok(mut f) = OpenOptions::new().append(true).open(&path) else {
        return;
    };
    let mut buf = vec![kind::END];
    put_varint(&mut buf, (end.at.max(0.0) * 1000.0).round() as u64);
    put_str(&mut buf, &end.state, MAX_TEXT);
    put_str(&mut buf, end.message.as_deref().unwrap_or(""), 4 * MAX_TEXT);
    put_varint(&mut buf, end.tasks_total);
    put_varint(&mut buf, end.tasks_done);
    put_varint(&mut buf, end.tasks_failed);
    let _ = f.write_all(&buf);
}

impl SessionInfo {
    pub fn of(meta: &crate::session::SessionMeta) -> SessionInfo {
        SessionInfo {
            id: meta.id.clone(),
            backend: meta.backend.clone(),
            host: meta.host.clone(),
            pid: meta.pid,
            started: meta.created,
            metadata: meta.metadata.clone(),
        }
    }
}

/// `$SHOAL_HOME/history`: journals of ended sessions, kept after their work dirs are removed.
pub fn history_dir() -> PathBuf {
    crate::session::shoal_home().join("history")
}

/// Copy a session's journal to `history` as `ID.journal`, then keep only the newest
/// [`HISTORY_KEEP`] there (ids sort by time). Best effort: returns the copy's path.
pub fn archive(dir: &SessionDir, history: &Path) -> Option<PathBuf> {
    archive_keeping(dir, history, HISTORY_KEEP)
}

fn archive_keeping(dir: &SessionDir, history: &Path, keep: usize) -> Option<PathBuf> {
    let src = dir.root().join(FILE);
    if !src.exists() || crate::fsutil::create_private_dir(history).is_err() {
        return None;
    }
    let dst = history.join(format!("{}.journal", dir.id()));
    let bytes = fs::read(&src).ok()?;
    crate::fsutil::write_atomic(&dst, &[&bytes]).ok()?;
    let mut names: Vec<String> = crate::fsutil::list_names(history)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(".journal"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in &names[..excess] {
        let _ = fs::remove_file(history.join(n));
    }
    Some(dst)
}

// ---------------------------------------------------------------- reader

/// A journal read so far. [`Log::refresh`] reads what was appended since.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub path: PathBuf,
    pub info: SessionInfo,
    pub end: Option<SessionEnd>,
    pub workers: Vec<String>,
    pub messages: Vec<String>,
    pub events: Vec<Event>,
    /// Bytes decoded (the start of the first incomplete record).
    offset: u64,
    last_ms: i64,
    last_chunk: i64,
}

impl Log {
    pub fn read(path: &Path) -> Result<Log> {
        let mut log = Log {
            path: path.to_path_buf(),
            ..Log::default()
        };
        log.refresh()?;
        if log.offset == 0 {
            return Err(CoreError::Corrupt {
                path: path.to_path_buf(),
                reason: "not a shoal journal (no header)".into(),
            });
        }
        Ok(log)
    }

    /// The journal of a session dir.
    pub fn of(dir: &SessionDir) -> Result<Log> {
        Log::read(&dir.root().join(FILE))
    }

    /// Decode records appended since the last read. Returns whether any were new.
    pub fn refresh(&mut self) -> Result<bool> {
        let mut f = File::open(&self.path).at(&self.path)?;
        f.seek(SeekFrom::Start(self.offset)).at(&self.path)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).at(&self.path)?;
        let mut cur = Cursor {
            bytes: &bytes,
            pos: 0,
        };
        if self.offset == 0 {
            if bytes.len() < MAGIC.len() {
                return Ok(false);
            }
            if &bytes[..MAGIC.len()] != MAGIC {
                return Err(CoreError::Corrupt {
                    path: self.path.clone(),
                    reason: "not a shoal journal (bad magic)".into(),
                });
            }
            cur.pos = MAGIC.len();
        }
        let mut any = false;
        loop {
            let start = cur.pos;
            let mut trial = self.clone_state();
            match trial.decode(&mut cur) {
                Some(true) => {
                    self.apply_state(trial);
                    any = true;
                }
                Some(false) | None => {
                    cur.pos = start;
                    break;
                }
            }
        }
        self.offset += cur.pos as u64;
        Ok(any)
    }

    /// Whether the session recorded its end.
    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// Seconds since the start of the last record (the journal's notion of "now" when it has
    /// ended, or when reading another host's journal).
    pub fn last_time(&self) -> f64 {
        self.last_ms as f64 / 1000.0
    }

    fn clone_state(&self) -> Decoder {
        Decoder {
            last_ms: self.last_ms,
            last_chunk: self.last_chunk,
            pending: Vec::new(),
        }
    }

    fn apply_state(&mut self, d: Decoder) {
        self.last_ms = d.last_ms;
        self.last_chunk = d.last_chunk;
        for rec in d.pending {
            match rec {
                Decoded::Info(i) => self.info = i,
                Decoded::End(e) => self.end = Some(e),
                Decoded::Worker(w) => self.workers.push(w),
                Decoded::Message(m) => self.messages.push(m),
                Decoded::Event(e) => self.events.push(e),
            }
        }
    }
}

enum Decoded {
    Info(SessionInfo),
    End(SessionEnd),
    Worker(String),
    Message(String),
    Event(Event),
}

/// Decoding state for one record: applied to the log only if the record is complete.
struct Decoder {
    last_ms: i64,
    last_chunk: i64,
    pending: Vec<Decoded>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn duration(&mut self) -> Option<f64> {
        let v = self.varint()?;
        Some(if v & 1 == 1 {
            (v >> 1) as f64 / 1e3
        } else {
            (v >> 1) as f64 / 1e6
        })
    }
    fn signed(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.varint()?).ok()
    }
    fn string(&mut self) -> Option<String> {
        let n = self.varint()? as usize;
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(String::from_utf8_lossy(s).into_owned())
    }
}

impl Decoder {
    fn t(&mut self, c: &mut Cursor<'_>) -> Option<f64> {
        self.last_ms += c.signed()?;
        Some(self.last_ms as f64 / 1000.0)
    }
    fn chunk(&mut self, c: &mut Cursor<'_>) -> Option<u64> {
        self.last_chunk += c.signed()?;
        Some(self.last_chunk as u64)
    }

    /// Decode one record: Some(true) decoded, None cut short, Some(false) unknown kind (a
    /// newer writer): reading stops there.
    fn decode(&mut self, c: &mut Cursor<'_>) -> Option<bool> {
        let k = c.byte()?;
        let rec = match k {
            kind::START => {
                let started = c.varint()? as f64 / 1000.0;
                let id = c.string()?;
                let backend = c.string()?;
                let host = c.string()?;
                let pid = c.u32()?;
                let metadata = serde_json::from_str(&c.string()?).unwrap_or_default();
                Decoded::Info(SessionInfo {
                    id,
                    backend,
                    host,
                    pid,
                    started,
                    metadata,
                })
            }
            kind::WORKER => Decoded::Worker(c.string()?),
            kind::MESSAGE => Decoded::Message(c.string()?),
            kind::SUBMITTED => {
                let t = self.t(c)?;
                Decoded::Event(Event::WorkerSubmitted {
                    t,
                    worker: c.u32()?,
                    job: c.string()?,
                })
            }
            kind::RUNNING => {
                let t = self.t(c)?;
                Decoded::Event(Event::WorkerRunning {
                    t,
                    worker: c.u32()?,
                })
            }
            kind::ANNOUNCED => {
                let t = self.t(c)?;
                Decoded::Event(Event::WorkerAnnounced {
                    t,
                    worker: c.u32()?,
                    host: c.string()?,
                    pid: c.u32()?,
                })
            }
            kind::STARTUP => {
                let t = self.t(c)?;
                Decoded::Event(Event::WorkerStartup {
                    t,
                    worker: c.u32()?,
                    secs: c.duration()?,
                })
            }
            kind::ENDED => {
                let t = self.t(c)?;
                Decoded::Event(Event::WorkerEnded {
                    t,
                    worker: c.u32()?,
                    how: WorkerEnd::from_code(c.byte()?),
                    reason: c.string()?,
                })
            }
            kind::CHUNK_DONE1 => {
                let t = self.t(c)?;
                Decoded::Event(Event::ChunkFinished(Finished {
                    t,
                    chunk: self.chunk(c)?,
                    worker: c.u32()?,
                    ntasks: 1,
                    nfailed: 0,
                    elapsed: c.duration()?,
                    durations: Vec::new(),
                    duplicate: false,
                }))
            }
            kind::CHUNK_DONE => {
                let t = self.t(c)?;
                let chunk = self.chunk(c)?;
                let worker = c.u32()?;
                let duplicate = c.byte()? != 0;
                let ntasks = c.u32()?;
                let nfailed = c.u32()?;
                let elapsed = c.duration()?;
                let n = c.varint()? as usize;
                let mut durations = Vec::with_capacity(n.min(1 << 16));
                let mut i = 0u32;
                for _ in 0..n {
                    i = i.checked_add(c.u32()?)?;
                    durations.push((i, c.duration()?));
                }
                Decoded::Event(Event::ChunkFinished(Finished {
                    t,
                    chunk,
                    worker,
                    ntasks,
                    nfailed,
                    elapsed,
                    durations,
                    duplicate,
                }))
            }
            kind::CHUNK_START1 => {
                let t = self.t(c)?;
                Decoded::Event(Event::ChunkStarted {
                    t,
                    chunk: self.chunk(c)?,
                    worker: c.u32()?,
                    ntasks: 1,
                })
            }
            kind::CHUNK_START | kind::REQUEUED | kind::LOST => {
                let t = self.t(c)?;
                let chunk = self.chunk(c)?;
                let worker = c.u32()?;
                let ntasks = c.u32()?;
                Decoded::Event(match k {
                    kind::CHUNK_START => Event::ChunkStarted {
                        t,
                        chunk,
                        worker,
                        ntasks,
                    },
                    kind::REQUEUED => Event::ChunkRequeued {
                        t,
                        chunk,
                        worker,
                        ntasks,
                    },
                    _ => Event::ChunkLost {
                        t,
                        chunk,
                        worker,
                        ntasks,
                    },
                })
            }
            kind::FAILED => {
                let t = self.t(c)?;
                Decoded::Event(Event::TasksFailed {
                    t,
                    task: c.varint()?,
                    count: c.u32()?,
                    message: c.u32()?,
                })
            }
            kind::TOTAL => {
                let t = self.t(c)?;
                Decoded::Event(Event::TasksTotal {
                    t,
                    total: c.varint()?,
                })
            }
            kind::END => {
                let at = c.varint()? as f64 / 1000.0;
                let state = c.string()?;
                let message = Some(c.string()?).filter(|m| !m.is_empty());
                Decoded::End(SessionEnd {
                    at,
                    state,
                    message,
                    tasks_total: c.varint()?,
                    tasks_done: c.varint()?,
                    tasks_failed: c.varint()?,
                })
            }
            _ => return Some(false),
        };
        self.pending.push(rec);
        Some(true)
    }
}

#[cfg(test)]
mod tests;

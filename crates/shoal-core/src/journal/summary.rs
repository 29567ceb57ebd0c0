//! What a journal says about a session: task counts, duration percentiles, per-worker busy
//! and idle time, queue waits, hosts, throughput over time, failures grouped by error, and
//! the timeline (`shoal show --plot`). Pure computations over a [`Log`]; no I/O.

use super::{Event, Finished, Log, SessionInfo, WorkerEnd};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A worker's state as the journal tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Submitted to the scheduler, not started.
    Queued,
    /// Its job runs; the worker process has not announced itself yet.
    Starting,
    /// Running a chunk.
    Running,
    /// Up, waiting for work.
    Idle,
    Lost,
    /// Given up on by the driver (no heartbeat) and cancelled.
    Fenced,
    /// Given back to the scheduler before it started.
    Retired,
    Exited,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Queued => "queued",
            WorkerStatus::Starting => "starting",
            WorkerStatus::Running => "running",
            WorkerStatus::Idle => "idle",
            WorkerStatus::Lost => "lost",
            WorkerStatus::Fenced => "fenced",
            WorkerStatus::Retired => "retired",
            WorkerStatus::Exited => "exited",
        }
    }

    /// Whether the worker may still do something.
    pub fn live(self) -> bool {
        matches!(
            self,
            WorkerStatus::Queued
                | WorkerStatus::Starting
                | WorkerStatus::Running
                | WorkerStatus::Idle
        )
    }
}

/// Summary statistics of a set of durations (seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dist {
    pub n: u64,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Dist {
    /// From `(value, weight)` pairs: a chunk of `n` tasks timed only as a whole counts as `n`
    /// tasks of its mean duration.
    pub fn weighted(mut values: Vec<(f64, u64)>) -> Option<Dist> {
        values.retain(|&(v, w)| w > 0 && v.is_finite());
        let n: u64 = values.iter().map(|v| v.1).sum();
        if n == 0 {
            return None;
        }
        values.sort_by(|a, b| a.0.total_cmp(&b.0));
        let quantile = |q: f64| {
            // The smallest value with at least q of the weight at or below it.
            let target = (q * n as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for &(v, w) in &values {
                seen += w;
                if seen >= target {
                    return v;
                }
            }
            values[values.len() - 1].0
        };
        let sum: f64 = values.iter().map(|&(v, w)| v * w as f64).sum();
        Some(Dist {
            n,
            mean: sum / n as f64,
            min: values[0].0,
            p50: quantile(0.5),
            p95: quantile(0.95),
            max: values[values.len() - 1].0,
        })
    }

    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Dist> {
        Dist::weighted(values.into_iter().map(|v| (v, 1)).collect())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskCounts {
    /// Tasks submitted.
    pub total: u64,
    /// Tasks with an outcome (including failed ones).
    pub finished: u64,
    pub failed: u64,
    /// Tasks that went back to the queue because their worker was lost (counted per retry).
    pub retried: u64,
    /// Tasks that failed because their workers kept dying (included in `failed`).
    pub lost: u64,
    /// Tasks in chunks a worker is running now.
    pub running: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerSummary {
    pub id: String,
    /// Scheduler job id (an array job for cluster backends).
    pub job: Option<String>,
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub status: WorkerStatus,
    /// Seconds since the session started.
    pub submitted: Option<f64>,
    pub running: Option<f64>,
    pub announced: Option<f64>,
    pub ended: Option<f64>,
    pub reason: Option<String>,
    /// From submission to its job running.
    pub queue_wait: Option<f64>,
    /// From its job running to the worker announcing itself (interpreter start, imports);
    /// where the backend saw the job running only after that, the worker's own measure.
    pub startup: Option<f64>,
    pub chunks: u64,
    pub tasks: u64,
    pub failed: u64,
    /// Seconds spent running chunks (the worker's own timing) and up without work.
    pub busy: f64,
    pub idle: f64,
    /// Tasks per second while it was up.
    pub rate: f64,
    /// The chunk it runs now and since when (seconds since the session started).
    pub current: Option<(u64, f64)>,
}

impl WorkerSummary {
    fn new(id: &str) -> Self {
        WorkerSummary {
            id: id.to_string(),
            job: None,
            host: None,
            pid: None,
            status: WorkerStatus::Queued,
            submitted: None,
            running: None,
            announced: None,
            ended: None,
            reason: None,
            queue_wait: None,
            startup: None,
            chunks: 0,
            tasks: 0,
            failed: 0,
            busy: 0.0,
            idle: 0.0,
            rate: 0.0,
            current: None,
        }
    }

    /// When it was first up (announced, else running, else submitted).
    fn up_since(&self) -> Option<f64> {
        self.announced.or(self.running)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSummary {
    pub host: String,
    pub workers: u64,
    pub tasks: u64,
    pub failed: u64,
    pub busy: f64,
}

/// Failures whose errors differ only in their numbers (`bad input 13`, `bad input 110`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailureGroup {
    /// The first error text of the group.
    pub message: String,
    pub count: u64,
    /// Distinct error texts in the group.
    pub distinct: u64,
    /// The first failed task numbers of the group.
    pub tasks: Vec<u64>,
}

/// What errors of one group share: the text with every run of digits as `#`.
fn shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_digits = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Tasks finished per second, in bins of `bin` seconds from the session's start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    pub bin: f64,
    pub rates: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub session: SessionInfo,
    /// `running` until the driver records the end (a dead driver's session stays `running`
    /// here; callers compare with `session.json`).
    pub state: String,
    pub message: Option<String>,
    /// Wall-clock end, if ended.
    pub ended: Option<f64>,
    /// Seconds from the start to the end (or to now).
    pub elapsed: f64,
    pub tasks: TaskCounts,
    /// Task durations; `durations_exact` is false when some come from chunk means.
    pub durations: Option<Dist>,
    pub durations_exact: bool,
    pub queue_wait: Option<Dist>,
    pub startup: Option<Dist>,
    /// Tasks per second over the whole session and over the last minute.
    pub rate: f64,
    pub recent_rate: f64,
    /// Seconds until the submitted tasks are done at the recent rate.
    pub eta: Option<f64>,
    pub throughput: Throughput,
    pub workers_by_status: BTreeMap<WorkerStatus, u64>,
    pub workers: Vec<WorkerSummary>,
    pub hosts: Vec<HostSummary>,
    pub failures: Vec<FailureGroup>,
}

/// What a chunk bar in the timeline stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Some of its tasks failed.
    Partial,
    Failed,
    /// Its worker was lost while running it (the tasks were retried or failed).
    Lost,
    /// A second result of a requeued chunk (not used).
    Duplicate,
    /// Still running.
    Running,
    /// Running when the session ended (cancelled, failed, interrupted): no result.
    Unfinished,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    pub start: f64,
    pub end: f64,
    pub tasks: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineWorker {
    pub id: String,
    pub host: Option<String>,
    pub status: WorkerStatus,
    pub submitted: Option<f64>,
    pub running: Option<f64>,
    pub announced: Option<f64>,
    pub ended: Option<f64>,
    pub bars: Vec<Bar>,
}

/// Workers on one axis, time (seconds since the start) on the other, chunks (or tasks, when
/// the worker timed them one by one) as bars.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub session: SessionInfo,
    pub state: String,
    pub end: f64,
    pub workers: Vec<TimelineWorker>,
}

const RECENT: f64 = 60.0;
const BIN_WIDTHS: [f64; 18] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    10800.0, 21600.0, 43200.0, 86400.0,
];
const MAX_BINS: f64 = 60.0;
const FAILED_TASKS_KEPT: usize = 20;

/// One pass over the events, shared by the summary and the timeline.
struct Pass {
    workers: Vec<WorkerSummary>,
    bars: Vec<Vec<Bar>>,
    /// chunk -> (worker, since, tasks)
    open: HashMap<u64, (u32, f64, u32)>,
    tasks: TaskCounts,
    durations: Vec<(f64, u64)>,
    exact: bool,
    /// (start, end, tasks) of delivered chunks, for throughput.
    spans: Vec<(f64, f64, u32)>,
    failures: Vec<FailureGroup>,
    /// Message index -> its group in `failures`.
    group_of: Vec<usize>,
    now: f64,
}

impl Pass {
    fn run(log: &Log, now_wall: f64) -> Pass {
        let now = match &log.end {
            Some(e) => e.at - log.info.started,
            None => now_wall - log.info.started,
        }
        .max(log.last_time());
        let mut p = Pass {
            workers: log.workers.iter().map(|w| WorkerSummary::new(w)).collect(),
            bars: vec![Vec::new(); log.workers.len()],
            open: HashMap::new(),
            tasks: TaskCounts::default(),
            durations: Vec::new(),
            exact: true,
            spans: Vec::new(),
            failures: Vec::new(),
            group_of: Vec::new(),
            now,
        };
        let mut by_shape: HashMap<String, usize> = HashMap::new();
        for m in &log.messages {
            let n = p.failures.len();
            let g = *by_shape.entry(shape(m)).or_insert(n);
            if g == n {
                p.failures.push(FailureGroup {
                    message: m.clone(),
                    ..FailureGroup::default()
                });
            }
            p.group_of.push(g);
        }
        for e in &log.events {
            p.apply(e);
        }
        p.finish(log);
        p
    }

    fn worker(&mut self, w: u32) -> Option<&mut WorkerSummary> {
        self.workers.get_mut(w as usize)
    }

    fn close(&mut self, chunk: u64, t: f64, ntasks: u32, outcome: Outcome) {
        if let Some((w, since, _)) = self.open.remove(&chunk) {
            if let Some(bars) = self.bars.get_mut(w as usize) {
                bars.push(Bar {
                    start: since,
                    end: t.max(since),
                    tasks: ntasks,
                    outcome,
                });
            }
        }
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::WorkerSubmitted { t, worker, job } => {
                if let Some(w) = self.worker(*worker) {
                    // Recorded again, with its job, once the submission went through.
                    w.submitted.get_or_insert(*t);
                    if !job.is_empty() {
                        w.job = Some(job.clone());
                    }
                }
            }
            Event::WorkerRunning { t, worker } => {
                if let Some(w) = self.worker(*worker) {
                    w.running.get_or_insert(*t);
                }
            }
            Event::WorkerStartup { worker, secs, .. } => {
                if let Some(w) = self.worker(*worker) {
                    w.startup = Some(*secs);
                }
            }
            Event::WorkerAnnounced {
                t,
                worker,
                host,
                pid,
            } => {
                if let Some(w) = self.worker(*worker) {
                    w.announced.get_or_insert(*t);
                    w.running.get_or_insert(*t);
                    w.host = Some(host.clone());
                    w.pid = Some(*pid);
                }
            }
            Event::WorkerEnded {
                t,
                worker,
                how,
                reason,
            } => {
                if let Some(w) = self.worker(*worker).filter(|w| w.ended.is_none()) {
                    w.ended = Some(*t);
                    w.status = match how {
                        WorkerEnd::Exited => WorkerStatus::Exited,
                        WorkerEnd::Lost => WorkerStatus::Lost,
                        WorkerEnd::Fenced => WorkerStatus::Fenced,
                        WorkerEnd::Retired => WorkerStatus::Retired,
                    };
                    w.reason = Some(reason.clone()).filter(|r| !r.is_empty());
                }
                let held: Vec<u64> = self
                    .open
                    .iter()
                    .filter(|(_, (w, _, _))| w == worker)
                    .map(|(c, _)| *c)
                    .collect();
                for c in held {
                    self.close(c, *t, 0, Outcome::Lost);
                }
            }
            Event::ChunkStarted {
                t,
                chunk,
                worker,
                ntasks,
            } => {
                self.open.insert(*chunk, (*worker, *t, *ntasks));
            }
            Event::ChunkFinished(f) => self.finished(f),
            Event::ChunkRequeued {
                t, chunk, ntasks, ..
            } => {
                self.tasks.retried += u64::from(*ntasks);
                self.close(*chunk, *t, *ntasks, Outcome::Lost);
            }
            Event::ChunkLost {
                t, chunk, ntasks, ..
            } => {
                let n = u64::from(*ntasks);
                self.tasks.lost += n;
                self.tasks.finished += n;
                self.tasks.failed += n;
                self.close(*chunk, *t, *ntasks, Outcome::Lost);
            }
            Event::TasksFailed {
                task,
                count,
                message,
                ..
            } => {
                let group = self.group_of.get(*message as usize).copied();
                if let Some(g) = group.and_then(|g| self.failures.get_mut(g)) {
                    g.count += u64::from(*count);
                    let room = FAILED_TASKS_KEPT.saturating_sub(g.tasks.len());
                    g.tasks
                        .extend((*task..*task + u64::from(*count)).take(room));
                }
            }
            Event::TasksTotal { total, .. } => {
                self.tasks.total = self.tasks.total.max(*total);
            }
        }
    }

    fn finished(&mut self, f: &Finished) {
        let Finished {
            t,
            chunk,
            worker,
            ntasks,
            nfailed,
            elapsed,
            ref durations,
            duplicate,
        } = *f;
        self.open.remove(&chunk);
        let start = (t - elapsed).max(0.0);
        let outcome = if duplicate {
            Outcome::Duplicate
        } else if nfailed == 0 {
            Outcome::Ok
        } else if nfailed >= ntasks {
            Outcome::Failed
        } else {
            Outcome::Partial
        };
        if let Some(w) = self.workers.get_mut(worker as usize) {
            w.busy += elapsed;
            if !duplicate {
                w.chunks += 1;
                w.tasks += u64::from(ntasks);
                w.failed += u64::from(nfailed);
            }
        }
        if let Some(bars) = self.bars.get_mut(worker as usize) {
            if durations.len() == ntasks as usize && ntasks > 1 {
                // Timed one by one: the tasks ran back to back from the chunk's start.
                let mut at = start;
                for &(_, d) in durations {
                    bars.push(Bar {
                        start: at,
                        end: at + d,
                        tasks: 1,
                        outcome: if nfailed == 0 { Outcome::Ok } else { outcome },
                    });
                    at += d;
                }
            } else {
                bars.push(Bar {
                    start,
                    end: t.max(start),
                    tasks: ntasks,
                    outcome,
                });
            }
        }
        if duplicate {
            return;
        }
        self.tasks.finished += u64::from(ntasks);
        self.tasks.failed += u64::from(nfailed);
        self.spans.push((start, t.max(start), ntasks));
        let timed: f64 = durations.iter().map(|d| d.1).sum();
        self.durations
            .extend(durations.iter().map(|&(_, d)| (d, 1)));
        let rest = u64::from(ntasks).saturating_sub(durations.len() as u64);
        if rest > 0 {
            if rest > 1 {
                self.exact = false;
            }
            self.durations
                .push((((elapsed - timed) / rest as f64).max(0.0), rest));
        }
    }

    fn finish(&mut self, log: &Log) {
        let now = self.now;
        let ended = log.end.is_some();
        for (&chunk, &(w, since, n)) in &self.open {
            if !ended {
                self.tasks.running += u64::from(n);
                if let Some(ws) = self.workers.get_mut(w as usize) {
                    if ws.current.is_none_or(|(_, s)| since > s) {
                        ws.current = Some((chunk, since));
                    }
                }
            }
            if let Some(bars) = self.bars.get_mut(w as usize) {
                bars.push(Bar {
                    start: since,
                    end: now.max(since),
                    tasks: n,
                    outcome: if ended {
                        Outcome::Unfinished
                    } else {
                        Outcome::Running
                    },
                });
            }
        }
        self.open.clear();
        for w in &mut self.workers {
            if w.ended.is_none() && ended {
                // The driver stopped every remaining worker as it ended.
                w.ended = Some(now);
                w.status = WorkerStatus::Exited;
                w.reason = Some("stopped when the session ended".into());
            }
            if w.ended.is_none() {
                w.status = if w.current.is_some() {
                    WorkerStatus::Running
                } else if w.announced.is_some() {
                    WorkerStatus::Idle
                } else if w.running.is_some() {
                    WorkerStatus::Starting
                } else {
                    WorkerStatus::Queued
                };
            }
            if let Some((_, since)) = w.current {
                w.busy += (now - since).max(0.0);
            }
            // The backend's "running" is seen at its next poll, maybe after the worker
            // announced itself: then the worker's own measure (process start to hello,
            // recorded as WorkerStartup) stands for it, or it is unknown.
            w.startup = match (w.running, w.announced) {
                (Some(r), Some(a)) if r < a => Some(a - r),
                _ => w.startup,
            };
            if let (Some(r), Some(a)) = (w.running, w.announced) {
                w.running = Some(r.min(a));
            }
            w.queue_wait = match (w.submitted, w.running) {
                (Some(s), Some(r)) => Some((r - s).max(0.0)),
                _ => None,
            };
            if let Some(up) = w.up_since() {
                let alive = (w.ended.unwrap_or(now) - up).max(0.0);
                w.idle = (alive - w.busy).max(0.0);
                if alive > 0.0 {
                    w.rate = w.tasks as f64 / alive;
                }
            }
        }
        for bars in &mut self.bars {
            bars.sort_by(|a, b| a.start.total_cmp(&b.start));
        }
        if let Some(e) = &log.end {
            self.tasks.total = self.tasks.total.max(e.tasks_total);
            self.tasks.finished = self.tasks.finished.max(e.tasks_done);
            self.tasks.failed = self.tasks.failed.max(e.tasks_failed);
        }
    }

    /// Tasks finished in `[from, to)`, counting a chunk's tasks as spread over its run.
    fn finished_between(&self, from: f64, to: f64) -> f64 {
        self.spans
            .iter()
            .map(|&(s, e, n)| {
                if e <= s {
                    return if (from..to).contains(&e) {
                        f64::from(n)
                    } else {
                        0.0
                    };
                }
                let overlap = (e.min(to) - s.max(from)).max(0.0);
                f64::from(n) * overlap / (e - s)
            })
            .sum()
    }
}

impl Summary {
    /// Summarise `log` as of wall-clock time `now` (ignored once the session ended).
    pub fn of(log: &Log, now: f64) -> Summary {
        let p = Pass::run(log, now);
        let elapsed = p.now;
        let width = BIN_WIDTHS
            .iter()
            .copied()
            .find(|w| elapsed / w <= MAX_BINS)
            .unwrap_or(BIN_WIDTHS[BIN_WIDTHS.len() - 1]);
        let nbins = (elapsed / width).ceil().max(1.0) as usize;
        let rates = (0..nbins)
            .map(|i| {
                let from = i as f64 * width;
                let to = (from + width).min(elapsed.max(from + 1e-9));
                p.finished_between(from, from + width) / (to - from).max(1e-9)
            })
            .collect();
        let recent_window = RECENT.min(elapsed).max(1e-9);
        let recent_rate =
            p.finished_between(elapsed - recent_window, elapsed + 1.0) / recent_window;
        let rate = if elapsed > 0.0 {
            p.tasks.finished as f64 / elapsed
        } else {
            0.0
        };
        let left = p.tasks.total.saturating_sub(p.tasks.finished);
        let pace = if recent_rate > 0.0 { recent_rate } else { rate };
        let eta = (log.end.is_none() && left > 0 && pace > 0.0).then(|| left as f64 / pace);
        let mut by_status = BTreeMap::new();
        for w in &p.workers {
            *by_status.entry(w.status).or_insert(0) += 1;
        }
        let mut hosts: BTreeMap<String, HostSummary> = BTreeMap::new();
        for w in &p.workers {
            let Some(h) = &w.host else { continue };
            let e = hosts.entry(h.clone()).or_insert_with(|| HostSummary {
                host: h.clone(),
                ..HostSummary::default()
            });
            e.workers += 1;
            e.tasks += w.tasks;
            e.failed += w.failed;
            e.busy += w.busy;
        }
        let mut distinct = vec![0u64; p.failures.len()];
        for &g in &p.group_of {
            distinct[g] += 1;
        }
        let mut failures: Vec<FailureGroup> = p
            .failures
            .iter()
            .zip(distinct)
            .filter(|(g, _)| g.count > 0)
            .map(|(g, d)| FailureGroup {
                distinct: d,
                ..g.clone()
            })
            .collect();
        failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.tasks.cmp(&b.tasks)));
        Summary {
            session: log.info.clone(),
            state: log
                .end
                .as_ref()
                .map_or_else(|| "running".to_string(), |e| e.state.clone()),
            message: log.end.as_ref().and_then(|e| e.message.clone()),
            ended: log.end.as_ref().map(|e| e.at),
            elapsed,
            durations: Dist::weighted(p.durations.clone()),
            durations_exact: p.exact,
            queue_wait: Dist::of(p.workers.iter().filter_map(|w| w.queue_wait)),
            startup: Dist::of(p.workers.iter().filter_map(|w| w.startup)),
            rate,
            recent_rate,
            eta,
            throughput: Throughput { bin: width, rates },
            workers_by_status: by_status,
            hosts: hosts.into_values().collect(),
            failures,
            tasks: p.tasks,
            workers: p.workers,
        }
    }
}

impl Timeline {
    pub fn of(log: &Log, now: f64) -> Timeline {
        let p = Pass::run(log, now);
        Timeline {
            session: log.info.clone(),
            state: log
                .end
                .as_ref()
                .map_or_else(|| "running".to_string(), |e| e.state.clone()),
            end: p.now,
            workers: p
                .workers
                .into_iter()
                .zip(p.bars)
                .map(|(w, bars)| TimelineWorker {
                    id: w.id,
                    host: w.host,
                    status: w.status,
                    submitted: w.submitted,
                    running: w.running,
                    announced: w.announced,
                    ended: w.ended,
                    bars,
                })
                .collect(),
        }
    }
}

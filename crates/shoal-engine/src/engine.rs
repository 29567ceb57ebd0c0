//! The engine thread and its handle. State shared with callers is small (ids, counters,
//! outstanding chunks) and lives behind one mutex; the backend is owned by the thread.

use crate::error::{EngineError, Result};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_core::fsutil::now_secs;
use shoal_core::layout::Stream;
use shoal_core::protocol::{ChunkHeader, ResultHeader};
use shoal_core::session::{SessionMeta, SessionState};
use shoal_core::watch::DirWatch;
use shoal_core::SessionDir;
use shoal_sched::{LaunchSpec, Scheduler, WorkerState};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Engine settings that do not depend on the backend.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Times a chunk may be lost with its worker before its tasks fail with `WorkerLost`.
    pub max_attempts: u32,
    /// Workers whose heartbeat is older than this are treated as dead (None: never).
    pub heartbeat_timeout: Option<Duration>,
    /// Workers lost in a row without producing a single result before the session fails.
    pub max_start_failures: u32,
    pub progress: bool,
    /// Bytes of a lost worker's stderr quoted in errors.
    pub stderr_tail: u64,
    pub metadata: serde_json::Value,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_attempts: 3,
            heartbeat_timeout: Some(Duration::from_secs(120)),
            max_start_failures: 5,
            progress: false,
            stderr_tail: 2048,
            metadata: serde_json::Value::Null,
        }
    }
}

/// What the engine tells its caller.
#[derive(Debug)]
pub enum Event {
    /// A chunk's verified result, delivered once per chunk.
    Result {
        header: ResultHeader,
        payload: Vec<u8>,
    },
    /// A chunk whose workers kept dying: its tasks will not run again.
    Lost {
        chunk: ChunkHeader,
        worker: String,
        reason: String,
        stderr_tail: String,
    },
    /// The session cannot go on (submission refused, workers cannot start, cancelled).
    Fatal { message: String },
    /// A worker claimed the chunk for the first time (its tasks are running).
    Started { chunk: u64 },
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub chunks_outstanding: u64,
    pub workers_running: u64,
    pub workers_pending: u64,
    pub workers_started: u64,
    pub workers_lost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// Let workers finish and exit; kill what remains after the grace period.
    Graceful(Duration),
    Now,
}

struct ChunkInfo {
    header: ChunkHeader,
    attempts: u32,
    started: bool,
}

struct State {
    next_chunk: u64,
    next_task: u64,
    next_blob: u64,
    outstanding: HashMap<u64, ChunkInfo>,
    stats: Stats,
    stop: Stop,
    fatal: Option<String>,
    thread_done: bool,
    jobs: Vec<String>,
}

impl State {
    fn new() -> Self {
        State {
            next_chunk: 0,
            next_task: 0,
            next_blob: 0,
            outstanding: HashMap::new(),
            stats: Stats::default(),
            stop: Stop::No,
            fatal: None,
            thread_done: false,
            jobs: Vec::new(),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to a running session's engine.
pub struct Engine {
    dir: SessionDir,
    shared: Arc<Shared>,
    events: Receiver<Event>,
    thread: Mutex<Option<JoinHandle<()>>>,
    backend: &'static str,
    metadata: serde_json::Value,
}

impl Engine {
    /// Check the backend, then start the engine thread. Nothing is submitted if preflight fails.
    pub fn start(
        dir: SessionDir,
        mut scheduler: Box<dyn Scheduler>,
        spec: LaunchSpec,
        options: EngineOptions,
    ) -> Result<Engine> {
        scheduler.preflight(&spec)?;
        let backend = scheduler.name();
        let mut meta = SessionMeta::new(dir.id(), backend);
        meta.metadata = options.metadata.clone();
        dir.write_meta(&meta)?;
        dir.beat(&dir.control("driver.hb"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            wake: Condvar::new(),
        });
        let (tx, rx) = unbounded();
        let metadata = options.metadata.clone();
        let mut runner = Runner {
            dir: dir.clone(),
            shared: shared.clone(),
            tx,
            spec,
            options,
            workers: HashMap::new(),
            delivered: HashSet::new(),
            start_failures: 0,
            meta,
            progress: None,
            progress_lines: None,
            submitted: 0,
            last_submit: None,
            retired: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("shoal-engine".into())
            .spawn(move || {
                runner.run(scheduler.as_mut());
                runner.shared.lock().thread_done = true;
            })
            .map_err(|e| shoal_core::CoreError::io("shoal-engine thread", e))?;
        Ok(Engine {
            dir,
            shared,
            events: rx,
            thread: Mutex::new(Some(thread)),
            backend,
            metadata,
        })
    }

    pub fn dir(&self) -> &SessionDir {
        &self.dir
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Store a payload shared by many chunks; returns its id.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<u64> {
        let id = {
            let mut st = self.shared.lock();
            st.next_blob += 1;
            st.next_blob
        };
        self.dir.put_blob(id, bytes)?;
        Ok(id)
    }

    /// Publish a chunk of `ntasks` tasks; returns (chunk id, session number of its first task).
    pub fn submit(&self, payload: &[u8], ntasks: u32) -> Result<(u64, u64)> {
        let mut st = self.shared.lock();
        if st.stop != Stop::No || st.thread_done {
            return Err(EngineError::Ended);
        }
        let header = ChunkHeader {
            chunk: st.next_chunk,
            first_task: st.next_task,
            ntasks,
        };
        // Written under the lock so that chunk ids appear in pending/ in order.
        self.dir.put_chunk(&header, payload)?;
        st.next_chunk += 1;
        st.next_task += u64::from(ntasks);
        st.stats.tasks_total += u64::from(ntasks);
        st.outstanding.insert(
            header.chunk,
            ChunkInfo {
                header: header.clone(),
                attempts: 0,
                started: false,
            },
        );
        drop(st);
        self.shared.wake.notify_all();
        Ok((header.chunk, header.first_task))
    }

    /// Take back chunks no worker has claimed yet. Returns how many were withdrawn.
    pub fn withdraw(&self, chunks: &[u64]) -> Result<usize> {
        let mut n = 0;
        let mut st = self.shared.lock();
        for &c in chunks {
            if self.dir.withdraw(c)? {
                if let Some(info) = st.outstanding.remove(&c) {
                    st.stats.tasks_total -= u64::from(info.header.ntasks);
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Wait up to `timeout` for events; returns all that are ready.
    pub fn events(&self, timeout: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        match self.events.recv_timeout(timeout) {
            Ok(e) => out.push(e),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return out,
        }
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    pub fn fatal(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// Stop the session's workers: gracefully (let them exit, kill leftovers after `grace`)
    /// or at once. Returns when the engine thread has ended and nothing is left running.
    pub fn shutdown(&self, graceful: Option<Duration>) {
        {
            let mut st = self.shared.lock();
            let req = match graceful {
                Some(g) => Stop::Graceful(g),
                None => Stop::Now,
            };
            if st.stop == Stop::No || req == Stop::Now {
                st.stop = req;
            }
        }
        self.shared.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Record the final state. The work dir is removed when the session finished cleanly
    /// and `keep` is false; otherwise its path is returned for the user to inspect.
    pub fn finish(
        &self,
        state: SessionState,
        message: Option<String>,
        keep: bool,
    ) -> Option<PathBuf> {
        self.shutdown(None);
        let st = self.shared.lock();
        let mut meta = self
            .dir
            .read_meta()
            .unwrap_or_else(|_| SessionMeta::new(self.dir.id(), self.backend));
        meta.state = state;
        meta.message = message.or_else(|| st.fatal.clone());
        meta.updated = now_secs();
        meta.metadata = self.metadata.clone();
        apply_stats(&mut meta, &st.stats, &st.jobs);
        drop(st);
        let _ = self.dir.write_meta(&meta);
        if state == SessionState::Finished && !keep {
            let _ = std::fs::remove_dir_all(self.dir.root());
            None
        } else {
            Some(self.dir.root().to_path_buf())
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(None);
    }
}

fn apply_stats(meta: &mut SessionMeta, s: &Stats, jobs: &[String]) {
    meta.tasks_total = s.tasks_total;
    meta.tasks_done = s.tasks_done;
    meta.tasks_failed = s.tasks_failed;
    meta.workers_running = s.workers_running;
    meta.workers_started = s.workers_started;
    meta.workers_lost = s.workers_lost;
    meta.jobs = jobs.to_vec();
}

struct WorkerRec {
    state: WorkerState,
    produced: bool,
    /// Submission order: scale-down gives back the newest queued workers first.
    seq: u64,
}

/// The engine thread's own state.
struct Runner {
    dir: SessionDir,
    shared: Arc<Shared>,
    tx: Sender<Event>,
    spec: LaunchSpec,
    options: EngineOptions,
    workers: HashMap<String, WorkerRec>,
    delivered: HashSet<u64>,
    start_failures: u32,
    meta: SessionMeta,
    progress: Option<ProgressBar>,
    /// Without a terminal (logs, notebooks) progress is a plain line every few seconds.
    progress_lines: Option<(Instant, Instant)>,
    submitted: u64,
    last_submit: Option<Instant>,
    /// Workers the engine cancelled itself, and when: a claim one made just before its
    /// cancellation landed goes back to pending (see `sweep_retired`).
    retired: HashMap<String, Instant>,
}

/// Queued workers to give back: those beyond what the outstanding work can use. Running
/// workers are never taken away (they exit by themselves when idle).
fn surplus_pending(target: usize, pending: usize, running: usize) -> usize {
    (pending + running).saturating_sub(target).min(pending)
}

/// How long a cancelled worker's late claims are watched for.
const RETIRED_KEEP: Duration = Duration::from_secs(300);

const MIN_SLEEP: Duration = Duration::from_micros(500);
const MAX_SLEEP: Duration = Duration::from_millis(10);
const META_EVERY: Duration = Duration::from_millis(500);
const BEAT_EVERY: Duration = Duration::from_secs(5);
const CONTROL_EVERY: Duration = Duration::from_millis(250);
const EVENTS_EVERY: Duration = Duration::from_millis(100);

impl Runner {
    fn run(&mut self, sched: &mut dyn Scheduler) {
        if self.options.progress && !std::io::stderr().is_terminal() {
            self.progress_lines = Some((Instant::now(), Instant::now()));
        } else if self.options.progress {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} tasks · {per_sec} · ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            self.progress = Some(bar);
        }
        let watch = DirWatch::new(&[&self.dir.sub("results"), &self.dir.sub("claimed")]);
        let mut sleep = MIN_SLEEP;
        let mut last_poll = Instant::now() - Duration::from_secs(3600);
        let mut last_meta = Instant::now();
        let mut last_beat = Instant::now();
        let mut last_control = Instant::now();
        loop {
            let stop = self.shared.lock().stop;
            if stop == Stop::Now {
                break;
            }
            let mut busy = self.collect_results();
            busy |= self.notice_claims();
            // The scheduler's events are cheap to take (its queries run elsewhere, at their
            // own pace): take them often, so running workers are not mistaken for queued ones.
            if last_poll.elapsed() >= sched.poll_interval().min(EVENTS_EVERY) {
                last_poll = Instant::now();
                busy |= self.poll_workers(sched);
                self.check_heartbeats(sched);
            }
            if let Stop::Graceful(grace) = stop {
                self.stop_gracefully(sched, grace);
                break;
            }
            if self.shared.lock().fatal.is_none() {
                self.scale(sched);
            }
            if last_control.elapsed() >= CONTROL_EVERY {
                last_control = Instant::now();
                if self.dir.control("cancel").exists() && self.shared.lock().fatal.is_none() {
                    self.fail(sched, "session cancelled by `shoal cancel`".into());
                }
            }
            if last_beat.elapsed() >= BEAT_EVERY {
                last_beat = Instant::now();
                let _ = self.dir.beat(&self.dir.control("driver.hb"));
            }
            if last_meta.elapsed() >= META_EVERY || busy {
                if last_meta.elapsed() >= META_EVERY {
                    last_meta = Instant::now();
                    self.write_meta(sched);
                }
                self.draw_progress();
            }
            sleep = if busy {
                MIN_SLEEP
            } else {
                (sleep * 2).min(MAX_SLEEP)
            };
            // Results and claims written on this host wake us at once; submissions and
            // shutdown requests are noticed within MAX_SLEEP.
            if self.shared.lock().stop == Stop::No && watch.wait(sleep) {
                sleep = MIN_SLEEP;
            }
        }
        let _ = sched.cancel_all();
        self.refresh_workers(sched);
        self.write_meta(sched);
        if let Some(bar) = self.progress.take() {
            self.draw_progress_on(&bar);
            bar.abandon();
        }
        if self.progress_lines.is_some() {
            self.progress_line();
        }
    }

    fn progress_line(&self) {
        let Some((start, _)) = self.progress_lines else {
            return;
        };
        let s = self.shared.lock().stats.clone();
        let secs = start.elapsed().as_secs_f64();
        let rate = s.tasks_done as f64 / secs.max(1e-9);
        let eta = if rate > 0.0 && s.tasks_total > s.tasks_done {
            format!("{:.0}s", (s.tasks_total - s.tasks_done) as f64 / rate)
        } else {
            "-".into()
        };
        eprintln!(
            "shoal {}: {}/{} tasks · {rate:.1} tasks/s · elapsed {secs:.0}s · ETA {eta} · {} workers{}",
            self.dir.id(),
            s.tasks_done,
            s.tasks_total,
            s.workers_running,
            if s.tasks_failed > 0 { format!(" · {} failed", s.tasks_failed) } else { String::new() }
        );
    }

    /// Deliver every verified result not delivered before. Returns whether any arrived.
    fn collect_results(&mut self) -> bool {
        let ready = match self.dir.ready_results() {
            Ok(r) => r,
            Err(_) => return false,
        };
        let mut any = false;
        for chunk in ready {
            let Ok(Some((header, payload))) = self.dir.take_result(chunk) else {
                continue;
            };
            any = true;
            if let Some(w) = self.workers.get_mut(&header.worker) {
                w.produced = true;
            }
            self.start_failures = 0;
            if !self.delivered.insert(chunk) {
                continue; // a requeued chunk finished twice: the first result won
            }
            {
                let mut st = self.shared.lock();
                if st.outstanding.remove(&chunk).is_none() {
                    continue; // withdrawn
                }
                st.stats.tasks_done += u64::from(header.ntasks);
                st.stats.tasks_failed += u64::from(header.nfailed());
            }
            let _ = self.tx.send(Event::Result { header, payload });
        }
        any
    }

    /// Report chunks that a worker claimed for the first time.
    fn notice_claims(&mut self) -> bool {
        let Ok(claims) = self.dir.claims() else {
            return false;
        };
        let mut started = Vec::new();
        {
            let mut st = self.shared.lock();
            for (chunk, _) in claims {
                if let Some(info) = st.outstanding.get_mut(&chunk) {
                    if !info.started {
                        info.started = true;
                        started.push(chunk);
                    }
                }
            }
        }
        for chunk in &started {
            let _ = self.tx.send(Event::Started { chunk: *chunk });
        }
        !started.is_empty()
    }

    fn poll_workers(&mut self, sched: &mut dyn Scheduler) -> bool {
        for note in sched.notes() {
            self.note(&note);
        }
        let events = match sched.poll() {
            Ok(e) => e,
            Err(e) => {
                // The backend retries transient failures itself: an error here is final.
                self.fail(sched, e.to_string());
                return false;
            }
        };
        let mut any = false;
        for ev in events {
            any = true;
            if let WorkerState::Unsatisfiable(why) = &ev.state {
                self.fail(sched, why.clone());
                return true;
            }
            let ended = matches!(ev.state, WorkerState::Exited | WorkerState::Lost(_));
            let rec = self.workers.entry(ev.worker.clone()).or_insert(WorkerRec {
                state: WorkerState::Pending,
                produced: false,
                seq: 0,
            });
            rec.state = ev.state.clone();
            if ended {
                let reason = match &ev.state {
                    WorkerState::Lost(r) => Some(r.clone()),
                    _ => None,
                };
                self.worker_ended(sched, &ev.worker, reason);
            }
        }
        self.sweep_retired();
        self.refresh_workers(sched);
        any
    }

    fn refresh_workers(&mut self, sched: &dyn Scheduler) {
        let running = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Running)
            .count() as u64;
        let pending = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Pending)
            .count() as u64;
        let mut st = self.shared.lock();
        st.stats.workers_running = running;
        st.stats.workers_pending = pending;
        st.jobs = sched.job_ids();
    }

    /// A worker is gone. Its claims go back to pending (or fail after too many attempts).
    fn worker_ended(&mut self, sched: &mut dyn Scheduler, worker: &str, lost: Option<String>) {
        // A result written just before the worker died must win over a requeue.
        self.collect_results();
        let produced = self.workers.get(worker).is_some_and(|w| w.produced);
        self.workers.remove(worker);
        let claims: Vec<u64> = match self.dir.claims() {
            Ok(c) => c
                .into_iter()
                .filter(|(_, w)| w == worker)
                .map(|(c, _)| c)
                .collect(),
            Err(_) => Vec::new(),
        };
        if lost.is_none() && claims.is_empty() {
            return;
        }
        let reason = lost.unwrap_or_else(|| "worker exited while holding a chunk".into());
        self.shared.lock().stats.workers_lost += 1;
        let tail = self.stderr_tail(worker);
        for chunk in claims {
            let give_up = {
                let mut st = self.shared.lock();
                match st.outstanding.get_mut(&chunk) {
                    Some(info) => {
                        info.attempts += 1;
                        (info.attempts >= self.options.max_attempts).then(|| info.header.clone())
                    }
                    None => None,
                }
            };
            match give_up {
                None => {
                    let _ = self.dir.requeue(chunk, worker);
                }
                Some(header) => {
                    let _ =
                        std::fs::rename(self.dir.claimed(chunk, worker), self.dir.corrupt(chunk));
                    self.delivered.insert(chunk);
                    {
                        let mut st = self.shared.lock();
                        st.outstanding.remove(&chunk);
                        st.stats.tasks_done += u64::from(header.ntasks);
                        st.stats.tasks_failed += u64::from(header.ntasks);
                    }
                    let _ = self.tx.send(Event::Lost {
                        chunk: header,
                        worker: worker.to_string(),
                        reason: format!(
                            "{reason} (chunk lost {} times; not retried again)",
                            self.options.max_attempts
                        ),
                        stderr_tail: tail.clone(),
                    });
                }
            }
        }
        if !produced {
            self.start_failures += 1;
            if self.start_failures >= self.options.max_start_failures {
                let mut msg = format!(
                    "{} workers in a row ended before finishing any task; last: {reason}",
                    self.start_failures
                );
                if !tail.trim().is_empty() {
                    msg.push_str(&format!("\nworker stderr (tail):\n{}", tail.trim_end()));
                }
                msg.push_str(&format!(
                    "\nhint: the last worker's reason is quoted above; workers' logs are in {}",
                    self.dir.sub("logs").display()
                ));
                self.fail(sched, msg);
            }
        }
    }

    fn stderr_tail(&self, worker: &str) -> String {
        let end = self.dir.log_len(worker, Stream::Stderr);
        let bytes = self
            .dir
            .read_log(worker, Stream::Stderr, 0, end, self.options.stderr_tail)
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn check_heartbeats(&mut self, sched: &mut dyn Scheduler) {
        let Some(timeout) = self.options.heartbeat_timeout else {
            return;
        };
        let stale: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Running)
            .filter(|(id, _)| {
                self.dir
                    .age_of(&self.dir.heartbeat(id))
                    .is_some_and(|age| age > timeout.as_secs_f64())
            })
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        let _ = sched.cancel(&stale);
        for w in stale {
            let reason = format!(
                "no heartbeat from worker for {:.0} s",
                timeout.as_secs_f64()
            );
            self.worker_ended(sched, &w, Some(reason));
        }
    }

    fn scale(&mut self, sched: &mut dyn Scheduler) {
        let outstanding = self.shared.lock().outstanding.len();
        let count = |s: &WorkerState| self.workers.values().filter(|w| &w.state == s).count();
        let (pending, running) = (count(&WorkerState::Pending), count(&WorkerState::Running));
        let active = pending + running;
        let target = if sched.keep_warm() {
            sched.capacity()
        } else {
            sched.capacity().min(outstanding)
        };
        if !sched.keep_warm() {
            // Fair share: queued workers the remaining work cannot use go back to the cluster.
            let surplus = surplus_pending(target, pending, running);
            if surplus > 0 {
                self.retire_pending(sched, surplus);
                return;
            }
        }
        if active >= target {
            return;
        }
        // While workers are still queued, work arriving in a trickle (single submits) is
        // grouped into one submission per poll interval instead of one array per chunk.
        let recently = self
            .last_submit
            .is_some_and(|t| t.elapsed() < sched.poll_interval());
        if !sched.keep_warm() && pending > 0 && recently {
            return;
        }
        match sched.submit(&self.spec, target - active) {
            Ok(ids) => {
                self.last_submit = Some(Instant::now());
                self.shared.lock().stats.workers_started += ids.len() as u64;
                for id in ids {
                    self.submitted += 1;
                    self.workers.insert(
                        id,
                        WorkerRec {
                            state: WorkerState::Pending,
                            produced: false,
                            seq: self.submitted,
                        },
                    );
                }
            }
            Err(e) => self.fail(sched, format!("could not start workers: {e}")),
        }
    }

    /// Cancel the `n` newest workers still queued. The backend reports nothing more about
    /// them; a chunk one of them claimed meanwhile goes back to pending.
    fn retire_pending(&mut self, sched: &mut dyn Scheduler, n: usize) {
        let mut queued: Vec<(u64, String)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Pending)
            .map(|(id, w)| (w.seq, id.clone()))
            .collect();
        queued.sort_unstable_by(|a, b| b.cmp(a));
        let ids: Vec<String> = queued.into_iter().take(n).map(|(_, id)| id).collect();
        if ids.is_empty() {
            return;
        }
        let _ = sched.cancel(&ids);
        let now = Instant::now();
        for id in ids {
            self.workers.remove(&id);
            self.retired.insert(id, now);
        }
        self.sweep_retired();
        self.refresh_workers(sched);
    }

    /// Requeue chunks claimed by workers the engine cancelled (not a failure of the chunk).
    fn sweep_retired(&mut self) {
        self.retired.retain(|_, at| at.elapsed() < RETIRED_KEEP);
        if self.retired.is_empty() {
            return;
        }
        self.collect_results();
        if let Ok(claims) = self.dir.claims() {
            for (chunk, worker) in claims {
                if self.retired.contains_key(&worker) {
                    let _ = self.dir.requeue(chunk, &worker);
                }
            }
        }
    }

    fn stop_gracefully(&mut self, sched: &mut dyn Scheduler, grace: Duration) {
        let _ = self.dir.beat(&self.dir.control("stop"));
        if !sched.keep_warm() {
            // Queued workers have nothing to finish: do not wait for them to start.
            let pending = self
                .workers
                .values()
                .filter(|w| w.state == WorkerState::Pending)
                .count();
            self.retire_pending(sched, pending);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            self.collect_results();
            let _ = self.poll_workers(sched);
            let alive = self
                .workers
                .values()
                .any(|w| matches!(w.state, WorkerState::Pending | WorkerState::Running));
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.collect_results();
    }

    fn fail(&mut self, sched: &mut dyn Scheduler, message: String) {
        let _ = sched.cancel_all();
        {
            let mut st = self.shared.lock();
            if st.fatal.is_some() {
                return;
            }
            st.fatal = Some(message.clone());
        }
        self.workers.clear();
        let _ = self.tx.send(Event::Fatal { message });
    }

    /// A backend's message for the user (a site cap, an outage being ridden out), once.
    fn note(&self, msg: &str) {
        let line = format!("shoal {}: {msg}", self.dir.id());
        match &self.progress {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn write_meta(&mut self, sched: &dyn Scheduler) {
        let st = self.shared.lock();
        apply_stats(&mut self.meta, &st.stats, &sched.job_ids());
        if st.fatal.is_some() {
            self.meta.message = st.fatal.clone();
        }
        drop(st);
        self.meta.updated = now_secs();
        let _ = self.dir.write_meta(&self.meta);
    }

    fn draw_progress(&mut self) {
        if let Some(bar) = &self.progress {
            self.draw_progress_on(bar);
        }
        if let Some((start, last)) = self.progress_lines {
            if last.elapsed() >= Duration::from_secs(5) {
                self.progress_lines = Some((start, Instant::now()));
                self.progress_line();
            }
        }
    }

    fn draw_progress_on(&self, bar: &ProgressBar) {
        let s = self.shared.lock().stats.clone();
        bar.set_length(s.tasks_total);
        bar.set_position(s.tasks_done);
        let mut msg = format!("· {} workers", s.workers_running);
        if s.tasks_failed > 0 {
            msg.push_str(&format!(" · {} failed", s.tasks_failed));
        }
        bar.set_message(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::protocol::Claimer;

    /// A backend that only records what the engine asks of it.
    #[derive(Default)]
    struct Recorder {
        submitted: usize,
        cancelled: Vec<String>,
    }

    impl Scheduler for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn capacity(&self) -> usize {
            8
        }
        fn poll_interval(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn preflight(&mut self, _: &LaunchSpec) -> shoal_sched::Result<()> {
            Ok(())
        }
        fn submit(&mut self, _: &LaunchSpec, n: usize) -> shoal_sched::Result<Vec<String>> {
            let ids = (self.submitted..self.submitted + n)
                .map(|i| format!("w{i}"))
                .collect();
            self.submitted += n;
            Ok(ids)
        }
        fn poll(&mut self) -> shoal_sched::Result<Vec<shoal_sched::WorkerEvent>> {
            Ok(Vec::new())
        }
        fn cancel(&mut self, workers: &[String]) -> shoal_sched::Result<()> {
            self.cancelled.extend(workers.iter().cloned());
            Ok(())
        }
        fn cancel_all(&mut self) -> shoal_sched::Result<()> {
            Ok(())
        }
    }

    fn runner(dir: &SessionDir) -> Runner {
        let (tx, _rx) = unbounded();
        Runner {
            dir: dir.clone(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::new()),
                wake: Condvar::new(),
            }),
            tx,
            spec: LaunchSpec {
                session: dir.clone(),
                python: "python".into(),
                env: vec![],
                cwd: ".".into(),
            },
            options: EngineOptions::default(),
            workers: HashMap::new(),
            delivered: HashSet::new(),
            start_failures: 0,
            meta: SessionMeta::new(dir.id(), "recorder"),
            progress: None,
            progress_lines: None,
            submitted: 0,
            last_submit: None,
            retired: HashMap::new(),
        }
    }

    fn add_chunk(r: &Runner, chunk: u64) {
        let header = ChunkHeader {
            chunk,
            first_task: chunk,
            ntasks: 1,
        };
        r.dir.put_chunk(&header, b"x").unwrap();
        r.shared.lock().outstanding.insert(
            chunk,
            ChunkInfo {
                header,
                attempts: 0,
                started: false,
            },
        );
    }

    #[test]
    fn surplus_is_only_queued_workers_beyond_the_work() {
        assert_eq!(surplus_pending(4, 3, 2), 1);
        assert_eq!(surplus_pending(0, 5, 0), 5);
        assert_eq!(surplus_pending(0, 2, 6), 2);
        assert_eq!(surplus_pending(16, 10, 10), 4);
        assert_eq!(surplus_pending(10, 2, 3), 0);
        assert_eq!(
            surplus_pending(0, 0, 3),
            0,
            "running workers are never cancelled"
        );
    }

    #[test]
    fn trickling_work_is_grouped_into_one_submission_per_poll_interval() {
        let t = tempfile::tempdir().unwrap();
        let dir = SessionDir::create(t.path().join("s")).unwrap();
        let mut r = runner(&dir);
        let mut sched = Recorder::default();
        add_chunk(&r, 0);
        r.scale(&mut sched);
        assert_eq!(sched.submitted, 1);
        for c in 1..4 {
            add_chunk(&r, c);
            r.scale(&mut sched);
        }
        assert_eq!(
            sched.submitted, 1,
            "queued worker: wait for the next poll interval"
        );
        std::thread::sleep(sched.poll_interval() + Duration::from_millis(5));
        r.scale(&mut sched);
        assert_eq!(sched.submitted, 4, "the rest as one submission");
    }

    #[test]
    fn scale_down_cancels_newest_queued_workers_and_requeues_their_claims() {
        let t = tempfile::tempdir().unwrap();
        let dir = SessionDir::create(t.path().join("s")).unwrap();
        let mut r = runner(&dir);
        let mut sched = Recorder::default();
        for c in 0..4 {
            add_chunk(&r, c);
        }
        r.scale(&mut sched);
        assert_eq!((sched.submitted, r.workers.len()), (4, 4));
        r.workers.get_mut("w0").unwrap().state = WorkerState::Running;
        // w3 started and claimed a chunk before the engine heard of it.
        let (h, _) = Claimer::new(dir.clone(), "w3")
            .try_claim()
            .unwrap()
            .unwrap();
        // Three chunks finished: one outstanding chunk left for four workers.
        for c in 1..4 {
            r.shared.lock().outstanding.remove(&c);
        }
        r.scale(&mut sched);
        assert_eq!(sched.cancelled, ["w3", "w2", "w1"]);
        assert_eq!(r.workers.keys().collect::<Vec<_>>(), ["w0"]);
        assert!(
            dir.pending(h.chunk).exists(),
            "the cancelled worker's claim is pending again"
        );
        assert_eq!(
            r.shared.lock().stats.workers_lost,
            0,
            "cancelling is not losing"
        );
        r.scale(&mut sched);
        assert_eq!(
            (sched.cancelled.len(), sched.submitted),
            (3, 4),
            "stable once balanced"
        );
    }
}

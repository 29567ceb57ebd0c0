//! The supervisor: every backend runs on a thread of its own, so a slow or hung `squeue`,
//! `qstat`, `condor_q` or `sbatch` never delays the engine (result delivery, heartbeats,
//! Ctrl-C). The engine talks to the [`Supervisor`] through the non-blocking [`Scheduler`]
//! trait; the supervisor's thread drives the blocking [`Backend`].
//!
//! The thread also owns the retry policy: an error the backend calls transient (the
//! controller is busy or unreachable, a per-user limit is reached for now) is retried with
//! backoff while the current workers keep working; a permanent one (bad partition, account,
//! resource) fails the session at once with the scheduler's words. Transient failures fail
//! the session only when no worker is alive and [`ATTEMPTS`] calls in a row over at least
//! [`OUTAGE_GRACE`] failed, quoting the last error.

use crate::error::{Result, SchedError};
use crate::runner::{stats_line, Abort, CallStats, ABORTED, TIMED_OUT};
use crate::{LaunchSpec, Scheduler, WorkerEvent, WorkerState};
use backon::BackoffBuilder;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Failed calls in a row (submissions, or queries) before an outage may end a session.
pub const ATTEMPTS: u32 = 5;
/// ...and for at least this long: a controller restart or failover takes tens of seconds.
pub const OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// Longest wait between two retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Preflight retries transient errors this many times (it runs while the user waits).
const PREFLIGHT_ATTEMPTS: u32 = 3;

/// When retrying stops: [`ATTEMPTS`] failures over [`OUTAGE_GRACE`] with no worker alive,
/// waiting between `min_backoff` and [`MAX_BACKOFF`] (doubling, with jitter). Tests shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub attempts: u32,
    pub grace: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: ATTEMPTS,
            grace: OUTAGE_GRACE,
            min_backoff: Duration::from_millis(500),
            max_backoff: MAX_BACKOFF,
        }
    }
}

/// How a backend names its workers; ids are handed out when work is requested, before the
/// scheduler has answered, so the engine can track them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdScheme {
    /// `w0001`, `w0002`, ... (local processes).
    Sequential,
    /// `b{batch}-{index}`: one submission (an array, a cluster) per batch; indices start at
    /// `first_index` (0 for Slurm and HTCondor, 1 for Grid Engine) and are the scheduler's
    /// array index, so the job finds its own id. With `per_job` > 1 each element runs that
    /// many workers, `b{batch}-{index}.{k}` (`workers_per_job`).
    Array { first_index: u64, per_job: u64 },
}

/// Workers to start with one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub number: u64,
    /// Ids in index order; the index of `ids[k]` is `first_index + k`.
    pub ids: Vec<String>,
}

impl Batch {
    /// The tag the batch's ids start with (`b3`, or `s1b3` for a worker shape's batch), as
    /// job scripts and log patterns use it: the ids' own, so the two never disagree.
    pub fn tag(&self) -> String {
        match self.ids.first().and_then(|id| id.split_once('-')) {
            Some((tag, _)) => tag.to_string(),
            None => format!("b{}", self.number),
        }
    }
}

/// What a backend implements: blocking calls, made only from the supervisor's thread (and
/// `preflight` from the caller's, before that thread starts). The engine never sees it.
pub trait Backend: Send + 'static {
    fn name(&self) -> &'static str;

    /// Most workers at once under the options and the site's limits (known after preflight).
    fn capacity(&self) -> usize;

    /// Whether idle workers are kept (the registry's default for the backend).
    fn keep_warm(&self) -> bool {
        crate::registry::known(self.name()).defaults.keep_warm
    }

    /// How often the scheduler itself may be queried.
    fn poll_interval(&self) -> Duration;

    /// How often `poll` is worth calling: backends that rate-limit their queries themselves
    /// and read cheap local signals (exit records, announcements, the job log) in between
    /// are called more often than they query.
    fn tick(&self) -> Duration {
        self.poll_interval()
    }

    /// Most workers one submission may start (site caps on array or cluster sizes).
    fn max_batch(&self) -> usize {
        usize::MAX
    }

    fn ids(&self) -> IdScheme;

    /// It runs the workers of a worker shape whose ids start with `prefix`
    /// (`crate::shapes`): files it writes per session must be its own.
    fn for_shape(&mut self, _prefix: &str) {}

    /// Check options and environment and read the site's limits before anything is
    /// submitted; returns messages for the user (e.g. a cap that shapes the session).
    fn preflight(&mut self, spec: &LaunchSpec) -> Result<Vec<String>>;

    /// Start the batch's workers. On success the backend watches them under these ids.
    fn submit(&mut self, spec: &LaunchSpec, batch: &Batch) -> Result<()>;

    /// State changes since the last call.
    fn poll(&mut self) -> Result<Vec<WorkerEvent>>;

    fn cancel(&mut self, workers: &[String]) -> Result<()>;

    /// Stop every worker of the session and confirm they are gone.
    fn cancel_all(&mut self) -> Result<()>;

    /// Scheduler job ids to record in the session file, for `shoal cancel`.
    fn job_ids(&self) -> Vec<String>;

    /// The scheduler's own name for a submitted worker (`1234_5`, `1234.5`, `77.5`), shown
    /// next to it (`shoal top`, `shoal show`) so users can find it in squeue/qstat/condor_q.
    fn job_of(&self, _worker: &str) -> Option<String> {
        None
    }

    /// Whether an error may go away by itself (retry) rather than needing the user.
    fn transient(&self, e: &SchedError) -> bool {
        generic_transient(e)
    }

    /// Kills the backend's scheduler calls in flight (see [`crate::runner::Abort`]).
    fn abort_handle(&self) -> Option<Arc<Abort>> {
        None
    }

    fn calls(&self) -> BTreeMap<String, CallStats> {
        BTreeMap::new()
    }
}

/// Transient whatever the scheduler: timeouts and aborted calls.
pub fn generic_transient(e: &SchedError) -> bool {
    matches!(e, SchedError::Command { message, .. }
        if message.starts_with(TIMED_OUT) || message.starts_with(ABORTED))
}

/// Whether a failed call's output contains one of `phrases` (case-insensitive).
pub fn says_any(e: &SchedError, phrases: &[&str]) -> bool {
    match e {
        SchedError::Command { message, .. } => {
            let m = message.to_ascii_lowercase();
            phrases.iter().any(|p| m.contains(&p.to_ascii_lowercase()))
        }
        _ => false,
    }
}

enum Request {
    Submit(Batch),
    Cancel(Vec<String>),
    CancelAll(Sender<Result<()>>),
}

/// Events for the engine, and the workers it cancelled: an event computed before a cancel
/// reached the backend must not bring a cancelled worker back.
#[derive(Default)]
struct Events {
    queue: Vec<WorkerEvent>,
    cancelled: HashSet<String>,
}

#[derive(Default)]
struct Shared {
    events: Mutex<Events>,
    notes: Mutex<Vec<String>>,
    /// The error that ends the session (returned by every later `poll`).
    fatal: Mutex<Option<(String, String)>>,
    jobs: Mutex<Vec<String>>,
    /// Workers submitted since the last `placed()`, with their scheduler job.
    placed: Mutex<Vec<(String, String)>>,
    calls: Mutex<BTreeMap<String, CallStats>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's view of a backend (see [`Scheduler`] for the contract).
pub struct Supervisor {
    name: &'static str,
    capacity: usize,
    keep_warm: bool,
    poll_interval: Duration,
    max_batch: usize,
    ids: IdScheme,
    backend: Option<Box<dyn Backend>>,
    abort: Option<Arc<Abort>>,
    tx: Option<Sender<Request>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next_batch: u64,
    next_seq: u64,
    policy: Policy,
    /// What its worker ids start with: a worker shape's mark (`crate::shapes::prefix`).
    prefix: String,
}

impl Supervisor {
    pub fn new(backend: Box<dyn Backend>) -> Supervisor {
        Supervisor {
            name: backend.name(),
            capacity: backend.capacity(),
            keep_warm: backend.keep_warm(),
            poll_interval: backend.poll_interval(),
            max_batch: backend.max_batch().max(1),
            ids: backend.ids(),
            abort: backend.abort_handle(),
            backend: Some(backend),
            tx: None,
            shared: Arc::new(Shared::default()),
            thread: None,
            next_batch: 0,
            next_seq: 0,
            policy: Policy::default(),
            prefix: String::new(),
        }
    }

    /// Workers of this supervisor are those of worker shape `shape`: their ids say so.
    pub fn for_shape(mut self, shape: crate::shapes::ShapeId) -> Supervisor {
        self.prefix = crate::shapes::prefix(shape);
        if let Some(b) = self.backend.as_mut() {
            b.for_shape(&self.prefix);
        }
        self
    }

    pub fn with_policy(mut self, policy: Policy) -> Supervisor {
        self.policy = policy;
        self
    }

    fn start(&mut self, spec: &LaunchSpec) {
        let Some(mut backend) = self.backend.take() else {
            return;
        };
        self.capacity = backend.capacity();
        self.max_batch = backend.max_batch().max(1);
        *lock(&self.shared.jobs) = backend.job_ids();
        let (tx, rx) = unbounded();
        let shared = self.shared.clone();
        let spec = spec.clone();
        let abort = self.abort.clone();
        let policy = self.policy;
        self.tx = Some(tx);
        self.thread = std::thread::Builder::new()
            .name(format!("shoal-{}", self.name))
            .spawn(move || {
                let mut t = Thread::new(backend.as_mut(), spec, shared, abort, policy);
                t.run(&rx);
            })
            .ok();
    }

    fn send(&self, r: Request) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(r);
        }
    }

    fn batch_ids(&mut self, n: usize) -> Batch {
        self.next_batch += 1;
        let ids = match self.ids {
            IdScheme::Sequential => (0..n)
                .map(|_| {
                    self.next_seq += 1;
                    format!("{}w{:04}", self.prefix, self.next_seq)
                })
                .collect(),
            IdScheme::Array {
                first_index,
                per_job,
            } if per_job > 1 => (0..(n as u64).div_ceil(per_job))
                .flat_map(|e| (0..per_job).map(move |k| (e, k)))
                .map(|(e, k)| {
                    let index = first_index + e;
                    format!("{}b{}-{index}.{k}", self.prefix, self.next_batch)
                })
                .collect(),
            IdScheme::Array { first_index, .. } => (0..n as u64)
                .map(|k| format!("{}b{}-{}", self.prefix, self.next_batch, first_index + k))
                .collect(),
        };
        Batch {
            number: self.next_batch,
            ids,
        }
    }
}

impl Scheduler for Supervisor {
    fn name(&self) -> &'static str {
        self.name
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn keep_warm(&self) -> bool {
        self.keep_warm
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()> {
        let Some(backend) = self.backend.as_mut() else {
            return Ok(());
        };
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        let notes = loop {
            match backend.preflight(spec) {
                Ok(notes) => break notes,
                Err(e) if attempt < PREFLIGHT_ATTEMPTS && backend.transient(&e) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        lock(&self.shared.notes).extend(notes);
        self.start(spec);
        Ok(())
    }

    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>> {
        if let Some((command, message)) = lock(&self.shared.fatal).clone() {
            return Err(SchedError::Command { command, message });
        }
        self.start(spec);
        let mut ids = Vec::with_capacity(n);
        let mut left = n;
        while left > 0 {
            let k = left.min(self.max_batch);
            let batch = self.batch_ids(k);
            // workers_per_job rounds a batch up to whole jobs: it may hold more than k.
            let got = batch.ids.len();
            ids.extend(batch.ids.iter().cloned());
            self.send(Request::Submit(batch));
            left = left.saturating_sub(got);
        }
        Ok(ids)
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        if let Some((command, message)) = lock(&self.shared.fatal).clone() {
            return Err(SchedError::Command { command, message });
        }
        Ok(std::mem::take(&mut lock(&self.shared.events).queue))
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        if workers.is_empty() {
            return Ok(());
        }
        let mut ev = lock(&self.shared.events);
        ev.cancelled.extend(workers.iter().cloned());
        let gone: HashSet<&String> = workers.iter().collect();
        ev.queue.retain(|e| !gone.contains(&e.worker));
        drop(ev);
        self.send(Request::Cancel(workers.to_vec()));
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        if let Some(b) = self.backend.as_mut() {
            // Never started (preflight failed or nothing was submitted).
            return b.cancel_all();
        }
        let Some(tx) = &self.tx else { return Ok(()) };
        // Calls in flight (a hung squeue) are killed first, so cancelling starts at once.
        if let Some(a) = &self.abort {
            a.abort();
        }
        let (reply, answer) = unbounded();
        if tx.send(Request::CancelAll(reply)).is_err() {
            return Ok(());
        }
        answer.recv().unwrap_or(Ok(()))
    }

    fn job_ids(&self) -> Vec<String> {
        lock(&self.shared.jobs).clone()
    }

    fn notes(&mut self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.notes))
    }

    fn placed(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut *lock(&self.shared.placed))
    }

    fn calls(&self) -> BTreeMap<String, CallStats> {
        match &self.backend {
            Some(b) => b.calls(),
            None => lock(&self.shared.calls).clone(),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Disconnecting tells the thread to cancel everything and end; wait for it, so that
        // nothing of the session outlives its driver.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(b) = self.backend.as_mut() {
            let _ = b.cancel_all();
        }
        if std::env::var_os("SHOAL_SCHED_STATS").is_some() {
            let calls = self.calls();
            if !calls.is_empty() {
                eprintln!(
                    "shoal {}: scheduler calls: {}",
                    self.name,
                    stats_line(&calls)
                );
            }
        }
    }
}

/// Consecutive failures of one kind of call, and when to try again.
struct Failures {
    what: &'static str,
    count: u32,
    since: Option<Instant>,
    policy: Policy,
    delays: backon::ExponentialBackoff,
}

impl Failures {
    fn new(what: &'static str, policy: Policy) -> Failures {
        Failures {
            what,
            count: 0,
            since: None,
            policy,
            delays: backoff(&policy),
        }
    }

    /// Record a failure; returns how long to wait before the next attempt.
    fn failed(&mut self) -> Duration {
        self.count += 1;
        self.since.get_or_insert_with(Instant::now);
        self.delays.next().unwrap_or(self.policy.max_backoff)
    }

    /// Back to normal; returns a message if there was an outage worth mentioning.
    fn recovered(&mut self) -> Option<String> {
        let since = self.since.take()?;
        let n = std::mem::take(&mut self.count);
        self.delays = backoff(&self.policy);
        Some(format!(
            "{} work again after {n} failed call{} over {:.0} s",
            self.what,
            if n == 1 { "" } else { "s" },
            since.elapsed().as_secs_f64()
        ))
    }

    fn hopeless(&self) -> bool {
        self.count >= self.policy.attempts
            && self.since.is_some_and(|s| s.elapsed() >= self.policy.grace)
    }
}

fn backoff(policy: &Policy) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(policy.min_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

fn parts(e: &SchedError) -> (String, String) {
    match e {
        SchedError::Command { command, message } => (command.clone(), message.clone()),
        other => ("the scheduler".into(), other.to_string()),
    }
}

/// The supervisor's thread: the only place the backend is called after preflight.
struct Thread<'a> {
    backend: &'a mut dyn Backend,
    spec: LaunchSpec,
    shared: Arc<Shared>,
    abort: Option<Arc<Abort>>,
    queue: VecDeque<Batch>,
    /// Ids cancelled before their batch was submitted: cancelled right after it is.
    dropped: HashSet<String>,
    /// Cancellations that failed, retried with the next poll.
    uncancelled: Vec<String>,
    submitted: HashSet<String>,
    alive: HashSet<String>,
    submits: Failures,
    queries: Failures,
    retry_submit: Option<Instant>,
    next_poll: Instant,
}

impl<'a> Thread<'a> {
    fn new(
        backend: &'a mut dyn Backend,
        spec: LaunchSpec,
        shared: Arc<Shared>,
        abort: Option<Arc<Abort>>,
        policy: Policy,
    ) -> Self {
        Thread {
            backend,
            spec,
            shared,
            abort,
            queue: VecDeque::new(),
            dropped: HashSet::new(),
            uncancelled: Vec::new(),
            submitted: HashSet::new(),
            alive: HashSet::new(),
            submits: Failures::new("submissions", policy),
            queries: Failures::new("queries", policy),
            retry_submit: None,
            next_poll: Instant::now(),
        }
    }

    fn note(&self, msg: String) {
        lock(&self.shared.notes).push(msg);
    }

    fn fatal(&mut self, e: (String, String)) {
        let mut f = lock(&self.shared.fatal);
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.queue.clear();
    }

    fn publish(&self) {
        *lock(&self.shared.jobs) = self.backend.job_ids();
        *lock(&self.shared.calls) = self.backend.calls();
    }

    fn run(&mut self, rx: &Receiver<Request>) {
        loop {
            let now = Instant::now();
            let mut due = self.next_poll;
            if !self.queue.is_empty() {
                due = due.min(self.retry_submit.unwrap_or(now));
            }
            match rx.recv_timeout(due.saturating_duration_since(now)) {
                Ok(r) => {
                    if !self.handle(r) {
                        continue;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything asked meanwhile first: a cancel of queued ids must beat their submit.
            while let Ok(r) = rx.try_recv() {
                self.handle(r);
            }
            self.try_submit();
            if Instant::now() >= self.next_poll {
                self.poll();
            }
        }
        if let Some(a) = &self.abort {
            a.resume();
        }
        let _ = self.backend.cancel_all();
        self.publish();
    }

    /// Returns false when the request was a cancel-all (nothing else to do this round).
    fn handle(&mut self, r: Request) -> bool {
        match r {
            Request::Submit(b) => self.queue.push_back(b),
            Request::Cancel(ids) => self.cancel(ids),
            Request::CancelAll(reply) => {
                self.queue.clear();
                self.dropped.clear();
                if let Some(a) = &self.abort {
                    a.resume();
                }
                let r = self.backend.cancel_all();
                self.alive.clear();
                self.submitted.clear();
                self.publish();
                let _ = reply.send(r);
                return false;
            }
        }
        true
    }

    fn cancel(&mut self, ids: Vec<String>) {
        let mut now = Vec::new();
        for id in ids {
            self.alive.remove(&id);
            if self.submitted.remove(&id) {
                now.push(id);
            } else {
                self.dropped.insert(id);
            }
        }
        // Queued batches lose their cancelled ids from the end (the engine gives back the
        // newest first); holes are cancelled right after the batch is submitted.
        for b in self.queue.iter_mut() {
            while b.ids.last().is_some_and(|id| self.dropped.remove(id)) {
                b.ids.pop();
            }
        }
        self.queue.retain(|b| !b.ids.is_empty());
        if !now.is_empty() {
            if let Err(e) = self.backend.cancel(&now) {
                if self.backend.transient(&e) {
                    self.uncancelled.extend(now);
                }
            }
        }
    }

    fn try_submit(&mut self) {
        let Some(batch) = self.queue.front().cloned() else {
            return;
        };
        if self.retry_submit.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match self.backend.submit(&self.spec, &batch) {
            Ok(()) => {
                self.queue.pop_front();
                self.retry_submit = None;
                if let Some(msg) = self.submits.recovered() {
                    self.note(msg);
                }
                let holes: Vec<String> = batch
                    .ids
                    .iter()
                    .filter(|id| self.dropped.remove(*id))
                    .cloned()
                    .collect();
                self.submitted.extend(batch.ids.iter().cloned());
                let placed = batch
                    .ids
                    .iter()
                    .filter_map(|id| Some((id.clone(), self.backend.job_of(id)?)));
                lock(&self.shared.placed).extend(placed);
                if !holes.is_empty() {
                    self.cancel(holes);
                }
                self.publish();
            }
            Err(e) if self.backend.transient(&e) => {
                let wait = self.submits.failed();
                self.retry_submit = Some(Instant::now() + wait);
                if self.submits.count == 1 {
                    self.note(format!(
                        "submitting workers failed for now, retrying with backoff while the \
                         current workers go on: {e}"
                    ));
                }
                if self.alive.is_empty() && self.submits.hopeless() {
                    let (command, message) = parts(&e);
                    self.fatal((command, self.gave_up(&self.submits, &message)));
                }
            }
            Err(e) => {
                let (command, message) = parts(&e);
                self.fatal((command, message));
            }
        }
    }

    fn gave_up(&self, f: &Failures, message: &str) -> String {
        format!(
            "{message}\n(gave up after {} failed attempts over {:.0} s with no worker running; \
             the scheduler's last words are quoted above)",
            f.count,
            f.since.map_or(0.0, |s| s.elapsed().as_secs_f64())
        )
    }

    fn poll(&mut self) {
        let interval = self.backend.poll_interval();
        if !self.uncancelled.is_empty() {
            let ids = std::mem::take(&mut self.uncancelled);
            if self.backend.cancel(&ids).is_err() {
                self.uncancelled = ids;
            }
        }
        match self.backend.poll() {
            Ok(events) => {
                self.next_poll = Instant::now() + self.backend.tick().min(interval);
                if let Some(msg) = self.queries.recovered() {
                    self.note(msg);
                }
                for ev in &events {
                    match ev.state {
                        WorkerState::Running | WorkerState::Suspended => {
                            self.alive.insert(ev.worker.clone());
                        }
                        WorkerState::Pending => {}
                        _ => {
                            self.alive.remove(&ev.worker);
                            self.submitted.remove(&ev.worker);
                        }
                    }
                }
                if !events.is_empty() {
                    let mut ev = lock(&self.shared.events);
                    let fresh: Vec<WorkerEvent> = events
                        .into_iter()
                        .filter(|e| !ev.cancelled.contains(&e.worker))
                        .collect();
                    ev.queue.extend(fresh);
                }
                self.publish();
            }
            Err(e) => {
                // A query that fails is rarely the user's fault: retry all but a vanished tool.
                let wait = if self.backend.transient(&e) || !matches!(e, SchedError::Missing { .. })
                {
                    self.queries.failed()
                } else {
                    let (command, message) = parts(&e);
                    self.fatal((command, message));
                    return;
                };
                self.next_poll = Instant::now() + wait.max(interval);
                if self.queries.count == 1 {
                    self.note(format!(
                        "watching workers failed for now, retrying while they go on: {e}"
                    ));
                }
                if self.alive.is_empty() && self.queries.hopeless() {
                    let (command, message) = parts(&e);
                    self.fatal((command, self.gave_up(&self.queries, &message)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The worker side of the work-dir protocol: announce this worker (a hello with a random
//! incarnation nonce), wait until the driver accepts it, claim tickets from its own inbox
//! (one lookup per poll, never a directory listing, never a race with other workers), publish
//! result parts, and heartbeat from a background thread — so a task holding the GIL for hours
//! still counts as alive. The same thread notices a fence or a dead driver and ends the process.

use crate::clock::{ChangeWatch, StallClock};
use crate::error::{CoreError, Result};
use crate::fsutil::{
    hostname, now_secs, pid_alive, random_u64, read_json, remove_if_exists, write_atomic,
    write_exclusive, write_json,
};
use crate::layout::{valid_worker_id, worker_key, SessionDir};
use crate::protocol::{Beat, ChunkHeader, Release, ReleaseKind, ResultHeader, Ticket, TicketKind};
use crate::watch::{DirWatch, Waker};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the driver tells every worker, written once to `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Exit after this long without work (None: wait until stopped).
    #[serde(default)]
    pub idle_timeout: Option<f64>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: f64,
    /// Exit when the driver's heartbeat counter has not changed for this long (None: never).
    #[serde(default)]
    pub driver_timeout: Option<f64>,
    /// Longest pause between looks at the inbox while idle. Same-host changes wake the worker
    /// at once (inotify); this bounds how late it notices work written on another host.
    #[serde(default = "default_poll_max")]
    pub poll_max: f64,
    /// The driver's host and pid: a worker on the same host exits as soon as that pid is gone.
    #[serde(default)]
    pub driver: Option<DriverInfo>,
    /// Claim the next ticket while publishing a chunk's last part (see
    /// [`WorkerSession::claim_ahead`]): set on a network filesystem, where a claim costs
    /// round trips; on a local disk the helper thread would cost more than it saves.
    #[serde(default)]
    pub claim_ahead: bool,
    /// Settings only the Python worker reads (initializer, sys.path, ...).
    #[serde(default)]
    pub python: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriverInfo {
    pub host: String,
    pub pid: u32,
}

impl DriverInfo {
    pub fn this_process() -> Self {
        DriverInfo {
            host: hostname(),
            pid: std::process::id(),
        }
    }
}

fn default_heartbeat() -> f64 {
    5.0
}

fn default_poll_max() -> f64 {
    0.05
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            idle_timeout: None,
            heartbeat_interval: default_heartbeat(),
            driver_timeout: None,
            poll_max: default_poll_max(),
            driver: None,
            claim_ahead: false,
            python: serde_json::Value::Null,
        }
    }
}

impl SessionDir {
    pub fn write_config(&self, config: &WorkerConfig) -> Result<()> {
        write_json(&self.config_file(), config)
    }

    pub fn read_config(&self) -> Result<WorkerConfig> {
        read_json(&self.config_file())
    }
}

/// The worker id: given explicitly (`--worker-id`), or from `SHOAL_WORKER_ID` (which each
/// backend's job script sets from its scheduler's variables), or host-pid as a last resort.
pub fn resolve_worker_id(explicit: Option<&str>) -> Result<String> {
    let id = explicit
        .map(str::to_string)
        .or_else(|| {
            std::env::var("SHOAL_WORKER_ID")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    if !valid_worker_id(&id) {
        return Err(CoreError::invalid(
            "worker id",
            &id,
            "use letters, digits, '_', '-' and '.' only",
        ));
    }
    Ok(id)
}

/// What a worker announces in `workers/KEY.json` when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker: String,
    #[serde(default)]
    pub key: String,
    pub host: String,
    pub pid: u32,
    #[serde(default)]
    pub started: f64,
    /// Seconds from the worker process's start to this announcement, on its own host's clock
    /// (interpreter start-up and imports): what `shoal show` reports as start-up where the
    /// backend saw the job running only after the worker announced itself.
    #[serde(default)]
    pub startup: Option<f64>,
}

/// How long this process has been running (from /proc; None elsewhere).
pub(crate) fn process_age() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (in parentheses, which may hold spaces); starttime is
    // field 22 of the whole line, in clock ticks since boot.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: f64 = rest.split(' ').nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    // Linux reports /proc times in USER_HZ, which its ABI fixes at 100.
    Some((uptime - ticks / 100.0).max(0.0))
}

impl SessionDir {
    /// Every worker that announced itself; unreadable records are skipped.
    pub fn worker_infos(&self) -> Vec<WorkerInfo> {
        self.hellos()
            .unwrap_or_default()
            .iter()
            .filter_map(|k| read_json(&self.hello(k)).ok())
            .collect()
    }

    /// Ids of the workers that announced themselves (any incarnation), from one listing.
    pub fn announced_ids(&self) -> std::collections::HashSet<String> {
        self.hellos()
            .unwrap_or_default()
            .iter()
            .map(|k| crate::layout::key_id(k).to_string())
            .collect()
    }

    pub fn read_hello(&self, key: &str) -> Option<WorkerInfo> {
        read_json(&self.hello(key)).ok()
    }
}

/// Why `next` returned no assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Stopped,
    Idle,
    DriverGone,
    Timeout,
    Fenced,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Stopped => "stopped",
            ExitReason::Idle => "idle",
            ExitReason::DriverGone => "driver-gone",
            ExitReason::Timeout => "timeout",
            ExitReason::Fenced => "fenced",
        }
    }
}

/// A claimed assignment: the ticket and the chunk it names.
#[derive(Debug)]
pub struct Assignment {
    pub ticket: Ticket,
    pub header: ChunkHeader,
    pub payload: Vec<u8>,
}

/// State shared with the heartbeat thread.
struct Shared {
    dir: SessionDir,
    key: String,
    seq: AtomicU64,
    running: Mutex<Option<(u64, u32, u32)>>,
    /// Set by the heartbeat thread when the worker must end; taken by `next`.
    exit: Mutex<Option<ExitReason>>,
    /// Whether a chunk is running (a fence or a dead driver then ends the process at once).
    busy: AtomicBool,
    beating: AtomicBool,
    /// `interrupt()` was called: `next` returns `Timeout` at once (and the idle wait wakes
    /// through `wake`, once the inbox is watched).
    interrupted: AtomicBool,
    wake: Mutex<Option<Waker>>,
}

impl Shared {
    fn write_beat(&self) -> Result<()> {
        let beat = Beat {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            running: *self.running.lock().unwrap_or_else(|e| e.into_inner()),
        };
        write_atomic(&self.dir.heartbeat(&self.key), &[beat.encode().as_bytes()])
    }

    fn end(&self, reason: ExitReason, why: &str) {
        if self.busy.load(Ordering::Relaxed) {
            // Mid-task: nothing this process still computes can be delivered usefully.
            eprintln!("shoal worker {}: {why}; exiting", self.key);
            std::process::exit(if reason == ExitReason::Fenced { 75 } else { 76 });
        }
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        exit.get_or_insert(reason);
    }
}

pub struct WorkerSession {
    dir: SessionDir,
    config: WorkerConfig,
    id: String,
    shared: Arc<Shared>,
    beat_thread: Option<JoinHandle<()>>,
    /// Next ticket number to look for.
    seq: u64,
    welcomed: bool,
    watch: Option<DirWatch>,
    claim: Option<(u64, u32)>,
    careful: bool,
    /// A claim under way on a helper thread (see `claim_ahead`).
    ahead: Option<Ahead>,
    /// A write a publish left to a helper thread (see `publish`): the next publish, `close`
    /// and drop wait for it, and its error is the next publish's.
    behind: Option<JoinHandle<Result<()>>>,
    /// This worker's wait for work so far: `next` may be called in slices (so that the
    /// caller can handle signals in between) without restarting the idle clock or the
    /// backoff of its lookups.
    idle: Option<Idle>,
}

#[derive(Debug, Clone, Copy)]
struct Idle {
    since: Instant,
    sleep: Duration,
    last_control: Instant,
}

impl WorkerSession {
    pub fn open(root: impl Into<std::path::PathBuf>, worker_id: Option<&str>) -> Result<Self> {
        let dir = SessionDir::open(root);
        let config = dir.read_config()?;
        let id = resolve_worker_id(worker_id)?;
        let key = worker_key(&id, random_u64());
        let info = WorkerInfo {
            worker: id.clone(),
            key: key.clone(),
            host: hostname(),
            pid: std::process::id(),
            started: now_secs(),
            startup: process_age(),
        };
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            key: key.clone(),
            seq: AtomicU64::new(0),
            running: Mutex::new(None),
            exit: Mutex::new(None),
            busy: AtomicBool::new(false),
            beating: AtomicBool::new(true),
            interrupted: AtomicBool::new(false),
            wake: Mutex::new(None),
        });
        // The beat file exists before the hello: the driver starts watching it on the hello.
        shared.write_beat()?;
        let hello = serde_json::to_vec_pretty(&info).expect("plain data");
        if !write_exclusive(&dir.hello(&key), &[&hello])? {
            return Err(CoreError::invalid(
                "worker key",
                &key,
                "another worker announced itself under this key",
            ));
        }
        let beat_thread = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("shoal-heartbeat".into())
                .spawn(move || heartbeat_loop(&shared, &config))
                .ok()
        };
        Ok(WorkerSession {
            dir,
            config,
            id,
            shared,
            beat_thread,
            seq: 0,
            welcomed: false,
            watch: None,
            claim: None,
            careful: false,
            ahead: None,
            behind: None,
            idle: None,
        })
    }

    /// The worker id (what the scheduler calls the job).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key of this incarnation (`ID+NONCE`).
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    pub fn dir(&self) -> &SessionDir {
        &self.dir
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Wait for the next assignment. `wait` bounds this call (None: as long as the config
    /// allows).
    pub fn next(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<std::result::Result<Assignment, ExitReason>> {
        self.shared.busy.store(false, Ordering::Relaxed);
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let start = Instant::now();
        let Idle {
            since: idle_start,
            mut sleep,
            mut last_control,
        } = *self.idle.get_or_insert(Idle {
            since: start,
            sleep: Duration::from_micros(200),
            last_control: start - Duration::from_secs(60),
        });
        let idle = self.config.idle_timeout.map(Duration::from_secs_f64);
        let poll_max = Duration::from_secs_f64(self.config.poll_max.max(0.001));
        loop {
            if self.shared.interrupted.swap(false, Ordering::Relaxed) {
                return Ok(Err(ExitReason::Timeout));
            }
            if let Some(reason) = self
                .shared
                .exit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                return Ok(Err(reason));
            }
            if !self.welcomed && self.dir.inbox(self.key()).is_dir() {
                self.welcomed = true;
                // Its first ticket follows the welcome within milliseconds: look again
                // soon, not after the back-off the wait for the welcome built up.
                sleep = Duration::from_micros(200);
                let watch = DirWatch::new(&[&self.dir.inbox(self.key()), &self.dir.sub("control")]);
                *self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch.waker());
                self.watch = Some(watch);
            }
            if self.welcomed {
                match self.try_ticket()? {
                    Some(Ok(a)) => {
                        self.idle = None;
                        self.shared.busy.store(true, Ordering::Relaxed);
                        return Ok(Ok(a));
                    }
                    Some(Err(reason)) => return Ok(Err(reason)),
                    None => {}
                }
            }
            // A stop for every worker (also those never welcomed): looked at now and then.
            if last_control.elapsed() >= poll_max.max(Duration::from_millis(100)) {
                last_control = Instant::now();
                if self.dir.control("stop").exists() {
                    return Ok(Err(ExitReason::Stopped));
                }
            }
            if idle.is_some_and(|i| idle_start.elapsed() >= i) {
                return Ok(Err(ExitReason::Idle));
            }
            let waited = start.elapsed();
            if wait.is_some_and(|w| waited >= w) {
                self.idle = Some(Idle {
                    since: idle_start,
                    sleep,
                    last_control,
                });
                return Ok(Err(ExitReason::Timeout));
            }
            let woke = match &self.watch {
                Some(w) => w.wait(sleep),
                None => {
                    std::thread::sleep(sleep);
                    false
                }
            };
            sleep = if woke {
                Duration::from_micros(200)
            } else {
                jittered((sleep * 2).min(self.sleep_cap(idle_start, poll_max)))
            };
        }
    }

    /// The longest pause between two looks at the inbox. A new worker waits for its welcome
    /// and first ticket (the driver answers hellos within a second, faster while it awaits
    /// workers): it looks every 100 ms at most (one `stat`, no listing) for its first
    /// seconds, so that the first task does not wait out a long back-off (24 workers started
    /// together on slurm-multinode: up to 0.45 s between welcome and first task); after
    /// that, as any idle worker.
    fn sleep_cap(&self, idle_since: Instant, poll_max: Duration) -> Duration {
        if self.seq == 0 && idle_since.elapsed() < WELCOME_EAGER {
            poll_max.min(WELCOME_POLL)
        } else {
            poll_max
        }
    }

    /// The next assignment, if one is in the inbox: the one claimed ahead (see
    /// [`WorkerSession::claim_ahead`]) if any, else a look at the inbox now.
    fn try_ticket(&mut self) -> Result<Option<std::result::Result<Assignment, ExitReason>>> {
        let found = match self.take_ahead() {
            Some(found) => found?,
            None => take_ticket(&self.dir, &self.shared.key, &mut self.seq)?,
        };
        if let Some(Ok(a)) = &found {
            self.claim = Some((a.ticket.chunk, a.ticket.attempt));
            self.careful = a.ticket.careful;
        }
        Ok(found)
    }

    /// Start claiming the next ticket on a helper thread, while this one publishes the
    /// attempt's last part: on a network filesystem the claim's three round trips (read the
    /// ticket, rename it, read the chunk) then cost no time between two chunks. Called by a
    /// worker that goes on after this chunk; the claim is made only after the chunk's last
    /// task ended, so no other worker could have run it sooner. `next` takes what it found;
    /// a worker that leaves instead gives it back unrun and uncharged (`close`).
    pub fn claim_ahead(&mut self) {
        if !self.config.claim_ahead || !self.welcomed || self.ahead.is_some() {
            return;
        }
        let (dir, key, seq) = (self.dir.clone(), self.shared.key.clone(), self.seq);
        self.ahead = std::thread::Builder::new()
            .name("shoal-claim".into())
            .spawn(move || {
                let mut next = seq;
                let found = take_ticket(&dir, &key, &mut next);
                (next, found)
            })
            .ok()
            .map(|thread| Ahead { seq, thread });
    }

    /// What the claim ahead found, once it is done, if one was made; the inbox is looked at
    /// from where it left off.
    fn take_ahead(&mut self) -> Option<AheadFound> {
        let (seq, found) = self.ahead.take()?.join();
        self.seq = seq;
        Some(found)
    }

    /// A chunk claimed ahead but never started goes back to the driver as a release of no
    /// task (a `Yield`: nothing ran, nothing is charged), so it is requeued at once.
    fn give_back(&mut self) {
        if let Err(e) = self.settle() {
            eprintln!("shoal worker {}: cannot publish results: {e}", self.key());
        }
        let Some(Ok(Some(Ok(a)))) = self.take_ahead() else {
            return;
        };
        let header = ResultHeader {
            chunk: a.ticket.chunk,
            attempt: a.ticket.attempt,
            first_task: a.header.first_task,
            ntasks: a.header.ntasks,
            from: a.ticket.from,
            count: 0,
            last: false,
            worker: self.shared.key.clone(),
            start: (0, 0),
            marks: Vec::new(),
            failed: Vec::new(),
            chunk_error: None,
            elapsed: 0.0,
            release: Some(Release {
                kind: ReleaseKind::Yield,
                reason: "its worker left before starting it".into(),
                // A resume ticket's checkpoint is still there for the next attempt.
                checkpoint: a.ticket.resume,
            }),
        };
        self.claim = Some((a.ticket.chunk, a.ticket.attempt));
        if let Err(e) = self.publish(&header, &[], None) {
            eprintln!(
                "shoal worker {}: cannot give chunk {} back: {e}",
                self.key(),
                a.ticket.chunk
            );
        }
    }

    /// Say which task of the claimed chunk starts now. In careful mode (the chunk's last
    /// attempt lost its worker) this is written out before the task runs, so the driver knows
    /// exactly which task was running if this worker dies too.
    pub fn running(&self, chunk: u64, attempt: u32, task: u32) -> Result<()> {
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((chunk, attempt, task));
        if self.careful {
            self.shared.write_beat()?;
        }
        Ok(())
    }

    /// Publish a result part; the attempt's last part (or a release) also retires the claim.
    /// The order matters: a crash in between leaves a claim whose results exist, which the
    /// driver resolves by the results. A release's `checkpoint` is written before its part,
    /// so the driver never sends a `resume` ticket for a checkpoint that is not there.
    ///
    /// Every part is written before this returns, so a worker lost in its next task never
    /// costs a task whose part it published (the driver keeps a lost attempt's parts). On a
    /// network filesystem (where an unlink costs a round trip or more, ~5 ms on GlusterFS)
    /// the retirement of a claim whose last part is written (7 after 6) is left to a helper
    /// thread while the worker runs on: a stale claim is resolved by its results.
    pub fn publish(
        &mut self,
        header: &ResultHeader,
        payload: &[u8],
        checkpoint: Option<&[u8]>,
    ) -> Result<()> {
        self.settle()?;
        if let Some(bytes) = checkpoint {
            let task = header.from + header.count;
            write_atomic(&self.dir.checkpoint(header.chunk, task), &[bytes])?;
        }
        let head = crate::frame::encode(header, payload);
        let path = self.dir.part(header.chunk, header.attempt, header.from);
        let ends = header.last || header.release.is_some();
        write_atomic(&path, &[&head, payload])?;
        if ends {
            if let Some((c, a)) = self.claim.take() {
                let claimed = self.dir.claimed(c, a);
                if self.config.claim_ahead && header.release.is_none() {
                    self.leave_behind(move || remove_if_exists(&claimed))?;
                } else {
                    remove_if_exists(&claimed)?;
                }
            }
            self.shared.busy.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Run `write` on a helper thread (here if none can be started).
    fn leave_behind<F>(&mut self, write: F) -> Result<()>
    where
        F: FnOnce() -> Result<()> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(Some(write)));
        let theirs = slot.clone();
        let take = |s: &Mutex<Option<F>>| s.lock().unwrap_or_else(|e| e.into_inner()).take();
        match std::thread::Builder::new()
            .name("shoal-publish".into())
            .spawn(move || take(&theirs).map_or(Ok(()), |w| w()))
        {
            Ok(thread) => {
                self.behind = Some(thread);
                Ok(())
            }
            // The thread never ran: the write is still in the slot.
            Err(_) => take(&slot).map_or(Ok(()), |w| w()),
        }
    }

    /// Wait for the write left to a helper thread, if any; its error is this call's.
    pub fn settle(&mut self) -> Result<()> {
        match self.behind.take() {
            Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => Ok(()),
        }
    }

    pub fn careful(&self) -> bool {
        self.careful
    }

    /// The checkpoint that task `task` of `chunk` left (a `resume` ticket names it).
    pub fn read_checkpoint(&self, chunk: u64, task: u32) -> Result<Vec<u8>> {
        let path = self.dir.checkpoint(chunk, task);
        fs::read(&path).map_err(|e| CoreError::io(&path, e))
    }
}

/// When this worker's job must end, as its job script says (docs/walltime.md): the job's
/// start and time limit, and the option that set it (named when a task outlives it).
#[derive(Debug, Clone, PartialEq)]
pub struct Walltime {
    /// Seconds since the epoch when the scheduler ends the job.
    pub end: f64,
    /// What set the limit, as the user wrote it (`Slurm time=1m`, `SGE h_rt=0:0:30`).
    pub option: String,
}

impl Walltime {
    /// From the job's environment: `SHOAL_WALLTIME` (seconds the job may run),
    /// `SHOAL_WALLTIME_START` (epoch seconds when the job started; default: now, for a
    /// worker started by hand) and `SHOAL_WALLTIME_OPTION`.
    pub fn from_env() -> Option<Walltime> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let limit: f64 = var("SHOAL_WALLTIME")?.trim().parse().ok()?;
        let start = var("SHOAL_WALLTIME_START")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(now_secs);
        Some(Walltime {
            end: start + limit,
            option: var("SHOAL_WALLTIME_OPTION").unwrap_or_else(|| format!("{limit} s")),
        })
    }
}

/// What the Python worker loop uses, whatever the transport: the work dir
/// ([`WorkerSession`]) or a TCP link to the driver ([`crate::worker_tcp::TcpWorker`]).
pub trait WorkerTransport: Send {
    fn id(&self) -> &str;
    fn key(&self) -> &str;
    fn config(&self) -> &WorkerConfig;
    /// The next assignment, or why to exit; `wait` bounds the call.
    fn next(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<std::result::Result<Assignment, ExitReason>>;
    /// Task `task` of the claimed chunk starts now.
    fn running(&self, chunk: u64, attempt: u32, task: u32) -> Result<()>;
    /// Publish a result part; a release's `checkpoint` reaches the driver before the part.
    fn publish(
        &mut self,
        header: &ResultHeader,
        payload: &[u8],
        checkpoint: Option<&[u8]>,
    ) -> Result<()>;
    /// The checkpoint a `resume` assignment's first task starts from.
    fn read_checkpoint(&self, chunk: u64, task: u32) -> Result<Vec<u8>>;
    /// A shared payload (the mapped function) a chunk refers to.
    fn read_blob(&self, id: u64) -> Result<Vec<u8>>;
    /// The chunk running now ends with the part about to be published and the worker goes
    /// on: it may look for its next assignment meanwhile (the work dir: see
    /// [`WorkerSession::claim_ahead`]; the TCP driver pushes assignments anyway).
    fn claim_ahead(&mut self) {}
    /// The worker is leaving (`reason`: why `next` said to exit).
    fn close(&mut self, _reason: &str) {}
    /// What another thread calls to make a blocked `next` return `Timeout` now (a signal
    /// came: the caller looks at it, instead of after the rest of its wait).
    fn interrupter(&self) -> Interrupter;
}

/// See [`WorkerTransport::interrupter`].
pub type Interrupter = Arc<dyn Fn() + Send + Sync>;

impl WorkerTransport for WorkerSession {
    fn id(&self) -> &str {
        WorkerSession::id(self)
    }
    fn key(&self) -> &str {
        WorkerSession::key(self)
    }
    fn config(&self) -> &WorkerConfig {
        WorkerSession::config(self)
    }
    fn next(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<std::result::Result<Assignment, ExitReason>> {
        WorkerSession::next(self, wait)
    }
    fn running(&self, chunk: u64, attempt: u32, task: u32) -> Result<()> {
        WorkerSession::running(self, chunk, attempt, task)
    }
    fn publish(
        &mut self,
        header: &ResultHeader,
        payload: &[u8],
        checkpoint: Option<&[u8]>,
    ) -> Result<()> {
        WorkerSession::publish(self, header, payload, checkpoint)
    }
    fn read_checkpoint(&self, chunk: u64, task: u32) -> Result<Vec<u8>> {
        WorkerSession::read_checkpoint(self, chunk, task)
    }
    fn read_blob(&self, id: u64) -> Result<Vec<u8>> {
        self.dir.read_blob(id)
    }
    fn claim_ahead(&mut self) {
        WorkerSession::claim_ahead(self)
    }
    fn close(&mut self, _reason: &str) {
        self.give_back();
    }
    fn interrupter(&self) -> Interrupter {
        let shared = self.shared.clone();
        Arc::new(move || {
            shared.interrupted.store(true, Ordering::Relaxed);
            if let Some(w) = &*shared.wake.lock().unwrap_or_else(|e| e.into_inner()) {
                w.wake();
            }
        })
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.give_back();
        self.shared.beating.store(false, Ordering::Relaxed);
        if let Some(t) = self.beat_thread.take() {
            let _ = t.join();
        }
    }
}

/// A claim made on a helper thread: the ticket number to look for next and what it found.
struct Ahead {
    seq: u64,
    thread: JoinHandle<(u64, AheadFound)>,
}

type AheadFound = Result<Option<std::result::Result<Assignment, ExitReason>>>;

impl Ahead {
    fn join(self) -> (u64, AheadFound) {
        let seq = self.seq;
        self.thread.join().unwrap_or_else(|_| {
            let e = CoreError::invalid("claim", "ahead", "the claiming thread panicked");
            (seq, Err(e))
        })
    }
}

/// Look at ticket `seq` of worker `key`'s inbox: claim it, skip it if the driver took it
/// back, or stop.
fn take_ticket(
    dir: &SessionDir,
    key: &str,
    seq: &mut u64,
) -> Result<Option<std::result::Result<Assignment, ExitReason>>> {
    loop {
        let path = dir.ticket(key, *seq);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let void = dir.void_ticket(key, *seq);
                if void.exists() {
                    let _ = fs::remove_file(&void);
                    *seq += 1;
                    continue;
                }
                return Ok(None);
            }
            Err(e) => return Err(CoreError::io(&path, e)),
        };
        let this = *seq;
        *seq += 1;
        let Ok(ticket) = serde_json::from_slice::<Ticket>(&bytes) else {
            // Torn or foreign: not ours to act on; the driver's audit requeues the chunk.
            let _ = fs::remove_file(&path);
            continue;
        };
        if ticket.kind == TicketKind::Stop {
            let _ = fs::remove_file(&path);
            return Ok(Some(Err(ExitReason::Stopped)));
        }
        let claimed = dir.claimed(ticket.chunk, ticket.attempt);
        match fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Taken back by the driver — unless this is a lost reply on NFS and the
                // rename did happen: the destination tells.
                let ours = dir
                    .read_claim(ticket.chunk, ticket.attempt)
                    .is_some_and(|t| t.worker == key && t.seq == this);
                if !ours {
                    if dir.is_fenced(key) {
                        return Ok(Some(Err(ExitReason::Fenced)));
                    }
                    continue;
                }
            }
            Err(e) => return Err(CoreError::io(&claimed, e)),
        }
        match dir.read_chunk(ticket.chunk)? {
            Some((header, payload)) => {
                return Ok(Some(Ok(Assignment {
                    ticket,
                    header,
                    payload,
                })));
            }
            None => {
                // The master copy vanished (a tmp reaper?): the driver's audit sees the
                // claim go without a result and decides; nothing here to run.
                eprintln!(
                    "shoal worker {}: chunk {} vanished from the work dir; skipping it",
                    key, ticket.chunk
                );
                let _ = remove_if_exists(&claimed);
            }
        }
    }
}

const WELCOME_POLL: Duration = Duration::from_millis(100);
const WELCOME_EAGER: Duration = Duration::from_secs(10);

/// ±20 % so that thousands of idle workers do not poll the filesystem in lock-step.
fn jittered(d: Duration) -> Duration {
    let r = (random_u64() % 401) as f64 / 1000.0 + 0.8;
    d.mul_f64(r)
}

fn heartbeat_loop(shared: &Shared, config: &WorkerConfig) {
    let every = Duration::from_secs_f64(config.heartbeat_interval.max(0.05));
    let tick = Duration::from_millis(50).min(every);
    // Blocked filesystem calls must not count as the driver's silence.
    let mut clock = StallClock::new(every.max(Duration::from_secs(1)));
    let mut driver: ChangeWatch<()> = ChangeWatch::default();
    driver.start(&(), clock.now());
    let driver_timeout = config.driver_timeout.map(Duration::from_secs_f64);
    let local_driver = config
        .driver
        .as_ref()
        .filter(|d| d.host == hostname() && d.pid > 1);
    let mut last = Instant::now();
    while shared.beating.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = clock.tick();
        if let Some(d) = local_driver {
            if !pid_alive(d.pid) {
                shared.end(ExitReason::DriverGone, "the driver process is gone");
            }
        }
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let _ = shared.write_beat();
        if shared.dir.is_fenced(&shared.key) {
            shared.end(
                ExitReason::Fenced,
                "fenced by the driver (it gave up on this worker)",
            );
        }
        if let Some(limit) = driver_timeout {
            if let Some(seq) = shared.dir.read_driver_beat() {
                driver.observe(&(), seq, now);
            }
            if driver.silent_for(&(), now).is_some_and(|s| s > limit) {
                shared.end(
                    ExitReason::DriverGone,
                    "the driver's heartbeat stopped changing",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (tempfile::TempDir, SessionDir) {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        d.write_config(&WorkerConfig {
            heartbeat_interval: 0.05,
            claim_ahead: true,
            ..Default::default()
        })
        .unwrap();
        (t, d)
    }

    fn ticket(key: &str, seq: u64, chunk: u64) -> Ticket {
        Ticket {
            seq,
            chunk,
            attempt: 1,
            worker: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_awaiting_its_welcome_and_first_ticket_looks_often_and_then_backs_off() {
        let (_t, d) = session();
        let mut w = WorkerSession::open(d.root(), Some("w1")).unwrap();
        let poll_max = Duration::from_secs(1);
        let now = Instant::now();
        assert_eq!(w.sleep_cap(now, poll_max), WELCOME_POLL);
        assert_eq!(w.sleep_cap(now - WELCOME_EAGER, poll_max), poll_max);
        // Welcomed, no ticket yet: it comes within milliseconds, so still looked for often.
        w.welcomed = true;
        assert_eq!(w.sleep_cap(now, poll_max), WELCOME_POLL);
        w.seq = 1;
        assert_eq!(w.sleep_cap(now, poll_max), poll_max);
    }

    #[test]
    fn hello_welcome_claim_publish_stop() {
        let (_t, d) = session();
        d.put_chunk(
            &ChunkHeader {
                chunk: 4,
                first_task: 40,
                ntasks: 2,
                blobs: vec![],
            },
            b"p",
        )
        .unwrap();
        let mut w = WorkerSession::open(d.root(), Some("w1")).unwrap();
        let key = w.key().to_string();
        assert!(key.starts_with("w1+") && d.hellos().unwrap() == vec![key.clone()]);
        assert_eq!(
            w.next(Some(Duration::from_millis(30)))
                .unwrap()
                .unwrap_err(),
            ExitReason::Timeout,
            "nothing before the welcome"
        );
        d.welcome(&key).unwrap();
        d.put_ticket(&ticket(&key, 0, 4)).unwrap();
        let a = w.next(None).unwrap().unwrap();
        assert_eq!((a.header.first_task, a.payload.as_slice()), (40, &b"p"[..]));
        assert_eq!(d.claims().unwrap(), vec![(4, 1)]);
        let r = ResultHeader {
            chunk: 4,
            attempt: 1,
            first_task: 40,
            ntasks: 2,
            count: 2,
            last: true,
            worker: key.clone(),
            ..Default::default()
        };
        w.publish(&r, b"r", None).unwrap();
        assert_eq!(d.parts().unwrap(), vec![(4, 1, 0)]);
        // The claim is retired behind the worker's back (claim_ahead: a network filesystem).
        w.settle().unwrap();
        assert!(d.claims().unwrap().is_empty());
        d.put_ticket(&Ticket {
            seq: 1,
            kind: TicketKind::Stop,
            worker: key.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(w.next(None).unwrap().unwrap_err(), ExitReason::Stopped);
    }

    #[test]
    fn every_part_is_written_before_publish_returns_and_a_failed_retirement_fails_the_next() {
        for careful in [false, true] {
            let (_t, d) = session();
            for chunk in [1, 2] {
                d.put_chunk(
                    &ChunkHeader {
                        chunk,
                        first_task: 0,
                        ntasks: 2,
                        blobs: vec![],
                    },
                    b"p",
                )
                .unwrap();
            }
            let mut w = WorkerSession::open(d.root(), Some("w1")).unwrap();
            let key = w.key().to_string();
            d.welcome(&key).unwrap();
            d.put_ticket(&Ticket {
                careful,
                ..ticket(&key, 0, 1)
            })
            .unwrap();
            w.next(None).unwrap().unwrap();
            let part = |chunk, from, last| ResultHeader {
                chunk,
                attempt: 1,
                ntasks: 2,
                from,
                count: 1,
                last,
                worker: key.clone(),
                ..Default::default()
            };
            // A middle part is on disk, not on a helper thread, when publish returns: the
            // worker may be killed in its next task (the driver keeps a lost attempt's parts).
            w.publish(&part(1, 0, false), b"a", None).unwrap();
            assert!(w.behind.is_none(), "careful={careful}");
            assert_eq!(d.parts().unwrap(), vec![(1, 1, 0)]);
            // The claim cannot be unlinked (a directory in its place): the retirement left
            // behind fails, and the worker's next publish says so (nothing fails silently).
            let claimed = d
                .root()
                .join("claimed")
                .join(format!("{}.1", crate::layout::chunk_name(1)));
            assert!(claimed.exists(), "{claimed:?}");
            fs::remove_file(&claimed).unwrap();
            fs::create_dir_all(claimed.join("x")).unwrap();
            w.publish(&part(1, 1, true), b"b", None).unwrap();
            assert!(w.behind.is_some());
            assert_eq!(d.parts().unwrap(), vec![(1, 1, 0), (1, 1, 1)]);
            d.put_ticket(&ticket(&key, 1, 2)).unwrap();
            w.next(None).unwrap().unwrap();
            let err = w.publish(&part(2, 0, true), b"c", None).unwrap_err();
            assert!(err.to_string().contains("claimed"), "{err}");
        }
    }

    #[test]
    fn revoked_tickets_are_skipped() {
        let (_t, d) = session();
        for c in [1, 2] {
            d.put_chunk(
                &ChunkHeader {
                    chunk: c,
                    ntasks: 1,
                    ..Default::default()
                },
                b"p",
            )
            .unwrap();
        }
        let mut w = WorkerSession::open(d.root(), Some("w")).unwrap();
        let key = w.key().to_string();
        d.welcome(&key).unwrap();
        d.put_ticket(&ticket(&key, 0, 1)).unwrap();
        assert!(d.revoke_ticket(&key, 0).unwrap());
        d.put_ticket(&ticket(&key, 1, 2)).unwrap();
        assert_eq!(w.next(None).unwrap().unwrap().ticket.chunk, 2);
    }

    #[test]
    fn heartbeats_are_counters_and_fences_end_the_worker() {
        let (_t, d) = session();
        let mut w = WorkerSession::open(d.root(), Some("w")).unwrap();
        let key = w.key().to_string();
        let first = d.read_beat(&key).unwrap().seq;
        std::thread::sleep(Duration::from_millis(200));
        assert!(d.read_beat(&key).unwrap().seq > first);
        d.put_fence(&key).unwrap();
        assert_eq!(w.next(None).unwrap().unwrap_err(), ExitReason::Fenced);
    }

    #[test]
    fn idle_timeout_and_bad_ids() {
        let (_t, d) = session();
        let mut cfg = d.read_config().unwrap();
        cfg.idle_timeout = Some(0.05);
        d.write_config(&cfg).unwrap();
        let mut w = WorkerSession::open(d.root(), Some("w1")).unwrap();
        assert_eq!(w.next(None).unwrap().unwrap_err(), ExitReason::Idle);
        assert!(WorkerSession::open(d.root(), Some("a/b")).is_err());
        assert!(WorkerSession::open(d.root(), Some("a+b")).is_err());
    }
}

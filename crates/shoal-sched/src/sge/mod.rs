//! The Grid Engine backend: workers are array tasks of `qsub -t 1-N` jobs (worker id
//! `JOB.TASK`), watched with one `qstat -xml` per poll interval and stopped with `qdel`.
//!
//! A worker's job script records its exit status in `sge/exit/JOB.TASK` of the session dir,
//! so normal ends are seen at once and without a query; `qacct -j` is asked only about tasks
//! that left the queue without one (killed, deleted), and `qstat -j` only about tasks in
//! error state (`Eqw`), which are reported with SGE's reason and deleted.

mod options;
mod parse;

pub use options::{job_script, SgeOptions};
pub use parse::{qacct_records, qstat_listing, Accounting, TaskState};

use crate::error::{Result, SchedError};
use crate::{LaunchSpec, Scheduler, WorkerEvent, WorkerState};
use shoal_core::fsutil::{create_private_dir, list_names, write_atomic};
use shoal_core::SessionDir;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a finished task may wait for its accounting record before it is reported lost.
const ACCOUNTING_WAIT: Duration = Duration::from_secs(60);
/// Accounting records are flushed shortly after a task ends; asking earlier is wasted.
const ACCOUNTING_DELAY: Duration = Duration::from_secs(1);
/// Bound on one SGE client call (a hung qmaster must not hang the session).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `cancel_all` waits for deleted jobs to leave the queue (forcing after a third).
const DELETE_WAIT: Duration = Duration::from_secs(30);

/// The SGE client programs, found once on PATH (or given, for fault-injection tests).
#[derive(Debug, Clone)]
pub struct Bins {
    dir: Option<PathBuf>,
}

impl Bins {
    pub fn from_path() -> Bins {
        Bins { dir: None }
    }

    /// Use the programs in `dir` (tests put fake `qsub`/`qstat`/... there).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Bins {
        Bins {
            dir: Some(dir.into()),
        }
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        match &self.dir {
            Some(d) => Some(d.join(name)).filter(|p| p.is_file()),
            None => std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file()),
        }
    }
}

/// One finished client call.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    /// What SGE said, for errors: stderr, else stdout.
    fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.trim().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Pending,
    Running,
}

#[derive(Debug)]
struct Tracked {
    seen: Seen,
    /// When the task was first found missing from `qstat` without an exit record.
    vanished: Option<Instant>,
}

pub struct SgeScheduler {
    opts: SgeOptions,
    bins: Bins,
    user: String,
    session: Option<SessionDir>,
    script: Option<PathBuf>,
    /// Live workers by (job, task).
    workers: BTreeMap<(u64, u64), Tracked>,
    /// Every job this session submitted, in order.
    jobs: Vec<u64>,
    last_query: Option<Instant>,
    lost: usize,
    last_loss: String,
    stop_seen: bool,
    /// No job of the session is left in the queue (checked by `cancel_all`).
    all_gone: bool,
    delete_wait: Duration,
    /// Calls made per program, for the cost report (`SHOAL_SGE_STATS`).
    pub calls: BTreeMap<&'static str, (u32, Duration)>,
}

fn worker_id(job: u64, task: u64) -> String {
    format!("{job}.{task}")
}

fn parse_worker_id(id: &str) -> Option<(u64, u64)> {
    let (j, t) = id.split_once('.')?;
    Some((j.parse().ok()?, t.parse().ok()?))
}

/// What a task that left the queue without an exit record became, by its accounting record
/// (None: no record yet, ask again later).
fn vanished_state(
    job: u64,
    task: u64,
    record: Option<&Accounting>,
    gave_up: bool,
) -> Option<WorkerState> {
    let id = worker_id(job, task);
    match record {
        Some(r) if r.ok() => Some(WorkerState::Exited),
        Some(r) => {
            let guess = if r.explained() {
                ""
            } else {
                "; deleted with qdel, or its host failed"
            };
            Some(WorkerState::Lost(format!(
                "SGE job {id} ended without finishing its worker: {} (qacct){guess}",
                r.describe()
            )))
        }
        None if gave_up => Some(WorkerState::Lost(format!(
            "SGE job {id} left the queue without an exit status or accounting record"
        ))),
        None => None,
    }
}

fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

impl SgeScheduler {
    pub fn new(workers: usize, options: &serde_json::Value) -> Result<Self> {
        Self::with_bins(workers, options, Bins::from_path())
    }

    pub fn with_bins(workers: usize, options: &serde_json::Value, bins: Bins) -> Result<Self> {
        Ok(SgeScheduler {
            opts: SgeOptions::parse(workers, options)?,
            bins,
            user: current_user(),
            session: None,
            script: None,
            workers: BTreeMap::new(),
            jobs: Vec::new(),
            last_query: None,
            lost: 0,
            last_loss: String::new(),
            stop_seen: false,
            all_gone: true,
            delete_wait: DELETE_WAIT,
            calls: BTreeMap::new(),
        })
    }

    fn exit_dir(&self) -> Option<PathBuf> {
        self.session.as_ref().map(|s| s.sub("sge").join("exit"))
    }

    /// Run an SGE client program; a missing program or a hung call is an error, a non-zero
    /// exit is returned for the caller to judge.
    fn run(&mut self, name: &'static str, args: &[String]) -> Result<Output> {
        let command = || format!("{name} {}", args.join(" "));
        let path = self.bins.find(name).ok_or_else(|| SchedError::Missing {
            what: name.into(),
            detail: "not on PATH".into(),
            hint: "run on an SGE submit host with the client environment loaded \
                   (`. $SGE_ROOT/$SGE_CELL/common/settings.sh`)"
                .into(),
        })?;
        let start = Instant::now();
        let mut child = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SchedError::Command {
                command: command(),
                message: e.to_string(),
            })?;
        // Readers on threads: a large listing must not block the child on a full pipe.
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut s);
                }
                s
            })
        };
        let out = reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let mut nap = Duration::from_micros(500);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > COMMAND_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SchedError::Command {
                        command: command(),
                        message: format!(
                            "no answer after {} s (is sge_qmaster up?)",
                            COMMAND_TIMEOUT.as_secs()
                        ),
                    });
                }
                Ok(None) => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(SchedError::Command {
                        command: command(),
                        message: e.to_string(),
                    })
                }
            }
        };
        let output = Output {
            ok: status.success(),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        };
        let entry = self.calls.entry(name).or_default();
        entry.0 += 1;
        entry.1 += start.elapsed();
        Ok(output)
    }

    /// The session's tasks in one `qstat -xml -u USER` listing.
    fn listing(&mut self) -> Result<parse::Listing> {
        let args = vec!["-xml".to_string(), "-u".into(), self.user.clone()];
        let out = self.run("qstat", &args)?;
        if !out.ok {
            return Err(SchedError::Command {
                command: format!("qstat {}", args.join(" ")),
                message: out.message(),
            });
        }
        let mut listing =
            parse::qstat_listing(&out.stdout).map_err(|message| SchedError::Command {
                command: "qstat -xml".into(),
                message,
            })?;
        let ours: BTreeSet<u64> = self.jobs.iter().copied().collect();
        listing.retain(|(job, _), _| ours.contains(job));
        Ok(listing)
    }

    fn qdel(&mut self, targets: Vec<String>) -> Result<Output> {
        self.run("qdel", &targets)
    }

    fn record_loss(&mut self, reason: &str) {
        self.lost += 1;
        self.last_loss = reason.to_string();
    }

    /// Workers whose job script recorded an exit status since the last look.
    fn read_exit_records(&mut self, events: &mut Vec<WorkerEvent>) {
        let Some(dir) = self.exit_dir() else { return };
        let Ok(names) = list_names(&dir) else { return };
        for name in names {
            let path = dir.join(&name);
            let Some(key) = parse_worker_id(&name) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let _ = std::fs::remove_file(&path);
            if self.workers.remove(&key).is_none() {
                continue; // cancelled by us: already accounted for
            }
            let state = match text.trim().parse::<i32>() {
                Ok(0) => WorkerState::Exited,
                Ok(code) if code > 128 => WorkerState::Lost(format!(
                    "worker exited with code {code} (signal {})",
                    code - 128
                )),
                Ok(code) => WorkerState::Lost(format!("worker exited with code {code}")),
                Err(_) => {
                    WorkerState::Lost(format!("worker left an unreadable exit record {text:?}"))
                }
            };
            if let WorkerState::Lost(r) = &state {
                let r = r.clone();
                self.record_loss(&r);
            }
            events.push(WorkerEvent {
                worker: worker_id(key.0, key.1),
                state,
            });
        }
    }

    /// After a stop request, queued workers will never be needed: delete them now instead of
    /// letting them start, find nothing and exit.
    fn drop_queued_after_stop(&mut self, events: &mut Vec<WorkerEvent>) {
        let Some(session) = &self.session else { return };
        if self.stop_seen || !session.control("stop").exists() {
            return;
        }
        self.stop_seen = true;
        let queued: Vec<(u64, u64)> = self
            .workers
            .iter()
            .filter(|(_, t)| t.seen == Seen::Pending && t.vanished.is_none())
            .map(|(k, _)| *k)
            .collect();
        if queued.is_empty() {
            return;
        }
        let _ = self.qdel(queued.iter().map(|k| worker_id(k.0, k.1)).collect());
        for k in queued {
            self.workers.remove(&k);
            events.push(WorkerEvent {
                worker: worker_id(k.0, k.1),
                state: WorkerState::Exited,
            });
        }
    }

    /// Tasks in error state: fetch SGE's reason, delete them, report them lost.
    fn handle_errors(&mut self, keys: Vec<(u64, u64)>, events: &mut Vec<WorkerEvent>) {
        let jobs: BTreeSet<u64> = keys.iter().map(|k| k.0).collect();
        let mut reasons: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
        for job in jobs {
            let args = vec!["-j".to_string(), job.to_string(), "-xml".into()];
            if let Ok(out) = self.run("qstat", &args) {
                if let Ok(r) = parse::error_reasons(&out.stdout) {
                    reasons.insert(job, r);
                }
            }
        }
        let _ = self.qdel(keys.iter().map(|k| worker_id(k.0, k.1)).collect());
        for (job, task) in keys {
            let r = reasons.get(&job);
            let why = r
                .and_then(|r| r.get(&task).or_else(|| r.get(&0)))
                .cloned()
                .unwrap_or_else(|| "SGE gave no reason (see `qstat -j JOB`)".into());
            let reason = format!(
                "SGE job {job}.{task} went into error state (Eqw): {why}; the task was deleted"
            );
            self.workers.remove(&(job, task));
            self.record_loss(&reason);
            events.push(WorkerEvent {
                worker: worker_id(job, task),
                state: WorkerState::Lost(reason),
            });
        }
    }

    /// Tasks gone from the queue without an exit record: ask `qacct` why.
    fn explain_vanished(&mut self, events: &mut Vec<WorkerEvent>) {
        let due: Vec<(u64, u64)> = self
            .workers
            .iter()
            .filter(|(_, t)| t.vanished.is_some_and(|v| v.elapsed() >= ACCOUNTING_DELAY))
            .map(|(k, _)| *k)
            .collect();
        let jobs: BTreeSet<u64> = due.iter().map(|k| k.0).collect();
        for job in jobs {
            let records = match self.run("qacct", &["-j".to_string(), job.to_string()]) {
                Ok(out) => parse::qacct_records(&out.stdout),
                Err(_) => Vec::new(),
            };
            for &(j, task) in due.iter().filter(|k| k.0 == job) {
                let gave_up = self.workers[&(j, task)]
                    .vanished
                    .is_some_and(|v| v.elapsed() > ACCOUNTING_WAIT);
                let record = records.iter().rev().find(|r| r.task == task);
                let state = vanished_state(j, task, record, gave_up);
                if let Some(state) = state {
                    if let WorkerState::Lost(r) = &state {
                        let r = r.clone();
                        self.record_loss(&r);
                    }
                    self.workers.remove(&(j, task));
                    events.push(WorkerEvent {
                        worker: worker_id(j, task),
                        state,
                    });
                }
            }
        }
    }

    fn query(&mut self, events: &mut Vec<WorkerEvent>) -> Result<()> {
        let listing = self.listing()?;
        // Exit records written while qstat ran belong to tasks it may already miss.
        self.read_exit_records(events);
        let mut errors = Vec::new();
        for (key, t) in self.workers.iter_mut() {
            match listing.get(key) {
                Some(TaskState::Error) => errors.push(*key),
                Some(TaskState::Running) if t.seen == Seen::Pending => {
                    t.seen = Seen::Running;
                    events.push(WorkerEvent {
                        worker: worker_id(key.0, key.1),
                        state: WorkerState::Running,
                    });
                }
                Some(_) => {}
                None => {
                    t.vanished.get_or_insert_with(Instant::now);
                }
            }
        }
        if !errors.is_empty() {
            self.handle_errors(errors, events);
        }
        self.explain_vanished(events);
        Ok(())
    }
}

impl Scheduler for SgeScheduler {
    fn name(&self) -> &'static str {
        "sge"
    }

    fn capacity(&self) -> usize {
        self.opts.workers
    }

    fn poll_interval(&self) -> Duration {
        self.opts.poll_interval
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()> {
        if self.bins.dir.is_none() && std::env::var_os("SGE_ROOT").is_none() {
            return Err(SchedError::Missing {
                what: "SGE_ROOT".into(),
                detail: "the Grid Engine client environment is not set".into(),
                hint: "load it first (`. $SGE_ROOT/$SGE_CELL/common/settings.sh`, or your site's `module load sge`)"
                    .into(),
            });
        }
        for name in ["qsub", "qstat", "qdel"] {
            if self.bins.find(name).is_none() {
                return Err(SchedError::Missing {
                    what: name.into(),
                    detail: "not on PATH".into(),
                    hint: "run on an SGE submit host with the client environment loaded \
                           (`. $SGE_ROOT/$SGE_CELL/common/settings.sh`)"
                        .into(),
                });
            }
        }
        if !spec.python.exists() {
            return Err(SchedError::Missing {
                what: "python_path".into(),
                detail: format!("{} does not exist", spec.python.display()),
                hint: "pass python_path= an interpreter that has shoal installed and that the execution hosts can run"
                    .into(),
            });
        }
        let wanted = self.opts.queue_names();
        // Where qconf is not available to users, `qsub -w v` below still rejects the queue.
        let known = if wanted.is_empty() || self.bins.find("qconf").is_none() {
            None
        } else {
            self.run("qconf", &["-sql".to_string()])
                .ok()
                .filter(|o| o.ok)
                .map(|o| o.stdout)
        };
        if let Some(known) = known {
            let known: Vec<&str> = known.split_whitespace().collect();
            if let Some(q) = wanted.iter().find(|q| !known.contains(&q.as_str())) {
                return Err(SchedError::Config(format!(
                    "unknown SGE queue {q:?}\nhint: queues here are {} (`qconf -sql`)",
                    known.join(", ")
                )));
            }
        }
        // SGE reads `-o`/`-e` as `[host:]path` lists: these characters would split the path.
        let root = spec.session.root().display().to_string();
        if root.contains([':', ',', ' ']) {
            return Err(SchedError::Config(format!(
                "the session dir {root:?} contains ':', ',' or a space, which SGE's -o/-e paths cannot hold\n\
                 hint: set SHOAL_HOME (or work_dir=) to a plain path on a filesystem the execution hosts share"
            )));
        }
        let exit_dir = spec.session.sub("sge").join("exit");
        create_private_dir(&exit_dir)?;
        let script = spec.session.sub("sge").join("worker.sh");
        write_atomic(&script, &[job_script(spec, &exit_dir)?.as_bytes()])?;
        self.session = Some(spec.session.clone());
        self.script = Some(script.clone());
        // `-w v` checks the request against the cluster (queue, PE, resources, project)
        // without submitting anything, and answers with SGE's own reason.
        let mut args = vec!["-w".to_string(), "v".into()];
        args.extend(self.opts.qsub_common(spec));
        args.push(script.display().to_string());
        let out = self.run("qsub", &args)?;
        if !out.ok {
            let message = out.message();
            let said: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != "Exiting.")
                .collect::<Vec<_>>();
            return Err(SchedError::Config(format!(
                "SGE refuses the worker job: {}\n  request: qsub {}\nhint: check queue, pe/slots, resources, project and qsub_args",
                said.join("; "),
                self.opts.request().join(" ")
            )));
        }
        Ok(())
    }

    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if self.lost > self.opts.max_lost_workers {
            return Err(SchedError::Command {
                command: "qsub".into(),
                message: format!(
                    "{} workers of this session were lost, more than max_lost_workers={}; not submitting more. Last: {}",
                    self.lost, self.opts.max_lost_workers, self.last_loss
                ),
            });
        }
        let script = match &self.script {
            Some(s) => s.display().to_string(),
            None => {
                return Err(SchedError::Config(
                    "sge backend: submit before preflight".into(),
                ))
            }
        };
        let args = self.opts.qsub_array(spec, n, &script);
        let out = self.run("qsub", &args)?;
        let job = match parse::qsub_job_number(&out.stdout) {
            Some(j) if out.ok => j,
            _ => {
                return Err(SchedError::Command {
                    command: format!("qsub {}", args.join(" ")),
                    message: out.message(),
                })
            }
        };
        self.jobs.push(job);
        self.all_gone = false;
        let ids = (1..=n as u64)
            .map(|t| {
                self.workers.insert(
                    (job, t),
                    Tracked {
                        seen: Seen::Pending,
                        vanished: None,
                    },
                );
                worker_id(job, t)
            })
            .collect();
        Ok(ids)
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        let mut events = Vec::new();
        self.read_exit_records(&mut events);
        self.drop_queued_after_stop(&mut events);
        // At most one qstat per poll interval, however often the engine asks.
        if self.workers.is_empty()
            || self
                .last_query
                .is_some_and(|t| t.elapsed() < self.opts.poll_interval)
        {
            return Ok(events);
        }
        self.last_query = Some(Instant::now());
        match self.query(&mut events) {
            Err(e) if events.is_empty() => Err(e),
            _ => Ok(events), // a failed query is retried next interval; keep what we know
        }
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        let keys: Vec<(u64, u64)> = workers.iter().filter_map(|w| parse_worker_id(w)).collect();
        let targets: Vec<String> = keys
            .iter()
            .filter(|k| self.workers.remove(k).is_some())
            .map(|k| worker_id(k.0, k.1))
            .collect();
        if !targets.is_empty() {
            self.qdel(targets)?;
        }
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        self.workers.clear();
        if self.all_gone {
            return Ok(());
        }
        let start = Instant::now();
        let mut forced = false;
        let mut asked = false;
        loop {
            let listed: BTreeSet<u64> = self.listing()?.keys().map(|k| k.0).collect();
            if listed.is_empty() {
                self.all_gone = true;
                return Ok(());
            }
            let mut targets: Vec<String> = listed.iter().map(u64::to_string).collect();
            if !asked || (!forced && start.elapsed() > self.delete_wait / 3) {
                if asked {
                    // Tasks stuck in `dr` (execd gone): force them out of the qmaster.
                    forced = true;
                    targets.insert(0, "-f".into());
                }
                asked = true;
                self.qdel(targets)?;
            } else if start.elapsed() > self.delete_wait {
                return Err(SchedError::Command {
                    command: "qdel".into(),
                    message: format!(
                        "jobs {} are still listed {} s after qdel",
                        listed
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        self.delete_wait.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn job_ids(&self) -> Vec<String> {
        self.jobs.iter().map(u64::to_string).collect()
    }
}

impl Drop for SgeScheduler {
    fn drop(&mut self) {
        if std::env::var_os("SHOAL_SGE_STATS").is_some() && !self.calls.is_empty() {
            let parts: Vec<String> = self
                .calls
                .iter()
                .map(|(k, (n, t))| {
                    format!(
                        "{k} {n}x {:.1} ms avg",
                        t.as_secs_f64() * 1000.0 / f64::from(*n)
                    )
                })
                .collect();
            eprintln!("shoal sge: client calls: {}", parts.join(", "));
        }
        let _ = self.cancel_all();
    }
}

#[cfg(test)]
mod tests;

//! The HTCondor backend: workers are the procs of `queue N` clusters submitted with
//! condor_submit (one cluster per batch); their states come from the session's job event
//! log, not from polling.
//!
//! Worker id = `bBATCH-PROC`, passed on the worker's command line. A worker has one life:
//! when its process dies (evicted, held while running, shadow exception) its job is removed
//! and it is reported Lost, so its chunks are requeued and the engine submits a replacement
//! if work remains — a restarted job would truncate its output file, which per-task output
//! offsets index into. Holds before the first start with a transient cause are released
//! (up to a limit); every other hold is reported with HTCondor's HoldReason and removed.
//! A condor_q query (only the session's clusters, a few attributes) runs at most every
//! [`QUERY_EVERY`] as a safety net for what the log cannot say: jobs held or gone without
//! an event; while no worker has started yet it runs every [`QUERY_WAITING`] and also tells
//! whether the negotiator found no match, in which case `condor_q -better-analyze` and the
//! slots' full sizes decide whether the request can ever run (else the session fails with
//! HTCondor's analysis). The schedd's MAX_JOBS_PER_SUBMISSION and MAX_JOBS_PER_OWNER are
//! read in preflight and respected.

pub mod analyze;
pub mod eventlog;
pub mod submit;

use crate::error::{Result, SchedError};
use crate::runner::{Abort, CallStats, Output, Runner};
use crate::supervisor::{says_any, Backend, Batch, IdScheme};
use crate::{LaunchSpec, WorkerEvent, WorkerState};
use eventlog::{EventKind, JobId, LogReader};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use submit::CondorOptions;

/// HoldReasonCodes whose cause may go away by itself (file transfer hiccups, a user account
/// lookup failing on a busy directory service): 11 InvalidTransferAck, 12 TransferOutputError,
/// 13 TransferInputError, 18 InvalidTransferGoAhead, 23 FailedToAccessUserAccount.
pub const TRANSIENT_HOLD_CODES: [i32; 5] = [11, 12, 13, 18, 23];
/// Releases of one job before its hold counts as permanent.
pub const MAX_RELEASES: u32 = 3;
/// Shadow exceptions before a job that never started is given up.
const MAX_RUN_FAILURES: u32 = 3;
/// Least time between two condor_q queries of one session.
pub const QUERY_EVERY: Duration = Duration::from_secs(10);
/// ...while no worker of the session has started yet (is the request matchable?).
pub const QUERY_WAITING: Duration = Duration::from_secs(2);
/// Least time between two analyses of a request the negotiator did not match.
const ANALYZE_EVERY: Duration = Duration::from_secs(30);
/// condor_q rounds in a row a job must be missing from before it counts as gone.
const MISSING_ROUNDS: u32 = 2;
/// How long `cancel_all` waits for removed jobs to leave the queue.
const REMOVE_WAIT: Duration = Duration::from_secs(20);
/// What HTCondor says when the schedd is busy or unreachable, or a per-owner cap is full.
const TRANSIENT: [&str; 14] = [
    "Failed to connect",
    "Can't find address",
    "SECMAN:2003",
    "Failed to fetch ads",
    "Connection refused",
    "timed out",
    "Timeout",
    "Failed to end classad message",
    "Failed to send",
    "Can't connect",
    "Unable to connect",
    "MAX_JOBS_PER_OWNER",
    "MAX_JOBS_SUBMITTED",
    "Too many jobs",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Held,
    Done,
}

#[derive(Debug)]
struct Job {
    phase: Phase,
    /// The worker process started (event 001) at least once.
    ran: bool,
    /// The engine counts this worker as pending or running.
    alive: bool,
    /// shoal removed the job (cancel, or after a loss): its later events mean nothing.
    removed: bool,
    releases: u32,
    run_failures: u32,
    /// The run ended (evicted, shadow exception) and the job went back to idle: (reason,
    /// poll number). Acted on one poll later, so a hold that follows an eviction (as
    /// condor_hold writes them) reports the hold's reason.
    ended_run: Option<(String, u64)>,
    hold: Option<Hold>,
    missing: u32,
    /// The shoal worker ids (`bBATCH-PROC`; with workers_per_job `bBATCH-PROC.K`).
    workers: Vec<String>,
    /// Those the engine cancelled: the job is removed once all are.
    cancelled: BTreeSet<String>,
    suspended: bool,
}

#[derive(Debug, Clone)]
struct Hold {
    reason: String,
    code: Option<i32>,
    subcode: Option<i32>,
    handled: bool,
}

impl Job {
    fn new(workers: Vec<String>) -> Self {
        Job {
            workers,
            cancelled: BTreeSet::new(),
            suspended: false,
            phase: Phase::Idle,
            ran: false,
            alive: true,
            removed: false,
            releases: 0,
            run_failures: 0,
            ended_run: None,
            hold: None,
            missing: 0,
        }
    }
}

/// Caps of the schedd, read in preflight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// MAX_JOBS_PER_SUBMISSION: most procs in one condor_submit.
    pub per_submission: Option<usize>,
    /// Room left under MAX_JOBS_PER_OWNER for this user (the limit minus jobs queued now).
    pub owner_room: Option<usize>,
}

pub struct HtcondorBackend {
    workers: usize,
    opts: CondorOptions,
    run: Runner,
    jobs: BTreeMap<JobId, Job>,
    log: Option<LogReader>,
    polls: u64,
    last_query: Option<Instant>,
    events: Vec<WorkerEvent>,
    query_every: Duration,
    limits: Limits,
    /// A job of the session has started: its request can be met.
    started: bool,
    last_analysis: Option<Instant>,
}

impl HtcondorBackend {
    /// Clusters with at least one job not yet done.
    fn live_clusters(&self) -> BTreeSet<u64> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.phase != Phase::Done)
            .map(|(id, _)| id.cluster)
            .collect()
    }

    pub fn new(workers: usize, options: &serde_json::Value) -> Result<Self> {
        if workers == 0 {
            return Err(SchedError::Config(
                "invalid value 0 for workers: a pool needs at least 1 worker".into(),
            ));
        }
        let opts = CondorOptions::from_json(options)?;
        let run = Runner::new(
            "install the HTCondor client tools and put them on PATH (and set CONDOR_CONFIG for your pool)",
        )
        .with_prefix(opts.target_args());
        Ok(HtcondorBackend {
            workers,
            opts,
            run,
            jobs: BTreeMap::new(),
            log: None,
            polls: 0,
            last_query: None,
            events: Vec::new(),
            query_every: QUERY_EVERY,
            limits: Limits::default(),
            started: false,
            last_analysis: None,
        })
    }

    /// Use the condor_* tools in `dir` instead of PATH (fault-injection tests).
    pub fn with_tools(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run = self.run.clone().in_dir(dir);
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn event_log_path(&self, spec: &LaunchSpec) -> PathBuf {
        match &self.opts.log_dir {
            Some(dir) => dir.join(format!("shoal-{}.condor.log", spec.session.id())),
            None => spec.session.sub("condor.log"),
        }
    }

    fn condor(&self, tool: &str, args: &[String]) -> Result<Output> {
        self.run.run(tool, args)
    }

    fn emit(&mut self, id: JobId, state: WorkerState) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        for worker in &job.workers {
            self.events.push(WorkerEvent {
                worker: worker.clone(),
                state: state.clone(),
            });
        }
    }

    /// Report a job's worker as lost (once) and remove the job so it never starts again.
    fn lose(&mut self, id: JobId, reason: String) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.ended_run = None;
        let was_alive = std::mem::replace(&mut job.alive, false);
        if !job.removed {
            job.removed = true;
            // Best effort: if condor_rm fails the reconciliation query still sees the job.
            let _ = self.condor("condor_rm", &[id.to_string()]);
        }
        if was_alive {
            self.emit(id, WorkerState::Lost(reason));
        }
    }

    fn apply(&mut self, ev: eventlog::Event) {
        let poll = self.polls;
        let id = ev.job;
        let Some(job) = self.jobs.get_mut(&id) else {
            return; // not ours (a shared log_dir) or from before a restart of the driver
        };
        if job.phase == Phase::Done {
            return;
        }
        match ev.kind {
            EventKind::Submitted | EventKind::Other(_) => {}
            EventKind::Executing => {
                job.phase = Phase::Running;
                job.ran = true;
                job.suspended = false;
                self.started = true;
                if !job.removed {
                    job.alive = true;
                    self.emit(id, WorkerState::Running);
                }
            }
            EventKind::Evicted => {
                if job.phase == Phase::Running {
                    job.phase = Phase::Idle;
                    job.ended_run = Some((
                        "evicted from its slot (preempted, vacated or killed by HTCondor)".into(),
                        poll,
                    ));
                }
            }
            EventKind::RunFailed { reason } => {
                if job.phase == Phase::Running {
                    job.phase = Phase::Idle;
                    job.ended_run = Some((reason, poll));
                } else {
                    job.run_failures += 1;
                    if job.run_failures >= MAX_RUN_FAILURES && !job.removed {
                        let msg = format!(
                            "HTCondor could not start the worker ({} tries): {reason}",
                            job.run_failures
                        );
                        self.lose(id, msg);
                    }
                }
            }
            EventKind::Terminated { exit_code, signal } => {
                job.phase = Phase::Done;
                job.ended_run = None;
                if job.removed || !job.alive {
                    return;
                }
                job.alive = false;
                let state = match (exit_code, signal) {
                    (Some(0), _) => WorkerState::Exited,
                    (Some(c), _) => WorkerState::Lost(format!("worker exited with code {c}")),
                    (None, Some(s)) => WorkerState::Lost(format!("worker killed by signal {s}")),
                    _ => WorkerState::Lost("worker ended abnormally".into()),
                };
                self.emit(id, state);
            }
            EventKind::Aborted { reason } => {
                job.phase = Phase::Done;
                job.ended_run = None;
                if job.removed || !job.alive {
                    return;
                }
                job.alive = false;
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" {reason}")
                };
                self.emit(
                    id,
                    WorkerState::Lost(format!(
                        "worker's job was removed from the HTCondor queue{reason}"
                    )),
                );
            }
            EventKind::Held {
                reason,
                code,
                subcode,
            } => {
                job.phase = Phase::Held;
                job.hold = Some(Hold {
                    reason,
                    code,
                    subcode,
                    handled: false,
                });
            }
            EventKind::Released => {
                if job.phase == Phase::Held {
                    job.phase = Phase::Idle;
                }
            }
            EventKind::Suspended | EventKind::Unsuspended => {
                let suspended = ev.kind == EventKind::Suspended;
                if job.phase == Phase::Running && job.suspended != suspended && job.alive {
                    job.suspended = suspended;
                    let state = if suspended {
                        WorkerState::Suspended
                    } else {
                        WorkerState::Running
                    };
                    self.emit(id, state);
                }
            }
        }
    }

    /// Decide about holds and ended runs seen so far.
    fn settle(&mut self) {
        let poll = self.polls;
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let job = &self.jobs[&id];
            if job.removed || job.phase == Phase::Done {
                continue;
            }
            let (ran, releases, ended_run) = (job.ran, job.releases, job.ended_run.clone());
            if job.phase == Phase::Held {
                let Some(hold) = job.hold.clone().filter(|h| !h.handled) else {
                    continue;
                };
                let transient = hold.code.is_some_and(|c| TRANSIENT_HOLD_CODES.contains(&c));
                let can_release = transient && !ran && releases < MAX_RELEASES;
                if let Some(h) = self.jobs.get_mut(&id).and_then(|j| j.hold.as_mut()) {
                    h.handled = true;
                }
                if can_release {
                    let released = self.condor("condor_release", &[id.to_string()]);
                    if released.as_ref().is_ok_and(|o| o.ok) {
                        if let Some(j) = self.jobs.get_mut(&id) {
                            j.releases += 1;
                        }
                        continue;
                    }
                }
                let mut msg = hold_message(&hold, ran);
                if transient && releases >= MAX_RELEASES {
                    msg.push_str(&format!(" (released {MAX_RELEASES} times, held again)"));
                }
                self.lose(id, msg);
            } else if let Some((reason, at)) = ended_run {
                if at < poll {
                    self.lose(id, reason);
                }
            }
        }
    }

    /// Cross-check the log against the schedd, at most every QUERY_EVERY.
    fn reconcile(&mut self) -> Result<()> {
        let every = if self.started {
            self.query_every
        } else {
            QUERY_WAITING.min(self.query_every)
        };
        if self.last_query.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        let live = self.live_clusters();
        if live.is_empty() {
            return Ok(());
        }
        self.last_query = Some(Instant::now());
        let queue = self.query(&live)?;
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        let mut unmatched = None;
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.phase == Phase::Done || !live.contains(&id.cluster) {
                continue;
            }
            match queue.get(&id) {
                None => {
                    job.missing += 1;
                    if job.missing >= MISSING_ROUNDS {
                        job.phase = Phase::Done;
                        if job.alive && !job.removed {
                            job.alive = false;
                            self.emit(
                                id,
                                WorkerState::Lost("worker's job left the HTCondor queue without an event in the job log".into()),
                            );
                        }
                    }
                }
                Some(q) => {
                    job.missing = 0;
                    if q.rejected && q.status == 1 && !job.ran && !job.removed {
                        unmatched.get_or_insert(id);
                    }
                    if q.status == 5 && job.phase != Phase::Held && !job.removed {
                        job.phase = Phase::Held;
                        job.hold = Some(Hold {
                            reason: q.hold_reason.clone(),
                            code: q.hold_code,
                            subcode: q.hold_subcode,
                            handled: false,
                        });
                    }
                }
            }
        }
        self.settle();
        if let Some(id) = unmatched.filter(|_| !self.started) {
            self.judge_match(id);
        }
        Ok(())
    }

    /// The negotiator found no slot for an idle job of a session none of whose jobs ever
    /// ran: ask HTCondor's analysis whether any slot could ever run it, and if none can,
    /// fail every worker with that explanation and remove the jobs.
    fn judge_match(&mut self, id: JobId) {
        if self
            .last_analysis
            .is_some_and(|t| t.elapsed() < ANALYZE_EVERY)
        {
            return;
        }
        self.last_analysis = Some(Instant::now());
        let Ok(out) = self.condor("condor_q", &["-better-analyze".into(), id.to_string()]) else {
            return;
        };
        let Some(a) = analyze::parse_analysis(&out.stdout).filter(|a| a.nothing_matches()) else {
            return;
        };
        if a.only_sizes() && self.some_slot_fits() != Some(false) {
            return; // a slot that big exists (busy now), or the sizes are unknown
        }
        let why = format!(
            "HTCondor will never run the worker jobs as requested: {} (`condor_q -better-analyze {id}`)\n\
             hint: ask for what a slot offers (request_cpus=, request_memory=, request_disk=, request_gpus=, requirements=); \
             `condor_status -af Name TotalSlotCpus TotalSlotMemory` lists the slots",
            a.explain()
        );
        let ids: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.alive && !j.removed && j.phase != Phase::Done)
            .map(|(id, _)| *id)
            .collect();
        let clusters: Vec<String> = self.live_clusters().iter().map(u64::to_string).collect();
        for id in ids {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.alive = false;
                j.removed = true;
            }
            self.emit(id, WorkerState::Unsatisfiable(why.clone()));
        }
        let _ = self.remove(&clusters, false);
    }

    /// Whether any slot, at its full size, can give what one worker asks for (None: the
    /// sizes could not be read).
    fn some_slot_fits(&self) -> Option<bool> {
        let args = [
            "-af",
            "TotalSlotCpus",
            "TotalSlotMemory",
            "TotalSlotDisk",
            "TotalSlotGPUs",
            "DynamicSlot",
        ]
        .map(String::from);
        let pool = self
            .opts
            .pool
            .iter()
            .flat_map(|p| ["-pool".to_string(), p.clone()])
            .collect();
        let out = self.run.prefixed(pool).run("condor_status", &args).ok()?;
        let slots = analyze::parse_slot_sizes(&out.stdout);
        if !out.ok || slots.is_empty() {
            return None;
        }
        let o = &self.opts;
        let cpus = u64::from(o.request_cpus.unwrap_or(1));
        let mem = o.request_memory.map_or(0, |m| m.megabytes());
        let disk = o.request_disk.map_or(0, |d| d.0.div_ceil(1024));
        let gpus = u64::from(o.request_gpus.unwrap_or(0));
        Some(
            slots.iter().any(|s| {
                s.cpus >= cpus && s.memory_mb >= mem && s.disk_kb >= disk && s.gpus >= gpus
            }),
        )
    }

    /// `condor_q -json` of the given clusters, a few attributes only.
    fn query(&self, clusters: &BTreeSet<u64>) -> Result<BTreeMap<JobId, QueueJob>> {
        let mut args: Vec<String> = clusters.iter().map(u64::to_string).collect();
        args.extend(
            [
                "-json",
                "-attributes",
                "ClusterId,ProcId,JobStatus,HoldReason,HoldReasonCode,HoldReasonSubCode,LastRejMatchReason",
            ]
            .map(String::from),
        );
        let out = self.run.check("condor_q", &args)?;
        parse_queue(&out.stdout)
    }

    fn remove(&mut self, ids: &[String], force: bool) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = Vec::new();
        if force {
            args.push("-forcex".to_string());
        }
        args.extend_from_slice(ids);
        // Its exit status is not checked: condor_rm fails when some of the jobs are already
        // gone, which is fine; callers that must know query the schedd afterwards.
        self.condor("condor_rm", &args)?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueJob {
    status: i64,
    hold_reason: String,
    hold_code: Option<i32>,
    hold_subcode: Option<i32>,
    /// The negotiator considered the job and found no match (LastRejMatchReason is set).
    rejected: bool,
}

/// condor_q -json prints a JSON array, or nothing at all when no job matches.
fn parse_queue(text: &str) -> Result<BTreeMap<JobId, QueueJob>> {
    let mut out = BTreeMap::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    let ads: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| SchedError::Command {
            command: "condor_q -json".into(),
            message: format!(
                "unexpected output ({e}): {}",
                text.chars().take(200).collect::<String>()
            ),
        })?;
    for ad in ads {
        let num = |k: &str| ad.get(k).and_then(serde_json::Value::as_i64);
        let (Some(c), Some(p)) = (num("ClusterId"), num("ProcId")) else {
            continue;
        };
        out.insert(
            JobId {
                cluster: c as u64,
                proc: p as u64,
            },
            QueueJob {
                status: num("JobStatus").unwrap_or(0),
                hold_reason: ad
                    .get("HoldReason")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                hold_code: num("HoldReasonCode").map(|v| v as i32),
                hold_subcode: num("HoldReasonSubCode").map(|v| v as i32),
                rejected: ad.get("LastRejMatchReason").is_some_and(|v| v.is_string()),
            },
        );
    }
    Ok(out)
}

fn hold_message(h: &Hold, ran: bool) -> String {
    let mut msg = format!(
        "worker's job was held by HTCondor{}: {}",
        if ran { " while running" } else { "" },
        if h.reason.is_empty() {
            "(no reason given)"
        } else {
            &h.reason
        }
    );
    if let Some(c) = h.code {
        msg.push_str(&format!(
            " (HoldReasonCode {c}, subcode {})",
            h.subcode.unwrap_or(0)
        ));
    }
    if h.reason.contains("Permission denied") {
        msg.push_str(
            "\nhint: jobs run as your HTCondor user (never as root): the session work dir, the \
             event log dir and the interpreter must be readable and writable by that user on the execute nodes",
        );
    } else if h.code == Some(1) {
        msg.push_str("; shoal removed the job and requeued its tasks");
    }
    msg
}

/// `condor_submit -terse` prints `FIRST - LAST` (e.g. `12.0 - 12.15`).
fn parse_terse(text: &str) -> Option<Vec<JobId>> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let (a, b) = line.split_once(" - ").unwrap_or((line, line));
    let (first, last) = (JobId::parse(a)?, JobId::parse(b)?);
    if first.cluster != last.cluster || last.proc < first.proc {
        return None;
    }
    Some(
        (first.proc..=last.proc)
            .map(|proc| JobId {
                cluster: first.cluster,
                proc,
            })
            .collect(),
    )
}

fn check_dir_writable(dir: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        SchedError::Config(format!("{what} {} cannot be created: {e}", dir.display()))
    })?;
    let probe = dir.join(format!(".shoal-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        SchedError::Config(format!("{what} {} is not writable: {e}", dir.display()))
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// `condor_config_val -schedd MAX_JOBS_PER_SUBMISSION MAX_JOBS_PER_OWNER`: one value per
/// line, in that order.
fn parse_caps(text: &str) -> (Option<usize>, Option<usize>) {
    let mut values = text.lines().map(|l| l.trim().parse::<usize>().ok());
    (values.next().flatten(), values.next().flatten())
}

/// `condor_q -totals`: `Total for query: N jobs; ...` (the caller's own jobs).
fn parse_own_jobs(text: &str) -> Option<usize> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Total for query:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl Backend for HtcondorBackend {
    fn name(&self) -> &'static str {
        "htcondor"
    }

    fn capacity(&self) -> usize {
        match self.limits.owner_room {
            Some(room) => self.workers.min(room.max(1)),
            None => self.workers,
        }
    }

    fn poll_interval(&self) -> Duration {
        self.opts.poll_interval
    }

    /// The job log is a local file and condor_q is rate-limited: read the log often.
    fn tick(&self) -> Duration {
        self.opts.poll_interval.min(Duration::from_millis(100))
    }

    fn max_batch(&self) -> usize {
        self.limits.per_submission.unwrap_or(usize::MAX).max(1)
    }

    fn ids(&self) -> IdScheme {
        IdScheme::Array {
            first_index: 0,
            per_job: self.opts.per_job.max(1) as u64,
        }
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<Vec<String>> {
        if !spec.python.is_absolute() || !spec.python.exists() {
            return Err(SchedError::Missing {
                what: "python_path".into(),
                detail: format!("{} is not an existing absolute path", spec.python.display()),
                hint: "pass python_path= an interpreter with shoal installed, at a path the execute nodes see".into(),
            });
        }
        if let Some(dir) = &self.opts.log_dir {
            check_dir_writable(dir, "log_dir")?;
        }
        // The description is checked by condor_submit (universe, requirements, ...) without
        // queueing anything, while condor_q checks that a schedd answers and the schedd's
        // caps are read: all at once, as each costs a round trip.
        let log = self.event_log_path(spec);
        let desc = submit::description(&self.opts, spec, &log, "b0", 1);
        let file = spec.session.sub("condor.sub");
        std::fs::write(&file, &desc).map_err(|e| shoal_core::CoreError::io(&file, e))?;
        let dry_run = [
            "-dry-run".into(),
            "/dev/null".into(),
            file.display().to_string(),
        ];
        let caps_args: Vec<String> = ["-schedd", "MAX_JOBS_PER_SUBMISSION", "MAX_JOBS_PER_OWNER"]
            .map(String::from)
            .to_vec();
        let (queue, out, caps) = std::thread::scope(|s| {
            let queue = s.spawn(|| self.condor("condor_q", &["-totals".into()]));
            let caps = s.spawn(|| self.condor("condor_config_val", &caps_args));
            let out = self.condor("condor_submit", &dry_run);
            let joined = |h: std::thread::ScopedJoinHandle<'_, Result<Output>>| {
                h.join()
                    .unwrap_or_else(|_| Err(SchedError::Config("a condor check panicked".into())))
            };
            (joined(queue), out, joined(caps))
        });
        let queue = queue?;
        if !queue.ok {
            let message = queue.message();
            let e = SchedError::Command {
                command: format!("condor_q {} -totals", self.opts.target_args().join(" "))
                    .replace("  ", " "),
                message: format!(
                    "no HTCondor schedd reachable: {message}\nhint: check CONDOR_CONFIG and the pool= / schedd= options (`condor_q -totals` must work)"
                ),
            };
            return Err(e);
        }
        let out = out?;
        if !out.ok {
            return Err(SchedError::Config(format!(
                "condor_submit rejected the worker submit description:\n{}\nhint: fix the option it names (requirements=, request_*=, universe=, extra_directives=)",
                out.message()
            )));
        }
        self.log = Some(LogReader::new(log));
        let mut notes = Vec::new();
        if let Some(caps) = caps.ok().filter(|o| o.ok) {
            let (per_submission, per_owner) = parse_caps(&caps.stdout);
            if let Some(n) = per_submission.filter(|n| *n < self.workers) {
                notes.push(format!(
                    "workers are submitted as clusters of at most {n} jobs (the schedd's MAX_JOBS_PER_SUBMISSION={n})"
                ));
            }
            self.limits.per_submission = per_submission;
            if let Some(max) = per_owner {
                let own = parse_own_jobs(&queue.stdout).unwrap_or(0);
                let room = max.saturating_sub(own);
                if room < self.workers {
                    notes.push(format!(
                        "the pool runs at most {} workers instead of {}: the schedd's MAX_JOBS_PER_OWNER={max} \
                         leaves room for {room} more job(s) of yours ({own} queued now)",
                        room.max(1),
                        self.workers
                    ));
                    self.limits.owner_room = Some(room);
                }
            }
        }
        Ok(notes)
    }

    fn submit(&mut self, spec: &LaunchSpec, batch: &Batch) -> Result<()> {
        let n = batch.ids.len();
        if n == 0 {
            return Ok(());
        }
        if self.log.is_none() {
            self.log = Some(LogReader::new(self.event_log_path(spec)));
        }
        let log = self.event_log_path(spec);
        let per_job = self.opts.per_job.max(1);
        if per_job > 1 {
            let script = spec.session.sub(submit::FANOUT);
            let text = submit::fanout_script(&self.opts, spec);
            shoal_core::fsutil::write_atomic(&script, &[text.as_bytes()])?;
        }
        let procs = n.div_ceil(per_job);
        let desc = submit::description(&self.opts, spec, &log, &batch.tag(), procs);
        let file = spec.session.sub(&format!("condor-{}.sub", batch.tag()));
        std::fs::write(&file, &desc).map_err(|e| shoal_core::CoreError::io(&file, e))?;
        // The latest description also under a fixed name, for people and tests.
        let _ = std::fs::copy(&file, spec.session.sub("condor.sub"));
        let args = ["-terse".into(), file.display().to_string()];
        let out = self.run.check("condor_submit", &args)?;
        let ids = parse_terse(&out.stdout).ok_or_else(|| {
            self.run.failed(
                "condor_submit",
                &args,
                &format!("unexpected output {:?}", out.stdout.trim()),
            )
        })?;
        for (id, workers) in ids.iter().zip(batch.ids.chunks(per_job)) {
            self.jobs.insert(*id, Job::new(workers.to_vec()));
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        self.polls += 1;
        if let Some(log) = self.log.as_mut() {
            let events = log.read_new().map_err(|e| SchedError::Command {
                command: format!("reading the job event log {}", log.path().display()),
                message: e.to_string(),
            })?;
            for ev in events {
                self.apply(ev);
            }
        }
        self.settle();
        let queried = self.reconcile();
        let events = std::mem::take(&mut self.events);
        match queried {
            // What the log said stands even when the schedd did not answer this time.
            Err(e) if events.is_empty() => Err(e),
            _ => Ok(events),
        }
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        let wanted: BTreeSet<&String> = workers.iter().collect();
        let mut ids = Vec::new();
        for (id, job) in self.jobs.iter_mut() {
            let before = job.cancelled.len();
            job.cancelled
                .extend(job.workers.iter().filter(|w| wanted.contains(w)).cloned());
            // With workers_per_job a sibling may still be working: the job goes once none
            // of its workers is wanted (a fenced worker exits by itself).
            let all = job.cancelled.len() == job.workers.len();
            if job.cancelled.len() > before && all && job.phase != Phase::Done {
                job.removed = true;
                job.alive = false;
                ids.push(id.to_string());
            }
        }
        self.remove(&ids, false)
    }

    fn cancel_all(&mut self) -> Result<()> {
        let live = self.live_clusters();
        if live.is_empty() {
            return Ok(());
        }
        for job in self.jobs.values_mut() {
            job.removed = true;
            job.alive = false;
        }
        let clusters: Vec<String> = live.iter().map(u64::to_string).collect();
        self.remove(&clusters, false)?;
        // condor_rm returns before the jobs are gone. Their last events (terminated, or
        // aborted: written as the job leaves the queue) in the job log say when, without a
        // query; without a log, or for jobs stuck in "removed" (X) after a while, the schedd
        // is asked (and those are forced out).
        let start = Instant::now();
        let mut forced = false;
        let mut left = BTreeMap::new();
        let mut asked: Option<Instant> = None;
        while start.elapsed() < REMOVE_WAIT {
            if let Some(log) = self.log.as_mut() {
                if let Ok(events) = log.read_new() {
                    for ev in events {
                        self.apply(ev);
                    }
                }
            }
            self.events.clear();
            if self.log.is_some() && self.live_clusters().is_empty() {
                return Ok(());
            }
            let forcing = !forced && start.elapsed() > Duration::from_secs(3);
            let ask = self.log.is_none()
                || (start.elapsed() > Duration::from_secs(1)
                    && asked.is_none_or(|t| t.elapsed() > Duration::from_secs(1)));
            if forcing || ask {
                asked = Some(Instant::now());
                left = self.query(&live)?;
                if left.is_empty() {
                    for job in self.jobs.values_mut() {
                        job.phase = Phase::Done;
                    }
                    return Ok(());
                }
                if forcing {
                    forced = true;
                    let stuck: Vec<String> = left.keys().map(JobId::to_string).collect();
                    let _ = self.remove(&stuck, false);
                    self.remove(&stuck, true)?;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(SchedError::Command {
            command: format!("condor_rm {}", clusters.join(" ")),
            message: format!(
                "{} job(s) still in the queue after {} s: {}\nhint: remove them with `condor_rm -forcex {}`",
                left.len(),
                REMOVE_WAIT.as_secs(),
                left.keys().map(JobId::to_string).collect::<Vec<_>>().join(" "),
                clusters.join(" ")
            ),
        })
    }

    fn job_ids(&self) -> Vec<String> {
        self.live_clusters().iter().map(u64::to_string).collect()
    }

    fn job_of(&self, worker: &str) -> Option<String> {
        let (id, _) = self
            .jobs
            .iter()
            .find(|(_, j)| j.workers.iter().any(|w| w == worker))?;
        Some(format!("{}.{}", id.cluster, id.proc))
    }

    fn transient(&self, e: &SchedError) -> bool {
        crate::supervisor::generic_transient(e) || says_any(e, &TRANSIENT)
    }

    fn abort_handle(&self) -> Option<Arc<Abort>> {
        Some(self.run.abort_handle())
    }

    fn calls(&self) -> BTreeMap<String, CallStats> {
        self.run.stats()
    }
}

impl Drop for HtcondorBackend {
    fn drop(&mut self) {
        let _ = self.cancel_all();
    }
}

#[cfg(test)]
mod tests;

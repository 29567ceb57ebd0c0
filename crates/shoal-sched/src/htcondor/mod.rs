//! The HTCondor backend: workers are the procs of `queue N` clusters submitted with
//! condor_submit; their states come from the session's job event log, not from polling.
//!
//! Worker id = `Cluster.Proc`, passed on the worker's command line. A worker has one life:
//! when its process dies (evicted, held while running, shadow exception) its job is removed
//! and it is reported Lost, so its chunks are requeued and the engine submits a replacement
//! if work remains — a restarted job would truncate its output file, which per-task output
//! offsets index into. Holds before the first start with a transient cause are released
//! (up to a limit); every other hold is reported with HTCondor's HoldReason and removed.
//! A condor_q query (only the session's clusters, a few attributes) runs at most every
//! [`QUERY_EVERY`] as a safety net for what the log cannot say: jobs held or gone without
//! an event.

pub mod eventlog;
pub mod submit;

use crate::error::{Result, SchedError};
use crate::{LaunchSpec, Scheduler, WorkerEvent, WorkerState};
use eventlog::{EventKind, JobId, LogReader};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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
/// condor_q rounds in a row a job must be missing from before it counts as gone.
const MISSING_ROUNDS: u32 = 2;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

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
}

#[derive(Debug, Clone)]
struct Hold {
    reason: String,
    code: Option<i32>,
    subcode: Option<i32>,
    handled: bool,
}

impl Job {
    fn new() -> Self {
        Job {
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

pub struct HtcondorScheduler {
    workers: usize,
    opts: CondorOptions,
    jobs: BTreeMap<JobId, Job>,
    clusters: BTreeSet<u64>,
    log: Option<LogReader>,
    polls: u64,
    last_query: Option<Instant>,
    events: Vec<WorkerEvent>,
    /// Where the condor_* tools are (None: PATH). Tests point it at fakes.
    bin_dir: Option<PathBuf>,
    query_every: Duration,
}

impl HtcondorScheduler {
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
        Ok(HtcondorScheduler {
            workers,
            opts: CondorOptions::from_json(options)?,
            jobs: BTreeMap::new(),
            clusters: BTreeSet::new(),
            log: None,
            polls: 0,
            last_query: None,
            events: Vec::new(),
            bin_dir: None,
            query_every: QUERY_EVERY,
        })
    }

    fn event_log_path(&self, spec: &LaunchSpec) -> PathBuf {
        match &self.opts.log_dir {
            Some(dir) => dir.join(format!("shoal-{}.condor.log", spec.session.id())),
            None => spec.session.sub("condor.log"),
        }
    }

    fn condor(&self, tool: &str, args: &[String]) -> Result<Output> {
        let mut all = self.opts.target_args();
        all.extend_from_slice(args);
        let program = match &self.bin_dir {
            Some(d) => d.join(tool).display().to_string(),
            None => tool.to_string(),
        };
        run(&program, &all, COMMAND_TIMEOUT)
    }

    fn emit(&mut self, id: JobId, state: WorkerState) {
        self.events.push(WorkerEvent {
            worker: id.to_string(),
            state,
        });
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
                    if released.as_ref().is_ok_and(|o| o.status.success()) {
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
        if self
            .last_query
            .is_some_and(|t| t.elapsed() < self.query_every)
        {
            return Ok(());
        }
        let live = self.live_clusters();
        if live.is_empty() {
            return Ok(());
        }
        self.last_query = Some(Instant::now());
        let queue = self.query(&live)?;
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
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
        Ok(())
    }

    /// `condor_q -json` of the given clusters, a few attributes only.
    fn query(&self, clusters: &BTreeSet<u64>) -> Result<BTreeMap<JobId, QueueJob>> {
        let mut args: Vec<String> = clusters.iter().map(u64::to_string).collect();
        args.extend(
            [
                "-json",
                "-attributes",
                "ClusterId,ProcId,JobStatus,HoldReason,HoldReasonCode,HoldReasonSubCode",
            ]
            .map(String::from),
        );
        let out = self.condor("condor_q", &args)?;
        if !out.status.success() {
            return Err(command_error("condor_q", &out));
        }
        parse_queue(&String::from_utf8_lossy(&out.stdout))
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

fn command_error(tool: &str, out: &Output) -> SchedError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    SchedError::Command {
        command: tool.to_string(),
        message: format!("{} ({})", text.trim(), out.status),
    }
}

/// Run a condor tool with a deadline: a schedd that does not answer must not hang the engine.
fn run(tool: &str, args: &[String], timeout: Duration) -> Result<Output> {
    let child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SchedError::Missing {
                    what: tool.to_string(),
                    detail: "not on PATH".into(),
                    hint: "install the HTCondor client tools and put them on PATH (for the test pool: `. ci/clusters/env.sh`)".into(),
                }
            } else {
                SchedError::Command {
                    command: tool.to_string(),
                    message: e.to_string(),
                }
            }
        })?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let waited = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = rx.recv();
            return Err(SchedError::Command {
                command: format!("{tool} {}", args.join(" ")),
                message: format!("no answer within {} s", timeout.as_secs()),
            });
        }
    };
    waited.map_err(|e| SchedError::Command {
        command: tool.to_string(),
        message: e.to_string(),
    })
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

impl Scheduler for HtcondorScheduler {
    fn name(&self) -> &'static str {
        "htcondor"
    }

    fn capacity(&self) -> usize {
        self.workers
    }

    fn poll_interval(&self) -> Duration {
        self.opts.poll_interval
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()> {
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
        // queueing anything, while condor_q checks that a schedd answers: both at once, as
        // each costs a round trip.
        let log = self.event_log_path(spec);
        let desc = submit::description(&self.opts, spec, &log, 1);
        let file = spec.session.sub("condor.sub");
        std::fs::write(&file, &desc).map_err(|e| shoal_core::CoreError::io(&file, e))?;
        let dry_run = [
            "-dry-run".into(),
            "/dev/null".into(),
            file.display().to_string(),
        ];
        let (queue, out) = std::thread::scope(|s| {
            let queue = s.spawn(|| self.condor("condor_q", &["-totals".into()]));
            let out = self.condor("condor_submit", &dry_run);
            (
                queue
                    .join()
                    .unwrap_or_else(|_| Err(SchedError::Config("condor_q check panicked".into()))),
                out,
            )
        });
        let queue = queue?;
        if !queue.status.success() {
            let SchedError::Command { message, .. } = command_error("condor_q", &queue) else {
                unreachable!()
            };
            return Err(SchedError::Command {
                command: format!("condor_q {} -totals", self.opts.target_args().join(" ")).replace("  ", " "),
                message: format!(
                    "no HTCondor schedd reachable: {message}\nhint: check CONDOR_CONFIG and the pool= / schedd= options (`condor_q -totals` must work)"
                ),
            });
        }
        let out = out?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = if msg.trim().is_empty() {
                String::from_utf8_lossy(&out.stdout)
            } else {
                msg
            };
            return Err(SchedError::Config(format!(
                "condor_submit rejected the worker submit description:\n{}\nhint: fix the option it names (requirements=, request_*=, universe=, extra_directives=)",
                msg.trim()
            )));
        }
        self.log = Some(LogReader::new(log));
        Ok(())
    }

    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if self.log.is_none() {
            self.log = Some(LogReader::new(self.event_log_path(spec)));
        }
        let log = self.event_log_path(spec);
        let desc = submit::description(&self.opts, spec, &log, n);
        let file = spec.session.sub("condor.sub");
        std::fs::write(&file, &desc).map_err(|e| shoal_core::CoreError::io(&file, e))?;
        let out = self.condor(
            "condor_submit",
            &["-terse".into(), file.display().to_string()],
        )?;
        if !out.status.success() {
            return Err(command_error("condor_submit", &out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ids = parse_terse(&stdout).ok_or_else(|| SchedError::Command {
            command: "condor_submit -terse".into(),
            message: format!("unexpected output {:?}", stdout.trim()),
        })?;
        for id in &ids {
            self.jobs.insert(*id, Job::new());
            self.clusters.insert(id.cluster);
        }
        Ok(ids.iter().map(JobId::to_string).collect())
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
        let mut ids = Vec::new();
        for w in workers {
            let Some(id) = JobId::parse(w) else { continue };
            if let Some(job) = self.jobs.get_mut(&id) {
                if job.phase != Phase::Done {
                    job.removed = true;
                    job.alive = false;
                    ids.push(id.to_string());
                }
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
        // condor_rm returns before the jobs are gone: wait until the schedd no longer lists
        // them, and force out those stuck in "removed" (X) after a while.
        let start = Instant::now();
        let mut forced = false;
        let mut left = BTreeMap::new();
        while start.elapsed() < Duration::from_secs(20) {
            left = self.query(&live)?;
            if left.is_empty() {
                for job in self.jobs.values_mut() {
                    job.phase = Phase::Done;
                }
                return Ok(());
            }
            if !forced && start.elapsed() > Duration::from_secs(3) {
                forced = true;
                let stuck: Vec<String> = left.keys().map(JobId::to_string).collect();
                let _ = self.remove(&stuck, false);
                self.remove(&stuck, true)?;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(SchedError::Command {
            command: format!("condor_rm {}", clusters.join(" ")),
            message: format!(
                "{} job(s) still in the queue after 20 s: {}\nhint: remove them with `condor_rm -forcex {}`",
                left.len(),
                left.keys().map(JobId::to_string).collect::<Vec<_>>().join(" "),
                clusters.join(" ")
            ),
        })
    }

    fn job_ids(&self) -> Vec<String> {
        let live = self.live_clusters();
        live.iter().map(u64::to_string).collect()
    }
}

impl Drop for HtcondorScheduler {
    fn drop(&mut self) {
        let _ = self.cancel_all();
    }
}

#[cfg(test)]
mod tests;

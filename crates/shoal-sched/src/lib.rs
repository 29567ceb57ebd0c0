//! shoal-sched: the one interface the engine uses to get workers from a backend, and its
//! implementations. A backend starts, watches and cancels *workers*; it never sees tasks.
//!
//! - [`registry`]: every backend's name, options, defaults, worker-id rule and cancel rule,
//!   read by everything else (Python, templates, docs, `shoal init`).
//! - [`Scheduler`]: what the engine calls; [`build`] returns a [`supervisor::Supervisor`]
//!   that runs the backend on its own thread, so scheduler calls never stall the engine.
//! - [`supervisor::Backend`]: what a backend implements (blocking calls). [`local`] and
//!   [`htcondor`] implement it directly; the array-job schedulers ([`slurm`], [`sge`]) are
//!   small [`array::Adapter`]s of the generic [`array::ArrayBackend`].
//! - [`runner`]: the one command runner (timeouts, error format, call statistics).

pub mod array;
pub mod error;
pub mod htcondor;
pub mod local;
pub mod options;
pub mod registry;
pub mod runner;
pub mod sge;
pub mod shapes;
pub mod shell;
pub mod slurm;
pub mod supervisor;
#[cfg(test)]
mod testing;

pub use error::{Result, SchedError};
pub use runner::CallStats;

use shoal_core::SessionDir;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a backend needs to start a worker of a session.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub session: SessionDir,
    /// Interpreter that runs `-m shoal.worker`.
    pub python: PathBuf,
    /// Extra environment for workers (on top of what the backend forwards).
    pub env: Vec<(String, String)>,
    /// Directory workers start in.
    pub cwd: PathBuf,
    /// Where a TCP session's workers connect (None: they use the work dir).
    pub connect: Option<Connect>,
}

/// How a worker reaches a TCP session's driver. The address and fingerprint go on its command
/// line; the token is a secret and travels only in the job's environment ([`Connect::secret_env`]),
/// never in a job script or on a command line.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// `HOST:PORT` the driver listens on.
    pub addr: String,
    /// The pinned certificate's SHA-256, base64url (not secret).
    pub fingerprint: String,
    /// The environment variable the token travels in, and the token.
    pub token: (String, String),
    /// The token in a file only its owner can read (mode 600), for a scheduler that publishes
    /// a job's environment to every user (HTCondor's job ad) and ships files with the job; and
    /// the variable that gives the worker the shipped file's name.
    pub token_file: (String, PathBuf),
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("addr", &self.addr)
            .field("fingerprint", &self.fingerprint)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl LaunchSpec {
    /// The worker command line, the only place it is built. `worker_id` is passed as
    /// `--worker-id` when given; otherwise the job sets `SHOAL_WORKER_ID` (the registry's
    /// [`registry::WorkerId`] says which a backend does).
    pub fn worker_argv(&self, worker_id: Option<&str>) -> Vec<String> {
        let mut argv = vec![
            self.python.display().to_string(),
            "-m".into(),
            "shoal.worker".into(),
            self.session.root().display().to_string(),
        ];
        if let Some(c) = &self.connect {
            argv.extend(["--connect".into(), c.addr.clone()]);
            argv.extend(["--fingerprint".into(), c.fingerprint.clone()]);
        }
        if let Some(id) = worker_id {
            argv.push("--worker-id".into());
            argv.push(id.to_string());
        }
        argv
    }

    /// Secret variables for the worker's environment (a TCP session's token): a backend sets
    /// them on the process that starts the job (its environment is forwarded), never in a
    /// file another user could read.
    pub fn secret_env(&self) -> Vec<(String, String)> {
        self.connect.iter().map(|c| c.token.clone()).collect()
    }
}

/// How a worker stands, as far as its backend can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Submitted, not yet running (queued, held for scheduling, or still being submitted).
    Pending,
    Running,
    /// Stopped by the scheduler (Slurm `SUSPENDED`, SGE `s`/`S`/`T`, HTCondor `SUSPENDED`)
    /// or, locally, by a signal (SIGSTOP): alive, but running nothing. A later `Running`
    /// event says it resumed.
    Suspended,
    /// Ended on its own (no work left, or asked to stop).
    Exited,
    /// Ended abnormally or will never run: the reason is for the user.
    Lost(String),
    /// The request can never be met as given (no node, slot or queue offers it); the
    /// scheduler's explanation. The backend has cancelled the jobs; the session should fail
    /// with this message. Every worker of the request gets the event.
    Unsatisfiable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    pub worker: String,
    pub state: WorkerState,
}

/// A source of workers, as the engine sees it. Implemented by [`supervisor::Supervisor`]
/// (what [`build`] returns), which runs the backend on a thread of its own.
///
/// The contract, for the engine:
/// - `preflight` blocks (it runs while the user waits for `Pool(...)`), is bounded by the
///   command timeouts, and must succeed before anything else is called; it reads the site's
///   limits, so call `capacity` after it.
/// - Every other method returns at once: none waits for the scheduler. `submit(n)` returns
///   the new workers' ids immediately (they are `Pending` until events say otherwise); the
///   submission happens on the backend's thread and is retried there while it fails
///   transiently. `cancel` works for workers whose submission is still queued, too; once it
///   returns, `poll` never reports those workers again.
/// - `poll` drains the events that arrived since the last call; calling it more often than
///   `poll_interval` costs nothing. `Err` from `poll` (or `submit`) is final: the backend
///   cannot go on (a permanent refusal, or an outage with no worker alive); fail the session
///   with its message. A worker may go `Running` -> `Suspended` -> `Running`.
/// - `cancel_all` blocks until the scheduler confirms every job is gone (bounded; it first
///   kills any scheduler call in flight). Dropping the scheduler does the same.
/// - `notes` are messages for the user (a site cap that shapes the session, an outage being
///   ridden out): show each once.
pub trait Scheduler: Send {
    fn name(&self) -> &'static str;

    /// Most workers this backend may have at once under its options and the site's limits.
    fn capacity(&self) -> usize;

    /// Whether workers should be kept while idle (local processes are cheap to keep and
    /// expensive to restart; cluster allocations must be given back when work runs out).
    fn keep_warm(&self) -> bool {
        false
    }

    /// How often `poll` is worth calling.
    fn poll_interval(&self) -> Duration;

    /// Check options and environment before anything is submitted.
    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()>;

    /// Start `n` more workers; returns their worker ids.
    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>>;

    /// State changes since the last call.
    fn poll(&mut self) -> Result<Vec<WorkerEvent>>;

    /// Stop particular workers now (e.g. ones whose heartbeat stopped).
    fn cancel(&mut self, workers: &[String]) -> Result<()>;

    /// Stop every worker of the session now; must leave nothing running.
    fn cancel_all(&mut self) -> Result<()>;

    /// Scheduler job ids to record in the session file, for `shoal cancel`.
    fn job_ids(&self) -> Vec<String> {
        Vec::new()
    }

    /// Messages for the user since the last call.
    fn notes(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Workers whose submission went through since the last call, each with the
    /// scheduler's name for its job (`1234_5`).
    fn placed(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Scheduler commands run so far, per program (count, failures, time).
    fn calls(&self) -> BTreeMap<String, CallStats> {
        BTreeMap::new()
    }
}

/// The backends this build knows, for error messages.
pub fn backends() -> Vec<&'static str> {
    registry::names()
}

/// Parse a backend's options (the JSON object of its own keys) without any I/O: what
/// [`registry::check_options`] runs to judge a template.
pub fn parse_options(name: &str, workers: usize, options: &serde_json::Value) -> Result<()> {
    match name {
        "local" => options::Opts::new("local", options).map(drop),
        "slurm" => slurm::SlurmOptions::from_json(workers, options).map(drop),
        "sge" => sge::SgeOptions::parse(workers, options).map(drop),
        "htcondor" => htcondor::CondorOptions::from_json(options).map(drop),
        other => Err(registry::backend(other).unwrap_err().into()),
    }
}

/// The user the scheduler sees (whose jobs `qstat -u` and `scontrol show assoc_mgr` list).
pub fn current_user() -> String {
    let uid = rustix::process::geteuid().as_raw();
    // SAFETY: getpwuid returns a pointer into static storage or null; it is read at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

fn check_workers(workers: usize) -> Result<()> {
    if workers == 0 {
        return Err(SchedError::Config(
            "invalid value 0 for workers: a pool needs at least 1 worker".into(),
        ));
    }
    Ok(())
}

/// The backend itself (blocking), for tests and tools that drive it directly.
pub fn backend(
    name: &str,
    workers: usize,
    options: &serde_json::Value,
) -> Result<Box<dyn supervisor::Backend>> {
    check_workers(workers)?;
    Ok(match name {
        "local" => {
            options::Opts::new("local", options)?;
            Box::new(local::LocalBackend::new(workers)?)
        }
        "slurm" => Box::new(slurm::backend(workers, options)?),
        "sge" => Box::new(sge::backend(workers, options)?),
        "htcondor" => Box::new(htcondor::HtcondorBackend::new(workers, options)?),
        other => return Err(registry::backend(other).unwrap_err().into()),
    })
}

/// Build a backend from its name, the number of workers wanted and its own options (JSON
/// object: backend-specific keys), supervised on its own thread. Unknown names and options
/// are errors whose hints come from the registry.
pub fn build(
    name: &str,
    workers: usize,
    options: &serde_json::Value,
) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(supervisor::Supervisor::new(backend(
        name, workers, options,
    )?)))
}

/// The scheduler of worker shape `shape` (docs/resources.md): the backend built from the
/// shape's options ([`shapes::resolve`]), supervised, its worker ids marked with the shape.
pub fn build_shape(
    name: &str,
    workers: usize,
    options: &serde_json::Value,
    shape: shapes::ShapeId,
) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(
        supervisor::Supervisor::new(backend(name, workers, options)?).for_shape(shape),
    ))
}

/// Cancel scheduler jobs recorded in a session file whose driver is gone (`shoal cancel`),
/// as the registry says for that backend. Jobs that already ended are not an error; returns
/// how many ids were handed over.
pub fn cancel_recorded(backend: &str, jobs: &[String]) -> Result<usize> {
    let Some(rule) = registry::backend(backend).ok().and_then(|b| b.cancel) else {
        return Ok(0);
    };
    if jobs.is_empty() {
        return Ok(0);
    }
    let run = runner::Runner::new(format!(
        "run `shoal cancel` where the {backend} client commands are on PATH"
    ));
    let out = run.run(rule.program, jobs)?;
    let text = out.message();
    if !out.ok && !rule.gone.iter().any(|g| text.contains(g)) {
        return Err(run.failed(rule.program, jobs, &text));
    }
    Ok(jobs.len())
}

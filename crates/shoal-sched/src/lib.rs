//! shoal-sched: the one interface the engine uses to get workers from a backend, and its
//! implementations. A backend starts, watches and cancels *workers*; it never sees tasks.
//!
//! Adding a backend means one module here implementing [`Scheduler`]; the engine, the
//! work-dir protocol and the Python API stay unchanged.

pub mod error;
pub mod htcondor;
pub mod local;
pub mod sge;
pub mod shell;
pub mod slurm;

pub use error::{Result, SchedError};

use shoal_core::SessionDir;
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
}

impl LaunchSpec {
    /// The worker command line; `worker_id` is passed explicitly or derived by the worker
    /// from its scheduler's environment (array index) when `None`.
    pub fn worker_argv(&self, worker_id: Option<&str>) -> Vec<String> {
        let mut argv = vec![
            self.python.display().to_string(),
            "-m".into(),
            "shoal.worker".into(),
            self.session.root().display().to_string(),
        ];
        if let Some(id) = worker_id {
            argv.push("--worker-id".into());
            argv.push(id.to_string());
        }
        argv
    }
}

/// How a worker stands, as far as its backend can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Submitted, not yet running (queued, held for scheduling).
    Pending,
    Running,
    /// Ended on its own (no work left, or asked to stop).
    Exited,
    /// Ended abnormally or will never run: the reason is for the user.
    Lost(String),
    /// Stopped by the scheduler (or SIGSTOP): its chunks run elsewhere after a short grace.
    Suspended,
    /// Can never start: no slot, node or queue can satisfy the request (the scheduler's own
    /// explanation). The session fails with it.
    Unsatisfiable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    pub worker: String,
    pub state: WorkerState,
}

/// A source of workers. Implementations are driven from the engine's thread only.
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
}

/// The backends this build knows, for error messages.
pub const BACKENDS: [&str; 4] = ["local", "slurm", "htcondor", "sge"];

/// Build a backend from its name, the number of workers wanted and its own options (JSON
/// object: backend-specific keys). Unknown names and options are errors that list the choices.
pub fn build(
    name: &str,
    workers: usize,
    options: &serde_json::Value,
) -> Result<Box<dyn Scheduler>> {
    let extra: Vec<&String> = options
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    match name {
        "local" => {
            if let Some(k) = extra.first() {
                return Err(SchedError::Config(format!(
                    "option {k:?} does not apply to the local backend\nhint: remove it, or choose a cluster backend ({})",
                    BACKENDS[1..].join(", ")
                )));
            }
            Ok(Box::new(local::LocalScheduler::new(workers)?))
        }
        "sge" => Ok(Box::new(sge::SgeScheduler::new(workers, options)?)),
        "slurm" => Ok(Box::new(slurm::SlurmScheduler::new(workers, options)?)),
        "htcondor" => Ok(Box::new(htcondor::HtcondorScheduler::new(
            workers, options,
        )?)),
        other => Err(SchedError::Config(format!(
            "unknown backend {other:?}\nhint: choose one of {}",
            BACKENDS.join(", ")
        ))),
    }
}

/// Cancel scheduler jobs recorded in a session file whose driver is gone (`shoal cancel`).
/// Jobs that already ended are not an error; returns how many ids were handed over.
pub fn cancel_recorded(backend: &str, jobs: &[String]) -> Result<usize> {
    let program = match backend {
        "slurm" => "scancel",
        "sge" => "qdel",
        "htcondor" => "condor_rm",
        _ => return Ok(0),
    };
    if jobs.is_empty() {
        return Ok(0);
    }
    let out = std::process::Command::new(program)
        .args(jobs)
        .output()
        .map_err(|e| SchedError::Missing {
            what: program.into(),
            detail: e.to_string(),
            hint: format!("run `shoal cancel` where the {backend} client commands are on PATH"),
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    let gone = [
        "not exist",
        "Invalid job id",
        "does not exist",
        "Couldn't find",
    ];
    if !out.status.success() && !gone.iter().any(|g| text.contains(g)) {
        return Err(SchedError::Command {
            command: format!("{program} {}", jobs.join(" ")),
            message: text.trim().to_string(),
        });
    }
    Ok(jobs.len())
}

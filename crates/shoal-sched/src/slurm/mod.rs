//! The Slurm backend: workers are elements of array jobs (one `sbatch --array` per
//! `submit(n)`), watched with one `squeue` per poll interval limited to the session's own
//! arrays, and cancelled as `ARRAYID_TASKID` (one worker) or `ARRAYID` (the whole array).
//!
//! A worker's id is `ARRAYID_TASKID`, which the worker derives itself from
//! SLURM_ARRAY_JOB_ID/SLURM_ARRAY_TASK_ID, and Slurm writes its output straight to
//! `logs/ARRAYID_TASKID.out|err` (`--output=logs/%A_%a.out`).

pub mod options;
pub mod query;
pub mod script;

use crate::error::{Result, SchedError};
use crate::{LaunchSpec, Scheduler, WorkerEvent, WorkerState};
use options::SlurmOptions;
use query::{Phase, SiteConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `cancel_all` waits for Slurm to confirm the session's jobs are gone.
const CANCEL_CONFIRM: Duration = Duration::from_secs(15);
/// scancel/squeue arguments per call (command lines have limits).
const IDS_PER_CALL: usize = 500;
/// Bytes of the jobcomp text log searched for a vanished job (its end is recent).
const JOBCOMP_TAIL: u64 = 8 << 20;

/// The Slurm commands, found on PATH or (for fault-injection tests) in one directory.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub bin: Option<PathBuf>,
}

/// What a command printed.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Tools {
    fn program(&self, name: &str) -> PathBuf {
        match &self.bin {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Where `name` would run from, if anywhere.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match &self.bin {
            Some(d) => vec![d.clone()],
            None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect(),
        };
        dirs.into_iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    }

    pub fn run(&self, name: &str, args: &[String]) -> Result<Output> {
        let out = Command::new(self.program(name))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| SchedError::Command {
                command: name.to_string(),
                message: format!("{e}\nhint: is Slurm's {name} on PATH on this host?"),
            })?;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Run and require success; the error carries Slurm's own message.
    fn check(&self, name: &str, args: &[String]) -> Result<Output> {
        let out = self.run(name, args)?;
        if out.ok {
            Ok(out)
        } else {
            let msg = if out.stderr.is_empty() {
                out.stdout.trim().to_string()
            } else {
                out.stderr.clone()
            };
            Err(SchedError::Command {
                command: format!("{name} {}", args.join(" ")),
                message: msg,
            })
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A worker the backend still watches.
#[derive(Debug, Clone)]
struct Tracked {
    array: String,
    running: bool,
    /// Consecutive queries that did not list it.
    missing: u32,
}

pub struct SlurmScheduler {
    opts: SlurmOptions,
    tools: Tools,
    site: SiteConfig,
    script: Option<PathBuf>,
    tracked: BTreeMap<String, Tracked>,
    /// Every array of the session, in submission order (for `shoal cancel`).
    arrays: Vec<String>,
    /// Arrays that may still have queued or running elements.
    open_arrays: BTreeSet<String>,
    last_query: Option<Instant>,
    /// Slurm queries made by `poll` (for measurements and tests).
    pub queries: u64,
}

impl SlurmScheduler {
    pub fn new(workers: usize, options: &serde_json::Value) -> Result<Self> {
        Ok(SlurmScheduler {
            opts: SlurmOptions::from_json(workers, options)?,
            tools: Tools::default(),
            site: SiteConfig::default(),
            script: None,
            tracked: BTreeMap::new(),
            arrays: Vec::new(),
            open_arrays: BTreeSet::new(),
            last_query: None,
            queries: 0,
        })
    }

    /// Use the Slurm commands in `dir` instead of PATH (fault-injection tests).
    pub fn with_tools(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tools.bin = Some(dir.into());
        self
    }

    pub fn options(&self) -> &SlurmOptions {
        &self.opts
    }

    pub fn site(&self) -> &SiteConfig {
        &self.site
    }

    fn write_script(&mut self, spec: &LaunchSpec) -> Result<PathBuf> {
        if let Some(p) = &self.script {
            return Ok(p.clone());
        }
        let path = spec.session.sub("slurm-worker.sh");
        let text = script::worker_script(spec, &self.opts);
        shoal_core::fsutil::write_atomic(&path, &[text.as_bytes()])?;
        self.script = Some(path.clone());
        Ok(path)
    }

    fn check_partition(&self) -> Result<()> {
        let out = self.tools.check(
            "scontrol",
            &["show".into(), "partition".into(), "-o".into()],
        )?;
        let parts = query::parse_partitions(&out.stdout);
        let names = || {
            parts
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chosen = match &self.opts.partition {
            Some(name) => match parts.iter().find(|p| &p.name == name) {
                Some(p) => Some(p),
                None => {
                    return Err(SchedError::Config(format!(
                        "Slurm has no partition {name:?}\nhint: choose one of: {}",
                        names()
                    )))
                }
            },
            None => parts.iter().find(|p| p.default),
        };
        let Some(p) = chosen else { return Ok(()) };
        if !p.up {
            return Err(SchedError::Config(format!(
                "Slurm partition {:?} is not UP: jobs would wait forever\nhint: choose another partition: {}",
                p.name,
                names()
            )));
        }
        if let (Some(t), Some(max)) = (self.opts.time, p.max_time) {
            if t.0 > max {
                return Err(SchedError::Config(format!(
                    "time={} is longer than partition {:?} allows ({})\nhint: lower time= or choose another partition",
                    t.to_slurm(),
                    p.name,
                    shoal_core::units::TimeLimit(max).to_slurm()
                )));
            }
        }
        Ok(())
    }

    /// `squeue` for the session's own arrays; every state so finished jobs are seen too.
    fn query(&mut self, arrays: &[String], all_states: bool) -> Result<Vec<query::JobLine>> {
        let mut lines = Vec::new();
        for part in arrays.chunks(IDS_PER_CALL) {
            let mut args: Vec<String> = vec!["-h".into(), "-r".into()];
            if all_states {
                args.extend(["-t".into(), "all".into()]);
            }
            args.extend([
                "-j".into(),
                part.join(","),
                "-O".into(),
                query::SQUEUE_FORMAT.into(),
            ]);
            let out = self.tools.run("squeue", &args)?;
            if !out.ok {
                // Every id of the list purged (MinJobAge passed): squeue calls them invalid.
                if out.stderr.contains("Invalid job id") {
                    continue;
                }
                return Err(SchedError::Command {
                    command: format!("squeue {}", args.join(" ")),
                    message: out.stderr,
                });
            }
            lines.extend(query::parse_squeue(&out.stdout));
        }
        Ok(lines)
    }

    /// How a worker that left squeue ended: sacct where the site has accounting, else the
    /// jobcomp text log, else an honest "unknown" (never silently a success).
    fn classify_vanished(&self, id: &str) -> WorkerState {
        let record = if self.site.accounting {
            let args = ["-n", "-P", "-X", "-j", id, "-o", "JobID,State,ExitCode"].map(String::from);
            self.tools
                .run("sacct", &args)
                .ok()
                .and_then(|o| query::parse_sacct(&o.stdout, id))
        } else {
            None
        };
        let record = record.or_else(|| {
            let (array, task) = id.split_once('_')?;
            let text = read_tail(Path::new(self.site.jobcomp_log.as_deref()?), JOBCOMP_TAIL)?;
            query::parse_jobcomp(&text, array, task)
        });
        match record.map(|(state, status)| query::phase(&state, status, "")) {
            Some(Phase::Completed) => WorkerState::Exited,
            Some(Phase::Ended(r)) => WorkerState::Lost(format!("{r} [Slurm job {id}]")),
            _ => WorkerState::Lost(format!(
                "worker job {id} left the Slurm queue and no record says how it ended \
                 (finished jobs stay in squeue for MinJobAge={} s; this site has no sacct)",
                self.site.min_job_age.as_secs()
            )),
        }
    }

    fn scancel(&self, ids: &[String]) {
        for part in ids.chunks(IDS_PER_CALL) {
            // Errors are expected for elements that just ended; cancel_all confirms with squeue.
            let _ = self.tools.run("scancel", part);
        }
    }
}

fn read_tail(path: &Path, max: u64) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

impl Scheduler for SlurmScheduler {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn capacity(&self) -> usize {
        // Leave room in the controller's job table for everybody else.
        self.opts
            .max_workers
            .min((self.site.max_job_count / 2).max(1))
    }

    fn poll_interval(&self) -> Duration {
        self.opts.poll_interval
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()> {
        for tool in ["sbatch", "squeue", "scancel", "scontrol"] {
            if self.tools.find(tool).is_none() {
                return Err(SchedError::Missing {
                    what: format!("Slurm command {tool}"),
                    detail: "it is not on PATH".into(),
                    hint:
                        "run on a Slurm submit host, or load Slurm first (e.g. `module load slurm`)"
                            .into(),
                });
            }
        }
        if !spec.python.exists() {
            return Err(SchedError::Missing {
                what: "python_path".into(),
                detail: format!("{} does not exist", spec.python.display()),
                hint: "pass python_path= an interpreter on a shared filesystem that has shoal installed".into(),
            });
        }
        let config = self
            .tools
            .check("scontrol", &["show".into(), "config".into()])?;
        self.site = query::parse_config(&config.stdout);
        self.check_partition()?;
        // Let Slurm judge the rest (account, qos, gres, memory, cpus, raw sbatch_args)
        // without queueing anything.
        let script = self.write_script(spec)?;
        let mut args = script::sbatch_argv(spec, &self.opts, &script.display().to_string(), 1, 1);
        args.insert(0, "--test-only".into());
        self.tools.check("sbatch", &args).map_err(|e| match e {
            SchedError::Command { message, .. } => SchedError::Command {
                command: "sbatch --test-only".into(),
                message: format!("Slurm refuses the worker job: {message}\nhint: check partition=, account=, qos=, time=, memory=, cpus=, gres=/gpus= and sbatch_args="),
            },
            other => other,
        })?;
        Ok(())
    }

    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>> {
        let script = self.write_script(spec)?.display().to_string();
        let mut ids = Vec::with_capacity(n);
        for size in script::split_arrays(n, self.site.max_array_size) {
            let args = script::sbatch_argv(spec, &self.opts, &script, size, self.capacity());
            let out = self.tools.check("sbatch", &args)?;
            // --parsable prints "JOBID" or "JOBID;CLUSTER".
            let array = out
                .stdout
                .trim()
                .split(';')
                .next()
                .unwrap_or("")
                .to_string();
            if array.is_empty() || !array.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SchedError::Command {
                    command: "sbatch --parsable".into(),
                    message: format!(
                        "unexpected output {:?} (expected a job id)",
                        out.stdout.trim()
                    ),
                });
            }
            for task in 0..size {
                let id = format!("{array}_{task}");
                self.tracked.insert(
                    id.clone(),
                    Tracked {
                        array: array.clone(),
                        running: false,
                        missing: 0,
                    },
                );
                ids.push(id);
            }
            self.arrays.push(array.clone());
            self.open_arrays.insert(array);
        }
        Ok(ids)
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        if self.tracked.is_empty() {
            return Ok(Vec::new());
        }
        // At most one query per interval, however often the engine asks.
        if self
            .last_query
            .is_some_and(|t| t.elapsed() < self.opts.poll_interval)
        {
            return Ok(Vec::new());
        }
        self.last_query = Some(Instant::now());
        self.queries += 1;
        let arrays: Vec<String> = self
            .tracked
            .values()
            .map(|t| t.array.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let lines: BTreeMap<String, query::JobLine> = self
            .query(&arrays, true)?
            .into_iter()
            .map(|l| (l.id.clone(), l))
            .collect();
        let mut events = Vec::new();
        // None: vanished from squeue, to be classified from the site's records.
        let mut ended: Vec<(String, Option<WorkerState>)> = Vec::new();
        let mut stuck = Vec::new();
        for (id, t) in self.tracked.iter_mut() {
            let Some(line) = lines.get(id) else {
                // Seen missing twice in a row: gone from the controller's memory.
                t.missing += 1;
                if t.missing >= 2 {
                    ended.push((id.clone(), None));
                }
                continue;
            };
            t.missing = 0;
            match query::phase(&line.state, line.status, &line.reason) {
                Phase::Pending => {}
                Phase::Running => {
                    if !t.running {
                        t.running = true;
                        events.push(WorkerEvent {
                            worker: id.clone(),
                            state: WorkerState::Running,
                        });
                    }
                }
                Phase::Completed => ended.push((id.clone(), Some(WorkerState::Exited))),
                Phase::Ended(r) => ended.push((
                    id.clone(),
                    Some(WorkerState::Lost(format!("{r} [Slurm job {id}]"))),
                )),
                Phase::Stuck(r) => {
                    stuck.push(id.clone());
                    ended.push((
                        id.clone(),
                        Some(WorkerState::Lost(format!("{r} [Slurm job {id}]"))),
                    ));
                }
            }
        }
        if !stuck.is_empty() {
            self.scancel(&stuck);
        }
        for (id, state) in ended {
            let state = state.unwrap_or_else(|| self.classify_vanished(&id));
            self.tracked.remove(&id);
            events.push(WorkerEvent { worker: id, state });
        }
        let live: BTreeSet<&String> = self.tracked.values().map(|t| &t.array).collect();
        let stuck_arrays: BTreeSet<String> = stuck
            .iter()
            .filter_map(|s| s.split('_').next())
            .map(String::from)
            .collect();
        self.open_arrays
            .retain(|a| live.contains(a) || stuck_arrays.contains(a));
        Ok(events)
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        let ids: Vec<String> = workers
            .iter()
            .filter(|w| self.tracked.remove(*w).is_some())
            .cloned()
            .collect();
        // The array stays open until cancel_all has confirmed the elements are gone.
        self.scancel(&ids);
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        self.tracked.clear();
        let arrays: Vec<String> = std::mem::take(&mut self.open_arrays).into_iter().collect();
        if arrays.is_empty() {
            return Ok(());
        }
        self.scancel(&arrays);
        let deadline = Instant::now() + CANCEL_CONFIRM;
        loop {
            // Default states only: what a user's squeue shows (pending, running, completing).
            let left = match self.query(&arrays, false) {
                Ok(l) => l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => {
                    self.open_arrays.extend(arrays);
                    return Err(e);
                }
            };
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let ids: Vec<String> = left
                    .iter()
                    .map(|l| format!("{} ({})", l.id, l.state))
                    .collect();
                self.open_arrays.extend(arrays);
                return Err(SchedError::Command {
                    command: "scancel".into(),
                    message: format!(
                        "Slurm jobs still in the queue after cancelling: {}",
                        ids.join(", ")
                    ),
                });
            }
            // Elements still queued or running did not get the message: ask again for those.
            let again: Vec<String> = left
                .iter()
                .filter(|l| l.state != "CG")
                .map(|l| l.id.clone())
                .collect();
            if !again.is_empty() {
                self.scancel(&again);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn job_ids(&self) -> Vec<String> {
        self.arrays.clone()
    }
}

impl Drop for SlurmScheduler {
    fn drop(&mut self) {
        let _ = self.cancel_all();
    }
}

#[cfg(test)]
mod tests;

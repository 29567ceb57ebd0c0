//! The array-job backends: one generic implementation of what every scheduler with job
//! arrays shares, over a small per-scheduler [`Adapter`] (Slurm, Grid Engine; PBS or LSF
//! would be another adapter).
//!
//! Generic here: the job script (environment, `SHOAL_WORKER_ID` from the array index, the
//! worker command, an exit record), one array per batch split by the site's array-size cap,
//! worker ids `bBATCH-INDEX`, at most one listing per poll interval for the session's own
//! jobs, state transitions (running, suspended, ended), elements that left the listing
//! (classified from accounting), requests that can never start (reported as
//! [`WorkerState::Unsatisfiable`] and cancelled), cancelling one element or everything with
//! confirmation, and the count of lost workers. The adapter only turns these into its
//! scheduler's commands and reads their answers.

use crate::error::{Result, SchedError};
use crate::runner::{Abort, CallStats, Runner};
use crate::supervisor::{Backend, Batch, IdScheme};
use crate::{LaunchSpec, WorkerEvent, WorkerState};
use shoal_core::fsutil::{create_private_dir, list_names, write_atomic};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ids per cancel/query call (command lines have limits).
pub const IDS_PER_CALL: usize = 500;
/// How long `cancel_all` waits for the scheduler to confirm the session's jobs are gone.
const CANCEL_CONFIRM: Duration = Duration::from_secs(30);
/// Queries in a row an element must be missing from before it counts as gone.
const MISSING_ROUNDS: u32 = 2;
/// How often exit records and announcements are looked at (no scheduler call) on a local
/// disk, and on a network filesystem, where each look is a directory listing on the server:
/// the driver's whole loop stays under 10 listings a second there (docs/protocol.md).
const TICK: Duration = Duration::from_millis(100);
const SHARED_TICK: Duration = Duration::from_secs(1);
/// Polls an element stays pending before asking whether it can ever start (the check is
/// about the request, not the load, so asking early is safe).
const STUCK_POLLS: u32 = 3;

/// Where one array element stands, as the adapter read it from the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// Queued; the scheduler's reason, if it gives one.
    Pending(String),
    Running,
    Suspended,
    Completed,
    /// Ended abnormally; the reason is for the user.
    Failed(String),
    /// Will never start as requested (the scheduler's explanation).
    Unsatisfiable(String),
    /// On its way out (cancelled, completing).
    Leaving,
}

/// One element of one listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub job: String,
    pub index: u64,
    pub element: Element,
}

/// What `cancel` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Element(String, u64),
    Job(String),
}

/// Limits the site sets on submissions, read in preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Most elements in one array.
    pub max_array: usize,
    /// Most elements (or jobs, as `per_job_cap` says) this user may still submit.
    pub max_workers: Option<usize>,
    /// Messages for the user about caps that shape the session.
    pub notes: Vec<String>,
}

impl Default for Site {
    fn default() -> Self {
        Site {
            max_array: usize::MAX,
            max_workers: None,
            notes: Vec::new(),
        }
    }
}

/// Settings every array backend has.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Most workers at once (the pool size).
    pub workers: usize,
    pub poll_interval: Duration,
    /// Workers lost before no more are submitted (None: no limit beyond the engine's own).
    pub max_lost_workers: Option<usize>,
    /// Worker processes per array element (`workers_per_job`; their ids end in `.K`).
    pub per_job: usize,
}

/// A program and its arguments.
pub type Call = (&'static str, Vec<String>);

/// A job's time limit as the worker is told it (docs/checkpoints.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walltime {
    /// Whole seconds the scheduler lets the job run (as it rounds them).
    pub seconds: u64,
    /// The option that set it, as the user should raise it (`time=0-00:01:00`).
    pub option: String,
}

impl Walltime {
    /// The job-script lines that tell the worker when its job ends: the limit, the start
    /// (taken when the script starts, the job's own start within a second), the option.
    pub fn script_lines(&self, display: &str) -> String {
        use crate::shell::sh_quote;
        format!(
            "SHOAL_WALLTIME_START=$(date +%s); export SHOAL_WALLTIME_START\n\
             SHOAL_WALLTIME={}; export SHOAL_WALLTIME\n\
             SHOAL_WALLTIME_OPTION={}; export SHOAL_WALLTIME_OPTION\n",
            self.seconds,
            sh_quote(&format!("{} ({display})", self.option))
        )
    }
}

/// What an adapter says about its scheduler, once.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    /// The backend's registry name (`slurm`).
    pub name: &'static str,
    /// How the scheduler is called in messages (`Slurm`).
    pub display: &'static str,
    /// Client programs that must be on PATH.
    pub tools: &'static [&'static str],
    /// What to tell a user whose client programs are missing.
    pub missing_hint: &'static str,
    /// The variable with the element's array index inside a job.
    pub index_var: &'static str,
    /// The first array index (Slurm 0, SGE 1).
    pub first_index: u64,
}

/// The per-scheduler part of an array backend.
pub trait Adapter: Send + 'static {
    fn info(&self) -> &'static Info;
    fn common(&self) -> &Common;
    /// Lines the scheduler reads from the script before its first command (`#SBATCH ...`).
    fn directives(&self) -> Vec<String> {
        Vec::new()
    }
    /// Environment written into the script besides the session's own (`LaunchSpec::env`).
    fn forwarded_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The time limit each job gets, if the options set one (the registry's `time_limit`
    /// options): the job script passes it to the worker, which stops in time.
    fn walltime(&self) -> Option<Walltime> {
        None
    }
    /// Check the environment and options, and read the site's limits; `script` exists.
    fn preflight(&mut self, run: &Runner, spec: &LaunchSpec, script: &Path) -> Result<Site>;
    /// The submission of one array of `n` elements (indices `first_index..`), at most
    /// `throttle` running at once; `tag` must be passed to the script as its argument.
    fn submit(
        &self,
        spec: &LaunchSpec,
        script: &Path,
        tag: &str,
        n: usize,
        throttle: usize,
    ) -> Call;
    /// The job id in the submission's output.
    fn job_id(&self, stdout: &str) -> Option<String>;
    /// After a submission of batch `tag` failed (a timeout may still have created the job):
    /// the job that submission created, if the scheduler lists one, so that the batch is
    /// adopted rather than submitted twice. None where the scheduler cannot tell.
    fn find_batch(&mut self, _run: &Runner, _spec: &LaunchSpec, _tag: &str) -> Option<String> {
        None
    }
    /// Every element of these jobs the scheduler still lists.
    fn query(&mut self, run: &Runner, jobs: &[String]) -> Result<Vec<Listed>>;
    /// The call that cancels `targets` (`force`: also those stuck on their way out).
    fn cancel(&self, targets: &[Target], force: bool) -> Call;
    /// How an element that left the listing ended (None: no record, or not yet).
    fn accounting(&mut self, run: &Runner, job: &str, index: u64) -> Option<Element>;
    /// How long accounting may lag behind the listing before "no record" is final.
    fn accounting_wait(&self) -> Duration {
        Duration::ZERO
    }
    /// What to say about an element that left without any record.
    fn no_record(&self, job: &str, index: u64) -> String;
    /// For a job whose elements stay pending: why it can never start, if that is so.
    fn never_starts(&mut self, _run: &Runner, _job: &str) -> Option<String> {
        None
    }
    /// The scheduler's name for one element (`123_4`, `123.4`), for messages and cancels.
    fn element_id(&self, job: &str, index: u64) -> String;
    /// Errors that go away by themselves (the controller busy or down, a per-user cap).
    fn transient(&self, e: &SchedError) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Pending,
    Running,
    Suspended,
}

#[derive(Debug, Clone)]
struct Tracked {
    job: String,
    index: u64,
    seen: Seen,
    missing: u32,
    /// When it was first missing from a listing.
    vanished: Option<Instant>,
    pending_polls: u32,
}

/// An array-job backend: everything generic, over adapter `A`.
pub struct ArrayBackend<A: Adapter> {
    adapter: A,
    run: Runner,
    site: Site,
    script: Option<PathBuf>,
    session: Option<shoal_core::SessionDir>,
    exit_dir: Option<PathBuf>,
    /// TICK or SHARED_TICK, by where the session dir is.
    tick: Duration,
    tracked: BTreeMap<String, Tracked>,
    /// Every job of the session, in submission order.
    jobs: Vec<String>,
    /// Jobs that may still have queued or running elements.
    open: BTreeSet<String>,
    /// Jobs already asked about never starting (once each).
    judged: BTreeSet<String>,
    last_query: Option<Instant>,
    lost: usize,
    last_loss: String,
    cancel_wait: Duration,
    /// Batches whose submission failed: before trying again, look for what it created.
    failed_batches: BTreeSet<String>,
    /// The worker shape it runs (`crate::shapes::prefix`): its job script is its own, since
    /// a shape's time limit is written into it.
    shape: String,
}

impl<A: Adapter> ArrayBackend<A> {
    pub fn new(adapter: A) -> Self {
        let run = Runner::new(adapter.info().missing_hint);
        ArrayBackend {
            adapter,
            run,
            site: Site::default(),
            script: None,
            session: None,
            exit_dir: None,
            tick: TICK,
            tracked: BTreeMap::new(),
            jobs: Vec::new(),
            open: BTreeSet::new(),
            judged: BTreeSet::new(),
            last_query: None,
            lost: 0,
            last_loss: String::new(),
            cancel_wait: CANCEL_CONFIRM,
            failed_batches: BTreeSet::new(),
            shape: String::new(),
        }
    }

    /// How long `cancel_all` waits for the scheduler to confirm (tests shorten it).
    pub fn with_cancel_wait(mut self, wait: Duration) -> Self {
        self.cancel_wait = wait;
        self
    }

    fn per_job(&self) -> usize {
        self.adapter.common().per_job.max(1)
    }

    /// Workers lost so far (counted against `max_lost_workers`).
    pub fn lost(&self) -> usize {
        self.lost
    }

    /// Use the client programs in `dir` instead of PATH (fault-injection tests).
    pub fn with_tools(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run = self.run.clone().in_dir(dir);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.run = self.run.clone().with_timeout(timeout);
        self
    }

    pub fn adapter(&self) -> &A {
        &self.adapter
    }

    pub fn site(&self) -> &Site {
        &self.site
    }

    pub fn runner(&self) -> &Runner {
        &self.run
    }

    /// The job script every element runs (the same for all arrays of a session; the batch
    /// tag is its first argument).
    pub fn script_text(&self, spec: &LaunchSpec, exit_dir: &Path) -> Result<String> {
        use crate::shell::sh_quote;
        let mut s = String::from("#!/bin/sh\n");
        s.push_str(&format!(
            "# shoal worker of session {} (written by shoal; each array element is one worker)\n",
            spec.session.id()
        ));
        for d in self.adapter.directives() {
            s.push_str(&d);
            s.push('\n');
        }
        // Written into the script (not only the submission's environment) so they hold
        // whatever the scheduler forwards and whatever a site profile resets.
        let mut env = self.adapter.forwarded_env();
        env.extend(spec.env.iter().cloned());
        for (k, v) in &env {
            if !crate::options::valid_env_name(k, false) {
                return Err(SchedError::Core(shoal_core::CoreError::invalid(
                    "env",
                    k,
                    "environment variable names are letters, digits and '_'",
                )));
            }
            s.push_str(&format!("{k}={}; export {k}\n", sh_quote(v)));
        }
        s.push_str(&format!(
            "SHOAL_WORKER_ID=\"$1-${}\"; export SHOAL_WORKER_ID\n",
            self.adapter.info().index_var
        ));
        if spec.connect.is_some() {
            // TCP: the job's own output (--output is /dev/null: a path the nodes cannot see
            // fails the launch) goes beside the worker's streamed logs where the node sees the
            // session dir, so a worker that dies before it connects still says why.
            use shoal_core::layout::{job_log_name, Stream};
            let logs = sh_quote(&spec.session.sub("logs").display().to_string());
            let out = job_log_name("$SHOAL_WORKER_ID", Stream::Stdout);
            let err = job_log_name("$SHOAL_WORKER_ID", Stream::Stderr);
            s.push_str(&format!(
                "if [ -d {logs} ]; then exec >>{logs}/\"{out}\" 2>>{logs}/\"{err}\"; fi\n"
            ));
        }
        if let Some(w) = self.adapter.walltime() {
            s.push_str(&w.script_lines(self.adapter.info().display));
        }
        let argv: Vec<String> = spec.worker_argv(None).iter().map(|a| sh_quote(a)).collect();
        let argv = argv.join(" ");
        // The exit status where the driver looks for it: a normal end is known at once,
        // without a query.
        let exit = sh_quote(&exit_dir.display().to_string());
        let record = format!(
            "printf '%s\\n' \"$rc\" > {exit}/.\"$SHOAL_WORKER_ID\" && mv -f {exit}/.\"$SHOAL_WORKER_ID\" {exit}/\"$SHOAL_WORKER_ID\"\n"
        );
        // A preemption (or the time limit) sends SIGTERM to the script, and on some sites to
        // every process of the job; SGE's -notify sends SIGUSR1 before it suspends the job
        // and SIGUSR2 before it kills it. The script passes each on to the workers as SIGTERM
        // (they give their work back, docs/checkpoints.md) and waits on to record each
        // worker's own exit.
        let wait = "while :; do wait \"$pid\"; rc=$?; [ \"$rc\" -gt 128 ] && kill -0 \"$pid\" 2>/dev/null || break; done\n";
        let per_job = self.per_job();
        if per_job == 1 {
            s.push_str(&argv);
            s.push_str(" &\npid=$!\ntrap 'kill -TERM \"$pid\" 2>/dev/null' TERM USR1 USR2\n");
            s.push_str(wait);
            s.push_str(&record);
            s.push_str("exit $rc\n");
            return Ok(s);
        }
        // workers_per_job: N workers `ELEMENT.K`, each with its own log files (on TCP each
        // streams its output to the driver instead: the nodes cannot see the session dir).
        let logs = sh_quote(&spec.session.sub("logs").display().to_string());
        let redirect = match spec.connect {
            Some(_) => String::new(),
            None => {
                format!(" >>{logs}/\"$SHOAL_WORKER_ID.out\" 2>>{logs}/\"$SHOAL_WORKER_ID.err\"")
            }
        };
        s.push_str("element=$SHOAL_WORKER_ID; pids=\nk=0\n");
        s.push_str(&format!("while [ $k -lt {per_job} ]; do\n"));
        s.push_str("  SHOAL_WORKER_ID=\"$element.$k\"; export SHOAL_WORKER_ID\n");
        s.push_str(&format!("  {argv}{redirect} &\n"));
        s.push_str("  pids=\"$pids $!\"; k=$((k + 1))\ndone\n");
        s.push_str("trap 'kill -TERM $pids 2>/dev/null' TERM USR1 USR2\n");
        s.push_str("k=0; worst=0\nfor pid in $pids; do\n");
        s.push_str(&format!("  {wait}"));
        s.push_str("  SHOAL_WORKER_ID=\"$element.$k\"\n");
        s.push_str(&format!("  {record}"));
        s.push_str("  [ \"$rc\" -ne 0 ] && worst=$rc; k=$((k + 1))\ndone\n");
        s.push_str("exit $worst\n");
        Ok(s)
    }

    fn track_loss(&mut self, state: &WorkerState) {
        if let WorkerState::Lost(r) = state {
            self.lost += 1;
            self.last_loss = r.clone();
        }
    }

    /// Workers whose script recorded an exit status since the last look.
    fn read_exit_records(&mut self, events: &mut Vec<WorkerEvent>) {
        let Some(dir) = self.exit_dir.clone() else {
            return;
        };
        let Ok(names) = list_names(&dir) else { return };
        for name in names {
            if name.starts_with('.') {
                continue;
            }
            let path = dir.join(&name);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let _ = std::fs::remove_file(&path);
            let Some(t) = self.tracked.remove(&name) else {
                continue; // cancelled by us: already accounted for
            };
            let job = self.adapter.element_id(&t.job, t.index);
            let state = match text.trim().parse::<i32>() {
                Ok(0) => WorkerState::Exited,
                Ok(code) if code > 128 => WorkerState::Lost(format!(
                    "worker exited with code {code} (signal {}) [{} job {job}]",
                    code - 128,
                    self.adapter.info().display
                )),
                Ok(code) => WorkerState::Lost(format!(
                    "worker exited with code {code} [{} job {job}]",
                    self.adapter.info().display
                )),
                Err(_) => WorkerState::Lost(format!(
                    "worker left an unreadable exit record {text:?} [{} job {job}]",
                    self.adapter.info().display
                )),
            };
            self.track_loss(&state);
            events.push(WorkerEvent {
                worker: name,
                state,
            });
        }
    }

    /// Workers that announced themselves in the session dir are running, whatever the last
    /// listing said: seen at once, without a query.
    fn read_announcements(&mut self, events: &mut Vec<WorkerEvent>) {
        if !self.tracked.values().any(|t| t.seen == Seen::Pending) {
            return;
        }
        let Some(session) = &self.session else {
            return;
        };
        let announced = session.announced_ids();
        for (id, t) in self.tracked.iter_mut() {
            if t.seen == Seen::Pending && announced.contains(id) {
                t.seen = Seen::Running;
                events.push(WorkerEvent {
                    worker: id.clone(),
                    state: WorkerState::Running,
                });
            }
        }
    }

    fn cancel_targets(&self, targets: Vec<Target>, force: bool) -> Result<()> {
        for part in targets.chunks(IDS_PER_CALL) {
            let (program, args) = self.adapter.cancel(part, force);
            let out = self.run.run(program, &args)?;
            // A failure is expected for elements that just ended; cancel_all confirms.
            let _ = out;
        }
        Ok(())
    }

    fn query(&mut self, jobs: &[String]) -> Result<Vec<Listed>> {
        let mut all = Vec::new();
        for part in jobs.chunks(IDS_PER_CALL) {
            all.extend(self.adapter.query(&self.run, part)?);
        }
        Ok(all)
    }

    fn lose(&mut self, id: &str, t: &Tracked, reason: &str, events: &mut Vec<WorkerEvent>) {
        let state = WorkerState::Lost(format!(
            "{reason} [{} job {}]",
            self.adapter.info().display,
            self.adapter.element_id(&t.job, t.index)
        ));
        self.track_loss(&state);
        events.push(WorkerEvent {
            worker: id.to_string(),
            state,
        });
    }

    /// One listing, turned into worker events.
    fn watch(&mut self, events: &mut Vec<WorkerEvent>) -> Result<()> {
        let jobs: Vec<String> = self.open.iter().cloned().collect();
        let listing = self.query(&jobs)?;
        // Exit records written while the query ran belong to elements it may already miss.
        self.read_exit_records(events);
        let by_element: BTreeMap<(&str, u64), &Element> = listing
            .iter()
            .map(|l| ((l.job.as_str(), l.index), &l.element))
            .collect();
        let mut ended: Vec<(String, Option<Element>)> = Vec::new();
        let mut unsatisfiable: BTreeMap<String, String> = BTreeMap::new();
        let mut stuck_jobs: BTreeSet<String> = BTreeSet::new();
        for (id, t) in self.tracked.iter_mut() {
            let Some(element) = by_element.get(&(t.job.as_str(), t.index)) else {
                t.missing += 1;
                t.vanished.get_or_insert_with(Instant::now);
                if t.missing >= MISSING_ROUNDS {
                    ended.push((id.clone(), None));
                }
                continue;
            };
            t.missing = 0;
            t.vanished = None;
            let next = match element {
                Element::Pending(_) => {
                    t.pending_polls += 1;
                    if t.pending_polls >= STUCK_POLLS {
                        stuck_jobs.insert(t.job.clone());
                    }
                    None
                }
                Element::Running => Some(Seen::Running),
                Element::Leaving => None,
                Element::Suspended => Some(Seen::Suspended),
                Element::Completed | Element::Failed(_) => {
                    ended.push((id.clone(), Some((*element).clone())));
                    None
                }
                Element::Unsatisfiable(r) => {
                    unsatisfiable.insert(t.job.clone(), r.clone());
                    None
                }
            };
            if let Some(seen) = next {
                if seen != t.seen {
                    t.seen = seen;
                    events.push(WorkerEvent {
                        worker: id.clone(),
                        state: match seen {
                            Seen::Suspended => WorkerState::Suspended,
                            _ => WorkerState::Running,
                        },
                    });
                }
            }
        }
        // Jobs whose elements never left the queue: can they ever start? (asked once each)
        for job in stuck_jobs {
            if unsatisfiable.contains_key(&job) || !self.judged.insert(job.clone()) {
                continue;
            }
            if let Some(why) = self.adapter.never_starts(&self.run, &job) {
                unsatisfiable.insert(job, why);
            }
        }
        for (id, element) in ended {
            let Some(t) = self.tracked.remove(&id) else {
                continue;
            };
            let element = match element {
                Some(e) => Some(e),
                None => self.adapter.accounting(&self.run, &t.job, t.index),
            };
            match element {
                Some(Element::Completed) => events.push(WorkerEvent {
                    worker: id,
                    state: WorkerState::Exited,
                }),
                Some(Element::Failed(r)) => self.lose(&id, &t, &r, events),
                _ if t
                    .vanished
                    .is_some_and(|v| v.elapsed() < self.adapter.accounting_wait()) =>
                {
                    self.tracked.insert(id, t); // ask accounting again next time
                }
                _ => {
                    let why = self.adapter.no_record(&t.job, t.index);
                    self.lose(&id, &t, &why, events);
                }
            }
        }
        if !unsatisfiable.is_empty() {
            let targets = unsatisfiable.keys().cloned().map(Target::Job).collect();
            let _ = self.cancel_targets(targets, false);
            let ids: Vec<(String, String)> = self
                .tracked
                .iter()
                .filter_map(|(id, t)| unsatisfiable.get(&t.job).map(|r| (id.clone(), r.clone())))
                .collect();
            for (id, reason) in ids {
                self.tracked.remove(&id);
                events.push(WorkerEvent {
                    worker: id,
                    state: WorkerState::Unsatisfiable(reason),
                });
            }
        }
        let live: BTreeSet<&String> = self.tracked.values().map(|t| &t.job).collect();
        let listed: BTreeSet<&str> = listing.iter().map(|l| l.job.as_str()).collect();
        self.open
            .retain(|j| live.contains(j) || listed.contains(j.as_str()));
        Ok(())
    }
}

impl<A: Adapter> Backend for ArrayBackend<A> {
    fn name(&self) -> &'static str {
        self.adapter.info().name
    }

    fn capacity(&self) -> usize {
        let c = self.adapter.common().workers;
        match self.site.max_workers {
            Some(m) => c.min(m.max(1)),
            None => c,
        }
    }

    fn poll_interval(&self) -> Duration {
        self.adapter.common().poll_interval
    }

    /// Exit records and announcements are files: look often; listings stay rate-limited.
    fn tick(&self) -> Duration {
        self.tick
    }

    fn max_batch(&self) -> usize {
        self.site.max_array.max(1).saturating_mul(self.per_job())
    }

    fn ids(&self) -> IdScheme {
        IdScheme::Array {
            first_index: self.adapter.info().first_index,
            per_job: self.per_job() as u64,
        }
    }

    fn for_shape(&mut self, prefix: &str) {
        self.shape = prefix.to_string();
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<Vec<String>> {
        for tool in self.adapter.info().tools {
            if self.run.find(tool).is_none() {
                return Err(SchedError::Missing {
                    what: format!("{} command {tool}", self.adapter.info().display),
                    detail: "it is not on PATH".into(),
                    hint: self.adapter.info().missing_hint.into(),
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
        let exit_dir = spec.session.sub("exit");
        create_private_dir(&exit_dir)?;
        let shape = match self.shape.as_str() {
            "" => String::new(),
            s => format!("-{s}"),
        };
        let script = spec
            .session
            .sub(&format!("{}-worker{shape}.sh", self.adapter.info().name));
        write_atomic(&script, &[self.script_text(spec, &exit_dir)?.as_bytes()])?;
        self.tick = if shoal_core::fskind::detect(spec.session.root()).is_network() {
            SHARED_TICK
        } else {
            TICK
        };
        self.exit_dir = Some(exit_dir);
        self.session = Some(spec.session.clone());
        self.script = Some(script.clone());
        self.site = self.adapter.preflight(&self.run, spec, &script)?;
        Ok(std::mem::take(&mut self.site.notes))
    }

    fn submit(&mut self, spec: &LaunchSpec, batch: &Batch) -> Result<()> {
        if batch.ids.is_empty() {
            return Ok(());
        }
        if let Some(max) = self.adapter.common().max_lost_workers {
            if self.lost > max {
                return Err(SchedError::Config(format!(
                    "{} workers of this session were lost, more than max_lost_workers={max}; not submitting more. Last: {}",
                    self.lost, self.last_loss
                )));
            }
        }
        let Some(script) = self.script.clone() else {
            return Err(SchedError::Config(format!(
                "{} backend: submit before preflight",
                self.adapter.info().name
            )));
        };
        let per_job = self.per_job();
        let n = batch.ids.len().div_ceil(per_job);
        let tag = batch.tag();
        // A submission that timed out may have been carried out all the same: adopt its job.
        let found = if self.failed_batches.contains(&tag) {
            self.adapter.find_batch(&self.run, spec, &tag)
        } else {
            None
        };
        let job = match found {
            Some(job) => job,
            None => {
                let throttle = self.capacity().div_ceil(per_job);
                let (program, args) = self.adapter.submit(spec, &script, &tag, n, n.min(throttle));
                // A TCP session's token reaches the job through the submission's forwarded
                // environment, never through the script file.
                let run = self.run.with_env(spec.secret_env());
                let out = run.check(program, &args).inspect_err(|_| {
                    self.failed_batches.insert(tag.clone());
                })?;
                self.adapter.job_id(&out.stdout).ok_or_else(|| {
                    self.run.failed(
                        program,
                        &args,
                        &format!(
                            "unexpected output {:?} (expected a job id)",
                            out.stdout.trim()
                        ),
                    )
                })?
            }
        };
        self.failed_batches.remove(&tag);
        let first = self.adapter.info().first_index;
        for (k, id) in batch.ids.iter().enumerate() {
            self.tracked.insert(
                id.clone(),
                Tracked {
                    job: job.clone(),
                    index: first + (k / per_job) as u64,
                    seen: Seen::Pending,
                    missing: 0,
                    vanished: None,
                    pending_polls: 0,
                },
            );
        }
        self.jobs.push(job.clone());
        self.open.insert(job);
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        let mut events = Vec::new();
        // At most one listing per interval, however often we are asked.
        let query = !self.tracked.is_empty()
            && self
                .last_query
                .is_none_or(|t| t.elapsed() >= self.adapter.common().poll_interval);
        if !query {
            // A query reads the exit records itself, after it (one listing of `exit/`, not
            // two: on a network filesystem each is a round trip to the server).
            self.read_exit_records(&mut events);
        }
        self.read_announcements(&mut events);
        if !query {
            return Ok(events);
        }
        self.last_query = Some(Instant::now());
        match self.watch(&mut events) {
            // What the exit records said stands even when the listing failed this time.
            Err(e) if events.is_empty() => Err(e),
            _ => Ok(events),
        }
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        let elements: BTreeSet<(String, u64)> = workers
            .iter()
            .filter_map(|w| self.tracked.remove(w))
            .map(|t| (t.job, t.index))
            .collect();
        // An element is cancelled only once none of its workers is wanted: with
        // workers_per_job a sibling may be working (a fenced or given-back worker of a
        // running element exits by itself when it sees its fence).
        let targets: Vec<Target> = elements
            .into_iter()
            .filter(|(job, index)| {
                !self
                    .tracked
                    .values()
                    .any(|t| &t.job == job && t.index == *index)
            })
            .map(|(job, index)| Target::Element(job, index))
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        // The job stays open until cancel_all has confirmed its elements are gone.
        self.cancel_targets(targets, false)
    }

    fn cancel_all(&mut self) -> Result<()> {
        self.tracked.clear();
        let jobs: Vec<String> = std::mem::take(&mut self.open).into_iter().collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let restore = |me: &mut Self, jobs: Vec<String>| me.open.extend(jobs);
        if let Err(e) = self.cancel_targets(jobs.iter().cloned().map(Target::Job).collect(), false)
        {
            restore(self, jobs);
            return Err(e);
        }
        let start = Instant::now();
        let mut forced = false;
        let mut pause = Duration::from_millis(50);
        loop {
            // Ended elements may stay listed for a while (Slurm's MinJobAge): only those
            // still queued, running or on their way out count.
            let left = match self.query(&jobs) {
                Ok(mut l) => {
                    l.retain(|l| !matches!(l.element, Element::Completed | Element::Failed(_)));
                    l
                }
                Err(_) if start.elapsed() < self.cancel_wait => {
                    std::thread::sleep(Duration::from_millis(300));
                    continue;
                }
                Err(e) => {
                    restore(self, jobs);
                    return Err(e);
                }
            };
            if left.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= self.cancel_wait {
                let ids: Vec<String> = left
                    .iter()
                    .map(|l| self.adapter.element_id(&l.job, l.index))
                    .collect();
                restore(self, jobs);
                return Err(SchedError::Command {
                    command: self.adapter.cancel(&[], false).0.to_string(),
                    message: format!(
                        "{} jobs still listed {} s after cancelling: {}",
                        self.adapter.info().display,
                        self.cancel_wait.as_secs(),
                        ids.join(", ")
                    ),
                });
            }
            // Elements still queued or running did not get the message: ask again for
            // those; after a third of the wait, force the ones stuck on their way out.
            let force = !forced && start.elapsed() > self.cancel_wait / 3;
            forced |= force;
            let again: Vec<Target> = left
                .iter()
                .filter(|l| force || l.element != Element::Leaving)
                .map(|l| Target::Element(l.job.clone(), l.index))
                .collect();
            if !again.is_empty() {
                let _ = self.cancel_targets(again, force);
            }
            // Most jobs leave within a few hundred milliseconds of the cancel (an idle
            // worker exits at once on SIGTERM): look again soon, then every 200 ms.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn job_ids(&self) -> Vec<String> {
        self.jobs
            .iter()
            .filter(|j| self.open.contains(*j))
            .cloned()
            .collect()
    }

    fn job_of(&self, worker: &str) -> Option<String> {
        let t = self.tracked.get(worker)?;
        Some(self.adapter.element_id(&t.job, t.index))
    }

    fn transient(&self, e: &SchedError) -> bool {
        crate::supervisor::generic_transient(e) || self.adapter.transient(e)
    }

    fn abort_handle(&self) -> Option<Arc<Abort>> {
        Some(self.run.abort_handle())
    }

    fn calls(&self) -> BTreeMap<String, CallStats> {
        self.run.stats()
    }
}

impl<A: Adapter> Drop for ArrayBackend<A> {
    fn drop(&mut self) {
        let _ = Backend::cancel_all(self);
    }
}

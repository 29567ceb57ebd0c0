//! The Grid Engine adapter of the generic array backend: workers are array tasks of
//! `qsub -t 1-N` jobs, watched with one `qstat -xml` per poll interval and stopped with
//! `qdel`.
//!
//! A worker's id is `bBATCH-TASK` (`SHOAL_WORKER_ID`, from `SGE_TASK_ID`). Tasks in error
//! state (`Eqw`) are reported with SGE's reason (`qstat -j`) and deleted; tasks that left
//! the queue without an exit record are classified from `qacct -j`; a job whose tasks stay
//! pending is checked with `qalter -w v`, and one no queue instance can ever run fails the
//! session with SGE's words.

mod options;
mod parse;

pub use options::{resources, SgeOptions, DEFAULT_FORWARD};
pub use parse::{qacct_records, qstat_listing, Accounting, TaskState};

use crate::array::{Adapter, ArrayBackend, Call, Common, Element, Info, Listed, Site, Target};
use crate::error::{Result, SchedError};
use crate::runner::Runner;
use crate::supervisor::says_any;
use crate::LaunchSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// How long a finished task may wait for its accounting record before it is reported lost.
const ACCOUNTING_WAIT: Duration = Duration::from_secs(60);

/// What SGE says when the qmaster is busy or unreachable, or a per-user cap is full.
const TRANSIENT: [&str; 12] = [
    "unable to contact qmaster",
    "commlib error",
    "failed receiving gdi request",
    "unable to send message to qmaster",
    "got send error",
    "can't connect",
    "jobs are allowed per user",
    "qmaster is busy",
    "connection refused",
    "timed out",
    "unable to connect",
    // qsub reads the session's own job script: as for sbatch, only a stalled work-dir
    // filesystem keeps it from doing so.
    "unable to read script file",
];

const INFO: Info = Info {
    name: "sge",
    display: "SGE",
    tools: &["qsub", "qstat", "qdel"],
    missing_hint: "run on an SGE submit host with the client environment loaded \
                   (`. $SGE_ROOT/$SGE_CELL/common/settings.sh`)",
    index_var: "SGE_TASK_ID",
    first_index: 1,
};

pub struct Sge {
    opts: SgeOptions,
    common: Common,
    user: String,
    /// Job numbers of the session (the listing is of all the user's jobs).
    ours: BTreeSet<String>,
}

/// The Grid Engine backend: the generic array backend over this adapter.
pub type SgeBackend = ArrayBackend<Sge>;

pub fn backend(workers: usize, options: &serde_json::Value) -> Result<SgeBackend> {
    let opts = SgeOptions::parse(workers, options)?;
    let common = Common {
        workers,
        poll_interval: opts.poll_interval,
        max_lost_workers: Some(opts.max_lost_workers),
        per_job: opts.per_job,
    };
    Ok(ArrayBackend::new(Sge {
        opts,
        common,
        user: crate::current_user(),
        ours: BTreeSet::new(),
    }))
}

impl Sge {
    pub fn options(&self) -> &SgeOptions {
        &self.opts
    }

    /// The user's listed jobs (`qstat -xml -u USER`), by number.
    fn listing(&self, run: &Runner) -> Result<parse::Listing> {
        let args = vec!["-xml".to_string(), "-u".into(), self.user.clone()];
        let out = run.check("qstat", &args)?;
        parse::qstat_listing(&out.stdout).map_err(|m| run.failed("qstat", &args, &m))
    }

    /// max_aj_tasks and max_u_jobs, read ahead, with a message when one shapes the pool.
    fn limits(&self, run: &Runner) -> Site {
        let mut site = Site::default();
        let Some(conf) = run
            .run("qconf", &["-sconf".to_string()])
            .ok()
            .filter(|o| o.ok)
        else {
            return site;
        };
        let limits = parse::global_limits(&conf.stdout);
        let workers = self.common.workers;
        if let Some(n) = limits.max_aj_tasks {
            site.max_array = n;
            if n < workers {
                site.notes.push(format!(
                    "workers are submitted as array jobs of at most {n} tasks (SGE's max_aj_tasks={n})"
                ));
            }
        }
        if let Some(max_jobs) = limits.max_u_jobs {
            // Each array job counts once, however many tasks it has.
            let current = self
                .listing(run)
                .map(|l| l.keys().map(|k| k.0).collect::<BTreeSet<_>>().len())
                .unwrap_or(0);
            let room = max_jobs.saturating_sub(current).max(1);
            let cap = room.saturating_mul(site.max_array.min(workers));
            if cap < workers {
                site.max_workers = Some(cap);
                site.notes.push(format!(
                    "the pool runs at most {cap} workers instead of {workers}: SGE's max_u_jobs={max_jobs} \
                     allows {room} more job(s) for {} ({current} queued now)",
                    self.user
                ));
            }
        }
        site
    }

    /// Tasks in error state: SGE's reason per task (`qstat -j JOB -xml`), then delete them.
    fn errors(&self, run: &Runner, keys: &[(u64, u64)]) -> BTreeMap<(u64, u64), String> {
        let jobs: BTreeSet<u64> = keys.iter().map(|k| k.0).collect();
        let mut reasons: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
        for job in jobs {
            let args = vec!["-j".to_string(), job.to_string(), "-xml".into()];
            if let Ok(out) = run.run("qstat", &args) {
                if let Ok(r) = parse::error_reasons(&out.stdout) {
                    reasons.insert(job, r);
                }
            }
        }
        let targets: Vec<String> = keys.iter().map(|(j, t)| format!("{j}.{t}")).collect();
        let _ = run.run("qdel", &targets);
        keys.iter()
            .map(|&(job, task)| {
                let why = reasons
                    .get(&job)
                    .and_then(|r| r.get(&task).or_else(|| r.get(&0)))
                    .cloned()
                    .unwrap_or_else(|| "SGE gave no reason (see `qstat -j JOB`)".into());
                (
                    (job, task),
                    format!("SGE job went into error state (Eqw): {why}; the task was deleted"),
                )
            })
            .collect()
    }
}

impl Adapter for Sge {
    fn info(&self) -> &'static Info {
        &INFO
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn forwarded_env(&self) -> Vec<(String, String)> {
        self.opts.forwarded()
    }

    fn walltime(&self) -> Option<crate::array::Walltime> {
        let (_, value) = self.opts.resources.iter().find(|(n, _)| n == "h_rt")?;
        let t = shoal_core::units::TimeLimit::parse("h_rt", value).ok()?;
        Some(crate::array::Walltime {
            seconds: t.0.as_secs().max(1),
            option: format!("h_rt={value}"),
        })
    }

    fn preflight(&mut self, run: &Runner, spec: &LaunchSpec, script: &Path) -> Result<Site> {
        if run.bin_dir().is_none() && std::env::var_os("SGE_ROOT").is_none() {
            return Err(SchedError::Missing {
                what: "SGE_ROOT".into(),
                detail: "the Grid Engine client environment is not set".into(),
                hint: "load it first (`. $SGE_ROOT/$SGE_CELL/common/settings.sh`, or your site's `module load sge`)"
                    .into(),
            });
        }
        let wanted = self.opts.queue_names();
        // Where qconf is not available to users, `qsub -w v` below still rejects the queue.
        let known = if wanted.is_empty() || run.find("qconf").is_none() {
            None
        } else {
            run.run("qconf", &["-sql".to_string()])
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
        // `-w v` checks the request against the cluster (queue, PE, resources, project)
        // without submitting anything, and answers with SGE's own reason.
        let mut args = vec!["-w".to_string(), "v".into()];
        args.extend(self.opts.qsub_common(spec, "b0"));
        args.push(script.display().to_string());
        let out = run.run("qsub", &args)?;
        if !out.ok {
            let e = run.failed("qsub", &args, &out.message());
            if self.transient(&e) {
                return Err(e);
            }
            let message = out.message();
            let said: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != "Exiting.")
                .collect();
            return Err(SchedError::Config(format!(
                "SGE refuses the worker job: {}\n  request: qsub {}\nhint: check queue, pe/slots, resources, project and qsub_args",
                said.join("; "),
                self.opts.request().join(" ")
            )));
        }
        Ok(if run.find("qconf").is_some() {
            self.limits(run)
        } else {
            Site::default()
        })
    }

    fn submit(
        &self,
        spec: &LaunchSpec,
        script: &Path,
        tag: &str,
        n: usize,
        throttle: usize,
    ) -> Call {
        (
            "qsub",
            self.opts
                .qsub_array(spec, tag, n, throttle, &script.display().to_string()),
        )
    }

    fn job_id(&self, stdout: &str) -> Option<String> {
        parse::qsub_job_number(stdout).map(|n| n.to_string())
    }

    fn query(&mut self, run: &Runner, jobs: &[String]) -> Result<Vec<Listed>> {
        self.ours.extend(jobs.iter().cloned());
        let wanted: BTreeSet<&str> = jobs.iter().map(String::as_str).collect();
        let listing = self.listing(run)?;
        let errors: Vec<(u64, u64)> = listing
            .iter()
            .filter(|(k, s)| **s == TaskState::Error && wanted.contains(k.0.to_string().as_str()))
            .map(|(k, _)| *k)
            .collect();
        let reasons = if errors.is_empty() {
            BTreeMap::new()
        } else {
            self.errors(run, &errors)
        };
        Ok(listing
            .into_iter()
            .filter(|((job, _), _)| wanted.contains(job.to_string().as_str()))
            .map(|((job, task), state)| Listed {
                job: job.to_string(),
                index: task,
                element: match state {
                    TaskState::Pending => Element::Pending(String::new()),
                    TaskState::Running => Element::Running,
                    TaskState::Suspended => Element::Suspended,
                    TaskState::Deleting => Element::Leaving,
                    TaskState::Error => {
                        Element::Failed(reasons.get(&(job, task)).cloned().unwrap_or_default())
                    }
                },
            })
            .collect())
    }

    fn cancel(&self, targets: &[Target], force: bool) -> Call {
        let mut args: Vec<String> = Vec::new();
        if force {
            // Tasks stuck in `dr` (execd gone): force them out of the qmaster.
            args.push("-f".into());
        }
        args.extend(targets.iter().map(|t| match t {
            Target::Element(job, task) => format!("{job}.{task}"),
            Target::Job(job) => job.clone(),
        }));
        ("qdel", args)
    }

    fn accounting(&mut self, run: &Runner, job: &str, index: u64) -> Option<Element> {
        let out = run
            .run("qacct", &["-j".to_string(), job.to_string()])
            .ok()?;
        let records = parse::qacct_records(&out.stdout);
        let r = records.iter().rev().find(|r| r.task == index)?;
        Some(if r.ok() {
            Element::Completed
        } else {
            let guess = if r.explained() {
                ""
            } else {
                "; deleted with qdel, or its host failed"
            };
            Element::Failed(format!(
                "SGE job ended without finishing its worker: {} (qacct){guess}",
                r.describe()
            ))
        })
    }

    fn accounting_wait(&self) -> Duration {
        ACCOUNTING_WAIT
    }

    fn no_record(&self, _job: &str, _index: u64) -> String {
        "SGE job left the queue without an exit status or accounting record".into()
    }

    /// `qalter -w v JOB` checks the pending job against the cluster as if it were empty.
    fn never_starts(&mut self, run: &Runner, job: &str) -> Option<String> {
        run.find("qalter")?;
        let out = run
            .run("qalter", &["-w".to_string(), "v".into(), job.to_string()])
            .ok()?;
        let why = parse::verification_failure(&format!("{}\n{}", out.stdout, out.stderr))?;
        Some(format!(
            "SGE will never start the worker jobs as requested: {why} (`qalter -w v {job}`)\n\
             hint: change the request (queue, pe/slots, resources, qsub_args) to what a queue offers (`qconf -sq all.q`, `qhost -F`)"
        ))
    }

    fn element_id(&self, job: &str, index: u64) -> String {
        format!("{job}.{index}")
    }

    fn transient(&self, e: &SchedError) -> bool {
        says_any(e, &TRANSIENT)
    }
}

#[cfg(test)]
mod tests;

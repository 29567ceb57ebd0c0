//! The Slurm adapter of the generic array backend: workers are elements of array jobs (one
//! `sbatch --array` per batch), watched with one `squeue` per poll interval limited to the
//! session's own arrays, cancelled as `ARRAYID_TASKID` (one worker) or `ARRAYID` (a whole
//! array), and classified from `sacct` or the jobcomp log once they leave the queue.
//!
//! A worker's id is `bBATCH-TASKID` (`SHOAL_WORKER_ID`, set by the job script from
//! `SLURM_ARRAY_TASK_ID`); Slurm writes its output straight to `logs/bBATCH-TASKID.out|err`.

pub mod options;
pub mod query;
pub mod submit;

use crate::array::{
    Adapter, ArrayBackend, Call, Common, Element, Info, Listed, Site, Target, Walltime,
};
use crate::error::{Result, SchedError};
use crate::runner::Runner;
use crate::supervisor::says_any;
use crate::LaunchSpec;
pub use options::SlurmOptions;
use query::SiteConfig;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes of the jobcomp text log searched for a vanished job (its end is recent).
const JOBCOMP_TAIL: u64 = 8 << 20;

/// What Slurm says when it is busy or unreachable, or a per-user cap is full for now.
const TRANSIENT: [&str; 14] = [
    "Socket timed out",
    "Unable to contact slurm controller",
    "Connection refused",
    "temporarily unable",
    "Resource temporarily unavailable",
    "Zero Bytes were transmitted",
    "Communication connection failure",
    "Transport endpoint is not connected",
    "QOSMaxSubmitJobPerUserLimit",
    "AssocMaxSubmitJobLimit",
    "MaxSubmitJobs",
    "job submit limit",
    "slurm_persist_conn_open",
    // sbatch reads the session's own job script, written before the first submit: it cannot
    // open it only while the work dir's filesystem stalls (an NFS or GlusterFS server gone
    // quiet), which passes; a session dir removed by hand ends as hopeless retries do.
    "Unable to open file",
];

const INFO: Info = Info {
    name: "slurm",
    display: "Slurm",
    tools: &["sbatch", "squeue", "scancel", "scontrol"],
    missing_hint: "run on a Slurm submit host, or load Slurm first (e.g. `module load slurm`)",
    index_var: "SLURM_ARRAY_TASK_ID",
    first_index: 0,
};

pub struct Slurm {
    opts: SlurmOptions,
    common: Common,
    config: SiteConfig,
    user: String,
}

/// The Slurm backend: the generic array backend over this adapter.
pub type SlurmBackend = ArrayBackend<Slurm>;

pub fn backend(workers: usize, options: &serde_json::Value) -> Result<SlurmBackend> {
    let opts = SlurmOptions::from_json(workers, options)?;
    let common = Common {
        workers: opts.max_workers,
        poll_interval: opts.poll_interval,
        max_lost_workers: None,
        per_job: opts.per_job,
    };
    Ok(ArrayBackend::new(Slurm {
        opts,
        common,
        config: SiteConfig::default(),
        user: crate::current_user(),
    }))
}

impl Slurm {
    pub fn options(&self) -> &SlurmOptions {
        &self.opts
    }

    pub fn config(&self) -> &SiteConfig {
        &self.config
    }

    fn check_partition(&self, run: &Runner) -> Result<()> {
        let out = run.check(
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

    /// The site's caps on what this user may submit, with a message when one shapes the pool.
    fn limits(&self, run: &Runner) -> Site {
        let mut site = Site {
            max_array: self.config.max_array_size.max(1),
            ..Site::default()
        };
        // Leave room in the controller's job table for everybody else.
        let mut cap = (self.config.max_job_count / 2).max(1);
        let mut why = format!(
            "half of the controller's MaxJobCount={}",
            self.config.max_job_count
        );
        // MaxSubmitJobs lives in the accounting associations and QOS (sites with slurmdbd).
        if self.config.accounting {
            let args = [
                "show".to_string(),
                "assoc_mgr".into(),
                format!("users={}", self.user),
                "flags=assoc,qos".into(),
            ];
            if let Some((room, limit)) = run
                .run("scontrol", &args)
                .ok()
                .filter(|o| o.ok)
                .and_then(|o| query::submit_room(&o.stdout))
            {
                if room < cap {
                    cap = room;
                    why = format!("Slurm's {limit} for user {}", self.user);
                }
            }
        }
        let workers = self.common.workers;
        if cap < workers {
            site.notes.push(format!(
                "the pool runs at most {} workers instead of {workers}: {why}",
                cap.max(1)
            ));
            site.max_workers = Some(cap);
        }
        if site.max_array < workers.min(cap) {
            site.notes.push(format!(
                "workers are submitted as arrays of at most {} elements (MaxArraySize={})",
                site.max_array, self.config.max_array_size
            ));
        }
        site
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

impl Adapter for Slurm {
    fn info(&self) -> &'static Info {
        &INFO
    }

    fn common(&self) -> &Common {
        &self.common
    }

    fn walltime(&self) -> Option<Walltime> {
        // Slurm keeps limits in whole minutes, rounded up.
        let t = self.opts.time?;
        let seconds = t.0.as_secs().div_ceil(60).max(1) * 60;
        Some(Walltime {
            seconds,
            option: format!("time={}", t.to_slurm()),
        })
    }

    fn directives(&self) -> Vec<String> {
        submit::directives(&self.opts)
    }

    fn preflight(&mut self, run: &Runner, spec: &LaunchSpec, script: &Path) -> Result<Site> {
        let config = run.check("scontrol", &["show".into(), "config".into()])?;
        self.config = query::parse_config(&config.stdout);
        self.check_partition(run)?;
        // Let Slurm judge the rest (account, qos, gres, memory, cpus, raw sbatch_args)
        // without queueing anything.
        let script = script.display().to_string();
        let mut args = submit::sbatch_argv(spec, &self.opts, &script, "b0", 1, 1);
        args.insert(0, "--test-only".into());
        if let Err(e) = run.check("sbatch", &args) {
            if self.transient(&e) {
                return Err(e);
            }
            let message = match e {
                SchedError::Command { message, .. } => message,
                other => return Err(other),
            };
            return Err(SchedError::Command {
                command: "sbatch --test-only".into(),
                message: format!("Slurm refuses the worker job: {message}\nhint: check partition=, account=, qos=, time=, memory=, cpus=, gres=/gpus=, constraint= and sbatch_args="),
            });
        }
        Ok(self.limits(run))
    }

    fn submit(
        &self,
        spec: &LaunchSpec,
        script: &Path,
        tag: &str,
        n: usize,
        throttle: usize,
    ) -> Call {
        let script = script.display().to_string();
        (
            "sbatch",
            submit::sbatch_argv(spec, &self.opts, &script, tag, n, throttle),
        )
    }

    fn job_id(&self, stdout: &str) -> Option<String> {
        // --parsable prints "JOBID" or "JOBID;CLUSTER".
        let id = stdout.trim().split(';').next()?.to_string();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
    }

    /// The array whose stdout path is this session's batch (see `submit::batch_stdout`).
    fn find_batch(&mut self, run: &Runner, spec: &LaunchSpec, tag: &str) -> Option<String> {
        let want = submit::batch_stdout(spec, tag);
        let args: Vec<String> = ["-h", "--me", "-t", "all", "-O", "ArrayJobID:|,STDOUT:|"]
            .map(String::from)
            .to_vec();
        let out = run.run("squeue", &args).ok().filter(|o| o.ok)?;
        out.stdout.lines().find_map(|line| {
            let mut f = line.trim().split('|');
            let (job, stdout) = (f.next()?.trim(), f.next()?.trim());
            (stdout == want && !job.is_empty()).then(|| job.to_string())
        })
    }

    /// `squeue` for the session's own arrays; every state, so finished elements are seen
    /// too (for MinJobAge).
    fn query(&mut self, run: &Runner, jobs: &[String]) -> Result<Vec<Listed>> {
        let args: Vec<String> = vec![
            "-h".into(),
            "-r".into(),
            "-t".into(),
            "all".into(),
            "-j".into(),
            jobs.join(","),
            "-O".into(),
            query::SQUEUE_FORMAT.into(),
        ];
        let out = run.run("squeue", &args)?;
        if !out.ok {
            // Every id of the list purged (MinJobAge passed): squeue calls them invalid.
            if out.stderr.contains("Invalid job id") {
                return Ok(Vec::new());
            }
            return Err(run.failed("squeue", &args, &out.message()));
        }
        Ok(query::parse_squeue(&out.stdout)
            .into_iter()
            .filter_map(|l| {
                let (job, task) = l.id.split_once('_')?;
                Some(Listed {
                    job: job.to_string(),
                    index: task.parse().ok()?,
                    element: query::element(&l.state, l.status, &l.reason),
                })
            })
            .collect())
    }

    fn cancel(&self, targets: &[Target], _force: bool) -> Call {
        // Elements as ARRAYID_TASKID: the raw job id of an element is rejected by the
        // controller (or, for the last one, hits the whole array).
        let ids = targets
            .iter()
            .map(|t| match t {
                Target::Element(job, index) => format!("{job}_{index}"),
                Target::Job(job) => job.clone(),
            })
            .collect();
        ("scancel", ids)
    }

    /// sacct where the site has accounting, else the jobcomp text log.
    fn accounting(&mut self, run: &Runner, job: &str, index: u64) -> Option<Element> {
        let id = format!("{job}_{index}");
        let record = if self.config.accounting {
            let args =
                ["-n", "-P", "-X", "-j", &id, "-o", "JobID,State,ExitCode"].map(String::from);
            run.run("sacct", &args)
                .ok()
                .and_then(|o| query::parse_sacct(&o.stdout, &id))
        } else {
            None
        };
        let record = record.or_else(|| {
            let text = read_tail(Path::new(self.config.jobcomp_log.as_deref()?), JOBCOMP_TAIL)?;
            query::parse_jobcomp(&text, job, &index.to_string())
        });
        record.map(|(state, status)| query::element(&state, status, ""))
    }

    fn no_record(&self, _job: &str, _index: u64) -> String {
        format!(
            "worker job left the Slurm queue and no record says how it ended \
             (finished jobs stay in squeue for MinJobAge={} s; {})",
            self.config.min_job_age.as_secs(),
            if self.config.accounting {
                "sacct has no record either"
            } else {
                "this site has no sacct"
            }
        )
    }

    fn element_id(&self, job: &str, index: u64) -> String {
        format!("{job}_{index}")
    }

    fn transient(&self, e: &SchedError) -> bool {
        says_any(e, &TRANSIENT)
    }
}

#[cfg(test)]
mod tests;

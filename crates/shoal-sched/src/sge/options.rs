//! The SGE backend's options (Pool/Executor keywords), parsed once into types, and what they
//! become: the `qsub` arguments of a worker array and the worker job script. No I/O here.

use crate::error::{Result, SchedError};
use crate::options::{EnvChoice, Opts};
use crate::LaunchSpec;
use shoal_core::units::{MemSize, TimeLimit};
use std::time::Duration;

/// What the job gets of the driver's environment unless `forward_env` says otherwise: enough
/// to find the same interpreter and tools as the submit shell (SGE starts jobs with a bare
/// PATH, so `python` in a task would otherwise be the system's, or missing).
pub const DEFAULT_FORWARD: [&str; 5] = [
    "PATH",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
];

/// `-l` resources whose values are memory sizes (rendered in MB) or times (`H:MM:SS`).
const MEMORY: [&str; 11] = [
    "h_vmem",
    "s_vmem",
    "mem_free",
    "mem_req",
    "h_data",
    "s_data",
    "h_rss",
    "s_rss",
    "h_stack",
    "virtual_free",
    "h_fsize",
];
const TIMES: [&str; 4] = ["h_rt", "s_rt", "h_cpu", "s_cpu"];
/// qsub flags shoal sets itself: overriding them would break worker ids, logs or parsing.
const RESERVED: [&str; 8] = ["-t", "-tc", "-o", "-e", "-j", "-b", "-terse", "-sync"];

#[derive(Debug, Clone, PartialEq)]
pub struct SgeOptions {
    pub workers: usize,
    pub queue: Option<String>,
    /// Parallel environment and its slot count (`-pe NAME SLOTS`).
    pub pe: Option<(String, u32)>,
    /// `-l name=value` items, normalised (sizes in MB, times as `H:MM:SS`).
    pub resources: Vec<(String, String)>,
    pub project: Option<String>,
    pub job_name: String,
    pub qsub_args: Vec<String>,
    /// What the workers get of the driver's environment: everything (`-V`), nothing, or
    /// these variables (exported in the job script).
    pub forward_env: EnvChoice,
    pub poll_interval: Duration,
    /// Workers lost (killed, in error state, failed to start) before no more are submitted.
    pub max_lost_workers: usize,
    /// Worker processes per job (`workers_per_job`): the PE's slots are this many times
    /// `slots`.
    pub per_job: usize,
}

fn invalid(option: &str, value: &serde_json::Value, reason: &str) -> SchedError {
    let v = match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    SchedError::Core(shoal_core::CoreError::invalid(option, v, reason))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One `-l` item: the name is checked, memory and time values are parsed and normalised.
pub fn resource(name: &str, value: &str) -> Result<(String, String)> {
    let name = name.trim();
    let value = value.trim();
    let shown = format!("{name}={value}");
    if !valid_name(name) {
        return Err(SchedError::Core(shoal_core::CoreError::invalid(
            "resources",
            shown,
            "a resource is NAME=VALUE with a complex name like h_vmem or mem_free (see `qconf -sc`)",
        )));
    }
    if value.is_empty() || value.contains(',') || value.contains(char::is_whitespace) {
        return Err(SchedError::Core(shoal_core::CoreError::invalid(
            "resources",
            shown,
            "the value must be one word; separate resources with commas",
        )));
    }
    let lname = name.to_ascii_lowercase();
    let value = if MEMORY.contains(&lname.as_str()) {
        format!("{}M", MemSize::parse(name, value)?.megabytes())
    } else if TIMES.contains(&lname.as_str()) {
        TimeLimit::parse(name, value)?.to_hms()
    } else {
        value.to_string()
    };
    Ok((name.to_string(), value))
}

/// `resources` as `"h_vmem=2G,mem_free=1G"`, `["h_vmem=2G"]` or `{"h_vmem": "2G"}`.
pub fn resources(v: &serde_json::Value) -> Result<Vec<(String, String)>> {
    let item = |s: &str| -> Result<(String, String)> {
        match s.split_once('=') {
            Some((n, val)) => resource(n, val),
            None => Err(SchedError::Core(shoal_core::CoreError::invalid(
                "resources",
                s,
                "write NAME=VALUE, e.g. \"h_vmem=2G\"",
            ))),
        }
    };
    match v {
        serde_json::Value::String(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(item)
            .collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => item(s),
                other => Err(invalid(
                    "resources",
                    other,
                    "expected \"NAME=VALUE\" strings",
                )),
            })
            .collect(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, x)| match x {
                serde_json::Value::String(s) => resource(k, s),
                serde_json::Value::Number(n) => resource(k, &n.to_string()),
                serde_json::Value::Bool(b) => resource(k, if *b { "TRUE" } else { "FALSE" }),
                other => Err(invalid(
                    "resources",
                    other,
                    "values must be strings or numbers",
                )),
            })
            .collect(),
        other => Err(invalid(
            "resources",
            other,
            "expected \"h_vmem=2G,...\", a list or a dict",
        )),
    }
}

impl SgeOptions {
    pub fn parse(workers: usize, options: &serde_json::Value) -> Result<SgeOptions> {
        if workers == 0 {
            return Err(SchedError::Config(
                "invalid value 0 for workers: a pool needs at least 1 worker".into(),
            ));
        }
        let o = Opts::new("sge", options)?;
        let mut opts = SgeOptions {
            workers,
            queue: o.text("queue")?,
            pe: None,
            resources: o
                .get("resources")
                .map(|v| resources(v.raw()))
                .transpose()?
                .unwrap_or_default(),
            project: o.name("project")?,
            job_name: o.name("job_name")?.unwrap_or_else(|| "shoal".into()),
            qsub_args: o.args("qsub_args")?,
            forward_env: o.names("forward_env")?.unwrap_or_else(|| {
                EnvChoice::Names(DEFAULT_FORWARD.iter().map(|s| s.to_string()).collect())
            }),
            poll_interval: o
                .seconds("poll_interval")?
                .unwrap_or_else(|| crate::registry::known("sge").default_poll()),
            max_lost_workers: o
                .count("max_lost_workers")?
                .map_or(2 * workers + 8, |n| n as usize),
            per_job: o.count("workers_per_job")?.map_or(1, |n| n as usize),
        };
        if let Some(name) = o.name("pe")? {
            let slots = o.count("slots")?.unwrap_or(1);
            opts.pe = Some((name, slots * opts.per_job as u32));
        } else if opts.per_job > 1 {
            return Err(SchedError::Config(format!(
                "workers_per_job={} needs a parallel environment for its slots\nhint: pass pe=\"smp\" (or your site's PE; `qconf -spl` lists them) with workers_per_job",
                opts.per_job
            )));
        } else if let Some(s) = o.get("slots") {
            s.count()?;
            return Err(SchedError::Config(format!(
                "slots={} needs a parallel environment\nhint: pass pe=\"smp\" (or your site's PE; `qconf -spl` lists them) with slots",
                s.raw()
            )));
        }
        let h_rt = match (o.time("h_rt")?, o.time("time")?) {
            (Some(_), Some(_)) => {
                return Err(SchedError::Config(
                    "both h_rt and time are given\nhint: they are the same limit; pass one".into(),
                ))
            }
            (Some(t), None) => Some(("h_rt", t)),
            (None, Some(t)) => Some(("time", t)),
            (None, None) => None,
        };
        if let Some((key, limit)) = h_rt {
            if opts.resources.iter().any(|(n, _)| n == "h_rt") {
                return Err(SchedError::Config(format!(
                    "h_rt is given both as {key}= and in resources\nhint: pass it once"
                )));
            }
            opts.resources.push(("h_rt".into(), limit.to_hms()));
        }
        // GPUs are a site-defined consumable complex in Grid Engine: `-l gpu=N` by default.
        // Without gpus= the pool's workers ask for none; gpu_resource still names the
        // complex for the calls that ask for gpus (docs/resources.md).
        let complex = o.name("gpu_resource")?;
        if let Some(n) = o.count("gpus")? {
            let complex = complex.unwrap_or_else(|| "gpu".into());
            if opts.resources.iter().any(|(r, _)| *r == complex) {
                return Err(SchedError::Config(format!(
                    "{complex} is given both as gpus= and in resources\nhint: pass it once"
                )));
            }
            opts.resources.push((complex, n.to_string()));
        }
        if opts.job_name.starts_with(|c: char| c.is_ascii_digit())
            || opts.job_name.contains(|c: char| "/:@\\*?".contains(c))
        {
            return Err(SchedError::Core(shoal_core::CoreError::invalid(
                "job_name",
                &opts.job_name,
                "SGE job names cannot start with a digit or contain spaces, '/', ':', '@', '\\', '*' or '?'",
            )));
        }
        if let Some(flag) = opts
            .qsub_args
            .iter()
            .find(|a| RESERVED.contains(&a.as_str()))
        {
            return Err(SchedError::Config(format!(
                "qsub_args may not contain {flag}: shoal sets it to run and find its workers\nhint: \
                 the worker count sets -t/-tc; logs go to the session's logs/ dir"
            )));
        }
        Ok(opts)
    }

    /// The driver's variables the job script exports (none with `-V`, which forwards all).
    pub fn forwarded(&self) -> Vec<(String, String)> {
        match &self.forward_env {
            EnvChoice::All(_) => Vec::new(),
            EnvChoice::Names(names) => names
                .iter()
                .filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), v)))
                .collect(),
        }
    }

    /// The queue names to check against `qconf -sql` (`a.q@host,b.q` -> a.q, b.q); names
    /// with wildcards are left to SGE.
    pub fn queue_names(&self) -> Vec<String> {
        self.queue
            .iter()
            .flat_map(|q| q.split(','))
            .map(|q| q.split('@').next().unwrap_or("").trim().to_string())
            .filter(|q| !q.is_empty() && !q.contains(['*', '?', '[']))
            .collect()
    }

    /// Everything `qsub` needs except the task range, shared by submissions and `-w v`;
    /// `tag` is the batch's, which the worker ids and log names start with.
    pub fn qsub_common(&self, spec: &LaunchSpec, tag: &str) -> Vec<String> {
        let logs = spec.session.sub("logs");
        // On TCP the nodes cannot see the session dir; the worker streams its output to the
        // driver, which stores it in logs/ itself.
        let log = |ext: &str| match spec.connect {
            Some(_) => "/dev/null".to_string(),
            None => format!("{}/{tag}-$TASK_ID.{ext}", logs.display()),
        };
        let mut a: Vec<String> = vec![
            "-terse".into(),
            "-N".into(),
            self.job_name.clone(),
            "-S".into(),
            "/bin/sh".into(),
            "-b".into(),
            "n".into(),
            "-wd".into(),
            spec.cwd.display().to_string(),
            // SGE expands $TASK_ID in these paths: logs/<worker id>.out|.err
            "-o".into(),
            log("out"),
            "-e".into(),
            log("err"),
            "-j".into(),
            "n".into(),
            // SIGUSR1 before a suspension, SIGUSR2 before a kill (the queue's `notify` time
            // ahead): the worker gives its task back, with a checkpoint, instead of being
            // frozen or killed with it (docs/checkpoints.md).
            "-notify".into(),
        ];
        a.extend(self.request());
        a
    }

    /// The part of the submission that comes from the user's options (shown in errors).
    pub fn request(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(q) = &self.queue {
            a.extend(["-q".into(), q.clone()]);
        }
        if let Some((pe, slots)) = &self.pe {
            a.extend(["-pe".into(), pe.clone(), slots.to_string()]);
        }
        if !self.resources.is_empty() {
            let l: Vec<String> = self
                .resources
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            a.extend(["-l".into(), l.join(",")]);
        }
        if let Some(p) = &self.project {
            a.extend(["-P".into(), p.clone()]);
        }
        if self.forward_env == EnvChoice::All(true) {
            a.push("-V".into());
        }
        a.extend(self.qsub_args.iter().cloned());
        a
    }

    /// Arguments of one array submission of `n` workers, at most `throttle` at once (the
    /// script and its argument, the batch tag, come last).
    pub fn qsub_array(
        &self,
        spec: &LaunchSpec,
        tag: &str,
        n: usize,
        throttle: usize,
        script: &str,
    ) -> Vec<String> {
        let mut a = self.qsub_common(spec, tag);
        // A TCP session's token: `-v NAME` takes its value from qsub's environment.
        if let Some(c) = &spec.connect {
            a.extend(["-v".into(), c.token.0.clone()]);
        }
        a.extend([
            "-t".into(),
            format!("1-{n}"),
            "-tc".into(),
            throttle.max(1).to_string(),
            script.into(),
            tag.into(),
        ]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_core::SessionDir;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            session: SessionDir::open("/w/s1"),
            python: "/opt/py/bin/python".into(),
            env: vec![
                ("SHOAL_WORKER".into(), "1".into()),
                ("ODD".into(), "a,b 'c'".into()),
            ],
            cwd: "/home/u/proj".into(),
            connect: None,
        }
    }

    #[test]
    fn defaults_and_array_args() {
        let o = SgeOptions::parse(16, &json!({})).unwrap();
        assert_eq!(o.poll_interval, Duration::from_secs(2));
        let a = o.qsub_array(&spec(), "b3", 5, 5, "/w/s1/sge-worker.sh");
        let joined = a.join(" ");
        assert!(
            joined.starts_with("-terse -N shoal -S /bin/sh -b n -wd /home/u/proj"),
            "{joined}"
        );
        assert!(joined.contains("-o /w/s1/logs/b3-$TASK_ID.out -e /w/s1/logs/b3-$TASK_ID.err"));
        assert!(
            joined.ends_with("-t 1-5 -tc 5 /w/s1/sge-worker.sh b3"),
            "{joined}"
        );
        assert!(!a.contains(&"-V".to_string()));
        // By default the job finds the submit shell's programs (PATH and the interpreter's
        // environment), exported in the script rather than with -V.
        assert!(o.forwarded().iter().any(|(k, _)| k == "PATH"));
    }

    #[test]
    fn every_option_reaches_qsub() {
        let o = SgeOptions::parse(
            4,
            &json!({"queue": "all.q", "pe": "smp", "slots": 2, "resources": {"h_vmem": "2G", "arch": "lx-amd64"},
                     "time": "1h", "project": "p1", "job_name": "sweep", "qsub_args": "-p -10 -m n",
                     "forward_env": true, "poll_interval": 0.5}),
        )
        .unwrap();
        let a = o.qsub_array(&spec(), "b1", 10, 4, "s.sh").join(" ");
        assert!(o.forwarded().is_empty(), "-V forwards everything itself");
        for part in [
            "-N sweep",
            "-j n -notify",
            "-q all.q",
            "-pe smp 2",
            "-l arch=lx-amd64,h_vmem=2048M,h_rt=1:00:00",
            "-P p1",
            "-V",
            "-p -10 -m n",
            "-t 1-10 -tc 4 s.sh b1",
        ] {
            assert!(a.contains(part), "{part:?} missing from {a}");
        }
        assert_eq!(o.poll_interval, Duration::from_millis(500));
    }

    #[test]
    fn gpus_are_the_sites_complex() {
        let a = |v: serde_json::Value| {
            SgeOptions::parse(1, &v).map(|o| o.qsub_array(&spec(), "b1", 1, 1, "s.sh").join(" "))
        };
        assert!(a(json!({"gpus": 2})).unwrap().contains("-l gpu=2"));
        let s = a(json!({"gpus": 1, "gpu_resource": "nvidia", "resources": "h_vmem=1G"})).unwrap();
        assert!(s.contains("-l h_vmem=1024M,nvidia=1"), "{s}");
        // The pool may name the complex for calls that ask for GPUs (resources=) alone.
        assert!(!a(json!({"gpu_resource": "nvidia"}))
            .unwrap()
            .contains("nvidia"));
        let e = a(json!({"gpus": 1, "resources": "gpu=2"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass it once"), "{e}");
    }

    #[test]
    fn resource_forms() {
        let r = |v: serde_json::Value| {
            SgeOptions::parse(1, &json!({ "resources": v })).map(|o| o.resources)
        };
        let want = vec![
            ("h_vmem".to_string(), "1024M".to_string()),
            ("h_rt".into(), "0:10:00".into()),
        ];
        assert_eq!(r(json!("h_vmem=1G, h_rt=600")).unwrap(), want);
        assert_eq!(r(json!(["h_vmem=1Gb", "h_rt=10m"])).unwrap(), want);
        // A dict comes in key order.
        let sorted = vec![want[1].clone(), want[0].clone()];
        assert_eq!(
            r(json!({"h_vmem": "1GiB", "h_rt": "0:10:00"})).unwrap(),
            sorted
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = |v: serde_json::Value| SgeOptions::parse(2, &v).unwrap_err().to_string();
        let e = err(json!({"resources": "h_vmem=lots"}));
        assert!(e.contains("h_vmem") && e.contains("\"lots\""), "{e}");
        let e = err(json!({"resources": "h_vmem"}));
        assert!(e.contains("NAME=VALUE"), "{e}");
        let e = err(json!({"resources": "9x=1"}));
        assert!(e.contains("9x=1") && e.contains("qconf -sc"), "{e}");
        let e = err(json!({"time": "soon"}));
        assert!(e.contains("\"soon\""), "{e}");
        let e = err(json!({"slots": 4}));
        assert!(e.contains("pe=") && e.contains("hint"), "{e}");
        let e = err(json!({"partition": "x"}));
        assert!(e.contains("partition") && e.contains("qsub_args"), "{e}");
        let e = err(json!({"forward_env": ["PATH", "A B"]}));
        assert!(e.contains("forward_env"), "{e}");
        let e = err(json!({"time": "1h", "h_rt": "2h"}));
        assert!(e.contains("h_rt and time"), "{e}");
        let e = err(json!({"job_name": "1st"}));
        assert!(e.contains("job_name"), "{e}");
        let e = err(json!({"qsub_args": ["-t", "1-5"]}));
        assert!(e.contains("-t") && e.contains("hint"), "{e}");
        let e = err(json!({"qsub_args": "-l 'x"}));
        assert!(e.contains("quotes"), "{e}");
        let o =
            SgeOptions::parse(1, &json!({"forward_env": ["SHOAL_NO_SUCH_VAR", "PATH"]})).unwrap();
        assert_eq!(o.forwarded().len(), 1, "unset variables are skipped");
        let o = SgeOptions::parse(1, &json!({"forward_env": false})).unwrap();
        assert!(o.forwarded().is_empty() && !o.request().contains(&"-V".to_string()));
        assert!(SgeOptions::parse(0, &json!({})).is_err());
    }

    #[test]
    fn queue_names_for_checking() {
        let o = SgeOptions::parse(1, &json!({"queue": "a.q@host1,b.q,*.q"})).unwrap();
        assert_eq!(o.queue_names(), vec!["a.q", "b.q"]);
    }
}

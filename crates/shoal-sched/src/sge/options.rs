//! The SGE backend's options (Pool/Executor keywords), parsed once into types, and what they
//! become: the `qsub` arguments of a worker array and the worker job script. No I/O here.

use crate::error::{Result, SchedError};
use crate::LaunchSpec;
use shoal_core::units::{MemSize, TimeLimit};
use std::time::Duration;

/// Keys this backend accepts, for error messages.
pub const KEYS: [&str; 12] = [
    "queue",
    "pe",
    "slots",
    "resources",
    "h_rt",
    "time",
    "project",
    "job_name",
    "qsub_args",
    "forward_env",
    "poll_interval",
    "max_lost_workers",
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
    /// `-V`: the driver's whole environment goes to the workers.
    pub forward_env: bool,
    pub poll_interval: Duration,
    /// Workers lost (killed, in error state, failed to start) before no more are submitted.
    pub max_lost_workers: usize,
}

fn invalid(option: &str, value: &serde_json::Value, reason: &str) -> SchedError {
    let v = match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    SchedError::Core(shoal_core::CoreError::invalid(option, v, reason))
}

fn string(key: &str, v: &serde_json::Value) -> Result<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(invalid(key, v, "expected a non-empty string")),
    }
}

/// A number of seconds or a time string (`"90s"`, `"0:10:00"`).
fn duration(key: &str, v: &serde_json::Value) -> Result<Duration> {
    match v {
        serde_json::Value::Number(n) => {
            let s = n.as_f64().unwrap_or(-1.0);
            if s.is_finite() && s > 0.0 {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(invalid(key, v, "must be positive"))
            }
        }
        serde_json::Value::String(s) => Ok(TimeLimit::parse(key, s)?.0),
        _ => Err(invalid(
            key,
            v,
            "expected seconds or a time string like \"10m\"",
        )),
    }
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
fn resources(v: &serde_json::Value) -> Result<Vec<(String, String)>> {
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
        let empty = serde_json::Map::new();
        let map = match options {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => &empty,
            other => return Err(invalid("backend options", other, "expected a JSON object")),
        };
        for key in map.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(SchedError::Config(format!(
                    "option {key:?} does not apply to the sge backend\nhint: sge options are {}; \
                     raw qsub flags go in qsub_args=[...]",
                    KEYS.join(", ")
                )));
            }
        }
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());
        let mut opts = SgeOptions {
            workers,
            queue: get("queue").map(|v| string("queue", v)).transpose()?,
            pe: None,
            resources: get("resources")
                .map(resources)
                .transpose()?
                .unwrap_or_default(),
            project: get("project").map(|v| string("project", v)).transpose()?,
            job_name: get("job_name")
                .map(|v| string("job_name", v))
                .transpose()?
                .unwrap_or_else(|| "shoal".into()),
            qsub_args: Vec::new(),
            forward_env: false,
            poll_interval: Duration::from_secs(2),
            max_lost_workers: 2 * workers + 8,
        };
        if let Some(v) = get("pe") {
            let name = string("pe", v)?;
            let slots = match get("slots") {
                None => 1,
                Some(s) => s
                    .as_u64()
                    .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                    .ok_or_else(|| invalid("slots", s, "expected a whole number >= 1"))?
                    as u32,
            };
            opts.pe = Some((name, slots));
        } else if let Some(s) = get("slots") {
            return Err(SchedError::Config(format!(
                "slots={s} needs a parallel environment\nhint: pass pe=\"smp\" (or your site's PE; `qconf -spl` lists them) with slots"
            )));
        }
        let h_rt = match (get("h_rt"), get("time")) {
            (Some(_), Some(_)) => {
                return Err(SchedError::Config(
                    "both h_rt and time are given\nhint: they are the same limit; pass one".into(),
                ))
            }
            (Some(v), None) => Some(("h_rt", v)),
            (None, Some(v)) => Some(("time", v)),
            (None, None) => None,
        };
        if let Some((key, v)) = h_rt {
            if opts.resources.iter().any(|(n, _)| n == "h_rt") {
                return Err(SchedError::Config(format!(
                    "h_rt is given both as {key}= and in resources\nhint: pass it once"
                )));
            }
            let limit = TimeLimit(duration(key, v)?);
            opts.resources.push(("h_rt".into(), limit.to_hms()));
        }
        if opts.job_name.starts_with(|c: char| c.is_ascii_digit())
            || opts
                .job_name
                .contains(|c: char| c.is_whitespace() || "/:@\\*?".contains(c))
        {
            return Err(SchedError::Core(shoal_core::CoreError::invalid(
                "job_name",
                &opts.job_name,
                "SGE job names cannot start with a digit or contain spaces, '/', ':', '@', '\\', '*' or '?'",
            )));
        }
        if let Some(v) = get("qsub_args") {
            opts.qsub_args = match v {
                serde_json::Value::String(s) => {
                    shlex::split(s).ok_or_else(|| invalid("qsub_args", v, "unbalanced quotes"))?
                }
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| invalid("qsub_args", x, "expected strings"))
                    })
                    .collect::<Result<_>>()?,
                other => {
                    return Err(invalid(
                        "qsub_args",
                        other,
                        "expected a string or a list of strings",
                    ))
                }
            };
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
        if let Some(v) = get("forward_env") {
            opts.forward_env = v
                .as_bool()
                .ok_or_else(|| invalid("forward_env", v, "expected true or false"))?;
        }
        if let Some(v) = get("poll_interval") {
            opts.poll_interval = duration("poll_interval", v)?;
        }
        if let Some(v) = get("max_lost_workers") {
            opts.max_lost_workers = v
                .as_u64()
                .ok_or_else(|| invalid("max_lost_workers", v, "expected a whole number"))?
                as usize;
        }
        Ok(opts)
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

    /// Everything `qsub` needs except the task range, shared by submissions and `-w v`.
    pub fn qsub_common(&self, spec: &LaunchSpec) -> Vec<String> {
        let logs = spec.session.sub("logs");
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
            // SGE expands $JOB_ID/$TASK_ID in these paths: logs/<worker id>.out|.err
            "-o".into(),
            format!("{}/$JOB_ID.$TASK_ID.out", logs.display()),
            "-e".into(),
            format!("{}/$JOB_ID.$TASK_ID.err", logs.display()),
            "-j".into(),
            "n".into(),
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
        if self.forward_env {
            a.push("-V".into());
        }
        a.extend(self.qsub_args.iter().cloned());
        a
    }

    /// Arguments of one array submission of `n` workers (the script path comes last).
    pub fn qsub_array(&self, spec: &LaunchSpec, n: usize, script: &str) -> Vec<String> {
        let mut a = self.qsub_common(spec);
        a.extend([
            "-t".into(),
            format!("1-{n}"),
            "-tc".into(),
            n.min(self.workers).to_string(),
            script.into(),
        ]);
        a
    }
}

pub use crate::shell::sh_quote;

/// The worker job script. It exports the session's worker environment (values may hold
/// commas and quotes, which `qsub -v` cannot carry), runs the worker with the id SGE gives
/// (`$JOB_ID.$SGE_TASK_ID`), and records the exit status where the driver looks for it, so a
/// finished worker is known without asking `qacct`.
pub fn job_script(spec: &LaunchSpec, exit_dir: &std::path::Path) -> Result<String> {
    let mut s = String::from(
        "#!/bin/sh\n# shoal worker (one SGE array task = one worker); generated by shoal\n",
    );
    for (k, v) in &spec.env {
        if !valid_name(k) || k.contains(['.', '-']) {
            return Err(SchedError::Core(shoal_core::CoreError::invalid(
                "env",
                k,
                "environment variable names are letters, digits and '_'",
            )));
        }
        s.push_str(&format!("{k}={}; export {k}\n", sh_quote(v)));
    }
    // The worker's id is its array task, as qdel and qstat name it.
    s.push_str("SHOAL_WORKER_ID=\"$JOB_ID.$SGE_TASK_ID\"; export SHOAL_WORKER_ID\n");
    let argv: Vec<String> = spec.worker_argv(None).iter().map(|a| sh_quote(a)).collect();
    let exit = sh_quote(&exit_dir.display().to_string());
    s.push_str(&argv.join(" "));
    s.push('\n');
    s.push_str("rc=$?\n");
    s.push_str(&format!(
        "printf '%s\\n' \"$rc\" > {exit}/.\"$JOB_ID.$SGE_TASK_ID\" && mv -f {exit}/.\"$JOB_ID.$SGE_TASK_ID\" {exit}/\"$JOB_ID.$SGE_TASK_ID\"\n"
    ));
    s.push_str("exit $rc\n");
    Ok(s)
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
        }
    }

    #[test]
    fn defaults_and_array_args() {
        let o = SgeOptions::parse(16, &json!({})).unwrap();
        assert_eq!(o.poll_interval, Duration::from_secs(2));
        let a = o.qsub_array(&spec(), 5, "/w/s1/sge/worker.sh");
        let joined = a.join(" ");
        assert!(
            joined.starts_with("-terse -N shoal -S /bin/sh -b n -wd /home/u/proj"),
            "{joined}"
        );
        assert!(joined
            .contains("-o /w/s1/logs/$JOB_ID.$TASK_ID.out -e /w/s1/logs/$JOB_ID.$TASK_ID.err"));
        assert!(
            joined.ends_with("-t 1-5 -tc 5 /w/s1/sge/worker.sh"),
            "{joined}"
        );
        assert!(!a.contains(&"-V".to_string()));
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
        let a = o.qsub_array(&spec(), 10, "s.sh").join(" ");
        for part in [
            "-N sweep",
            "-q all.q",
            "-pe smp 2",
            "-l arch=lx-amd64,h_vmem=2048M,h_rt=1:00:00",
            "-P p1",
            "-V",
            "-p -10 -m n",
            "-t 1-10 -tc 4 s.sh",
        ] {
            assert!(a.contains(part), "{part:?} missing from {a}");
        }
        assert_eq!(o.poll_interval, Duration::from_millis(500));
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
        let e = err(json!({"time": "1h", "h_rt": "2h"}));
        assert!(e.contains("h_rt and time"), "{e}");
        let e = err(json!({"job_name": "1st"}));
        assert!(e.contains("job_name"), "{e}");
        let e = err(json!({"qsub_args": ["-t", "1-5"]}));
        assert!(e.contains("-t") && e.contains("hint"), "{e}");
        let e = err(json!({"qsub_args": "-l 'x"}));
        assert!(e.contains("quotes"), "{e}");
        assert!(SgeOptions::parse(0, &json!({})).is_err());
    }

    #[test]
    fn queue_names_for_checking() {
        let o = SgeOptions::parse(1, &json!({"queue": "a.q@host1,b.q,*.q"})).unwrap();
        assert_eq!(o.queue_names(), vec!["a.q", "b.q"]);
    }

    #[test]
    fn script_exports_env_and_records_exit() {
        let s = job_script(&spec(), std::path::Path::new("/w/s1/sge/exit")).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("SHOAL_WORKER=1; export SHOAL_WORKER\n"));
        assert!(s.contains("ODD='a,b '\\''c'\\'''; export ODD\n"), "{s}");
        assert!(
            s.contains("/opt/py/bin/python -m shoal.worker /w/s1\n"),
            "{s}"
        );
        assert!(!s.contains("--worker-id"));
        assert!(s.contains("mv -f /w/s1/sge/exit/.\"$JOB_ID.$SGE_TASK_ID\" /w/s1/sge/exit/\"$JOB_ID.$SGE_TASK_ID\""));
        assert!(s.ends_with("exit $rc\n"));
        let mut bad = spec();
        bad.env.push(("A B".into(), "x".into()));
        assert!(job_script(&bad, std::path::Path::new("/x")).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/a/b"), "/a/b");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
    }
}

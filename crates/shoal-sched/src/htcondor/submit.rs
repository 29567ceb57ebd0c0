//! The HTCondor backend's options (named as HTCondor names them) and the submit description
//! they turn into. Everything is validated here, once, before anything reaches condor_submit.

use crate::error::{Result, SchedError};
use crate::options::{EnvChoice, Opts};
use crate::LaunchSpec;
use shoal_core::layout::Stream;
use shoal_core::units::{MemSize, TimeLimit};
use shoal_core::CoreError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Universes a shoal worker (a Python process on a shared file system) can run in.
pub const UNIVERSES: [&str; 3] = ["vanilla", "container", "docker"];

/// Submit commands shoal writes itself: setting them again would break the worker protocol.
const RESERVED: [&str; 12] = [
    "executable",
    "arguments",
    "args",
    "output",
    "error",
    "log",
    "log_xml",
    "queue",
    "transfer_executable",
    "should_transfer_files",
    "environment",
    "universe",
];

#[derive(Debug, Clone, PartialEq)]
pub enum GetEnv {
    All(bool),
    /// Variable names (or patterns) to copy from the submitter's environment.
    Names(String),
}

#[derive(Debug, Clone)]
pub struct CondorOptions {
    pub request_cpus: Option<u32>,
    pub request_memory: Option<MemSize>,
    pub request_disk: Option<MemSize>,
    pub request_gpus: Option<u32>,
    /// `allowed_job_duration`: the job's time limit (the worker is told it, and stops in time).
    pub allowed_job_duration: Option<TimeLimit>,
    pub universe: String,
    pub requirements: Option<String>,
    pub pool: Option<String>,
    pub schedd: Option<String>,
    pub accounting_group: Option<String>,
    /// `+Name = value` job attributes; values are ClassAd literals already.
    pub attributes: BTreeMap<String, String>,
    pub getenv: Option<GetEnv>,
    pub initial_dir: Option<PathBuf>,
    pub extra_directives: Vec<String>,
    pub poll_interval: Duration,
    pub log_dir: Option<PathBuf>,
    /// Worker processes per job (`workers_per_job`): a local fan-out, [`fanout_script`].
    pub per_job: usize,
}

impl Default for CondorOptions {
    fn default() -> Self {
        CondorOptions {
            request_cpus: None,
            request_memory: None,
            request_disk: None,
            request_gpus: None,
            allowed_job_duration: None,
            universe: "vanilla".into(),
            requirements: None,
            per_job: 1,
            pool: None,
            schedd: None,
            accounting_group: None,
            attributes: BTreeMap::new(),
            getenv: None,
            initial_dir: None,
            extra_directives: Vec::new(),
            poll_interval: crate::registry::known("htcondor").default_poll(),
            log_dir: None,
        }
    }
}

fn invalid(option: &str, value: &serde_json::Value, reason: &str) -> SchedError {
    let shown = match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    SchedError::Core(CoreError::invalid(option, shown, reason))
}

/// A ClassAd literal for a JSON value: strings are quoted, numbers and booleans are not.
fn classad_literal(option: &str, v: &serde_json::Value) -> Result<String> {
    match v {
        serde_json::Value::String(s) => Ok(format!(
            "\"{}\"",
            s.replace('\\', "\\\\").replace('"', "\\\"")
        )),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(if *b { "True" } else { "False" }.into()),
        _ => Err(invalid(
            option,
            v,
            "attribute values must be strings, numbers or booleans",
        )),
    }
}

fn valid_attr_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl CondorOptions {
    /// Parse the backend's JSON options (keys and kinds from the registry).
    pub fn from_json(options: &serde_json::Value) -> Result<CondorOptions> {
        let opts = Opts::new("htcondor", options)?;
        let mut o = CondorOptions {
            request_cpus: opts.count("request_cpus")?,
            request_gpus: opts.count("request_gpus")?,
            allowed_job_duration: opts.time("allowed_job_duration")?,
            request_memory: opts.memory("request_memory")?,
            request_disk: opts.memory("request_disk")?,
            requirements: opts.text("requirements")?,
            pool: opts.text("pool")?,
            schedd: opts.text("schedd")?,
            accounting_group: opts.text("accounting_group")?,
            initial_dir: opts.path("initial_dir")?,
            log_dir: opts.path("log_dir")?,
            per_job: opts.count("workers_per_job")?.map_or(1, |n| n as usize),
            ..CondorOptions::default()
        };
        if let Some(v) = opts.get("universe") {
            let u = v.name()?.to_ascii_lowercase();
            if !UNIVERSES.contains(&u.as_str()) {
                return Err(v.invalid(&format!(
                    "shoal workers run in one of: {} (a worker is a Python process on a shared file system)",
                    UNIVERSES.join(", ")
                )));
            }
            o.universe = u;
        }
        if let Some(v) = opts.get("attributes") {
            for (name, value) in v.table()? {
                let name = name.trim_start_matches('+').trim_start_matches("My.");
                if !valid_attr_name(name) {
                    return Err(invalid(
                        "attributes",
                        &serde_json::Value::String(name.into()),
                        "not a ClassAd attribute name (letters, digits, '_')",
                    ));
                }
                o.attributes
                    .insert(name.to_string(), classad_literal("attributes", value)?);
            }
        }
        o.getenv = opts.names("getenv")?.map(|c| match c {
            EnvChoice::All(b) => GetEnv::All(b),
            EnvChoice::Names(n) => GetEnv::Names(n.join(", ")),
        });
        if let Some(t) = opts.seconds("poll_interval")? {
            o.poll_interval = t.max(Duration::from_millis(50));
        }
        for line in opts.lines("extra_directives")? {
            let line = line.trim().to_string();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let command = line
                .split(['=', ' ', '\t'])
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if RESERVED.contains(&command.as_str()) {
                return Err(invalid(
                    "extra_directives",
                    &serde_json::Value::String(line.clone()),
                    &format!("shoal writes {command:?} itself (the worker command, its logs and the event log must be where shoal reads them); use the matching option instead if there is one"),
                ));
            }
            o.extra_directives.push(line);
        }
        Ok(o)
    }

    /// `-pool P -name S`, for every condor_* command.
    pub fn target_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = &self.pool {
            a.push("-pool".into());
            a.push(p.clone());
        }
        if let Some(s) = &self.schedd {
            a.push("-name".into());
            a.push(s.clone());
        }
        a
    }
}

/// One argument in HTCondor's "new" quoting: wrapped in single quotes when it has blanks
/// or quotes, with `'` doubled; `"` is doubled inside the outer double quotes.
fn quote_arg(arg: &str) -> String {
    let inner = if arg.is_empty() || arg.contains([' ', '\t', '\'', '"']) {
        format!("'{}'", arg.replace('\'', "''"))
    } else {
        arg.to_string()
    };
    inner.replace('"', "\"\"")
}

/// `"a b 'c d'"`: an argument list or an environment in the new syntax.
pub fn quote_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let parts: Vec<String> = items.into_iter().map(quote_arg).collect();
    format!("\"{}\"", parts.join(" "))
}

/// The fan-out script's name in the session dir (and in a TCP job's sandbox).
pub const FANOUT: &str = "condor-worker.sh";

/// The script a job of `workers_per_job` workers runs (`sh condor-worker.sh ID`): it starts
/// the workers `ID.0` .. `ID.{N-1}`, passes SIGTERM (a vacate, condor_rm) on to them, and
/// exits with the worst of their statuses. On the work-dir transport each worker's output
/// goes to its own log files; on TCP the worker streams it to the driver.
pub fn fanout_script(o: &CondorOptions, spec: &LaunchSpec) -> String {
    use crate::shell::sh_quote;
    let argv: Vec<String> = spec.worker_argv(None).iter().map(|a| sh_quote(a)).collect();
    let argv = argv.join(" ");
    let redirect = if spec.connect.is_some() {
        String::new()
    } else {
        let logs = sh_quote(&spec.session.sub("logs").display().to_string());
        format!(" >>{logs}/\"$id.out\" 2>>{logs}/\"$id.err\"")
    };
    format!(
        "#!/bin/sh\n# shoal: {n} workers in one HTCondor job (workers_per_job), written by shoal\n\
         element=$1; pids=; k=0\n\
         while [ $k -lt {n} ]; do\n\
         \x20 id=\"$element.$k\"\n\
         \x20 {argv} --worker-id \"$id\"{redirect} &\n\
         \x20 pids=\"$pids $!\"; k=$((k + 1))\n\
         done\n\
         trap 'kill -TERM $pids 2>/dev/null' TERM USR1 USR2\n\
         worst=0\n\
         for pid in $pids; do\n\
         \x20 while :; do wait \"$pid\"; rc=$?; [ \"$rc\" -gt 128 ] && kill -0 \"$pid\" 2>/dev/null || break; done\n\
         \x20 [ \"$rc\" -ne 0 ] && worst=$rc\n\
         done\n\
         exit $worst\n",
        n = o.per_job.max(1),
    )
}

/// The submit description for `n` workers of batch `tag`: one cluster, `queue n`, worker
/// id `TAG-$(Process)`, output and error exactly where `SessionDir::log` says.
pub fn description(
    o: &CondorOptions,
    spec: &LaunchSpec,
    event_log: &std::path::Path,
    tag: &str,
    n: usize,
) -> String {
    let id = format!("{tag}-$(Process)");
    let per_job = o.per_job.max(1);
    let script = spec.session.sub(FANOUT);
    // workers_per_job: the job is the fan-out script, started with the job's id; it starts
    // the workers `ID.K` (HTCondor has no job script of its own).
    let argv = if per_job > 1 {
        let shipped = if spec.connect.is_some() {
            FANOUT.to_string()
        } else {
            script.display().to_string()
        };
        vec!["/bin/sh".to_string(), shipped, id.clone()]
    } else {
        spec.worker_argv(Some(&id))
    };
    let mut d = String::new();
    let mut line = |k: &str, v: &str| {
        d.push_str(k);
        d.push_str(" = ");
        d.push_str(v);
        d.push('\n');
    };
    line("universe", &o.universe);
    line("executable", &argv[0]);
    line("transfer_executable", "False");
    line(
        "arguments",
        &quote_list(argv[1..].iter().map(String::as_str)),
    );
    let iwd = o.initial_dir.clone().unwrap_or_else(|| spec.cwd.clone());
    line("initialdir", &iwd.display().to_string());
    // On TCP the driver stores the worker's streamed output in these files itself; the job's
    // own (what it wrote before it connected) comes back beside them, at the job's end.
    let log = |stream| {
        let path = if spec.connect.is_some() {
            spec.session.job_log(&id, stream)
        } else {
            spec.session.log(&id, stream)
        };
        path.display().to_string()
    };
    line("output", &log(Stream::Stdout));
    line("error", &log(Stream::Stderr));
    line("log", &event_log.display().to_string());
    // shoal parses the classic text format; never let a site default switch it to XML.
    line("log_xml", "False");
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match &spec.connect {
        // TCP: the worker needs nothing of the submit host but the token, which travels as a
        // mode-600 file by HTCondor's file transfer: the job ad's environment is public
        // (`condor_q -l`), a sandbox is the job owner's alone.
        Some(c) => {
            line("should_transfer_files", "YES");
            line("when_to_transfer_output", "ON_EXIT");
            let (var, file) = &c.token_file;
            let mut input = file.display().to_string();
            if per_job > 1 {
                input.push_str(&format!(",{}", script.display()));
            }
            line("transfer_input_files", &input);
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            env.push(format!("{var}={name}"));
        }
        // Workers read and write the session dir in place: it must be on a shared file system.
        None => line("should_transfer_files", "NO"),
    }
    if let Some(t) = o.allowed_job_duration {
        // No job script here: the worker counts the limit from its own start (the job's).
        let secs = t.0.as_secs().max(1);
        line("allowed_job_duration", &secs.to_string());
        env.push(format!("SHOAL_WALLTIME={secs}"));
        env.push(format!(
            "SHOAL_WALLTIME_OPTION=allowed_job_duration={secs} (HTCondor)"
        ));
    }
    if !env.is_empty() {
        line("environment", &quote_list(env.iter().map(String::as_str)));
    }
    match &o.getenv {
        Some(GetEnv::All(b)) => line("getenv", if *b { "True" } else { "False" }),
        Some(GetEnv::Names(n)) => line("getenv", n),
        None => {}
    }
    // Requests are per worker: a job of N workers asks for N times each (N CPUs at least).
    let n_per = per_job as u64;
    match o.request_cpus {
        Some(c) => line("request_cpus", &(u64::from(c) * n_per).to_string()),
        None if per_job > 1 => line("request_cpus", &n_per.to_string()),
        None => {}
    }
    if let Some(m) = o.request_memory {
        line("request_memory", &(m.megabytes() * n_per).to_string());
    }
    if let Some(disk) = o.request_disk {
        // request_disk is in KiB.
        line("request_disk", &(disk.0.div_ceil(1024) * n_per).to_string());
    }
    if let Some(g) = o.request_gpus {
        line("request_gpus", &(u64::from(g) * n_per).to_string());
    }
    if let Some(r) = &o.requirements {
        line("requirements", r);
    }
    if let Some(a) = &o.accounting_group {
        line("accounting_group", a);
    }
    let sid = spec.session.id();
    line("batch_name", &format!("shoal-{sid}"));
    line("+ShoalSession", &format!("\"{sid}\""));
    for (k, v) in &o.attributes {
        line(&format!("+{k}"), v);
    }
    for extra in &o.extra_directives {
        d.push_str(extra);
        d.push('\n');
    }
    d.push_str(&format!("queue {n}\n"));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_core::SessionDir;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            session: SessionDir::open("/tmp/shoal s/sess-1"),
            python: "/opt/py/bin/python".into(),
            env: vec![
                ("SHOAL_WORKER".into(), "1".into()),
                ("MSG".into(), "it's \"x\"".into()),
            ],
            cwd: "/home/u".into(),
            connect: None,
        }
    }

    #[test]
    fn description_has_one_cluster_and_exact_log_paths() {
        let o = CondorOptions::from_json(&json!({
            "request_cpus": 2, "request_memory": "1.5G", "request_disk": "2G", "request_gpus": 1,
            "requirements": "OpSys == \"LINUX\"", "accounting_group": "grp.u",
            "attributes": {"ProjectName": "x", "+Prio": 3, "Flag": true},
            "getenv": ["HOME", "LANG"], "extra_directives": "# c\nrank = Memory\n",
        }))
        .unwrap();
        let d = description(
            &o,
            &spec(),
            std::path::Path::new("/tmp/shoal s/sess-1/condor.log"),
            "b2",
            16,
        );
        let expected = r#"universe = vanilla
executable = /opt/py/bin/python
transfer_executable = False
arguments = "-m shoal.worker '/tmp/shoal s/sess-1' --worker-id b2-$(Process)"
initialdir = /home/u
output = /tmp/shoal s/sess-1/logs/b2-$(Process).out
error = /tmp/shoal s/sess-1/logs/b2-$(Process).err
log = /tmp/shoal s/sess-1/condor.log
log_xml = False
should_transfer_files = NO
environment = "SHOAL_WORKER=1 'MSG=it''s ""x""'"
getenv = HOME, LANG
request_cpus = 2
request_memory = 1536
request_disk = 2097152
request_gpus = 1
requirements = OpSys == "LINUX"
accounting_group = grp.u
batch_name = shoal-sess-1
+ShoalSession = "sess-1"
+Flag = True
+Prio = 3
+ProjectName = "x"
rank = Memory
queue 16
"#;
        assert_eq!(d, expected);
        let o = CondorOptions::from_json(&json!({"allowed_job_duration": "2m"})).unwrap();
        let d = description(&o, &spec(), std::path::Path::new("/l"), "b1", 1);
        assert!(d.contains("allowed_job_duration = 120\n"), "{d}");
        assert!(
            d.contains(
                "SHOAL_WALLTIME=120 'SHOAL_WALLTIME_OPTION=allowed_job_duration=120 (HTCondor)'"
            ),
            "{d}"
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = |v: serde_json::Value| CondorOptions::from_json(&v).unwrap_err().to_string();
        let e = err(json!({"request_memory": "lots"}));
        assert!(
            e.contains("\"lots\"") && e.contains("request_memory"),
            "{e}"
        );
        let e = err(json!({"universe": "grid"}));
        assert!(e.contains("\"grid\"") && e.contains("vanilla"), "{e}");
        let e = err(json!({"request_cpus": 0}));
        assert!(e.contains("request_cpus"), "{e}");
        let e = err(json!({"partition": "x"}));
        assert!(
            e.contains("partition") && e.contains("request_memory"),
            "{e}"
        );
        let e = err(json!({"extra_directives": ["output = /tmp/x"]}));
        assert!(e.contains("output"), "{e}");
        let e = err(json!({"attributes": {"bad name": 1}}));
        assert!(e.contains("bad name"), "{e}");
        let e = err(json!({"requirements": ""}));
        assert!(e.contains("requirements"), "{e}");
    }

    #[test]
    fn defaults_and_targets() {
        let o = CondorOptions::from_json(&json!({"pool": "cm:9618", "schedd": "s@h", "universe": "VANILLA", "poll_interval": 2, "request_memory": 512})).unwrap();
        assert_eq!(o.target_args(), vec!["-pool", "cm:9618", "-name", "s@h"]);
        assert_eq!(o.universe, "vanilla");
        assert_eq!(o.poll_interval, Duration::from_secs(2));
        assert_eq!(o.request_memory.unwrap().megabytes(), 512);
        let d = description(
            &CondorOptions::default(),
            &spec(),
            std::path::Path::new("/l"),
            "b1",
            1,
        );
        assert!(
            d.ends_with("queue 1\n") && !d.contains("request_") && !d.contains("getenv"),
            "{d}"
        );
        assert_eq!(quote_list(["a", "", "b c"]), "\"a '' 'b c'\"");
    }
}

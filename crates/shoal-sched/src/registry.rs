//! The one description of every backend: its options (type, unit, default, one-line doc, the
//! scheduler flag each maps to), its defaults, how its workers learn their ids and how its
//! recorded jobs are cancelled.
//!
//! Everything that knows about backend options reads this table: the backends' own parsers
//! (unknown keys, "did you mean"), `shoal.toml` templates and `shoal run --opt`
//! ([`check_options`]), the Python API and the joblib option mapping (through [`to_json`]),
//! `shoal init`'s commented file ([`init_sections`]) and the docs' option tables
//! ([`markdown_table`], kept current by a test).

use crate::options::Value;
use serde::Serialize;
use serde_json::{Map, Value as Json};

/// What an option's value is; the same rule checks Python keywords, templates and `--opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A whole number >= 1.
    Count,
    /// A positive number of seconds, or a duration such as `"500ms"`, `"2m"`.
    Seconds,
    /// A time limit: seconds, `"90m"`, `"2h"`, `"1-00:00:00"`.
    Time,
    /// A size: `"512M"`, `"2G"`, `"1.5GiB"`; a bare number is in the option's unit.
    Memory,
    /// One word without spaces (a partition, an account, a job name).
    Name,
    /// A one-line string (an expression, a constraint).
    Text,
    /// A filesystem path.
    Path,
    Bool,
    /// A list of command-line arguments, or one string split as a shell would.
    Args,
    /// A list of lines, or one string of lines.
    Lines,
    /// A mapping of names to values.
    Table,
    /// SGE resource requests: `"h_vmem=2G,arch=x"`, a list of `NAME=VALUE`, or a mapping.
    Resources,
    /// `true`, `false`, or a list of environment variable names.
    Names,
}

impl Kind {
    /// How the docs and `shoal init` describe the type.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Count => "integer >= 1",
            Kind::Seconds => "seconds",
            Kind::Time => "time limit",
            Kind::Memory => "size",
            Kind::Name => "name",
            Kind::Text => "string",
            Kind::Path => "path",
            Kind::Bool => "bool",
            Kind::Args => "list of arguments",
            Kind::Lines => "list of lines",
            Kind::Table => "table",
            Kind::Resources => "resources",
            Kind::Names => "bool or names",
        }
    }
}

/// One option of a backend.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Opt {
    pub name: &'static str,
    pub kind: Kind,
    /// Unit of a bare number (`MB` for sizes, `s` for seconds).
    pub unit: Option<&'static str>,
    /// The default, as the docs show it (None: the scheduler's own default).
    pub default: Option<&'static str>,
    pub doc: &'static str,
    /// What it becomes: the scheduler flag or submit command.
    pub flag: &'static str,
    /// A value to show in `shoal init`'s file and in hints (TOML syntax).
    pub example: &'static str,
    /// The joblib-htcondor option name this corresponds to (the joblib mapping reads it).
    pub portable: Option<&'static str>,
    /// Set (uncommented) in the `shoal.toml` that `shoal init` writes.
    pub starter: bool,
    /// A resource a map or submit may ask for on its own (`resources={...}`,
    /// docs/resources.md): each distinct set of them is a worker shape.
    pub per_call: bool,
}

const fn opt(
    name: &'static str,
    kind: Kind,
    flag: &'static str,
    example: &'static str,
    doc: &'static str,
) -> Opt {
    Opt {
        name,
        kind,
        unit: None,
        default: None,
        doc,
        flag,
        example,
        portable: None,
        starter: false,
        per_call: false,
    }
}

impl Opt {
    const fn unit(mut self, unit: &'static str) -> Opt {
        self.unit = Some(unit);
        self
    }
    const fn default(mut self, default: &'static str) -> Opt {
        self.default = Some(default);
        self
    }
    const fn portable(mut self, name: &'static str) -> Opt {
        self.portable = Some(name);
        self
    }
    const fn starter(mut self) -> Opt {
        self.starter = true;
        self
    }
    const fn per_call(mut self) -> Opt {
        self.per_call = true;
        self
    }
}

/// How many workers a pool gets when the caller does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workers {
    /// One per CPU of the driver's machine.
    Cpus,
    Fixed(usize),
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Defaults {
    pub workers: Workers,
    /// Seconds a worker waits without work before it exits (None: never).
    pub idle_timeout: Option<f64>,
    /// Seconds between scheduler queries.
    pub poll_interval: f64,
    /// Seconds without the driver's heartbeat before a worker gives up (None: never; local
    /// workers die with the driver instead).
    pub driver_timeout: Option<f64>,
    /// Workers are kept while idle (cheap to keep, expensive to restart).
    pub keep_warm: bool,
}

/// How a worker learns its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerId {
    /// `--worker-id ID` on the worker's command line ([`crate::LaunchSpec::worker_argv`]).
    Flag,
    /// The job script exports `SHOAL_WORKER_ID`, built from the array index.
    Env,
}

/// How `shoal cancel` removes the jobs a session recorded when its driver is gone.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cancel {
    pub program: &'static str,
    /// Words in the program's error output meaning "already gone" (not an error).
    pub gone: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Backend {
    pub name: &'static str,
    pub summary: &'static str,
    pub options: &'static [Opt],
    pub defaults: Defaults,
    pub worker_id: WorkerId,
    pub cancel: Option<Cancel>,
    /// The option that takes raw scheduler arguments, named in "unknown option" hints.
    pub raw: Option<&'static str>,
    /// Per-call resources that only label a worker shape (the local backend's `cpus`: its
    /// workers are processes on this machine, whatever they are asked for).
    pub labels: &'static [Opt],
}

impl Backend {
    pub fn option(&self, name: &str) -> Option<&'static Opt> {
        self.options.iter().find(|o| o.name == name)
    }

    /// The default seconds between scheduler queries, as a duration.
    pub fn default_poll(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.defaults.poll_interval)
    }
}

/// The entry of a backend this crate implements (a programming error if it is missing).
pub fn known(name: &str) -> &'static Backend {
    BACKENDS
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("backend {name:?} is not in the registry"))
}

/// Options every backend takes (the Pool/Executor keywords that are not the backend's own).
#[rustfmt::skip]
pub const GENERIC: &[Opt] = &[
    opt("workers", Kind::Count, "", "16", "most workers at once (Pool's `processes`, Executor's `max_workers`)")
        .default("local: CPUs; clusters: 16"),
    opt("python_path", Kind::Path, "", "\"/opt/env/bin/python\"", "the workers' interpreter (must have shoal installed and be reachable where workers run)")
        .default("the driver's"),
    opt("env", Kind::Table, "", "{ OMP_NUM_THREADS = \"1\" }", "extra environment variables for workers"),
    opt("idle_timeout", Kind::Seconds, "", "60", "a worker without work for this long exits")
        .unit("s").default("local: never; clusters: 30"),
    opt("heartbeat_timeout", Kind::Seconds, "", "300", "a worker silent for this long counts as lost")
        .unit("s").default("120"),
    opt("max_attempts", Kind::Count, "", "3", "times a chunk may be lost with its worker before its tasks fail")
        .default("3"),
    opt("work_dir", Kind::Path, "", "\"/shared/scratch/shoal\"", "where session dirs go (on a filesystem the workers share)")
        .default("$SHOAL_HOME"),
    opt("transport", Kind::Name, "", "\"tcp\"", "how workers reach the driver: `fs` (the work dir), `tcp` (they connect back; nothing shared), `auto` (fs on the local backend or a network work dir, else tcp)")
        .default("auto"),
    opt("listen", Kind::Name, "", "\"ib0:7000-7100\"", "where a tcp session's driver listens: an address or interface, optionally :PORT or :LOW-HIGH")
        .default("auto"),
];

#[rustfmt::skip]
const SLURM: &[Opt] = &[
    opt("cpus", Kind::Count, "--cpus-per-task", "1", "CPUs per worker").portable("request_cpus").starter().per_call(),
    opt("memory", Kind::Memory, "--mem", "\"2G\"", "memory per worker").unit("MB").portable("request_memory").per_call(),
    opt("time", Kind::Time, "--time", "\"1h\"", "time limit per worker job (Slurm rounds up to minutes)").starter().per_call(),
    opt("partition", Kind::Name, "--partition", "\"debug\"", "partition; checked against `scontrol show partition`").per_call(),
    opt("account", Kind::Name, "--account", "\"myproject\"", "account to charge"),
    opt("qos", Kind::Name, "--qos", "\"normal\"", "quality of service").per_call(),
    opt("constraint", Kind::Text, "--constraint", "\"a100\"", "node features the job needs").per_call(),
    opt("reservation", Kind::Name, "--reservation", "\"maint\"", "reservation to run in"),
    opt("gpus", Kind::Count, "--gres=gpu:N", "1", "GPUs per worker (combined with `gres`)").portable("request_gpus").per_call(),
    opt("gres", Kind::Name, "--gres", "\"gpu:a100:1\"", "generic resources per worker").per_call(),
    opt("job_name", Kind::Name, "--job-name", "\"shoal\"", "job name").default("shoal"),
    opt("export", Kind::Name, "--export", "\"ALL\"", "environment the jobs get from the driver").default("ALL"),
    opt("sbatch_args", Kind::Args, "(raw)", "[\"--exclusive\"]", "extra sbatch arguments, placed last so they win"),
    opt("extra_directives", Kind::Lines, "#SBATCH", "[\"--nice=5\"]", "`#SBATCH` lines for the job script (prefix added when missing)")
        .portable("extra_directives"),
    opt("max_workers", Kind::Count, "--array=...%N", "8", "most workers queued or running at once").default("workers"),
    opt("workers_per_job", Kind::Count, "N x --cpus-per-task, --mem", "4", "worker processes in one job (ids `bB-I.K`); the job asks for N times `cpus` and `memory`").default("1"),
    opt("poll_interval", Kind::Seconds, "", "1", "seconds between `squeue` queries").unit("s").default("1").portable("poll_interval"),
];

#[rustfmt::skip]
const SGE: &[Opt] = &[
    opt("queue", Kind::Text, "-q", "\"all.q\"", "queue(s); checked against `qconf -sql`").per_call(),
    opt("pe", Kind::Name, "-pe NAME SLOTS", "\"smp\"", "parallel environment (with `slots`)").per_call(),
    opt("slots", Kind::Count, "-pe NAME SLOTS", "2", "slots per worker in `pe`").portable("request_cpus").per_call(),
    opt("resources", Kind::Resources, "-l", "{ h_vmem = \"2G\" }", "resource requests; memory and time complexes are parsed as sizes and durations").per_call(),
    opt("time", Kind::Time, "-l h_rt=", "\"1h\"", "time limit per worker job (same as `h_rt`)").starter().per_call(),
    opt("h_rt", Kind::Time, "-l h_rt=", "\"1:00:00\"", "time limit per worker job (same as `time`)").per_call(),
    opt("gpus", Kind::Count, "-l gpu=N", "1", "GPUs per worker, requested as the site's GPU complex (`gpu_resource`)").portable("request_gpus").per_call(),
    opt("gpu_resource", Kind::Name, "-l NAME=N", "\"gpu\"", "the site's consumable complex for GPUs (`qconf -sc` lists them)").default("gpu"),
    opt("project", Kind::Name, "-P", "\"myproject\"", "project"),
    opt("job_name", Kind::Name, "-N", "\"shoal\"", "job name").default("shoal"),
    opt("qsub_args", Kind::Args, "(raw)", "[\"-R\", \"y\"]", "extra qsub arguments (not the flags shoal sets: -t -tc -o -e -j -b -terse -sync)"),
    opt("forward_env", Kind::Names, "-V / exported", "true", "environment from the driver: true = all (`-V`), false = none, or a list of names")
        .default("PATH, VIRTUAL_ENV, CONDA_PREFIX, PYTHONPATH, LD_LIBRARY_PATH"),
    opt("poll_interval", Kind::Seconds, "", "2", "seconds between `qstat` queries").unit("s").default("2").portable("poll_interval"),
    opt("workers_per_job", Kind::Count, "-pe NAME N x SLOTS", "4", "worker processes in one job (ids `bB-I.K`); needs `pe`, the job asks for N times `slots`").default("1"),
    opt("max_lost_workers", Kind::Count, "", "20", "workers lost (killed, in error state) before no more are submitted")
        .default("2 x workers + 8"),
];

#[rustfmt::skip]
const HTCONDOR: &[Opt] = &[
    opt("request_cpus", Kind::Count, "request_cpus", "1", "CPUs per worker").portable("request_cpus").starter().per_call(),
    opt("request_memory", Kind::Memory, "request_memory", "\"1G\"", "memory per worker").unit("MB").portable("request_memory").starter().per_call(),
    opt("request_disk", Kind::Memory, "request_disk", "\"1G\"", "scratch disk per worker").unit("MB").portable("request_disk").per_call(),
    opt("request_gpus", Kind::Count, "request_gpus", "1", "GPUs per worker").portable("request_gpus").per_call(),
    opt("allowed_job_duration", Kind::Time, "allowed_job_duration", "\"1h\"", "time limit per worker job; the worker stops before it (docs/checkpoints.md)").per_call(),
    opt("universe", Kind::Name, "universe", "\"vanilla\"", "vanilla, container or docker").default("vanilla").portable("universe"),
    opt("requirements", Kind::Text, "requirements", "'OpSys == \"LINUX\"'", "a ClassAd expression; checked with `condor_submit -dry-run`").per_call(),
    opt("pool", Kind::Text, "-pool", "\"cm.example.org:9618\"", "central manager to use").portable("pool"),
    opt("schedd", Kind::Text, "-name", "\"submit1.example.org\"", "schedd to submit to").portable("schedd"),
    opt("accounting_group", Kind::Text, "accounting_group", "\"group_physics\"", "accounting group"),
    opt("attributes", Kind::Table, "+Name = value", "{ ProjectName = \"x\" }", "custom job attributes"),
    opt("getenv", Kind::Names, "getenv", "true", "copy the submitter's environment: true, or variable names"),
    opt("initial_dir", Kind::Path, "initialdir", "\"/shared/project\"", "the workers' working directory").default("the driver's"),
    opt("extra_directives", Kind::Lines, "(raw)", "[\"rank = Memory\"]", "extra submit-description lines (not the ones shoal writes)")
        .portable("extra_directives"),
    opt("poll_interval", Kind::Seconds, "", "0.5", "seconds between event-log reads").unit("s").default("0.5").portable("poll_interval"),
    opt("log_dir", Kind::Path, "log", "\"/shared/condor-logs\"", "where the job event log goes").default("the session dir").portable("log_dir_prefix"),
    opt("workers_per_job", Kind::Count, "N x request_cpus, request_memory", "4", "worker processes in one job (ids `bB-P.K`, a local fan-out); the job asks for N times `request_cpus` (at least N), `request_memory`, `request_disk` and `request_gpus`").default("1"),
];

#[rustfmt::skip]
const LOCAL_LABELS: &[Opt] = &[
    opt("cpus", Kind::Count, "", "2", "a label for the shape (local workers are processes on this machine)").per_call(),
];

pub const BACKENDS: &[Backend] = &[
    Backend {
        name: "local",
        summary: "worker processes on this machine",
        options: &[],
        defaults: Defaults {
            workers: Workers::Cpus,
            idle_timeout: None,
            poll_interval: 0.02,
            driver_timeout: None,
            keep_warm: true,
        },
        worker_id: WorkerId::Flag,
        cancel: None,
        raw: None,
        labels: LOCAL_LABELS,
    },
    Backend {
        name: "slurm",
        summary: "workers are elements of Slurm array jobs",
        options: SLURM,
        defaults: Defaults {
            workers: Workers::Fixed(16),
            idle_timeout: Some(30.0),
            poll_interval: 1.0,
            driver_timeout: Some(600.0),
            keep_warm: false,
        },
        worker_id: WorkerId::Env,
        cancel: Some(Cancel {
            program: "scancel",
            gone: &["Invalid job id", "does not exist"],
        }),
        raw: Some("sbatch_args"),
        labels: &[],
    },
    Backend {
        name: "htcondor",
        summary: "workers are the procs of HTCondor `queue N` clusters",
        options: HTCONDOR,
        defaults: Defaults {
            workers: Workers::Fixed(16),
            idle_timeout: Some(30.0),
            poll_interval: 0.5,
            driver_timeout: Some(600.0),
            keep_warm: false,
        },
        worker_id: WorkerId::Flag,
        cancel: Some(Cancel {
            program: "condor_rm",
            gone: &["Couldn't find", "not found"],
        }),
        raw: Some("extra_directives"),
        labels: &[],
    },
    Backend {
        name: "sge",
        summary: "workers are the tasks of Grid Engine array jobs",
        options: SGE,
        defaults: Defaults {
            workers: Workers::Fixed(16),
            idle_timeout: Some(30.0),
            poll_interval: 2.0,
            driver_timeout: Some(600.0),
            keep_warm: false,
        },
        worker_id: WorkerId::Env,
        cancel: Some(Cancel {
            program: "qdel",
            gone: &["does not exist", "Invalid job id"],
        }),
        raw: Some("qsub_args"),
        labels: &[],
    },
];

pub fn names() -> Vec<&'static str> {
    BACKENDS.iter().map(|b| b.name).collect()
}

/// The backend called `name`, or an error listing the ones there are.
pub fn backend(name: &str) -> Result<&'static Backend, Problem> {
    BACKENDS.iter().find(|b| b.name == name).ok_or_else(|| {
        let choices = names();
        let hint = match closest(name, choices.iter().copied()) {
            Some(c) => format!("did you mean `{c}`? Backends: {}", choices.join(", ")),
            None => format!("choose one of {}", choices.join(", ")),
        };
        Problem {
            key: None,
            message: format!("unknown backend {name:?}"),
            hint,
        }
    })
}

/// A bad option, said so that the caller can point at it (a template's line, a `--opt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The option at fault, when one is.
    pub key: Option<String>,
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\nhint: {}", self.hint)?;
        }
        Ok(())
    }
}

impl From<Problem> for crate::SchedError {
    fn from(p: Problem) -> Self {
        crate::SchedError::Config(p.to_string())
    }
}

/// The closest candidate to a misspelt name, if any is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Why `key` is not an option of `b`, with a hint drawn from that backend's options only.
fn unknown(b: &Backend, key: &str, generic: bool) -> Problem {
    let mut own: Vec<&str> = b.options.iter().map(|o| o.name).collect();
    if generic {
        own.extend(GENERIC.iter().map(|o| o.name));
    }
    let listing = if b.options.is_empty() {
        "it takes only the generic options".to_string()
    } else {
        let mut s = format!(
            "{} options: {}",
            b.name,
            b.options
                .iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(raw) = b.raw {
            s.push_str(&format!("; raw scheduler settings go in {raw}"));
        }
        s
    };
    let elsewhere: Vec<&str> = BACKENDS
        .iter()
        .filter(|o| o.name != b.name && o.option(key).is_some())
        .map(|o| o.name)
        .collect();
    let hint = if let Some(c) = closest(key, own.iter().copied()) {
        format!("did you mean `{c}`? ({listing})")
    } else if !elsewhere.is_empty() {
        // A portable equivalent on this backend (request_memory -> memory)?
        let portable = BACKENDS
            .iter()
            .filter_map(|o| o.option(key))
            .find_map(|o| o.portable);
        let here = portable.and_then(|p| b.options.iter().find(|o| o.portable == Some(p)));
        match here {
            Some(h) => format!(
                "`{key}` is a {} option; on {} write `{}` ({listing})",
                elsewhere.join("/"),
                b.name,
                h.name
            ),
            None => format!("`{key}` is a {} option ({listing})", elsewhere.join("/")),
        }
    } else {
        listing
    };
    Problem {
        key: Some(key.to_string()),
        message: format!("option {key:?} does not apply to the {} backend", b.name),
        hint,
    }
}

/// Reject keys that are not options of backend `b` (its own, plus the generic ones when
/// `generic`); the hint names the closest of *that* backend's options.
pub fn check_keys<'a>(
    b: &Backend,
    keys: impl IntoIterator<Item = &'a String>,
    generic: bool,
) -> Result<(), Problem> {
    for key in keys {
        let known = b.option(key).is_some() || (generic && GENERIC.iter().any(|o| o.name == key));
        if !known {
            return Err(unknown(b, key, generic));
        }
    }
    Ok(())
}

/// Check one option's value against its kind (what a template line or `--opt key=value`
/// needs before the rest of the options are known).
pub fn check_option(backend_name: &str, key: &str, value: &Json) -> Result<(), Problem> {
    let b = backend(backend_name)?;
    let spec = b
        .option(key)
        .or_else(|| GENERIC.iter().find(|o| o.name == key))
        .ok_or_else(|| unknown(b, key, true))?;
    Value::new(key, value)
        .check(spec.kind)
        .map_err(|e| Problem {
            key: Some(key.to_string()),
            message: e.to_string(),
            hint: format!("write e.g. {key} = {}", spec.example),
        })
}

/// The one validation of a set of options for a backend, as templates and `--opt` give
/// them (generic options included): every key known, every value of its kind, and the
/// combination accepted by the backend's own parser (e.g. SGE's `slots` needs `pe`).
/// Nothing is run: this never touches a scheduler.
pub fn check_options(backend_name: &str, options: &Map<String, Json>) -> Result<(), Problem> {
    let b = backend(backend_name)?;
    for (key, value) in options {
        check_option(backend_name, key, value)?;
    }
    let own: Map<String, Json> = options
        .iter()
        .filter(|(k, _)| b.option(k).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::parse_options(b.name, 1, &Json::Object(own.clone())).map_err(|e| {
        let text = e.to_string();
        let key = match &e {
            crate::SchedError::Core(shoal_core::CoreError::InvalidOption { option, .. }) => {
                Some(option.clone())
            }
            // A rule about several options names them: point at the first one it names.
            _ => own
                .keys()
                .filter_map(|k| {
                    text.match_indices(k.as_str())
                        .find(|(i, _)| {
                            let before = text[..*i].chars().last();
                            let after = text[i + k.len()..].chars().next();
                            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                        })
                        .map(|(i, _)| (i, k.clone()))
                })
                .min()
                .map(|(_, k)| k),
        };
        let (message, hint) = match text.split_once("\nhint: ") {
            Some((m, h)) => (m.to_string(), h.to_string()),
            None => (text, String::new()),
        };
        Problem { key, message, hint }
    })
}

/// Warnings for size options given as a bare number, which the backend reads in the option's
/// unit (`memory = 2` is 2 MB on Slurm): one per option, naming that unit and how to be sure.
/// The one rule for the Python API, `shoal.toml` templates and `shoal run --opt`.
pub fn bare_sizes(backend_name: &str, options: &Map<String, Json>) -> Vec<String> {
    let Ok(b) = backend(backend_name) else {
        return Vec::new();
    };
    b.options
        .iter()
        .filter(|o| o.kind == Kind::Memory)
        .filter_map(|o| {
            let Some(Json::Number(n)) = options.get(o.name) else {
                return None;
            };
            let (name, unit) = (o.name, o.unit.unwrap_or("MB"));
            Some(format!(
                "{name}={n} is read as {n} {unit} on {backend_name}; write {name}=\"{n}G\" for \
                 gigabytes, or \"{n}M\" to say {unit}"
            ))
        })
        .collect()
}

/// The registry for other languages (the Python package reads it once).
pub fn to_json() -> Json {
    serde_json::json!({ "backends": BACKENDS, "generic": GENERIC })
}

/// The options table of a backend's docs page (docs/backends/NAME.md, between the
/// `<!-- options -->` markers), or of the generic options when `name` is `generic`.
pub fn markdown_table(name: &str) -> String {
    let options = if name == "generic" {
        GENERIC
    } else {
        backend(name).map(|b| b.options).unwrap_or(&[])
    };
    // Backends mark the options a map or submit may ask for on its own (docs/resources.md).
    let per_call = name != "generic";
    let mut s = String::from("| option | type | default | becomes | meaning |");
    s.push_str(if per_call {
        " per call |\n|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|\n"
    });
    for o in options {
        let kind = match o.unit {
            Some(u) => format!("{} ({u})", o.kind.describe()),
            None => o.kind.describe().to_string(),
        };
        let flag = if o.flag.is_empty() {
            String::new()
        } else {
            format!("`{}`", o.flag)
        };
        s.push_str(&format!(
            "| `{}` | {kind} | {} | {flag} | {} |",
            o.name,
            o.default.unwrap_or(""),
            o.doc.replace('|', "\\|")
        ));
        if per_call {
            s.push_str(if o.per_call { " yes |" } else { " |" });
        }
        s.push('\n');
    }
    s
}

/// The backend sections of the `shoal.toml` that `shoal init` writes: a `default` template
/// per backend with its starter options set and every other option commented out.
pub fn init_sections() -> String {
    let mut s = String::new();
    for b in BACKENDS {
        s.push_str(&format!(
            "# {}: {}\n[{}.default]\n",
            b.name, b.summary, b.name
        ));
        let width = b
            .options
            .iter()
            .map(|o| o.name.len() + o.example.len())
            .max()
            .unwrap_or(0)
            + 5;
        for o in b.options {
            let line = format!("{} = {}", o.name, o.example);
            let line = if o.starter { line } else { format!("# {line}") };
            let flag = if o.flag.is_empty() || o.flag == "(raw)" {
                String::new()
            } else {
                format!("{}: ", o.flag)
            };
            s.push_str(&format!("{line:width$} # {flag}{}\n", o.doc));
        }
        if b.name == "local" {
            s.push_str("# workers = 4\n");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_backend_is_built_from_its_entry() {
        for b in BACKENDS {
            let names: Vec<&str> = b.options.iter().map(|o| o.name).collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(
                names.len(),
                unique.len(),
                "{}: an option listed twice",
                b.name
            );
            // Every documented example is a valid value of its option.
            for o in b.options {
                let v: toml::Value = toml::from_str(&format!("v = {}", o.example)).unwrap();
                let v = serde_json::to_value(&v["v"]).unwrap();
                check_option(b.name, o.name, &v)
                    .unwrap_or_else(|e| panic!("{}.{} example {}: {e}", b.name, o.name, o.example));
            }
            assert!(
                crate::parse_options(b.name, 1, &json!({})).is_ok(),
                "{}",
                b.name
            );
        }
    }

    #[test]
    fn the_slurm_constraint_template_is_accepted() {
        // The case: the Slurm backend takes constraint=, so templates must too.
        check_options(
            "slurm",
            &map(json!({"constraint": "a100", "cpus": 2, "workers": 4})),
        )
        .unwrap();
    }

    #[test]
    fn hints_come_from_that_backends_options_only() {
        let p = check_options("slurm", &map(json!({"partiton": "debug"}))).unwrap_err();
        assert_eq!(p.key.as_deref(), Some("partiton"));
        assert_eq!(
            p.message,
            "option \"partiton\" does not apply to the slurm backend"
        );
        assert!(
            p.hint.starts_with("did you mean `partition`?"),
            "{}",
            p.hint
        );
        // `queue` is close to nothing of slurm's: no SGE name is suggested there.
        let p = check_options("slurm", &map(json!({"queue": "all.q"}))).unwrap_err();
        assert!(p.hint.starts_with("`queue` is a sge option"), "{}", p.hint);
        assert!(!p.hint.contains("did you mean"), "{}", p.hint);
        let p = check_options("slurm", &map(json!({"request_memory": "1G"}))).unwrap_err();
        assert!(p.hint.contains("on slurm write `memory`"), "{}", p.hint);
        let p = check_options("sge", &map(json!({"partition": "x"}))).unwrap_err();
        assert!(p.hint.contains("qsub_args"), "{}", p.hint);
        let p = check_options("local", &map(json!({"cpus": 2}))).unwrap_err();
        assert!(p.hint.contains("slurm"), "{}", p.hint);
        let p = backend("slurn").unwrap_err();
        assert!(p.hint.starts_with("did you mean `slurm`?"), "{}", p.hint);
    }

    #[test]
    fn values_and_combinations_are_checked() {
        let p = check_options("slurm", &map(json!({"time": "10x"}))).unwrap_err();
        assert_eq!(p.key.as_deref(), Some("time"));
        assert!(p.message.contains("\"10x\""), "{}", p.message);
        let p = check_options("sge", &map(json!({"slots": 0}))).unwrap_err();
        assert_eq!(p.key.as_deref(), Some("slots"));
        let p = check_options("sge", &map(json!({"slots": 4}))).unwrap_err();
        assert!(
            p.message.contains("parallel environment") && p.hint.contains("pe="),
            "{p}"
        );
        assert_eq!(
            p.key.as_deref(),
            Some("slots"),
            "the rule points at the option it names"
        );
        let p = check_options("htcondor", &map(json!({"workers": 0}))).unwrap_err();
        assert_eq!(p.key.as_deref(), Some("workers"));
        check_options(
            "sge",
            &map(json!({"forward_env": ["PATH", "HOME"], "pe": "smp", "slots": 2})),
        )
        .unwrap();
        check_options(
            "htcondor",
            &map(json!({"getenv": true, "request_memory": "2G"})),
        )
        .unwrap();
    }

    #[test]
    fn json_for_python_has_every_field() {
        let j = to_json();
        let slurm = j["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "slurm")
            .unwrap();
        assert_eq!(slurm["defaults"]["workers"], json!({"fixed": 16}));
        assert_eq!(slurm["worker_id"], "env");
        let cpus = slurm["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "cpus")
            .unwrap();
        assert_eq!(cpus["flag"], "--cpus-per-task");
        assert_eq!(cpus["portable"], "request_cpus");
        assert_eq!(j["backends"][0]["defaults"]["workers"], "cpus");
    }

    /// The docs' option tables are generated; `SHOAL_UPDATE_DOCS=1 cargo test -p shoal-sched`
    /// rewrites them.
    #[test]
    fn docs_tables_are_current() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/backends");
        let update = std::env::var_os("SHOAL_UPDATE_DOCS").is_some();
        for name in ["slurm", "sge", "htcondor", "generic"] {
            let file = if name == "generic" { "README.md" } else { name };
            let path = docs.join(if name == "generic" {
                file.to_string()
            } else {
                format!("{file}.md")
            });
            let text = std::fs::read_to_string(&path).unwrap();
            let begin = format!("<!-- options:{name} -->\n");
            let end = "<!-- /options -->";
            let start = text
                .find(&begin)
                .unwrap_or_else(|| panic!("{} has no {begin:?} marker", path.display()))
                + begin.len();
            let stop = start + text[start..].find(end).unwrap();
            let table = markdown_table(name);
            if text[start..stop] != table {
                if update {
                    let new = format!("{}{table}{}", &text[..start], &text[stop..]);
                    std::fs::write(&path, new).unwrap();
                } else {
                    panic!(
                        "the options table in {} is out of date\nhint: run `SHOAL_UPDATE_DOCS=1 cargo test -p shoal-sched docs_tables`",
                        path.display()
                    );
                }
            }
        }
    }

    #[test]
    fn init_sections_parse_as_templates() {
        let text = init_sections();
        let doc: toml::Value = toml::from_str(&text).unwrap();
        for b in BACKENDS {
            let t = doc[b.name]["default"].as_table().unwrap();
            let options: Map<String, Json> = t
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap()))
                .collect();
            check_options(b.name, &options).unwrap();
            let starters = b.options.iter().filter(|o| o.starter).count();
            assert_eq!(options.len(), starters, "{}", b.name);
        }
        assert!(text.contains("# partition = \"debug\""), "{text}");
    }

    #[test]
    fn a_bare_size_is_warned_about_with_its_unit() {
        let opts = |v: Json| Map::from_iter([("memory".to_string(), v)]);
        let w = bare_sizes("slurm", &opts(2.into()));
        assert_eq!(
            w,
            ["memory=2 is read as 2 MB on slurm; write memory=\"2G\" for gigabytes, or \"2M\" to say MB"]
        );
        assert!(bare_sizes("slurm", &opts("2G".into())).is_empty());
        assert!(bare_sizes("local", &opts(2.into())).is_empty());
        let condor = Map::from_iter([("request_disk".to_string(), Json::from(1.5))]);
        assert_eq!(
            bare_sizes("htcondor", &condor)[0].split(';').next(),
            Some("request_disk=1.5 is read as 1.5 MB on htcondor")
        );
    }
}

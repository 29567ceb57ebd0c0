//! The project config: `shoal.toml` or `[tool.shoal]` in pyproject.toml, found by walking up
//! from the working directory; run defaults and named templates of backend options.
//!
//! ```toml
//! [defaults]
//! backend = "slurm"          # used when `shoal run` has no --backend
//! results_dir = "results"    # relative to this file
//! [slurm.default]            # the template used when --template is not given
//! cpus = 1
//! [slurm.two_cpus]
//! cpus = 2
//! time = "1h"
//! ```
//!
//! Every key and value is checked here, so a typo fails with the file and line before anything
//! is submitted.

use crate::error::{Result, RunError};
use crate::experiments::{self, Action, Dataset, Experiment, RawAction, RawExperiment};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const BACKENDS: [&str; 4] = ["local", "slurm", "sge", "htcondor"];

/// Valid keys of a backend's templates (its options, then the generic ones), from the
/// backend registry.
pub fn template_keys(backend: &str) -> Vec<&'static str> {
    let own = shoal_sched::registry::backend(backend)
        .map(|b| b.options)
        .unwrap_or(&[]);
    own.iter()
        .chain(shoal_sched::registry::GENERIC)
        .map(|o| o.name)
        .collect()
}

type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    backend: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    results_dir: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    defaults: Option<RawDefaults>,
    local: Option<BTreeMap<Spanned<String>, Spanned<SpannedTable>>>,
    slurm: Option<BTreeMap<Spanned<String>, Spanned<SpannedTable>>>,
    sge: Option<BTreeMap<Spanned<String>, Spanned<SpannedTable>>>,
    htcondor: Option<BTreeMap<Spanned<String>, Spanned<SpannedTable>>>,
    datasets: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    experiments: Option<BTreeMap<Spanned<String>, RawExperiment>>,
    actions: Option<BTreeMap<String, RawAction>>,
}

#[derive(Deserialize)]
struct Pyproject {
    tool: Option<PyTool>,
}

#[derive(Deserialize)]
struct PyTool {
    shoal: Option<RawConfig>,
}

/// A named set of backend options.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub options: Map<String, Json>,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file it came from (None: no config found, built-in defaults).
    pub path: Option<PathBuf>,
    /// Directory that relative paths are resolved against (the file's, or the cwd).
    pub root: PathBuf,
    pub backend: Option<String>,
    pub template: Option<String>,
    pub results_dir: Option<PathBuf>,
    pub templates: BTreeMap<String, BTreeMap<String, Template>>,
    pub datasets: BTreeMap<String, Dataset>,
    pub experiments: BTreeMap<String, Experiment>,
    /// Actions every run can use (an experiment's own actions come first).
    pub actions: BTreeMap<String, Action>,
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: String, hint: String) -> RunError {
        let (line, column) = line_col(self.text, span.start);
        RunError::Config {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
            hint,
        }
    }
}

fn toml_to_json(v: &toml::Value) -> Json {
    match v {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Why `check_option` refused an option.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionError {
    /// Not an option of that backend; the hint names the ones it takes.
    Unknown { hint: String },
    /// The value does not fit the option.
    Invalid { message: String, hint: String },
}

/// The one check of a backend option, for templates in shoal.toml and for `--opt` alike: the
/// backend registry judges the key (one of *that* backend's options) and the value.
pub fn check_option(
    backend: &str,
    key: &str,
    value: &Json,
) -> std::result::Result<(), OptionError> {
    shoal_sched::registry::check_option(backend, key, value).map_err(|p| {
        if p.message.contains("does not apply") {
            OptionError::Unknown { hint: p.hint }
        } else {
            OptionError::Invalid {
                message: p.message,
                hint: p.hint,
            }
        }
    })
}

/// Parse `--opt KEY=VALUE` for `backend`. VALUE is read as a TOML value when it is one
/// (`2`, `true`, `["--exclusive"]`, `{ A = "1" }`) and fits the option, else as a plain string
/// (`partition=debug`, `time=10m`), and checked by `check_option` like a template's value.
pub fn parse_opt(backend: &str, spec: &str) -> Result<(String, Json)> {
    let bad = |message: String, hint: String| {
        RunError::Command(format!("invalid --opt {spec:?}: {message}\nhint: {hint}"))
    };
    let Some((key, text)) = spec.split_once('=') else {
        return Err(bad(
            "expected KEY=VALUE".into(),
            "write e.g. --opt partition=debug --opt time=10m".into(),
        ));
    };
    let key = key.trim();
    let typed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .map(|v| toml_to_json(&v));
    let plain = Json::String(text.to_string());
    let first = typed.clone().unwrap_or_else(|| plain.clone());
    match check_option(backend, key, &first) {
        Ok(()) => Ok((key.to_string(), first)),
        Err(OptionError::Unknown { hint }) => {
            Err(bad(format!("{backend} has no option {key:?}"), hint))
        }
        Err(OptionError::Invalid { message, hint }) => {
            // `job_name=123` is a string to the user; only fall back when the text was typed.
            if typed.is_some() && check_option(backend, key, &plain).is_ok() {
                return Ok((key.to_string(), plain));
            }
            Err(bad(
                message,
                hint.replace(&format!("{key} = "), &format!("--opt {key}=")),
            ))
        }
    }
}

/// A template's options with the command line's overrides (`--opt`, `--workers`) on top.
pub fn merge_options(
    template: Option<&Template>,
    overrides: &Map<String, Json>,
) -> Map<String, Json> {
    let mut options = template.map(|t| t.options.clone()).unwrap_or_default();
    for (k, v) in overrides {
        options.insert(k.clone(), v.clone());
    }
    options
}

impl Config {
    /// Walk up from `cwd` to the first `shoal.toml`, or pyproject.toml with `[tool.shoal]`.
    pub fn find(cwd: &Path) -> Result<Config> {
        for dir in cwd.ancestors() {
            let p = dir.join("shoal.toml");
            if p.is_file() {
                return Config::load(&p);
            }
            let p = dir.join("pyproject.toml");
            if p.is_file() {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                if text.contains("[tool.shoal") {
                    return Config::load(&p);
                }
            }
        }
        Ok(Config {
            root: cwd.to_path_buf(),
            ..Config::default()
        })
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| shoal_core::CoreError::io(path, e))?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let ctx = Ctx { path, text };
        let pyproject = path.file_name().is_some_and(|n| n == "pyproject.toml");
        let de_err = |e: toml::de::Error| {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().to_string();
            // toml's "unknown field `x`, expected one of ..." is already the best hint.
            if let Some(i) = message.find(", expected") {
                let hint = format!("valid keys here: {}", &message[i + 11..]);
                message.truncate(i);
                return ctx.err(span, message, hint);
            }
            ctx.err(
                span,
                message,
                "see docs/runs.md for the config format".into(),
            )
        };
        let raw: RawConfig = if pyproject {
            let p: Pyproject = toml::from_str(text).map_err(de_err)?;
            p.tool.and_then(|t| t.shoal).unwrap_or_default()
        } else {
            toml::from_str(text).map_err(de_err)?
        };
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cfg = Config {
            path: Some(path.to_path_buf()),
            root: root.clone(),
            ..Config::default()
        };
        if let Some(d) = raw.defaults {
            if let Some(b) = d.backend {
                if !BACKENDS.contains(&b.get_ref().as_str()) {
                    return Err(ctx.err(
                        b.span(),
                        format!("unknown backend {:?}", b.get_ref()),
                        format!("backend is one of {}", BACKENDS.join(", ")),
                    ));
                }
                cfg.backend = Some(b.into_inner());
            }
            cfg.template = d.template.map(Spanned::into_inner);
            cfg.results_dir = d.results_dir.map(|r| root.join(r.into_inner()));
        }
        for (backend, table) in [
            ("local", raw.local),
            ("slurm", raw.slurm),
            ("sge", raw.sge),
            ("htcondor", raw.htcondor),
        ] {
            let Some(table) = table else { continue };
            let mut templates = BTreeMap::new();
            for (name, body) in table {
                let mut options = Map::new();
                let mut spans = BTreeMap::new();
                for (key, value) in body.into_inner() {
                    let json = toml_to_json(value.get_ref());
                    match check_option(backend, key.get_ref(), &json) {
                        Ok(()) => {}
                        Err(OptionError::Unknown { hint }) => {
                            return Err(ctx.err(
                                key.span(),
                                format!(
                                    "unknown key {:?} in {backend} template {:?}",
                                    key.get_ref(),
                                    name.get_ref()
                                ),
                                hint,
                            ))
                        }
                        Err(OptionError::Invalid { message, hint }) => {
                            return Err(ctx.err(value.span(), message, hint))
                        }
                    }
                    spans.insert(key.get_ref().clone(), key.span());
                    options.insert(key.into_inner(), json);
                }
                // Combinations (e.g. SGE's slots without pe) by the backend's own parser.
                if let Err(p) = shoal_sched::registry::check_options(backend, &options) {
                    let span = p
                        .key
                        .as_ref()
                        .and_then(|k| spans.get(k).cloned())
                        .unwrap_or_else(|| name.span());
                    return Err(ctx.err(span, p.message, p.hint));
                }
                templates.insert(
                    name.get_ref().clone(),
                    Template {
                        name: name.into_inner(),
                        options,
                    },
                );
            }
            cfg.templates.insert(backend.to_string(), templates);
        }
        let problem = |(span, message, hint): experiments::Problem| ctx.err(span, message, hint);
        for (name, value) in raw.datasets.unwrap_or_default() {
            let d = experiments::dataset(&root, &name, &value).map_err(problem)?;
            cfg.datasets.insert(d.name.clone(), d);
        }
        for (name, body) in raw.experiments.unwrap_or_default() {
            let e = experiments::experiment(&root, &name, body, &cfg.datasets, &BACKENDS)
                .map_err(problem)?;
            cfg.experiments.insert(e.name.clone(), e);
        }
        cfg.actions = experiments::actions(raw.actions.unwrap_or_default()).map_err(problem)?;
        Ok(cfg)
    }

    /// The experiment named `name`, or an error listing the config's experiments.
    pub fn experiment(&self, name: &str) -> Result<&Experiment> {
        self.experiments.get(name).ok_or_else(|| {
            let where_ = self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no shoal.toml found".into());
            RunError::Command(format!(
                "no experiment {name:?} ({where_})\nhint: {}",
                if self.experiments.is_empty() {
                    format!(
                        "define it as [experiments.{name}] with a script in shoal.toml, or run a \
                         command: shoal run -- COMMAND"
                    )
                } else {
                    format!(
                        "experiments: {}",
                        self.experiments
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ))
        })
    }

    /// The action `name` for a run of `experiment`: the experiment's own, else a top-level one.
    pub fn action(&self, experiment: Option<&str>, name: &str) -> Option<&Action> {
        experiment
            .and_then(|e| self.experiments.get(e))
            .and_then(|e| e.actions.get(name))
            .or_else(|| self.actions.get(name))
    }

    /// Every action a run of `experiment` can use, by name.
    pub fn actions_for(&self, experiment: Option<&str>) -> BTreeMap<String, &Action> {
        let mut all: BTreeMap<String, &Action> =
            self.actions.iter().map(|(k, v)| (k.clone(), v)).collect();
        if let Some(e) = experiment.and_then(|e| self.experiments.get(e)) {
            all.extend(e.actions.iter().map(|(k, v)| (k.clone(), v)));
        }
        all
    }

    /// The datasets as a run records them: `[{"name", "path", "env"}]`.
    pub fn datasets_json(&self) -> Json {
        self.datasets
            .values()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "path": d.path.display().to_string(),
                    "env": experiments::dataset_env(&d.name),
                })
            })
            .collect()
    }

    /// The template to use: `name`, else the config's default template, else `default` if the
    /// backend has one. Templates do not inherit from each other.
    pub fn template(&self, backend: &str, name: Option<&str>) -> Result<Option<Template>> {
        let all = self.templates.get(backend);
        let wanted = name.or(self.template.as_deref());
        match wanted {
            Some(n) => match all.and_then(|t| t.get(n)) {
                Some(t) => Ok(Some(t.clone())),
                None if name.is_none() && n == "default" => Ok(None),
                None => {
                    let have: Vec<&str> = all
                        .map(|t| t.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let where_ = self
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "no shoal.toml found".into());
                    Err(RunError::Command(format!(
                        "no {backend} template {n:?} ({where_})\nhint: {}",
                        if have.is_empty() {
                            format!("define it as [{backend}.{n}] in shoal.toml (`shoal init` writes one)")
                        } else {
                            format!("{backend} templates: {}", have.join(", "))
                        }
                    )))
                }
            },
            None => Ok(all.and_then(|t| t.get("default")).cloned()),
        }
    }
}

/// The commented config that `shoal init` writes: the defaults, then a `default` template
/// per backend with every option of the backend registry, the usual ones set.
pub fn init_template() -> String {
    format!(
        r#"# shoal project config: defaults and named templates for `shoal run`.
# shoal finds this file by walking up from the current directory (or [tool.shoal] in
# pyproject.toml). Full reference: docs/runs.md; backend options: docs/backends/.

[defaults]
backend = "local"          # local, slurm, sge or htcondor (overridden by --backend)
# template = "default"     # template used when --template is not given
results_dir = "results"    # runs write to RESULTS_DIR/RUN-NAME/TASK/ (relative to this file)

# Templates: [BACKEND.NAME] with that backend's options. `default` is used when --template is
# not given. Every backend also takes:
#   {}.

{}
# Datasets: every task gets each path as {{dataset:NAME}} and $SHOAL_DATASET_NAME.
# [datasets]
# iris = "data/iris.csv"                 # relative to this file
# mnist = {{ path = "/shared/mnist", description = "digits", tags = ["images"] }}

# Experiments: `shoal run NAME -P lr=0.1,0.01` runs INTERPRETER SCRIPT ARGS...; parameters the
# args do not name as {{placeholders}} are passed as --NAME VALUE.
# [experiments.train]
# description = "train the baseline"
# tags = ["baseline"]
# script = "train.py"                    # relative to this file
# interpreter = "python"                 # default for .py scripts
# args = ["--data", "{{dataset:iris}}", "--out", "{{out}}"]
# datasets = ["iris"]
# backend = "slurm"                      # defaults for its runs (--backend/--template win)
# template = "default"

# Actions: `shoal action RUN NAME` runs a command over a finished run's outputs, in this
# directory. Placeholders: {{run_dir}}, {{run}}, {{name}}, {{results}} (a CSV of every task's
# parameters and metrics), {{dataset:NAME}}; with --task N also {{out}} and {{task}}.
# [experiments.train.actions.plot]
# command = "python plot.py {{results}} {{run_dir}}/plot.png"
# [actions.summary]                      # for the runs of any experiment, or of none
# command = ["python", "summary.py", "{{results}}"]
"#,
        shoal_sched::registry::GENERIC
            .iter()
            .map(|o| o.name)
            .collect::<Vec<_>>()
            .join(", "),
        shoal_sched::registry::init_sections()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/p/shoal.toml"), text)
    }

    #[test]
    fn templates_and_defaults() {
        let c = parse(
            "[defaults]\nbackend = \"slurm\"\n\n[slurm.default]\ncpus = 1\n\n[slurm.two_cpus]\ncpus = 2\ntime = \"1h\"\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        assert_eq!(c.backend.as_deref(), Some("slurm"));
        let t = c.template("slurm", Some("two_cpus")).unwrap().unwrap();
        assert_eq!(t.options["cpus"], 2);
        assert_eq!(t.options["env"]["A"], "1");
        assert_eq!(c.template("slurm", None).unwrap().unwrap().name, "default");
        assert_eq!(c.template("local", None).unwrap(), None);
        let e = c.template("slurm", Some("nope")).unwrap_err().to_string();
        assert!(e.contains("default, two_cpus"), "{e}");
    }

    #[test]
    fn init_template_is_valid() {
        let c = parse(&init_template()).unwrap();
        assert_eq!(c.backend.as_deref(), Some("local"));
        assert!(c.templates["htcondor"].contains_key("default"));
        // The commented-out datasets, experiments and actions are valid once uncommented (the
        // backend sections above them list alternatives, e.g. SGE's time and h_rt).
        let text = init_template();
        let (backends, ours) = text.split_at(text.find("# Datasets:").unwrap());
        let uncommented: String = backends.to_string()
            + &ours
                .lines()
                .map(|l| match l.strip_prefix("# ") {
                    Some(rest)
                        if rest.starts_with('[')
                            || rest.split_once(" = ").is_some_and(|(k, _)| {
                                k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                            }) =>
                    {
                        rest.to_string() + "\n"
                    }
                    _ => l.to_string() + "\n",
                })
                .collect::<String>();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(c.experiments["train"].datasets, ["iris"]);
        assert!(c.action(Some("train"), "plot").is_some() && c.actions.contains_key("summary"));
    }

    #[test]
    fn errors_point_at_file_and_line() {
        let e = parse("[slurm.default]\ncpus = 1\ncpu = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/p/shoal.toml:3:1: unknown key \"cpu\""),
            "{e}"
        );
        assert!(e.contains("cpus, memory, time"), "{e}");
        let e = parse("[slurm.default]\n\ntime = \"10x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/p/shoal.toml:3:8: "), "{e}");
        assert!(e.contains("10x"), "{e}");
        let e = parse("[sge.a]\nslots = 0\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/p/shoal.toml:2:9: invalid value \"0\" for slots"),
            "{e}"
        );
        let e = parse("[sge.a]\nslots = 2\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/p/shoal.toml:2:1: slots=2 needs a parallel environment"),
            "{e}"
        );
        let e = parse("[slurm.default]\npartiton = \"debug\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `partition`?"), "{e}");
        let e = parse("[defaults]\nbakend = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/p/shoal.toml:2:1: unknown field `bakend`"),
            "{e}"
        );
        let e = parse("[pbs.default]\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/p/shoal.toml:1:2: unknown field `pbs`"),
            "{e}"
        );
        let e = parse("[defaults]\nbackend = \"pbs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:11: unknown backend"), "{e}");
        let e = parse("[slurm.default\n").unwrap_err().to_string();
        assert!(e.starts_with("/p/shoal.toml:1:"), "{e}");
    }

    #[test]
    fn templates_take_what_the_backends_take() {
        // The Slurm backend accepts constraint=, and SGE forward_env=: so do templates.
        let c =
            parse("[slurm.gpu]\nconstraint = \"a100\"\n\n[sge.env]\nforward_env = true\n").unwrap();
        assert_eq!(
            c.template("slurm", Some("gpu")).unwrap().unwrap().options["constraint"],
            "a100"
        );
        let names: Vec<&str> = shoal_sched::registry::names();
        let mut ours = BACKENDS.to_vec();
        ours.sort_unstable();
        let mut theirs = names.clone();
        theirs.sort_unstable();
        assert_eq!(ours, theirs, "BACKENDS lists the registry's backends");
    }

    #[test]
    fn pyproject_tool_shoal() {
        let text = "[project]\nname = \"x\"\n\n[tool.shoal.htcondor.default]\nrequest_cpus = 2\nrequest_memory = \"lots\"\n";
        let e = Config::parse(Path::new("/p/pyproject.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/p/pyproject.toml:6:18: "), "{e}");
        let ok = "[tool.shoal.htcondor.default]\nrequest_cpus = 2\n";
        let c = Config::parse(Path::new("/p/pyproject.toml"), ok).unwrap();
        assert_eq!(
            c.template("htcondor", None).unwrap().unwrap().options["request_cpus"],
            2
        );
    }

    #[test]
    fn find_walks_up() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("pyproject.toml"),
            "[tool.shoal.defaults]\nbackend = \"sge\"\n",
        )
        .unwrap();
        let sub = t.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let c = Config::find(&sub).unwrap();
        assert_eq!(c.backend.as_deref(), Some("sge"));
        assert_eq!(c.root, t.path());
        std::fs::write(sub.join("shoal.toml"), "").unwrap();
        assert_eq!(Config::find(&sub).unwrap().backend, None);
    }

    #[test]
    fn opt_is_checked_like_a_template_value() {
        assert_eq!(
            parse_opt("slurm", "partition=debug").unwrap(),
            ("partition".into(), Json::from("debug"))
        );
        assert_eq!(parse_opt("slurm", "cpus=2").unwrap().1, Json::from(2));
        assert_eq!(parse_opt("slurm", "time=10m").unwrap().1, Json::from("10m"));
        // The registry takes a number for a name (the backend writes it as text).
        assert_eq!(
            parse_opt("slurm", "job_name=123").unwrap().1,
            Json::from(123)
        );
        assert_eq!(
            parse_opt("slurm", "sbatch_args=[\"--exclusive\"]")
                .unwrap()
                .1,
            serde_json::json!(["--exclusive"])
        );
        assert_eq!(
            parse_opt("local", "env={ A = \"1\" }").unwrap().1,
            serde_json::json!({"A": "1"})
        );
        assert_eq!(
            parse_opt("htcondor", "getenv=true").unwrap().1,
            Json::from(true)
        );
        // The registry's words, with the hint in --opt form.
        let e = parse_opt("slurm", "cpus=0").unwrap_err().to_string();
        assert!(
            e.contains("for cpus: must be a whole number >= 1") && e.contains("--opt cpus=1"),
            "{e}"
        );
        let e = parse_opt("slurm", "time=forever").unwrap_err().to_string();
        assert!(e.contains("forever"), "{e}");
        let e = parse_opt("slurm", "cpu=2").unwrap_err().to_string();
        assert!(
            e.contains("slurm has no option \"cpu\"") && e.contains("did you mean `cpus`?"),
            "{e}"
        );
        // The same key is refused the same way in a template, with the same hint.
        let t = parse("[slurm.default]\ncpu = 2\n").unwrap_err().to_string();
        assert!(t.contains("did you mean `cpus`?"), "{t}");
        let e = parse_opt("sge", "partition").unwrap_err().to_string();
        assert!(e.contains("expected KEY=VALUE"), "{e}");
        let tpl = Template {
            name: "t".into(),
            options: serde_json::json!({"cpus": 1, "time": "1h"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let over = serde_json::json!({"time": "10m"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            Json::Object(merge_options(Some(&tpl), &over)),
            serde_json::json!({"cpus": 1, "time": "10m"})
        );
    }

    #[test]
    fn experiments_datasets_and_actions() {
        let c = parse(
            "[datasets]\niris = \"data/iris.csv\"\nmnist = { path = \"/d/mnist\", description = \"digits\" }\n\n\
             [actions.summary]\ncommand = \"python summary.py {results}\"\n\n\
             [experiments.hist]\ndescription = \"histograms\"\ntags = [\"stats\"]\n\
             script = \"exp/hist.py\"\nargs = [\"--storage_path\", \"{out}\"]\ndatasets = [\"iris\"]\n\
             [experiments.hist.actions.plot]\ncommand = [\"python\", \"plot.py\", \"{run_dir}\"]\n\
             [experiments.sweep]\nscript = \"run.sh\"\ninterpreter = \"bash -e\"\n",
        )
        .unwrap();
        assert_eq!(c.datasets["iris"].path, Path::new("/p/data/iris.csv"));
        assert_eq!(c.datasets["mnist"].description.as_deref(), Some("digits"));
        let h = c.experiment("hist").unwrap();
        assert_eq!(h.script, Path::new("/p/exp/hist.py"));
        assert_eq!(h.interpreter, ["python"]);
        assert_eq!(c.experiment("sweep").unwrap().interpreter, ["bash", "-e"]);
        assert_eq!(
            c.action(Some("hist"), "plot").unwrap().command[1],
            "plot.py"
        );
        assert_eq!(
            c.action(Some("hist"), "summary").unwrap().command[0],
            "python"
        );
        assert!(c.action(None, "plot").is_none());
        assert_eq!(
            c.actions_for(Some("hist")).keys().collect::<Vec<_>>(),
            ["plot", "summary"]
        );
        let vars = crate::registry::dataset_vars(&c.datasets_json());
        assert!(vars.contains(&("dataset:iris".into(), "/p/data/iris.csv".into())));
        assert_eq!(c.datasets_json()[0]["env"], "SHOAL_DATASET_IRIS");
        let e = c.experiment("nope").unwrap_err().to_string();
        assert!(e.contains("experiments: hist, sweep"), "{e}");

        let e = parse("[experiments.x]\nscript = \"a.py\"\ndatasets = [\"iris\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/p/shoal.toml:3:13: experiment \"x\" uses dataset \"iris\""),
            "{e}"
        );
        let e = parse("[experiments.x]\nscrpt = \"a.py\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `scrpt`") && e.contains("script"),
            "{e}"
        );
        let e = parse("[datasets]\niris = { pth = \"x\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/p/shoal.toml:2:8: unknown key \"pth\""),
            "{e}"
        );
        let e = parse("[actions.p]\ncommand = \"python 'plot.py\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unclosed quote"), "{e}");
    }
}

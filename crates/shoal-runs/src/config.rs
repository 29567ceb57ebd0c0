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
                    // The backend registry judges keys and values, as for Python and --opt.
                    let json = toml_to_json(value.get_ref());
                    if let Err(p) =
                        shoal_sched::registry::check_option(backend, key.get_ref(), &json)
                    {
                        return Err(if p.key.is_some() && p.message.contains("does not apply") {
                            ctx.err(
                                key.span(),
                                format!(
                                    "unknown key {:?} in {backend} template {:?}",
                                    key.get_ref(),
                                    name.get_ref()
                                ),
                                p.hint,
                            )
                        } else {
                            ctx.err(value.span(), p.message, p.hint)
                        });
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
        Ok(cfg)
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

{}"#,
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
}

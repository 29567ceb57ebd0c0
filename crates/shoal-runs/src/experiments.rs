//! What a project declares besides templates (Qanat's concepts): experiments (a script, its
//! interpreter, description, tags, the datasets it uses, its actions), named datasets whose
//! paths every task receives, and actions — named commands run over a finished run's outputs.
//!
//! ```toml
//! [datasets]
//! iris = "data/iris.csv"                      # relative to shoal.toml
//! [experiments.iris]
//! script = "experiments/iris.py"              # run as `python experiments/iris.py ...`
//! args = ["--data", "{dataset:iris}", "--out", "{out}"]
//! tags = ["baseline"]
//! [experiments.iris.actions.plot]
//! command = "python experiments/plot.py --results {results}"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A problem at a place in the config file: (span, message, hint).
pub(crate) type Problem = (Range<usize>, String, String);

/// A named dataset; every task gets its path as `{dataset:NAME}` and `SHOAL_DATASET_NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// Absolute (relative paths are resolved against the config file's directory).
    pub path: PathBuf,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

/// A named command run over a run's outputs (`shoal action RUN NAME`).
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub description: Option<String>,
    pub command: Vec<String>,
}

/// A named experiment: `shoal run NAME` runs its script over the parameter grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// Absolute path of the script.
    pub script: PathBuf,
    /// The program that runs the script (`python`), or empty to run the script itself.
    pub interpreter: Vec<String>,
    pub args: Vec<String>,
    pub datasets: Vec<String>,
    pub backend: Option<String>,
    pub template: Option<String>,
    pub actions: BTreeMap<String, Action>,
}

/// The environment variable carrying a dataset's path: `SHOAL_DATASET_` + the name in capitals,
/// other characters as `_`.
pub fn dataset_env(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SHOAL_DATASET_{tail}")
}

impl Experiment {
    /// The command of one of its runs: interpreter, script, its args, then `extra` (what came
    /// after `--`). Parameters that no argument names as a placeholder are passed as
    /// `--NAME VALUE`, as Qanat passes them.
    pub fn command(&self, extra: &[String], params: &[String]) -> Vec<String> {
        let mut cmd = self.interpreter.clone();
        cmd.push(self.script.display().to_string());
        cmd.extend(self.args.iter().cloned());
        cmd.extend(extra.iter().cloned());
        let used = crate::params::placeholders(&cmd);
        for p in params {
            if !used.contains(p) {
                cmd.push(format!("--{p}"));
                cmd.push(format!("{{{p}}}"));
            }
        }
        cmd
    }
}

/// A string (split like a shell would) or a list of words.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum Words {
    Line(String),
    List(Vec<String>),
}

impl Words {
    fn split(self, span: Range<usize>, what: &str) -> Result<Vec<String>, Problem> {
        match self {
            Words::List(v) => Ok(v),
            Words::Line(s) => shlex::split(&s).ok_or_else(|| {
                (
                    span,
                    format!("{what} {s:?} has an unclosed quote"),
                    format!("close the quote, or write {what} as a list of words"),
                )
            }),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAction {
    description: Option<String>,
    command: Spanned<Words>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExperiment {
    description: Option<String>,
    tags: Option<Vec<String>>,
    script: Spanned<String>,
    interpreter: Option<Spanned<Words>>,
    args: Option<Spanned<Words>>,
    datasets: Option<Vec<Spanned<String>>>,
    backend: Option<Spanned<String>>,
    template: Option<String>,
    actions: Option<BTreeMap<String, RawAction>>,
}

fn check_name(name: &Spanned<String>, what: &str) -> Result<(), Problem> {
    let n = name.get_ref();
    if crate::registry::is_valid_name(n) {
        Ok(())
    } else {
        Err((
            name.span(),
            format!("invalid {what} name {n:?}"),
            "a name starts with a letter and holds letters, digits, '_', '.' and '-'".into(),
        ))
    }
}

pub(crate) fn action(name: String, raw: RawAction) -> Result<Action, Problem> {
    let span = raw.command.span();
    let command = raw.command.into_inner().split(span.clone(), "command")?;
    if command.is_empty() {
        return Err((
            span,
            format!("action {name:?} has an empty command"),
            "write e.g. command = \"python plot.py --results {results}\"".into(),
        ));
    }
    Ok(Action {
        name,
        description: raw.description,
        command,
    })
}

pub(crate) fn actions(
    raw: BTreeMap<String, RawAction>,
) -> Result<BTreeMap<String, Action>, Problem> {
    raw.into_iter()
        .map(|(n, a)| Ok((n.clone(), action(n, a)?)))
        .collect()
}

pub(crate) fn dataset(
    root: &Path,
    name: &Spanned<String>,
    value: &Spanned<toml::Value>,
) -> Result<Dataset, Problem> {
    check_name(name, "dataset")?;
    let bad = |message: String| {
        (
            value.span(),
            message,
            "write NAME = \"path\", or NAME = { path = \"...\", description = \"...\", \
             tags = [\"...\"] }"
                .to_string(),
        )
    };
    let (path, description, tags) = match value.get_ref() {
        toml::Value::String(p) => (p.clone(), None, Vec::new()),
        toml::Value::Table(t) => {
            if let Some(k) = t
                .keys()
                .find(|k| !["path", "description", "tags"].contains(&k.as_str()))
            {
                return Err(bad(format!(
                    "unknown key {k:?} in dataset {:?}",
                    name.get_ref()
                )));
            }
            let Some(toml::Value::String(p)) = t.get("path") else {
                return Err(bad(format!("dataset {:?} needs a path", name.get_ref())));
            };
            let description = t
                .get("description")
                .and_then(|d| d.as_str())
                .map(String::from);
            let tags = t
                .get("tags")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (p.clone(), description, tags)
        }
        other => {
            return Err(bad(format!(
                "dataset {:?} must be a path or a table, not {other}",
                name.get_ref()
            )))
        }
    };
    Ok(Dataset {
        name: name.get_ref().clone(),
        path: root.join(path),
        description,
        tags,
    })
}

pub(crate) fn experiment(
    root: &Path,
    name: &Spanned<String>,
    raw: RawExperiment,
    datasets: &BTreeMap<String, Dataset>,
    backends: &[&str],
) -> Result<Experiment, Problem> {
    check_name(name, "experiment")?;
    for d in raw.datasets.iter().flatten() {
        if !datasets.contains_key(d.get_ref()) {
            return Err((
                d.span(),
                format!(
                    "experiment {:?} uses dataset {:?}, which [datasets] does not define",
                    name.get_ref(),
                    d.get_ref()
                ),
                format!(
                    "define it as [datasets] {} = \"path\"{}",
                    d.get_ref(),
                    if datasets.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (defined: {})",
                            datasets.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
            ));
        }
    }
    if let Some(b) = &raw.backend {
        if !backends.contains(&b.get_ref().as_str()) {
            return Err((
                b.span(),
                format!("unknown backend {:?}", b.get_ref()),
                format!("backend is one of {}", backends.join(", ")),
            ));
        }
    }
    let script = raw.script.get_ref().clone();
    let interpreter = match raw.interpreter {
        Some(i) => {
            let span = i.span();
            i.into_inner().split(span, "interpreter")?
        }
        None if script.ends_with(".py") => vec!["python".into()],
        None if script.ends_with(".sh") => vec!["bash".into()],
        None => Vec::new(),
    };
    let args = match raw.args {
        Some(a) => {
            let span = a.span();
            a.into_inner().split(span, "args")?
        }
        None => Vec::new(),
    };
    Ok(Experiment {
        name: name.get_ref().clone(),
        description: raw.description,
        tags: raw.tags.unwrap_or_default(),
        script: root.join(script),
        interpreter,
        args,
        datasets: raw
            .datasets
            .unwrap_or_default()
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        backend: raw.backend.map(Spanned::into_inner),
        template: raw.template,
        actions: actions(raw.actions.unwrap_or_default())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_parameters_become_flags() {
        let e = Experiment {
            name: "h".into(),
            description: None,
            tags: vec![],
            script: "/p/h.py".into(),
            interpreter: vec!["python".into()],
            args: vec!["--storage_path".into(), "{out}".into()],
            datasets: vec![],
            backend: None,
            template: None,
            actions: BTreeMap::new(),
        };
        let cmd = e.command(&["--seed={seed}".into()], &["seed".into(), "nbins".into()]);
        assert_eq!(
            cmd,
            [
                "python",
                "/p/h.py",
                "--storage_path",
                "{out}",
                "--seed={seed}",
                "--nbins",
                "{nbins}"
            ]
        );
        assert_eq!(dataset_env("mnist-2.0"), "SHOAL_DATASET_MNIST_2_0");
    }
}

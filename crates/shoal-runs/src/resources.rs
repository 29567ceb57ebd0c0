//! Per-task resources of a run (`shoal run -R cpus={threads}`, docs/runs.md): a per-call
//! resource of the backend (docs/resources.md) whose value may name the task's parameters.
//! Each task's resources are those values with its parameters filled in; tasks with equal
//! resources share a worker shape, so a grid over thread counts asks the scheduler for as
//! many CPUs as each task uses.
//!
//! The templates are kept with the run's options under [`KEY`]; the driver takes them out
//! before the rest becomes the pool's options.

use crate::error::{Result, RunError};
use crate::params::{check_placeholders, render};
use serde_json::{Map, Value as Json};
use std::collections::BTreeSet;

/// Where the templates live among a run's options.
pub const KEY: &str = "task_resources";

/// `-R KEY=VALUE` specs as templates (`{"cpus": "{threads}"}`); VALUE may hold `{NAME}`
/// placeholders of the grid's parameters (`names`).
pub fn parse(specs: &[String], names: &[String]) -> Result<Map<String, Json>> {
    let mut out = Map::new();
    for spec in specs {
        let Some((key, value)) = spec.split_once('=') else {
            return Err(RunError::Command(format!(
                "invalid --resources {spec:?}: expected KEY=VALUE\nhint: write e.g. \
                 --resources cpus={{threads}} --resources memory=4G"
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        check_placeholders(&[value.to_string()], names).map_err(|e| match e {
            RunError::Command(m) => RunError::Command(
                m.replace("in the command argument", &format!("in --resources {key}=")),
            ),
            other => other,
        })?;
        out.insert(key.to_string(), Json::String(value.to_string()));
    }
    Ok(out)
}

/// One task's resources: each template with the task's parameters filled in.
pub fn for_task(templates: &Map<String, Json>, params: &[(String, String)]) -> Map<String, Json> {
    templates
        .iter()
        .map(|(k, v)| {
            let value = render(&[plain(v)], params).remove(0);
            (k.clone(), Json::String(value))
        })
        .collect()
}

/// A task's resources as `shoal run --dry-run` and its errors show them: `cpus=4,memory=4G`.
pub fn label(resources: &Map<String, Json>) -> String {
    let parts: Vec<String> = resources
        .iter()
        .map(|(k, v)| format!("{k}={}", plain(v)))
        .collect();
    parts.join(",")
}

/// Check every distinct set of task resources against the backend registry, laid over the
/// run's `options`, before anything is registered or submitted; the error names the first
/// task that asks for it.
pub fn check(
    backend: &str,
    options: &Map<String, Json>,
    templates: &Map<String, Json>,
    combos: &[Vec<(String, String)>],
) -> Result<()> {
    if templates.is_empty() {
        return Ok(());
    }
    let mut base = options.clone();
    base.remove(KEY);
    base.remove("workers");
    let base = Json::Object(base);
    let mut seen = BTreeSet::new();
    for (i, combo) in combos.iter().enumerate() {
        let r = for_task(templates, combo);
        if !seen.insert(Json::Object(r.clone()).to_string()) {
            continue;
        }
        shoal_sched::shapes::resolve(backend, &base, &r).map_err(|e| {
            RunError::Command(format!(
                "task {i} asks for resources {} that the {backend} backend refuses: {e}",
                label(&r)
            ))
        })?;
    }
    Ok(())
}

fn plain(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["threads".into(), "mem".into()]
    }

    fn combo(t: &str) -> Vec<(String, String)> {
        vec![("threads".into(), t.into()), ("mem".into(), "2".into())]
    }

    #[test]
    fn templates_take_the_tasks_parameters() {
        let t = parse(&["cpus={threads}".into(), "memory={mem}G".into()], &names()).unwrap();
        let r = for_task(&t, &combo("4"));
        assert_eq!(r["cpus"], "4");
        assert_eq!(r["memory"], "2G");
    }

    #[test]
    fn bad_specs_and_unknown_placeholders_are_refused() {
        let e = parse(&["cpus".into()], &names()).unwrap_err();
        assert!(e.to_string().contains("expected KEY=VALUE"), "{e}");
        let e = parse(&["cpus={thread}".into()], &names()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("unknown placeholder {thread} in --resources cpus="),
            "{text}"
        );
    }

    #[test]
    fn every_distinct_request_is_checked_naming_its_task() {
        let t = parse(&["cpus={threads}".into()], &names()).unwrap();
        let combos = vec![combo("1"), combo("2"), combo("0")];
        let e = check("slurm", &Map::new(), &t, &combos).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("task 2 asks for resources cpus=0"),
            "{text}"
        );
        check("slurm", &Map::new(), &t, &combos[..2]).unwrap();
        let t = parse(&["cpu=2".into()], &names()).unwrap();
        let e = check("slurm", &Map::new(), &t, &combos).unwrap_err();
        assert!(e.to_string().contains("did you mean `cpus`?"), "{e}");
    }
}

//! `shoal import-qanat`: turn the `htcondor:`/`slurm:` submit templates of a Qanat
//! `.qanat/config.yaml` into shoal.toml templates with shoal's option names.

use crate::config::Config;
use crate::error::{Result, RunError};
use serde_yaml::Value as Yaml;
use std::path::Path;

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn int_or_str(text: &str) -> toml::Value {
    match text.parse::<i64>() {
        Ok(i) => toml::Value::Integer(i),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Slurm: `--cpus-per-task: 2` -> `cpus = 2`; flags without a shoal option go to sbatch_args.
fn slurm_template(map: &serde_yaml::Mapping, notes: &mut Vec<String>) -> toml::Table {
    let mut t = toml::Table::new();
    let mut extra = Vec::new();
    for (k, v) in map {
        let (Some(key), Some(val)) = (k.as_str(), scalar(v)) else {
            continue;
        };
        let option = match key {
            "--cpus-per-task" | "-c" => Some("cpus"),
            "--mem" => Some("memory"),
            "--time" | "-t" => Some("time"),
            "--partition" | "-p" => Some("partition"),
            "--account" | "-A" => Some("account"),
            "--qos" | "-q" => Some("qos"),
            "--gpus" | "-G" => Some("gpus"),
            "--gres" => Some("gres"),
            "--job-name" | "-J" => Some("job_name"),
            _ => None,
        };
        match option {
            Some("cpus") | Some("gpus") => {
                t.insert(option.unwrap_or_default().into(), int_or_str(&val));
            }
            Some(o) => {
                t.insert(o.into(), toml::Value::String(val));
            }
            None if matches!(key, "--output" | "-o" | "--error" | "-e") => {
                notes.push(format!(
                    "dropped slurm {key} (shoal keeps worker logs itself)"
                ));
            }
            None if key.starts_with("--") => extra.push(format!("{key}={val}")),
            None => {
                extra.push(key.to_string());
                extra.push(val);
            }
        }
    }
    if !extra.is_empty() {
        t.insert("sbatch_args".into(), extra.into());
    }
    t
}

/// HTCondor: submit-description keys keep their names; `+Attr` goes to attributes.
fn htcondor_template(map: &serde_yaml::Mapping, notes: &mut Vec<String>) -> toml::Table {
    let mut t = toml::Table::new();
    let mut attributes = toml::Table::new();
    let mut extra = Vec::new();
    for (k, v) in map {
        let (Some(key), Some(val)) = (k.as_str(), scalar(v)) else {
            continue;
        };
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "request_cpus" | "request_gpus" => {
                t.insert(lower.clone(), int_or_str(&val));
            }
            "request_memory" | "request_disk" | "universe" | "requirements"
            | "accounting_group" => {
                t.insert(lower.clone(), toml::Value::String(val));
            }
            "initialdir" | "initial_dir" => {
                t.insert("initial_dir".into(), toml::Value::String(val));
            }
            "getenv" => {
                t.insert(
                    "getenv".into(),
                    toml::Value::Boolean(val.eq_ignore_ascii_case("true")),
                );
            }
            "executable" | "arguments" | "output" | "error" | "log" | "queue" => {
                notes.push(format!(
                    "dropped htcondor {key} (shoal writes these itself)"
                ));
            }
            _ if key.starts_with('+') || key.starts_with("My.") => {
                let name = key.trim_start_matches('+').trim_start_matches("My.");
                attributes.insert(name.into(), toml::Value::String(val));
            }
            _ => extra.push(format!("{key} = {val}")),
        }
    }
    if !attributes.is_empty() {
        t.insert("attributes".into(), toml::Value::Table(attributes));
    }
    if !extra.is_empty() {
        t.insert("extra_directives".into(), extra.into());
    }
    t
}

/// Read a Qanat config and return shoal.toml text (checked by shoal's own config parser).
pub fn import(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| shoal_core::CoreError::io(path, e))?;
    let doc: Yaml = serde_yaml::from_str(&text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        RunError::Config {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
            hint: "this should be Qanat's .qanat/config.yaml".into(),
        }
    })?;
    let mut root = toml::Table::new();
    let mut notes = Vec::new();
    for backend in ["htcondor", "slurm"] {
        let Some(templates) = doc.get(backend).and_then(Yaml::as_mapping) else {
            continue;
        };
        let mut section = toml::Table::new();
        for (name, body) in templates {
            let (Some(name), Some(body)) = (name.as_str(), body.as_mapping()) else {
                continue;
            };
            let t = if backend == "slurm" {
                slurm_template(body, &mut notes)
            } else {
                htcondor_template(body, &mut notes)
            };
            section.insert(name.to_string(), toml::Value::Table(t));
        }
        root.insert(backend.into(), toml::Value::Table(section));
    }
    if root.is_empty() {
        return Err(RunError::Command(format!(
            "{} has no htcondor: or slurm: templates\nhint: pass Qanat's .qanat/config.yaml",
            path.display()
        )));
    }
    let body = toml::to_string(&root).map_err(|e| RunError::Command(e.to_string()))?;
    let mut out = format!(
        "# Imported from {} by `shoal import-qanat`.\n",
        path.display()
    );
    for n in &notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    out.push('\n');
    out.push_str(&body);
    // Whatever we wrote must load: values Qanat accepted but shoal cannot parse fail here.
    Config::parse(Path::new("shoal.toml (imported)"), &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_qanat_templates() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config.yaml");
        std::fs::write(
            &p,
            "storage_path: /data\nhtcondor:\n  default:\n    +WishedAcctGroup: group_x\n    getenv: 'true'\n    request_cpus: 1\n    request_disk: 1GB\n    request_gpus: 0\n    request_memory: 1GB\n    universe: vanilla\nslurm:\n  default:\n    --cpus-per-task: 1\n    --ntasks: 1\n    --time: 1-00:00:00\n  gpu:\n    --gres: gpu:1\n    --mem: 8G\n",
        )
        .unwrap();
        let out = import(&p);
        // request_gpus = 0 is not a valid shoal value (>= 1): the import says so, with a line.
        let e = out.unwrap_err().to_string();
        assert!(
            e.contains("for request_gpus: must be a whole number >= 1"),
            "{e}"
        );
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("    request_gpus: 0\n", "");
        std::fs::write(&p, text).unwrap();
        let out = import(&p).unwrap();
        let c = Config::parse(Path::new("x/shoal.toml"), &out).unwrap();
        let h = c.template("htcondor", None).unwrap().unwrap().options;
        assert_eq!(h["request_cpus"], 1);
        assert_eq!(h["getenv"], true);
        assert_eq!(h["attributes"]["WishedAcctGroup"], "group_x");
        let s = c.template("slurm", None).unwrap().unwrap().options;
        assert_eq!(s["cpus"], 1);
        assert_eq!(s["time"], "1-00:00:00");
        assert_eq!(s["sbatch_args"][0], "--ntasks=1");
        let g = c.template("slurm", Some("gpu")).unwrap().unwrap().options;
        assert_eq!(
            (g["gres"].as_str(), g["memory"].as_str()),
            (Some("gpu:1"), Some("8G"))
        );
    }
}

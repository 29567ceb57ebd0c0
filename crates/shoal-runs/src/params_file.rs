//! Parameters from a file (`--params-file rows.csv`): each row is one combination, so a file is
//! one zipped axis of the grid, like a `--group`. CSV (a header of names), JSON (a list of
//! objects), JSON Lines (one object per line) and YAML (a list of mappings).

use crate::error::{Result, RunError};
use crate::params::{check_name, Axis};
use serde_json::Value as Json;
use std::path::Path;

fn bad(path: &Path, reason: impl ToString, hint: impl ToString) -> RunError {
    RunError::param(&path.display().to_string(), reason, hint)
}

const HINT: &str = "a params file is CSV with a header of names, a JSON or YAML list of \
                    objects, or JSON Lines (one object per line), one row per task";

/// A scalar cell as the text the command receives.
fn cell(path: &Path, row: usize, name: &str, v: &Json) -> Result<String> {
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(n) => Ok(n.to_string()),
        Json::Bool(b) => Ok(b.to_string()),
        _ => Err(bad(
            path,
            format!("row {row}: {name} is {v}, not a string, number or boolean"),
            "give each parameter one plain value per row",
        )),
    }
}

/// Rows of objects -> an axis; every row must name the same parameters.
fn from_objects(path: &Path, rows: Vec<Json>) -> Result<Axis> {
    let mut names: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let n = i + 1;
        let Json::Object(obj) = row else {
            return Err(bad(
                path,
                format!("row {n} is not an object of NAME: VALUE"),
                HINT,
            ));
        };
        if i == 0 {
            names = obj.keys().cloned().collect();
        }
        let mut values = Vec::with_capacity(names.len());
        for name in &names {
            let v = obj.get(name).ok_or_else(|| {
                bad(
                    path,
                    format!("row {n} has no {name} (row 1 has {})", names.join(", ")),
                    "give every row the same parameters",
                )
            })?;
            values.push(cell(path, n, name, v)?);
        }
        if let Some(extra) = obj.keys().find(|k| !names.contains(k)) {
            return Err(bad(
                path,
                format!("row {n} has {extra}, which row 1 does not"),
                "give every row the same parameters",
            ));
        }
        out.push(values);
    }
    Ok(Axis { names, rows: out })
}

fn csv_axis(path: &Path, text: &str) -> Result<Axis> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| bad(path, e, HINT))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| bad(path, format!("row {}: {e}", i + 1), HINT))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok(Axis { names, rows })
}

/// Read a params file into one axis (names checked as parameter names).
pub fn load(path: &Path) -> Result<Axis> {
    let text = std::fs::read_to_string(path).map_err(|e| shoal_core::CoreError::io(path, e))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let axis = match ext.as_str() {
        "csv" => csv_axis(path, &text)?,
        "json" => match serde_json::from_str::<Json>(&text) {
            Ok(Json::Array(rows)) => from_objects(path, rows)?,
            Ok(_) => return Err(bad(path, "the JSON is not a list of objects", HINT)),
            Err(e) => return Err(bad(path, e, HINT)),
        },
        "jsonl" | "ndjson" => {
            let rows = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .map_err(|e| bad(path, format!("line {}: {e}", i + 1), HINT))
                })
                .collect::<Result<Vec<Json>>>()?;
            from_objects(path, rows)?
        }
        "yaml" | "yml" => match serde_yaml::from_str::<Json>(&text) {
            Ok(Json::Array(rows)) => from_objects(path, rows)?,
            Ok(_) => return Err(bad(path, "the YAML is not a list of mappings", HINT)),
            Err(e) => return Err(bad(path, e, HINT)),
        },
        _ => {
            return Err(bad(
                path,
                "unknown kind of file",
                "name it .csv, .json, .jsonl or .yaml",
            ))
        }
    };
    if axis.rows.is_empty() {
        return Err(bad(path, "no rows", "give one row per task"));
    }
    for name in &axis.names {
        check_name(&path.display().to_string(), name)?;
    }
    Ok(axis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Axis> {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        load(&p)
    }

    fn rows(a: &Axis) -> Vec<String> {
        a.rows.iter().map(|r| r.join("/")).collect()
    }

    #[test]
    fn every_format_gives_the_same_rows() {
        let want = ["0.1/adam", "0.01/sgd"];
        for (name, text) in [
            ("p.csv", "lr, opt\n0.1, adam\n0.01,sgd\n"),
            (
                "p.json",
                r#"[{"lr": 0.1, "opt": "adam"}, {"lr": 0.01, "opt": "sgd"}]"#,
            ),
            (
                "p.jsonl",
                "{\"lr\": 0.1, \"opt\": \"adam\"}\n\n{\"opt\": \"sgd\", \"lr\": 0.01}\n",
            ),
            ("p.yaml", "- lr: 0.1\n  opt: adam\n- {lr: 0.01, opt: sgd}\n"),
        ] {
            let a = load_text(name, text).unwrap();
            assert_eq!(a.names, ["lr", "opt"], "{name}");
            assert_eq!(rows(&a), want, "{name}");
        }
    }

    #[test]
    fn bad_files_name_the_row() {
        for (name, text, needle) in [
            ("p.json", r#"[{"a": 1}, {"b": 2}]"#, "row 2 has no a"),
            ("p.json", r#"[{"a": 1}, {"a": 2, "b": 3}]"#, "row 2 has b"),
            ("p.json", r#"[{"a": [1, 2]}]"#, "row 1: a is [1,2]"),
            ("p.json", r#"{"a": [1, 2]}"#, "not a list of objects"),
            ("p.yaml", "a: 1\n", "not a list of mappings"),
            ("p.csv", "a,b\n1\n", "row 1"),
            ("p.csv", "a,b\n", "no rows"),
            ("p.csv", "out,b\n1,2\n", "reserved"),
            ("p.csv", "1a\n1\n", "not a valid parameter name"),
            ("p.txt", "a\n", "unknown kind of file"),
        ] {
            let e = load_text(name, text).unwrap_err().to_string();
            assert!(e.contains(needle), "{name} {text:?}: {e}");
        }
    }
}

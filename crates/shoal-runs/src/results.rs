//! The results table of runs (`shoal results RUN`): each task's parameters joined with the
//! metrics it wrote as JSON into its output dir (`{out}/metrics.json` by default), as a table,
//! CSV or JSON records.
//!
//! A metrics file holds one JSON object, or several (JSON Lines, e.g. one per epoch): the last
//! one counts. Nested objects become dotted columns (`val.loss`); a metric named like a
//! parameter becomes `metrics.NAME`.

use crate::params::typed;
use crate::registry::TaskRow;
use serde_json::{Map, Value as Json};
use std::path::Path;

pub const DEFAULT_METRICS: &str = "metrics.json";

/// Columns and rows of cells (JSON values; Null where a task has no such value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Json>>,
    /// How many of the columns (the last ones) are metrics.
    pub metrics: usize,
    /// Files that could not be read as metrics, with why.
    pub warnings: Vec<String>,
}

fn flatten(prefix: &str, v: &Json, out: &mut Vec<(String, Json)>) {
    match v {
        Json::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Json::Array(_) => out.push((prefix.to_string(), Json::String(v.to_string()))),
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

/// The metrics of one task: the last JSON object of the file, flattened. Ok(None) without one.
pub fn read_metrics(path: &Path) -> Result<Option<Vec<(String, Json)>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut last = None;
    for v in serde_json::Deserializer::from_str(&text).into_iter::<Json>() {
        match v {
            Ok(Json::Object(o)) => last = Some(o),
            Ok(other) => return Err(format!("holds {other}, not a JSON object of metrics")),
            Err(e) => return Err(format!("is not JSON ({e})")),
        }
    }
    Ok(last.map(|o| {
        let mut out = Vec::new();
        flatten("", &Json::Object(o), &mut out);
        out
    }))
}

/// Join tasks (of one run, or of several with `run` set) with their metrics files.
pub fn collect(runs: &[(i64, Vec<TaskRow>)], metrics_file: &str) -> Table {
    let several = runs.len() > 1;
    let mut columns: Vec<String> = Vec::new();
    if several {
        columns.push("run".into());
    }
    columns.extend(["task".to_string(), "state".to_string()]);
    let fixed = columns.len();
    let mut param_names: Vec<String> = Vec::new();
    for (_, tasks) in runs {
        for t in tasks {
            for (k, _) in &t.params {
                if !param_names.contains(k) {
                    param_names.push(k.clone());
                }
            }
        }
    }
    columns.extend(param_names.iter().cloned());
    let mut table = Table::default();
    let mut records: Vec<Map<String, Json>> = Vec::new();
    for (run, tasks) in runs {
        for t in tasks {
            let mut rec = Map::new();
            if several {
                rec.insert("run".into(), (*run).into());
            }
            rec.insert("task".into(), t.idx.into());
            rec.insert("state".into(), t.state.clone().into());
            for (k, v) in &t.params {
                rec.insert(k.clone(), typed(v));
            }
            let path = Path::new(&t.out_dir).join(metrics_file);
            match read_metrics(&path) {
                Ok(Some(metrics)) => {
                    for (k, v) in metrics {
                        let key = if columns[..fixed + param_names.len()].contains(&k) {
                            format!("metrics.{k}")
                        } else {
                            k
                        };
                        if !columns.contains(&key) {
                            columns.push(key.clone());
                        }
                        rec.insert(key, v);
                    }
                }
                Ok(None) => {}
                Err(why) => table.warnings.push(format!("{}: {why}", path.display())),
            }
            records.push(rec);
        }
    }
    table.rows = records
        .into_iter()
        .map(|mut r| {
            columns
                .iter()
                .map(|c| r.remove(c).unwrap_or(Json::Null))
                .collect()
        })
        .collect();
    table.metrics = columns.len() - fixed - param_names.len();
    table.columns = columns;
    table
}

/// A cell as text: strings bare, numbers as JSON writes them, Null empty.
pub fn cell_text(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Table {
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to memory cannot fail.
        let _ = w.write_record(&self.columns);
        for r in &self.rows {
            let _ = w.write_record(r.iter().map(cell_text));
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// One JSON object per task, columns as keys (absent values left out).
    pub fn to_json(&self) -> Json {
        Json::Array(
            self.rows
                .iter()
                .map(|r| {
                    Json::Object(
                        self.columns
                            .iter()
                            .zip(r)
                            .filter(|(_, v)| !v.is_null())
                            .map(|(c, v)| (c.clone(), v.clone()))
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(
        dir: &Path,
        idx: i64,
        state: &str,
        params: &[(&str, &str)],
        metrics: Option<&str>,
    ) -> TaskRow {
        let out = dir.join(idx.to_string());
        std::fs::create_dir_all(&out).unwrap();
        if let Some(m) = metrics {
            std::fs::write(out.join(DEFAULT_METRICS), m).unwrap();
        }
        TaskRow {
            run_id: 1,
            idx,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            argv: vec![],
            out_dir: out.display().to_string(),
            state: state.into(),
            attempt: 1,
            exit_code: None,
            duration: None,
            started: None,
            ended: None,
            host: None,
            worker: None,
            session: None,
            launch: None,
        }
    }

    #[test]
    fn params_join_metrics() {
        let t = tempfile::tempdir().unwrap();
        let tasks = vec![
            task(
                t.path(),
                0,
                "done",
                &[("lr", "0.1"), ("opt", "adam")],
                Some(r#"{"acc": 0.9, "val": {"loss": 0.3}}"#),
            ),
            // JSON Lines: the last object wins; a metric named like a parameter is prefixed.
            task(
                t.path(),
                1,
                "done",
                &[("lr", "0.01"), ("opt", "sgd")],
                Some("{\"acc\": 0.5}\n{\"acc\": 0.7, \"lr\": 0.01}\n"),
            ),
            task(t.path(), 2, "failed", &[("lr", "1"), ("opt", "sgd")], None),
            task(
                t.path(),
                3,
                "done",
                &[("lr", "2"), ("opt", "x")],
                Some("nan?"),
            ),
        ];
        let table = collect(&[(1, tasks)], DEFAULT_METRICS);
        assert_eq!(
            table.columns,
            [
                "task",
                "state",
                "lr",
                "opt",
                "acc",
                "val.loss",
                "metrics.lr"
            ]
        );
        insta::assert_snapshot!(table.to_csv(), @r"
        task,state,lr,opt,acc,val.loss,metrics.lr
        0,done,0.1,adam,0.9,0.3,
        1,done,0.01,sgd,0.7,,0.01
        2,failed,1,sgd,,,
        3,done,2,x,,,
        ");
        assert_eq!(
            table.to_json()[1],
            serde_json::json!({"task": 1, "state": "done", "lr": 0.01, "opt": "sgd", "acc": 0.7, "metrics.lr": 0.01})
        );
        assert_eq!(table.warnings.len(), 1);
        assert!(
            table.warnings[0].contains("3/metrics.json: is not JSON"),
            "{:?}",
            table.warnings
        );
    }

    #[test]
    fn several_runs_get_a_run_column() {
        let t = tempfile::tempdir().unwrap();
        let a = vec![task(
            &t.path().join("a"),
            0,
            "done",
            &[("x", "1")],
            Some(r#"{"y": 2}"#),
        )];
        let b = vec![task(&t.path().join("b"), 0, "done", &[("z", "s")], None)];
        let table = collect(&[(4, a), (5, b)], DEFAULT_METRICS);
        assert_eq!(table.columns, ["run", "task", "state", "x", "z", "y"]);
        assert_eq!(table.rows[1][0], 5);
        assert_eq!(table.rows[1][3], Json::Null);
    }
}

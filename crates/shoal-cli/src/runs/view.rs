//! Looking at runs: `shoal runs` (with filters), `shoal show RUN`, `shoal results RUN...`.

use super::{fmt_time, open_registry, progress, table, w};
use shoal_core::fsutil::now_secs;
use shoal_runs::progress::fmt_duration;
use shoal_runs::registry::{default_path, params_json, RunFilter, RunRow};
use shoal_runs::results::{cell_text, collect, Table, DEFAULT_METRICS};
use shoal_runs::{Result, RunError};
use std::io::Write;
use std::path::PathBuf;

/// `shoal runs`.
#[derive(clap::Args, Debug)]
pub struct RunsCmd {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Only runs whose name matches this glob (`iris*`)
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Only runs with this status (repeat for any of several): pending, running, done,
    /// failed, cancelled, interrupted
    #[arg(long, alias = "state", value_name = "STATUS")]
    pub status: Vec<String>,
    /// Only runs with this tag (repeat: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only runs of this experiment
    #[arg(long)]
    pub experiment: Option<String>,
    /// Only runs started at or after: a local date (2026-12-01), date and time, today,
    /// yesterday, or an age (3d, 12h)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only runs started before WHEN (same forms as --since)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
}

const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
];

fn run_duration(r: &RunRow) -> String {
    match (r.started, r.ended) {
        (Some(s), Some(e)) => fmt_duration(e - s),
        (Some(s), None) if r.display_status() == "running" => fmt_duration(now_secs() - s),
        _ => "-".into(),
    }
}

impl RunsCmd {
    fn filter(&self) -> Result<RunFilter> {
        for s in &self.status {
            if !STATUSES.contains(&s.as_str()) {
                return Err(RunError::Command(format!(
                    "unknown status {s:?}\nhint: use one of {}",
                    STATUSES.join(", ")
                )));
            }
        }
        let when = |opt: &str, v: &Option<String>| {
            v.as_deref()
                .map(|t| shoal_runs::when::parse(opt, t))
                .transpose()
        };
        Ok(RunFilter {
            name: self.name.clone(),
            status: self.status.clone(),
            tags: self.tag.clone(),
            experiment: self.experiment.clone(),
            since: when("--since", &self.since)?,
            until: when("--until", &self.until)?,
        })
    }

    fn filtered(&self) -> bool {
        self.name.is_some()
            || !self.status.is_empty()
            || !self.tag.is_empty()
            || self.experiment.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }
}

pub fn runs(a: &RunsCmd, out: &mut dyn Write) -> Result<i32> {
    let filter = a.filter()?;
    let all = if shoal_runs::registry::exists(&default_path()) {
        open_registry()?.list_filtered(&filter)?
    } else {
        Vec::new()
    };
    if a.json {
        let v: Vec<_> = all
            .iter()
            .map(|(r, c)| {
                let mut j = serde_json::to_value(r).unwrap_or_default();
                j["display_status"] = r.display_status().into();
                j["counts"] = serde_json::to_value(c).unwrap_or_default();
                j
            })
            .collect();
        w(
            out,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        )?;
        return Ok(0);
    }
    if all.is_empty() {
        let text = if a.filtered() {
            "no runs match\nhint: `shoal runs` without filters lists them all\n".to_string()
        } else {
            format!(
                "no runs in {}\nhint: start one with `shoal run -P x=1,2 -- echo {{x}}`\n",
                default_path().display()
            )
        };
        w(out, text)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(r, c)| {
            vec![
                r.id.to_string(),
                r.name.clone(),
                r.backend.clone(),
                fmt_time(r.started.unwrap_or(r.created)),
                run_duration(r),
                r.display_status().to_string(),
                progress(c),
                r.tags.join(","),
            ]
        })
        .collect();
    table(
        out,
        &[
            "ID", "NAME", "BACKEND", "STARTED", "DURATION", "STATUS", "PROGRESS", "TAGS",
        ],
        &rows,
    )?;
    Ok(0)
}

fn quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') || a.is_empty() {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn git_text(commit: &Option<String>, dirty: Option<bool>) -> String {
    match (commit, dirty) {
        (Some(c), Some(true)) => format!("{c} (uncommitted changes)"),
        (Some(c), _) => c.clone(),
        _ => "(not a git repository)".into(),
    }
}

pub fn show(key: &str, json: bool, all: bool, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(key)?;
    let c = reg.counts(r.id)?;
    let tasks = reg.tasks(r.id, None)?;
    let launches = reg.launches(r.id)?;
    if json {
        let mut j = serde_json::to_value(&r).unwrap_or_default();
        j["display_status"] = r.display_status().into();
        j["counts"] = serde_json::to_value(&c).unwrap_or_default();
        j["launches"] = serde_json::to_value(&launches).unwrap_or_default();
        j["tasks"] = tasks
            .iter()
            .map(|t| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["params"] = params_json(&t.params);
                v
            })
            .collect();
        w(
            out,
            serde_json::to_string_pretty(&j).unwrap_or_default() + "\n",
        )?;
        return Ok(0);
    }
    let mut s = format!("run {} · {} · {}\n", r.id, r.name, r.display_status());
    if let Some(e) = &r.experiment {
        s += &format!("experiment: {e}\n");
    }
    s += &format!("command:   {}\n", quote(&r.command));
    let mut specs: Vec<String> = r.params["file"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(|f| format!("--params-file {f}")))
        .collect();
    specs.extend(
        r.params["param"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(|p| format!("--param {p}"))),
    );
    specs.extend(r.params["group"].as_array().into_iter().flatten().map(|g| {
        let parts: Vec<&str> = g
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        format!("--group {}", parts.join(" "))
    }));
    s += &format!(
        "params:    {}\n",
        if specs.is_empty() {
            "(none)".into()
        } else {
            specs.join(" ")
        }
    );
    s += &format!(
        "backend:   {}{}\n",
        r.backend,
        r.template
            .as_ref()
            .map(|t| format!(" · template {t}"))
            .unwrap_or_default()
    );
    if r.options.as_object().is_some_and(|o| !o.is_empty()) {
        s += &format!("options:   {}\n", r.options);
    }
    for d in r.datasets.as_array().into_iter().flatten() {
        s += &format!(
            "dataset:   {} = {}\n",
            d["name"].as_str().unwrap_or(""),
            d["path"].as_str().unwrap_or("")
        );
    }
    s += &format!("git:       {}\n", git_text(&r.git_commit, r.git_dirty));
    s += &format!("cwd:       {}\nresults:   {}\n", r.cwd, r.run_dir);
    s += &format!(
        "started:   {} · duration {}\n",
        r.started.map(fmt_time).unwrap_or_else(|| "-".into()),
        run_duration(&r)
    );
    if let Some(sess) = &r.session {
        s += &format!("session:   {sess}\n");
    }
    if !r.tags.is_empty() {
        s += &format!("tags:      {}\n", r.tags.join(", "));
    }
    if let Some(n) = &r.note {
        s += &format!("note:      {n}\n");
    }
    if let Some(m) = &r.message {
        s += &format!("message:   {m}\n");
    }
    if launches.len() > 1 {
        s += "launches:\n";
        for l in &launches {
            s += &format!(
                "  {} {:<6} {} · {} tasks · {} · git {} · options from {}\n",
                l.n,
                l.kind,
                fmt_time(l.started),
                l.tasks,
                l.status.as_deref().unwrap_or("running"),
                git_text(&l.git_commit, l.git_dirty),
                l.options_from.as_deref().unwrap_or("(unknown)")
            );
        }
    }
    s += &format!(
        "tasks:     {} total · {} pending · {} running · {} done · {} failed · {} cancelled\n\n",
        c.total(),
        c.pending,
        c.running,
        c.done,
        c.failed,
        c.cancelled
    );
    w(out, s)?;
    const LIMIT: usize = 50;
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .take(if all { usize::MAX } else { LIMIT })
        .map(|t| {
            vec![
                t.idx.to_string(),
                t.state.clone(),
                t.exit_code
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into()),
                t.duration.map(fmt_duration).unwrap_or_else(|| "-".into()),
                t.attempt.to_string(),
                t.params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    table(
        out,
        &["TASK", "STATE", "EXIT", "DURATION", "ATTEMPT", "PARAMS"],
        &rows,
    )?;
    if tasks.len() > LIMIT && !all {
        w(
            out,
            format!(
                "... {} more tasks (--all shows every task)\n",
                tasks.len() - LIMIT
            ),
        )?;
    }
    Ok(0)
}

/// Output formats of `shoal results`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// `shoal results`.
#[derive(clap::Args, Debug)]
pub struct ResultsCmd {
    /// Run ids or names (several: one table with a `run` column)
    #[arg(required = true)]
    pub runs: Vec<String>,
    /// The JSON file each task wrote into its {out} dir
    #[arg(long, default_value = DEFAULT_METRICS, value_name = "FILE")]
    pub metrics: String,
    /// table, csv, or json (a list of records)
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write to this file instead of printing
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn results_text(t: &Table, format: Format) -> String {
    match format {
        Format::Csv => t.to_csv(),
        Format::Json => serde_json::to_string_pretty(&t.to_json()).unwrap_or_default() + "\n",
        Format::Table => {
            let rows: Vec<Vec<String>> = t
                .rows
                .iter()
                .map(|r| r.iter().map(cell_text).collect())
                .collect();
            let head: Vec<&str> = t.columns.iter().map(String::as_str).collect();
            crate::commands::render_table(&head, &rows)
        }
    }
}

pub fn results(a: &ResultsCmd, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let mut runs = Vec::new();
    for key in &a.runs {
        let r = reg.resolve(key)?;
        runs.push((r.id, reg.tasks(r.id, None)?));
    }
    let t = collect(&runs, &a.metrics);
    let text = results_text(&t, a.format);
    for warning in &t.warnings {
        eprintln!("warning: {warning}");
    }
    match &a.output {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| shoal_core::CoreError::io(p, e))?;
            w(
                out,
                format!("wrote {} rows to {}\n", t.rows.len(), p.display()),
            )?;
        }
        None => w(out, text)?,
    }
    if t.metrics == 0 {
        eprintln!(
            "note: no task wrote {} in its output dir
hint: have each task write a JSON object \
             of metrics to {{out}}/{} (or name another file with --metrics)",
            a.metrics, a.metrics
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_as_a_table_and_as_json() {
        let t = Table {
            columns: ["task", "state", "lr", "acc", "val.loss"]
                .map(String::from)
                .to_vec(),
            rows: vec![
                vec![json!(0), json!("done"), json!(0.1), json!(0.93), json!(0.2)],
                vec![
                    json!(1),
                    json!("failed"),
                    json!(0.01),
                    json!(null),
                    json!(null),
                ],
            ],
            metrics: 2,
            warnings: vec![],
        };
        insta::assert_snapshot!(results_text(&t, Format::Table), @r"
        task  state   lr    acc   val.loss
        0     done    0.1   0.93  0.2
        1     failed  0.01
        ");
        insta::assert_snapshot!(results_text(&t, Format::Json), @r#"
        [
          {
            "acc": 0.93,
            "lr": 0.1,
            "state": "done",
            "task": 0,
            "val.loss": 0.2
          },
          {
            "lr": 0.01,
            "state": "failed",
            "task": 1
          }
        ]
        "#);
    }
}

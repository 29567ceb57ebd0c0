//! `shoal show SESSION` (text, `--json`, `--plot FILE`) and `shoal top`: argument handling and
//! printing over shoal-top. Cancelling and task output are handed to `shoal top` from here, so
//! they are the very code of `shoal cancel` and `shoal logs`.

use crate::{commands, runs};
use shoal_core::journal::{history_dir, Timeline};
use shoal_core::layout::Stream;
use shoal_core::CoreError;
use shoal_runs::{Result, RunError};
use shoal_top::record;
use std::io::Write;
use std::path::Path;
use std::process::{Command as Proc, Stdio};

/// Show the session `key` names, if it names one and no run: returns None to let the run view
/// handle it. Keys that cannot be a run (`20260101-12…`, a path) must name a session.
pub fn show(
    base: &Path,
    key: &str,
    json: bool,
    all: bool,
    plot: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Option<i32>> {
    if let Some((_, run)) = runs::lookup(key, base)? {
        if plot.is_some() {
            let hint = match &run.session {
                Some(s) => format!("draw its session's: shoal show {s} --plot FILE"),
                None => "the run has not started a session yet".into(),
            };
            return Err(RunError::Command(format!(
                "--plot draws a session's timeline, and {key:?} names run {}\nhint: {hint}",
                run.id
            )));
        }
        return Ok(None);
    }
    let runish = key.chars().all(|c| c.is_ascii_digit())
        || key.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let Some(rec) = record::find(base, &history_dir(), key) else {
        if runish && plot.is_none() {
            return Ok(None); // "no such run" is the better error for these
        }
        return Err(CoreError::NoSuchSession(key.to_string()).into());
    };
    let now = shoal_core::fsutil::now_secs();
    let Some((log, summary)) = record::summary(&rec, now) else {
        return Err(RunError::Command(format!(
            "session {} has no journal to summarise (it is older than journals, or its work dir \
             was not writable)\nhint: `shoal logs {}` shows its failed tasks",
            rec.id, rec.id
        )));
    };
    if let Some(file) = plot {
        return draw(&Timeline::of(&log, now), &summary, file, out).map(Some);
    }
    let text = if json {
        serde_json::to_string_pretty(&shoal_top::report::json(&rec, &log, &summary))
            .unwrap_or_default()
            + "\n"
    } else {
        shoal_top::report::text(
            &rec,
            &log,
            &summary,
            &shoal_top::report::Options {
                all,
                time: &shoal_top::fmt::local,
            },
        )
    };
    commands::w(out, text)?;
    Ok(Some(0))
}

/// The interpreter that runs shoal's Python helpers (the `shoal` entry point sets it).
fn python() -> String {
    std::env::var("SHOAL_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Hand the timeline to `python -m shoal._plot FILE`, which draws it with matplotlib.
fn draw(
    timeline: &Timeline,
    summary: &shoal_core::journal::Summary,
    file: &Path,
    out: &mut dyn Write,
) -> Result<i32> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !matches!(ext.as_str(), "png" | "svg") {
        return Err(RunError::Command(format!(
            "cannot tell the picture format of {}\nhint: name the file *.png or *.svg",
            file.display()
        )));
    }
    let input = serde_json::json!({"timeline": timeline, "throughput": summary.throughput,
                                   "tasks": summary.tasks});
    let python = python();
    let mut child = Proc::new(&python)
        .args(["-m", "shoal._plot"])
        .arg(file)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| {
            RunError::Command(format!(
                "cannot start {python:?} to draw the timeline: {e}\nhint: set SHOAL_PYTHON to \
                 an interpreter with shoal installed (the `shoal` entry point does this)"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.to_string().as_bytes());
    }
    let status = child.wait().map_err(|e| CoreError::io("shoal._plot", e))?;
    if !status.success() {
        // The helper said why (matplotlib missing, say) on stderr.
        return Ok(status.code().unwrap_or(1));
    }
    commands::w(out, format!("wrote {}\n", file.display()))?;
    Ok(0)
}

/// `shoal top`: the live view, with `shoal cancel` and `shoal logs` behind its keys.
pub fn top(base: &Path, interval: f64) -> Result<i32> {
    let (b1, b2) = (base.to_path_buf(), base.to_path_buf());
    let actions = shoal_top::Actions {
        cancel: Box::new(move |t| cancel(&b1, t)),
        task_log: Box::new(move |t| task_log(&b2, t)),
    };
    let registry = shoal_runs::registry::default_path();
    shoal_top::run(base, &history_dir(), &registry, interval, actions)
        .map_err(|e| RunError::Command(e.to_string()))?;
    Ok(0)
}

fn cancel(base: &Path, target: &shoal_top::Target) -> std::result::Result<String, String> {
    let mut buf = Vec::new();
    let res = match target {
        shoal_top::Target::Session(dir) => commands::cancel(dir, &mut buf).map_err(RunError::from),
        shoal_top::Target::Run(id) => {
            runs::lookup(&id.to_string(), base).and_then(|found| match found {
                Some((reg, run)) => runs::cancel(&reg, &run, &mut buf),
                None => Err(RunError::NoSuchRun(id.to_string())),
            })
        }
    };
    match res {
        Ok(_) => Ok(String::from_utf8_lossy(&buf).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn task_log(base: &Path, target: &shoal_top::TaskRef) -> String {
    let mut buf = Vec::new();
    let res = match target {
        shoal_top::TaskRef::Session(dir, task) => {
            commands::task_logs(dir, *task, &[Stream::Stdout, Stream::Stderr], &mut buf)
                .map_err(RunError::from)
        }
        shoal_top::TaskRef::Run(id, task) => {
            runs::lookup(&id.to_string(), base).and_then(|found| match found {
                Some((reg, run)) => {
                    let a = runs::LogsArgs {
                        task: Some(*task),
                        stdout: false,
                        stderr: false,
                        worker_log: false,
                        follow: false,
                    };
                    runs::logs(&reg, &run, &a, base, &mut buf)
                }
                None => Err(RunError::NoSuchRun(id.to_string())),
            })
        }
    };
    if let Err(e) = res {
        buf.extend_from_slice(format!("\n{e}\n").as_bytes());
    }
    String::from_utf8_lossy(&buf).into_owned()
}

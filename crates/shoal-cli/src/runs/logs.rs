//! `shoal logs RUN [TASK]`: the run's failed tasks, a task's captured output, the worker log of
//! the session that ran a task, and `--follow` (the driver log, or a task's output, as written).

use super::{driver_log, progress, w, LiveView};
use shoal_core::layout::Stream;
use shoal_core::session::find_session;
use shoal_core::SessionDir;
use shoal_runs::registry::{RunRow, TaskRow};
use shoal_runs::{Registry, Result, RunError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `shoal logs RUN` was asked for.
pub struct LogsArgs {
    pub task: Option<u64>,
    pub stdout: bool,
    pub stderr: bool,
    pub worker_log: bool,
    pub follow: bool,
}

/// The exit code of a finished run, as `shoal run` gives it.
fn status_code(status: &str) -> i32 {
    match status {
        "done" => 0,
        "interrupted" => 130,
        "cancelled" => 143,
        _ => 1,
    }
}

pub fn logs(
    reg: &Registry,
    r: &RunRow,
    a: &LogsArgs,
    sessions: &Path,
    out: &mut dyn Write,
) -> Result<i32> {
    let Some(idx) = a.task else {
        if a.follow {
            return follow_run(reg, r, out);
        }
        return summary(reg, r, out);
    };
    let Some(t) = reg.task(r.id, idx as i64)? else {
        return Err(RunError::Command(format!(
            "run {} has no task {idx}\nhint: `shoal show {}` lists its tasks",
            r.id, r.id
        )));
    };
    let launch = t
        .launch
        .and_then(|n| reg.launches(r.id).ok()?.into_iter().find(|l| l.n == n));
    w(
        out,
        format!(
            "task {} · {} · exit {} · attempt {}{}{}\n",
            t.idx,
            t.state,
            t.exit_code
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            t.attempt,
            t.host
                .as_ref()
                .map(|h| format!(" · ran on {h}"))
                .unwrap_or_default(),
            launch
                .map(|l| format!(
                    " · launch {} ({}{})",
                    l.n,
                    l.kind,
                    l.git_commit
                        .map(|c| format!(" at {}", &c[..c.len().min(12)]))
                        .unwrap_or_default()
                ))
                .unwrap_or_default()
        ),
    )?;
    if a.worker_log {
        return worker_log(reg, r, &t, sessions, out);
    }
    let streams: &[&str] = match (a.stdout, a.stderr) {
        (true, _) => &["stdout"],
        (_, true) => &["stderr"],
        _ => &["stdout", "stderr"],
    };
    if a.follow {
        return follow_task(reg, r, &t, streams, out);
    }
    for s in streams {
        let p = Path::new(&t.out_dir).join(format!("{s}.txt"));
        let text = std::fs::read(&p).map(|b| String::from_utf8_lossy(&b).into_owned());
        w(out, format!("--- {s} ({}) ---\n", p.display()))?;
        match text {
            Ok(t) => {
                w(out, &t)?;
                if !t.is_empty() && !t.ends_with('\n') {
                    w(out, "\n")?;
                }
            }
            Err(_) => w(out, "(not written yet: the task has not started)\n")?,
        }
    }
    Ok(if t.state == "failed" { 1 } else { 0 })
}

fn summary(reg: &Registry, r: &RunRow, out: &mut dyn Write) -> Result<i32> {
    let failed = reg.tasks(r.id, Some(&["failed"]))?;
    let c = reg.counts(r.id)?;
    w(
        out,
        format!(
            "run {} · {} · {} · {}\n",
            r.id,
            r.name,
            r.display_status(),
            progress(&c)
        ),
    )?;
    if let Some(m) = &r.message {
        w(out, format!("message: {m}\n"))?;
    }
    for t in &failed {
        let err =
            std::fs::read_to_string(Path::new(&t.out_dir).join("stderr.txt")).unwrap_or_default();
        let last = err.trim_end().lines().last().unwrap_or("").to_string();
        w(
            out,
            format!(
                "task {} failed with exit code {}: {}\n",
                t.idx,
                t.exit_code
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "?".into()),
                last
            ),
        )?;
    }
    w(
        out,
        format!(
            "see one task: shoal logs {} TASK [--stderr] · the driver: shoal logs --follow {}\n",
            r.id, r.id
        ),
    )?;
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// The session dir of the session that ran `t`: as its launch recorded it, else looked up.
fn task_session(reg: &Registry, r: &RunRow, t: &TaskRow, sessions: &Path) -> Option<SessionDir> {
    let id = t.session.as_ref()?;
    if let Ok(Some(path)) = reg.session_path(r.id, id) {
        return Some(SessionDir::open(path));
    }
    if r.session.as_deref() == Some(id.as_str()) {
        if let Some(p) = &r.session_path {
            return Some(SessionDir::open(p));
        }
    }
    find_session(sessions, id).ok()
}

/// The scheduler-side log (the worker's stdout/stderr in the session dir) of the worker that
/// ran a task, in the session that ran it, found by the host and pid the task recorded.
fn worker_log(
    reg: &Registry,
    r: &RunRow,
    t: &TaskRow,
    sessions: &Path,
    out: &mut dyn Write,
) -> Result<i32> {
    let (Some(host), Some(pid)) = (&t.host, &t.worker) else {
        w(out, "(no worker recorded for this task yet)\n")?;
        return Ok(1);
    };
    let Some(dir) = task_session(reg, r, t, sessions) else {
        w(
            out,
            format!(
                "(session {} of this task is gone: `shoal clean` removed it, or it ran \
                 elsewhere)\n",
                t.session.as_deref().unwrap_or("?")
            ),
        )?;
        return Ok(1);
    };
    let found = dir
        .worker_infos()
        .into_iter()
        .rfind(|i| i.host == *host && i.pid.to_string() == *pid)
        .map(|i| i.worker);
    let Some(id) = found else {
        w(
            out,
            format!(
                "(worker {host}:{pid} not found in {})\n",
                dir.root().display()
            ),
        )?;
        return Ok(1);
    };
    w(out, format!("session {} · worker {id}\n", dir.id()))?;
    crate::commands::worker_logs(&dir, &id, &[Stream::Stdout, Stream::Stderr], out)?;
    Ok(0)
}

/// A file read from where the last read stopped.
struct Tail {
    path: PathBuf,
    pos: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail { path, pos: 0 }
    }

    /// What was appended since the last call (nothing while the file does not exist).
    fn read_new(&mut self) -> Vec<u8> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.pos {
            self.pos = 0; // truncated or replaced (a new attempt): start over
        }
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.pos)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            self.pos += buf.len() as u64;
        }
        buf
    }
}

const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Print bytes through the live view (complete lines only; a partial line waits for its end).
fn emit(
    view: &mut LiveView,
    pending: &mut Vec<u8>,
    bytes: &[u8],
    out: &mut dyn Write,
) -> Result<()> {
    pending.extend_from_slice(bytes);
    let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
        return Ok(());
    };
    let text: Vec<u8> = pending.drain(..=end).collect();
    view.clear();
    out.write_all(&text)
        .and_then(|_| out.flush())
        .map_err(|e| shoal_core::CoreError::io("<stdout>", e))?;
    Ok(())
}

fn is_live(r: &RunRow) -> bool {
    matches!(r.display_status(), "running" | "pending") && r.launch > 0
}

/// `shoal logs --follow RUN`: the driver log as it grows, with the progress line, until the
/// run ends.
fn follow_run(reg: &Registry, r: &RunRow, out: &mut dyn Write) -> Result<i32> {
    let mut tail = Tail::new(driver_log(r));
    let mut view = LiveView::new(reg.counts(r.id).unwrap_or_default());
    let mut pending = Vec::new();
    loop {
        let run = reg.get(r.id)?;
        let bytes = tail.read_new();
        emit(&mut view, &mut pending, &bytes, out)?;
        if !is_live(&run) {
            let rest = tail.read_new();
            emit(&mut view, &mut pending, &rest, out)?;
            if !pending.is_empty() {
                pending.push(b'\n');
                emit(&mut view, &mut pending, &[], out)?;
            }
            view.clear();
            let c = reg.counts(r.id)?;
            w(
                out,
                format!(
                    "run {} {}: {}\n",
                    run.id,
                    run.display_status(),
                    progress(&c)
                ),
            )?;
            return Ok(status_code(run.display_status()));
        }
        if view.due() {
            if let Ok(c) = reg.counts(r.id) {
                view.tick(&c);
            }
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// `shoal logs --follow RUN TASK`: the task's output files as they grow, until it finishes.
fn follow_task(
    reg: &Registry,
    r: &RunRow,
    t: &TaskRow,
    streams: &[&str],
    out: &mut dyn Write,
) -> Result<i32> {
    let mut tails: Vec<(Tail, Vec<u8>)> = streams
        .iter()
        .map(|s| {
            (
                Tail::new(Path::new(&t.out_dir).join(format!("{s}.txt"))),
                Vec::new(),
            )
        })
        .collect();
    let mut view = LiveView::new(reg.counts(r.id).unwrap_or_default());
    loop {
        let now = reg.task(r.id, t.idx)?.unwrap_or_else(|| t.clone());
        let run = reg.get(r.id)?;
        let finished = !matches!(now.state.as_str(), "pending" | "running")
            || !is_live(&run)
            || now.attempt != t.attempt;
        for (tail, pending) in &mut tails {
            let bytes = tail.read_new();
            emit(&mut view, pending, &bytes, out)?;
            if finished && !pending.is_empty() {
                pending.push(b'\n');
                emit(&mut view, pending, &[], out)?;
            }
        }
        if finished {
            view.clear();
            w(
                out,
                format!(
                    "task {} {}{}\n",
                    now.idx,
                    now.state,
                    now.exit_code
                        .map(|c| format!(" (exit code {c})"))
                        .unwrap_or_default()
                ),
            )?;
            return Ok(if now.state == "done" { 0 } else { 1 });
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

//! One function per subcommand. Each writes to the given output so tests can capture it.

use crate::Command;
use shoal_core::calls::Calls;
use shoal_core::fsutil::{hostname, now_secs, pid_alive};
use shoal_core::layout::Stream;
use shoal_core::retention;
use shoal_core::session::{find_session, list_sessions, SessionMeta, SessionState};
use shoal_core::units::TimeLimit;
use shoal_core::{fsutil, CoreError, SessionDir};
use std::io::Write;
use std::path::Path;

type Result<T> = std::result::Result<T, CoreError>;

pub fn dispatch(cmd: &Command, base: &Path, out: &mut dyn Write) -> Result<i32> {
    match cmd {
        Command::Sessions { json } => sessions(base, *json, out),
        Command::Logs {
            session,
            task,
            stdout,
            stderr,
            worker,
            ..
        } => {
            let dir = find_session(base, session)?;
            let streams: &[Stream] = match (stdout, stderr) {
                (true, _) => &[Stream::Stdout],
                (_, true) => &[Stream::Stderr],
                _ => &[Stream::Stdout, Stream::Stderr],
            };
            match (task, worker) {
                (Some(t), _) => task_logs(&dir, Calls::read(&dir).resolve(t)?, streams, out),
                (None, Some(w)) => worker_logs(&dir, w, streams, out),
                (None, None) => session_summary(&dir, out),
            }
        }
        Command::Cancel { session } => cancel(&find_session(base, session)?, out),
        Command::Clean { all, dry_run } => clean(base, *all, *dry_run, out),
        // The run subcommands are dispatched in lib.rs before reaching here.
        _ => Ok(2),
    }
}

pub(crate) fn w(out: &mut dyn Write, s: impl AsRef<str>) -> Result<()> {
    out.write_all(s.as_ref().as_bytes())
        .map_err(|e| CoreError::io("<stdout>", e))
}

fn age(secs: f64) -> String {
    let d = (now_secs() - secs).max(0.0) as u64;
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

fn progress(m: &SessionMeta) -> String {
    let pct = if m.tasks_total > 0 {
        100.0 * m.tasks_done as f64 / m.tasks_total as f64
    } else {
        0.0
    };
    format!("{}/{} ({pct:.0}%)", m.tasks_done, m.tasks_total)
}

fn sessions(base: &Path, json: bool, out: &mut dyn Write) -> Result<i32> {
    let all = list_sessions(base)?;
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|(d, m)| {
                let mut j = serde_json::to_value(m).unwrap_or_default();
                j["display_state"] = m.display_state().into();
                j["path"] = d.root().display().to_string().into();
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
        w(out, format!("no sessions under {}\n", base.display()))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(_, m)| {
            vec![
                m.id.clone(),
                m.backend.clone(),
                m.transport.clone(),
                m.display_state().to_string(),
                progress(m),
                m.tasks_failed.to_string(),
                m.workers_running.to_string(),
                age(m.created),
            ]
        })
        .collect();
    let head = [
        "SESSION",
        "BACKEND",
        "TRANSPORT",
        "STATE",
        "PROGRESS",
        "FAILED",
        "WORKERS",
        "STARTED",
    ];
    w(out, render_table(&head, &rows))?;
    Ok(0)
}

/// Left-aligned columns two spaces apart, sized to their widest cell; no trailing blanks.
pub(crate) fn render_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let s = cells
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.trim_end().to_string() + "\n"
    };
    let mut text = line(&mut head.iter().copied());
    for r in rows {
        text.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    text
}

pub(crate) fn task_logs(
    dir: &SessionDir,
    task: u64,
    streams: &[Stream],
    out: &mut dyn Write,
) -> Result<i32> {
    let label = Calls::read(dir).label(task);
    let Some(e) = dir.index_entry(task) else {
        w(
            out,
            format!(
                "task {label} of session {} has no recorded result yet (pending, running, or lost)\n",
                dir.id()
            ),
        )?;
        return Ok(1);
    };
    w(
        out,
        format!("task {label} · worker {} · chunk {}\n", e.worker, e.chunk),
    )?;
    for &s in streams {
        let (start, end) = e.range(task, s).unwrap_or((0, 0));
        let bytes = if e.worker.is_empty() {
            Vec::new()
        } else {
            dir.read_log(&e.worker, s, start, end, u64::MAX)?
        };
        w(
            out,
            format!(
                "--- {} ---\n",
                if s == Stream::Stdout {
                    "stdout"
                } else {
                    "stderr"
                }
            ),
        )?;
        w(out, String::from_utf8_lossy(&bytes))?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            w(out, "\n")?;
        }
    }
    if let Some(err) = &e.chunk_error {
        w(out, format!("--- error ---\n{err}\n"))?;
        return Ok(1);
    }
    if let Some(tb) = e.failure(task) {
        w(out, format!("--- traceback ---\n{tb}"))?;
        return Ok(1);
    }
    Ok(0)
}

pub(crate) fn worker_logs(
    dir: &SessionDir,
    worker: &str,
    streams: &[Stream],
    out: &mut dyn Write,
) -> Result<i32> {
    for &s in streams {
        let end = dir.log_len(worker, s);
        let bytes = dir.read_log(worker, s, 0, end, u64::MAX)?;
        w(out, format!("--- {} {} ---\n", worker, s.ext()))?;
        w(out, String::from_utf8_lossy(&bytes))?;
    }
    Ok(0)
}

fn session_summary(dir: &SessionDir, out: &mut dyn Write) -> Result<i32> {
    let meta = dir.read_meta()?;
    w(
        out,
        format!(
            "session {} · {} · {} · {} tasks done, {} failed\nwork dir: {}\n",
            meta.id,
            meta.backend,
            meta.display_state(),
            meta.tasks_done,
            meta.tasks_failed,
            dir.root().display()
        ),
    )?;
    if let Some(m) = &meta.message {
        w(out, format!("message: {m}\n"))?;
    }
    let mut failed = 0;
    let calls = Calls::read(dir);
    for e in dir.index_entries() {
        if let Some(err) = &e.chunk_error {
            failed += 1;
            let last = (e.first + u64::from(e.count)).saturating_sub(1);
            w(
                out,
                format!(
                    "tasks {}..{} failed: {}\n",
                    calls.label(e.first),
                    calls.label(last),
                    first_line(err)
                ),
            )?;
        }
        for f in &e.failed {
            failed += 1;
            let last = f.traceback.trim_end().lines().last().unwrap_or("");
            w(
                out,
                format!(
                    "task {} failed on {}: {last}\n",
                    calls.label(e.first + u64::from(f.index)),
                    e.worker
                ),
            )?;
        }
    }
    let workers = fsutil::list_names(&dir.sub("logs")).unwrap_or_default();
    let mut ids: Vec<&str> = workers
        .iter()
        .filter_map(|n| n.rsplit_once('.').map(|x| x.0))
        .collect();
    ids.dedup();
    w(out, format!("workers: {}\n", ids.join(" ")))?;
    w(
        out,
        format!(
            "see one task: shoal logs {} TASK · one worker: shoal logs {} --worker ID\n",
            meta.id, meta.id
        ),
    )?;
    Ok(if failed > 0 { 1 } else { 0 })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub(crate) fn cancel(dir: &SessionDir, out: &mut dyn Write) -> Result<i32> {
    let meta = dir.read_meta()?;
    if meta.state != SessionState::Running {
        w(
            out,
            format!("session {} is already {}\n", meta.id, meta.state.as_str()),
        )?;
        return Ok(0);
    }
    dir.put_control("cancel", "cancel\n")?;
    dir.put_control("stop", "stop\n")?;
    if meta.driver_alive() {
        // The driver notices control/cancel within a second and stops its workers itself.
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if dir
                .read_meta()
                .map(|m| m.state != SessionState::Running || m.workers_running == 0)
                .unwrap_or(true)
            {
                break;
            }
        }
        w(out, format!("cancelled session {}\n", meta.id))?;
        return Ok(0);
    }
    // The driver is gone: stop what it left behind ourselves.
    // Cluster workers are the scheduler's to stop, even when they share this host.
    let killed = if meta.backend == "local" {
        kill_local_workers(dir)
    } else {
        0
    };
    let jobs = shoal_sched::cancel_recorded(&meta.backend, &meta.jobs).map_err(|e| {
        CoreError::invalid(
            "session",
            &meta.id,
            format!("could not cancel its jobs: {e}"),
        )
    })?;
    let mut m = meta;
    m.state = SessionState::Cancelled;
    m.message = Some("cancelled by `shoal cancel` after its driver died".into());
    m.updated = now_secs();
    dir.write_meta(&m)?;
    w(
        out,
        format!(
            "cancelled orphaned session {} ({killed} local workers killed, {jobs} scheduler jobs cancelled)\n",
            m.id
        ),
    )?;
    Ok(0)
}

fn kill_local_workers(dir: &SessionDir) -> usize {
    let me = hostname();
    let mut n = 0;
    for info in dir.worker_infos() {
        if info.host == me && info.pid > 1 && pid_alive(info.pid) {
            unsafe {
                libc::kill(info.pid as libc::pid_t, libc::SIGKILL);
            }
            n += 1;
        }
    }
    n
}

fn clean(base: &Path, all: bool, dry_run: bool, out: &mut dyn Write) -> Result<i32> {
    let (mut n, mut freed) = (0, 0);
    let mut rows = Vec::new();
    for (dir, m) in list_sessions(base)? {
        let removable = match m.state {
            SessionState::Finished => true,
            SessionState::Failed | SessionState::Cancelled | SessionState::Interrupted => all,
            SessionState::Running => all && !m.driver_alive(),
        };
        if !removable {
            continue;
        }
        let bytes = retention::size_of(dir.root());
        if dry_run {
            rows.push(vec![
                m.id.clone(),
                m.display_state().to_string(),
                retention::human_bytes(bytes),
                age(m.updated),
                dir.root().display().to_string(),
            ]);
        } else {
            std::fs::remove_dir_all(dir.root()).map_err(|e| CoreError::io(dir.root(), e))?;
        }
        n += 1;
        freed += bytes;
    }
    let freed = retention::human_bytes(freed);
    if !dry_run {
        w(
            out,
            format!("removed {n} session work dirs, freed {freed}\n"),
        )?;
        return Ok(0);
    }
    if !rows.is_empty() {
        let head = ["SESSION", "STATE", "SIZE", "ENDED", "PATH"];
        w(out, render_table(&head, &rows))?;
    }
    let policy = retention::Policy::from_env()?;
    w(
        out,
        format!(
            "would remove {n} session work dirs, freeing {freed} (dry run: nothing removed)\n\
             finished sessions keep their logs for {} and {} in all ({}, {})\n",
            TimeLimit(policy.max_age).to_slurm(),
            retention::human_bytes(policy.max_bytes),
            retention::AGE_VAR,
            retention::SIZE_VAR,
        ),
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::index::{IndexEntry, IndexWriter};
    use shoal_core::protocol::{FailedTask, ResultHeader};

    fn run(cmd: Command, base: &Path) -> (i32, String) {
        let mut buf = Vec::new();
        let code = dispatch(&cmd, base, &mut buf).unwrap();
        (code, String::from_utf8(buf).unwrap())
    }

    fn session_with_failure(base: &Path) -> SessionDir {
        let d = SessionDir::create(base.join("20260101-000000-abcd")).unwrap();
        let mut m = SessionMeta::new("20260101-000000-abcd".into(), "local");
        m.tasks_total = 2;
        m.tasks_done = 2;
        m.tasks_failed = 1;
        m.state = SessionState::Failed;
        d.write_meta(&m).unwrap();
        std::fs::write(
            d.log("w0001", Stream::Stdout),
            "hello from 0\nhello from 1\n",
        )
        .unwrap();
        std::fs::write(d.log("w0001", Stream::Stderr), "warn 1\n").unwrap();
        // What the engine records when it delivers the part.
        let h = ResultHeader {
            chunk: 0,
            attempt: 1,
            first_task: 0,
            ntasks: 2,
            count: 2,
            last: true,
            worker: "w0001+00000000000000ab".into(),
            marks: vec![(0, 13, 0), (1, 26, 7)],
            failed: vec![FailedTask {
                index: 1,
                traceback: "Traceback...\nValueError: bad 1\n".into(),
            }],
            ..Default::default()
        };
        IndexWriter::new(&d).append(&IndexEntry::of(&h)).unwrap();
        d
    }

    #[test]
    fn logs_of_one_task() {
        let t = tempfile::tempdir().unwrap();
        session_with_failure(t.path());
        let (code, text) = run(
            Command::Logs {
                session: "20260101".into(),
                task: Some("1".into()),
                stdout: false,
                stderr: false,
                worker: None,
                worker_log: false,
                follow: false,
            },
            t.path(),
        );
        assert_eq!(code, 1);
        assert!(
            text.contains("hello from 1") && !text.contains("hello from 0"),
            "{text}"
        );
        assert!(
            text.contains("warn 1") && text.contains("ValueError: bad 1"),
            "{text}"
        );
        let (code, text) = run(
            Command::Logs {
                session: "20260101".into(),
                task: Some("0".into()),
                stdout: true,
                stderr: false,
                worker: None,
                worker_log: false,
                follow: false,
            },
            t.path(),
        );
        assert_eq!(code, 0);
        assert!(
            text.contains("hello from 0") && !text.contains("traceback"),
            "{text}"
        );
    }

    #[test]
    fn summary_lists_failures_and_sessions_table() {
        let t = tempfile::tempdir().unwrap();
        session_with_failure(t.path());
        let (code, text) = run(
            Command::Logs {
                session: "20260101-000000-abcd".into(),
                task: None,
                stdout: false,
                stderr: false,
                worker: None,
                worker_log: false,
                follow: false,
            },
            t.path(),
        );
        assert_eq!(code, 1);
        assert!(
            text.contains("task 1 failed on w0001: ValueError: bad 1"),
            "{text}"
        );
        let (_, table) = run(Command::Sessions { json: false }, t.path());
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("SESSION") && lines[0].contains("PROGRESS"),
            "{table}"
        );
        assert!(
            lines[1].contains("failed") && lines[1].contains("2/2 (100%)"),
            "{table}"
        );
        let (_, json) = run(Command::Sessions { json: true }, t.path());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["tasks_failed"], 1);
    }

    #[test]
    fn clean_keeps_failed_unless_all() {
        let t = tempfile::tempdir().unwrap();
        session_with_failure(t.path());
        let clean = |all, dry_run| Command::Clean { all, dry_run };
        let (_, text) = run(clean(false, false), t.path());
        assert!(text.contains("removed 0"));
        let (_, text) = run(clean(true, true), t.path());
        assert!(
            text.contains("would remove 1 session work dirs, freeing")
                && text.contains("20260101-000000-abcd")
                && text.contains("nothing removed"),
            "{text}"
        );
        assert!(t.path().join("20260101-000000-abcd").exists());
        let (_, text) = run(clean(true, false), t.path());
        assert!(text.contains("removed 1"), "{text}");
        assert!(!t.path().join("20260101-000000-abcd").exists());
    }

    #[test]
    fn unknown_session_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        let e = dispatch(
            &Command::Cancel {
                session: "nope".into(),
            },
            t.path(),
            &mut buf,
        )
        .unwrap_err();
        assert!(e.to_string().contains("shoal sessions"), "{e}");
    }
}

//! The run subcommands (`init`, `run`, `runs`, `show`, `logs`/`cancel` of a run, `rerun`,
//! `resume`, `rm`, `import-qanat`): argument handling and printing over shoal-runs.
//!
//! A run id is a number and a run name starts with a letter; session ids start with a date
//! (`20261126-052301-4f2a`). `logs`/`cancel` try the registry first, then the sessions.

use crate::commands;
use shoal_core::fsutil::{hostname, now_secs, pid_alive};
use shoal_core::session::SessionState;
use shoal_core::SessionDir;
use shoal_runs::config::{init_template, Config};
use shoal_runs::params::{check_placeholders, Grid};
use shoal_runs::registry::{default_path, params_json, Counts, NewRun, RunRow};
use shoal_runs::{git_state, Registry, Result, RunError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

fn w(out: &mut dyn Write, s: impl AsRef<str>) -> Result<()> {
    Ok(commands::w(out, s)?)
}

pub fn open_registry() -> Result<Registry> {
    Registry::open(&default_path())
}

/// The run a `logs`/`cancel` argument names, if it names one: digits are a run id, a key
/// starting with a letter is a run name. Anything else (or no such run) is left to sessions.
pub fn lookup(key: &str) -> Result<Option<(Registry, RunRow)>> {
    let first = key.chars().next().unwrap_or(' ');
    let runish = key.chars().all(|c| c.is_ascii_digit()) || first.is_ascii_alphabetic();
    if !runish || !default_path().exists() {
        return Ok(None);
    }
    let reg = open_registry()?;
    match reg.resolve(key) {
        Ok(run) => Ok(Some((reg, run))),
        Err(RunError::NoSuchRun(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{:.1}s", secs.max(0.0)),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn fmt_time(secs: f64) -> String {
    let (y, mo, d, h, mi, se) = shoal_core::fsutil::local_time(secs as i64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}")
}

fn run_duration(r: &RunRow) -> String {
    match (r.started, r.ended) {
        (Some(s), Some(e)) => fmt_duration(e - s),
        (Some(s), None) if r.display_status() == "running" => fmt_duration(now_secs() - s),
        _ => "-".into(),
    }
}

fn progress(c: &Counts) -> String {
    let finished = c.done + c.failed;
    let mut s = format!("{finished}/{}", c.total());
    if c.failed > 0 {
        s.push_str(&format!(" ({} failed)", c.failed));
    }
    s
}

fn table(out: &mut dyn Write, head: &[&str], rows: &[Vec<String>]) -> Result<()> {
    w(out, commands::render_table(head, rows))
}

pub fn init(force: bool, out: &mut dyn Write) -> Result<i32> {
    let path = PathBuf::from("shoal.toml");
    if path.exists() && !force {
        return Err(RunError::Command(
            "shoal.toml already exists here\nhint: edit it, or pass --force to overwrite it".into(),
        ));
    }
    std::fs::write(&path, init_template()).map_err(|e| shoal_core::CoreError::io(&path, e))?;
    w(
        out,
        "wrote shoal.toml (defaults and backend templates for `shoal run`)\n",
    )?;
    Ok(0)
}

pub fn import_qanat(
    path: Option<&Path>,
    output: Option<&Path>,
    out: &mut dyn Write,
) -> Result<i32> {
    let path = path.unwrap_or(Path::new(".qanat/config.yaml"));
    let text = shoal_runs::qanat::import(path)?;
    match output {
        Some(o) => {
            if o.exists() {
                return Err(RunError::Command(format!(
                    "{} already exists\nhint: print to stdout (no -o) and merge by hand",
                    o.display()
                )));
            }
            std::fs::write(o, &text).map_err(|e| shoal_core::CoreError::io(o, e))?;
            w(out, format!("wrote {}\n", o.display()))?;
        }
        None => w(out, text)?,
    }
    Ok(0)
}

/// Everything `shoal run` was given.
pub struct RunArgs<'a> {
    pub name: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub template: Option<&'a str>,
    pub params: &'a [String],
    pub groups: &'a [Vec<String>],
    pub workers: Option<usize>,
    pub results_dir: Option<&'a Path>,
    pub config: Option<&'a Path>,
    pub dry_run: bool,
    pub command: &'a [String],
}

fn default_name(command: &[String]) -> String {
    // `python train.py ...` -> train; `./sweep.sh` -> sweep; else the program's name.
    let pick = command
        .iter()
        .skip(1)
        .take(2)
        .find(|a| a.ends_with(".py") || a.ends_with(".sh"))
        .or(command.first());
    let stem = pick
        .and_then(|p| Path::new(p).file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
    {
        clean
    } else {
        format!("run{clean}")
    }
}

pub fn run(a: &RunArgs<'_>, out: &mut dyn Write) -> Result<i32> {
    let cwd = std::env::current_dir().map_err(|e| shoal_core::CoreError::io(".", e))?;
    let cfg = match a.config {
        Some(p) => Config::load(p)?,
        None => Config::find(&cwd)?,
    };
    let backend = a
        .backend
        .map(str::to_string)
        .or(cfg.backend.clone())
        .unwrap_or_else(|| "local".into());
    if !shoal_runs::config::BACKENDS.contains(&backend.as_str()) {
        return Err(RunError::Command(format!(
            "unknown backend {backend:?}\nhint: use one of {}",
            shoal_runs::config::BACKENDS.join(", ")
        )));
    }
    let template = cfg.template(&backend, a.template)?;
    let mut options = template
        .as_ref()
        .map(|t| t.options.clone())
        .unwrap_or_default();
    if let Some(n) = a.workers {
        options.insert("workers".into(), n.into());
    }
    let grid = Grid::parse(a.params, a.groups)?;
    check_placeholders(a.command, &grid.names())?;
    let name = a
        .name
        .map(str::to_string)
        .unwrap_or_else(|| default_name(a.command));
    shoal_runs::registry::check_name(&name)?;
    let results_dir = match a.results_dir {
        Some(d) => cwd.join(d),
        None => cfg
            .results_dir
            .clone()
            .unwrap_or_else(|| cfg.root.join("results")),
    };
    let combos = grid.expand();
    if a.dry_run {
        w(
            out,
            format!(
                "{} tasks on {backend}{} (dry run: nothing registered)\n",
                combos.len(),
                template
                    .as_ref()
                    .map(|t| format!(" with template {}", t.name))
                    .unwrap_or_default()
            ),
        )?;
        for (i, c) in combos.iter().enumerate() {
            let mut vars = c.clone();
            vars.push((
                "out".into(),
                results_dir
                    .join(format!("{name}-ID/{i}"))
                    .display()
                    .to_string(),
            ));
            vars.push(("task".into(), i.to_string()));
            vars.push(("run".into(), "ID".into()));
            vars.push(("name".into(), name.clone()));
            w(
                out,
                format!(
                    "{i}: {}\n",
                    shoal_runs::params::render(a.command, &vars).join(" ")
                ),
            )?;
        }
        return Ok(0);
    }
    let reg = open_registry()?;
    let new = NewRun {
        name,
        command: a.command.to_vec(),
        params: serde_json::json!({"param": a.params, "group": a.groups}),
        backend: backend.clone(),
        template: template.as_ref().map(|t| t.name.clone()),
        options: serde_json::Value::Object(options),
        cwd: cwd.clone(),
        results_dir,
        config_path: cfg.path.clone(),
        git: git_state(&cwd),
    };
    let run = reg.create_run(&new, &combos)?;
    w(
        out,
        format!(
            "run {} ({}): {} tasks on {backend}{} -> {}\n",
            run.id,
            run.name,
            combos.len(),
            run.template
                .as_ref()
                .map(|t| format!(" [{t}]"))
                .unwrap_or_default(),
            run.run_dir
        ),
    )?;
    out.flush().ok();
    drive(&reg, &run, out)
}

/// Start the run's driver (`PYTHON -m shoal.runner ID`) in the foreground and wait for it.
/// A terminal's Ctrl-C reaches the driver, which stops its workers and records the run as
/// interrupted; this process ignores it meanwhile so it can report what happened.
fn drive(reg: &Registry, run: &RunRow, out: &mut dyn Write) -> Result<i32> {
    let python = std::env::var("SHOAL_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let mut child = Proc::new(&python)
        .args(["-m", "shoal.runner", &run.id.to_string(), "--db"])
        .arg(reg.path())
        .current_dir(&run.cwd)
        .spawn()
        .map_err(|e| {
            RunError::Command(format!(
                "cannot start the run driver with {python:?}: {e}\nhint: set SHOAL_PYTHON to \
                 an interpreter with shoal installed (the `shoal` entry point does this)"
            ))
        })?;
    reg.start_driver(run.id, child.id(), &hostname())?;
    let old = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait();
    unsafe { libc::signal(libc::SIGINT, old) };
    let status = status.map_err(|e| shoal_core::CoreError::io("driver", e))?;
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    let after = reg.get(run.id)?;
    if after.status == "running" {
        // The driver died without settling the run (killed, crashed): say so now.
        reg.set_status(
            run.id,
            "interrupted",
            Some(&format!(
                "driver ended with status {code} before the run finished"
            )),
        )?;
        w(
            out,
            format!(
                "run {} interrupted: its driver ended with status {code}\nhint: `shoal resume {}` finishes it without redoing finished tasks\n",
                run.id, run.id
            ),
        )?;
    }
    Ok(code)
}

pub fn runs(json: bool, out: &mut dyn Write) -> Result<i32> {
    let all = if default_path().exists() {
        open_registry()?.list()?
    } else {
        Vec::new()
    };
    if json {
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
        w(
            out,
            format!(
                "no runs in {}\nhint: start one with `shoal run --param x=1,2 -- echo {{x}}`\n",
                default_path().display()
            ),
        )?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(r, c)| {
            vec![
                r.id.to_string(),
                r.name.clone(),
                r.backend.clone(),
                r.started
                    .or(Some(r.created))
                    .map(fmt_time)
                    .unwrap_or_default(),
                run_duration(r),
                r.display_status().to_string(),
                progress(c),
            ]
        })
        .collect();
    table(
        out,
        &[
            "ID", "NAME", "BACKEND", "STARTED", "DURATION", "STATUS", "PROGRESS",
        ],
        &rows,
    )?;
    Ok(0)
}

pub fn show(key: &str, json: bool, all: bool, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(key)?;
    let c = reg.counts(r.id)?;
    let tasks = reg.tasks(r.id, None)?;
    if json {
        let mut j = serde_json::to_value(&r).unwrap_or_default();
        j["display_status"] = r.display_status().into();
        j["counts"] = serde_json::to_value(&c).unwrap_or_default();
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
    let quoted: Vec<String> = r
        .command
        .iter()
        .map(|a| {
            if a.contains(' ') || a.is_empty() {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect();
    let mut s = format!("run {} · {} · {}\n", r.id, r.name, r.display_status());
    s += &format!("command:   {}\n", quoted.join(" "));
    let specs: Vec<String> = r.params["param"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(|p| format!("--param {p}")))
        .chain(r.params["group"].as_array().into_iter().flatten().map(|g| {
            let parts: Vec<&str> = g
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            format!("--group {}", parts.join(" "))
        }))
        .collect();
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
    s += &format!(
        "git:       {}\n",
        match (&r.git_commit, r.git_dirty) {
            (Some(c), Some(true)) => format!("{c} (uncommitted changes)"),
            (Some(c), _) => c.clone(),
            _ => "(not a git repository)".into(),
        }
    );
    s += &format!("cwd:       {}\nresults:   {}\n", r.cwd, r.run_dir);
    s += &format!(
        "started:   {} · duration {}\n",
        r.started.map(fmt_time).unwrap_or_else(|| "-".into()),
        run_duration(&r)
    );
    if let Some(sess) = &r.session {
        s += &format!("session:   {sess}\n");
    }
    if let Some(m) = &r.message {
        s += &format!("message:   {m}\n");
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

/// `shoal logs RUN [TASK]`: a task's captured output, or the run's failed tasks.
pub fn logs(
    reg: &Registry,
    r: &RunRow,
    task: Option<u64>,
    stdout: bool,
    stderr: bool,
    worker_log: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let Some(idx) = task else {
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
        for t in &failed {
            let err = std::fs::read_to_string(Path::new(&t.out_dir).join("stderr.txt"))
                .unwrap_or_default();
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
            format!("see one task: shoal logs {} TASK [--stderr]\n", r.id),
        )?;
        return Ok(if failed.is_empty() { 0 } else { 1 });
    };
    let Some(t) = reg.task(r.id, idx as i64)? else {
        return Err(RunError::Command(format!(
            "run {} has no task {idx}\nhint: `shoal show {}` lists its tasks",
            r.id, r.id
        )));
    };
    w(
        out,
        format!(
            "task {} · {} · exit {} · attempt {}{}\n",
            t.idx,
            t.state,
            t.exit_code
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            t.attempt,
            t.host
                .as_ref()
                .map(|h| format!(" · ran on {h}"))
                .unwrap_or_default()
        ),
    )?;
    if worker_log {
        return worker_logs(r, &t, out);
    }
    let streams: &[&str] = match (stdout, stderr) {
        (true, _) => &["stdout"],
        (_, true) => &["stderr"],
        _ => &["stdout", "stderr"],
    };
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

/// The scheduler-side log (the worker's stdout/stderr in the session dir) of the worker that
/// ran a task, found by the host and pid the task recorded.
fn worker_logs(r: &RunRow, t: &shoal_runs::registry::TaskRow, out: &mut dyn Write) -> Result<i32> {
    let (Some(session), Some(host), Some(pid)) = (&r.session_path, &t.host, &t.worker) else {
        w(out, "(no worker recorded for this task yet)\n")?;
        return Ok(1);
    };
    let dir = SessionDir::open(session);
    let found = dir
        .worker_infos()
        .into_iter()
        .rfind(|i| i.host == *host && i.pid.to_string() == *pid)
        .map(|i| i.worker);
    let Some(id) = found else {
        w(
            out,
            format!("(worker {host}:{pid} not found in {session})\n"),
        )?;
        return Ok(1);
    };
    let mut buf = Vec::new();
    commands::dispatch(
        &crate::Command::Logs {
            session: session.clone(),
            task: None,
            stdout: false,
            stderr: false,
            worker: Some(id),
            worker_log: false,
        },
        Path::new(session),
        &mut buf,
    )?;
    w(out, String::from_utf8_lossy(&buf))?;
    Ok(0)
}

/// Stop what a dead driver left behind in its session and wait until its workers are gone,
/// so no old worker finishes a task that the next driver runs again.
fn stop_old_session(r: &RunRow, wait: Duration, out: &mut dyn Write) -> Result<()> {
    let Some(path) = &r.session_path else {
        return Ok(());
    };
    let dir = SessionDir::open(path);
    let Ok(meta) = dir.read_meta() else {
        return Ok(());
    };
    if meta.state == SessionState::Running {
        let mut sink = Vec::new();
        commands::cancel(&dir, &mut sink)?;
    }
    let me = hostname();
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        let mut alive = 0;
        for info in dir.worker_infos() {
            let live = if info.host == me {
                info.pid > 1 && pid_alive(info.pid)
            } else {
                dir.age_of(&dir.heartbeat(&info.worker))
                    .is_some_and(|a| a < 15.0)
            };
            alive += live as usize;
        }
        if alive == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            w(
                out,
                format!(
                    "warning: {alive} workers of session {} still alive after {}s; continuing\n",
                    meta.id,
                    wait.as_secs()
                ),
            )?;
            return Ok(());
        }
        if !told {
            w(
                out,
                format!(
                    "waiting for {alive} workers of the previous session {} to stop\n",
                    meta.id
                ),
            )?;
            told = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_not_running(r: &RunRow) -> Result<()> {
    if r.status == "running" && r.driver_alive() {
        return Err(RunError::State(format!(
            "run {} is running (driver pid {} on {})\nhint: wait for it, or `shoal cancel {}` first",
            r.id,
            r.driver_pid.unwrap_or(0),
            r.driver_host.clone().unwrap_or_default(),
            r.id
        )));
    }
    Ok(())
}

pub fn resume(key: &str, wait: u64, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(key)?;
    check_not_running(&r)?;
    stop_old_session(&r, Duration::from_secs(wait), out)?;
    let n = reg.set_states(r.id, &["running", "cancelled"], "pending")?;
    let c = reg.counts(r.id)?;
    if c.pending == 0 {
        w(out, format!("run {} has no unfinished tasks ({})\nhint: `shoal rerun {} --failed` runs failed tasks again\n", r.id, progress(&c), r.id))?;
        return Ok(0);
    }
    let _ = n;
    w(
        out,
        format!(
            "resuming run {} ({}): {} unfinished tasks\n",
            r.id, r.name, c.pending
        ),
    )?;
    out.flush().ok();
    drive(&reg, &reg.get(r.id)?, out)
}

pub fn rerun(key: &str, failed: bool, cancelled: bool, out: &mut dyn Write) -> Result<i32> {
    if !failed && !cancelled {
        return Err(RunError::Command(
            "say which tasks to run again\nhint: `shoal rerun RUN --failed` (and/or --cancelled); `shoal resume RUN` finishes unfinished tasks".into(),
        ));
    }
    let reg = open_registry()?;
    let r = reg.resolve(key)?;
    check_not_running(&r)?;
    stop_old_session(&r, Duration::from_secs(60), out)?;
    let mut states = Vec::new();
    if failed {
        states.push("failed");
    }
    if cancelled {
        states.push("cancelled");
    }
    let n = reg.new_attempt(r.id, &states)?;
    if n == 0 {
        w(
            out,
            format!(
                "run {} has no {} tasks: nothing to rerun\n",
                r.id,
                states.join(" or ")
            ),
        )?;
        return Ok(0);
    }
    w(
        out,
        format!(
            "rerunning {n} {} tasks of run {} ({}) as a new attempt\n",
            states.join("/"),
            r.id,
            r.name
        ),
    )?;
    out.flush().ok();
    drive(&reg, &reg.get(r.id)?, out)
}

pub fn cancel(reg: &Registry, r: &RunRow, out: &mut dyn Write) -> Result<i32> {
    if !matches!(r.status.as_str(), "running" | "pending" | "interrupted") {
        w(out, format!("run {} is already {}\n", r.id, r.status))?;
        return Ok(0);
    }
    let me = hostname();
    if r.driver_alive() {
        if r.driver_host.as_deref() != Some(me.as_str()) {
            return Err(RunError::State(format!(
                "run {}'s driver runs on {}\nhint: run `shoal cancel {}` there",
                r.id,
                r.driver_host.clone().unwrap_or_default(),
                r.id
            )));
        }
        let pid = r.driver_pid.unwrap_or(0) as libc::pid_t;
        // The driver terminates its pool on SIGTERM and records the cancelled tasks itself.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid_alive(pid as u32) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if pid_alive(pid as u32) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop_old_session(r, Duration::from_secs(30), out)?;
    let n = reg.set_states(r.id, &["pending", "running"], "cancelled")?;
    let now = reg.get(r.id)?;
    if now.status != "cancelled"
        && matches!(now.status.as_str(), "running" | "pending" | "interrupted")
    {
        reg.set_status(r.id, "cancelled", Some("cancelled by `shoal cancel`"))?;
    }
    let c = reg.counts(r.id)?;
    w(
        out,
        format!(
            "cancelled run {} ({}): {} tasks cancelled, {} done, {} failed\n",
            r.id,
            r.name,
            c.cancelled.max(n as u64),
            c.done,
            c.failed
        ),
    )?;
    Ok(0)
}

pub fn rm(key: &str, keep_files: bool, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(key)?;
    check_not_running(&r)?;
    let dir = Path::new(&r.run_dir);
    if !keep_files && dir.is_dir() {
        std::fs::remove_dir_all(dir).map_err(|e| shoal_core::CoreError::io(dir, e))?;
    }
    reg.delete(r.id)?;
    w(
        out,
        format!(
            "removed run {} ({}){}\n",
            r.id,
            r.name,
            if keep_files {
                format!("; kept {}", r.run_dir)
            } else {
                format!(" and {}", r.run_dir)
            }
        ),
    )?;
    Ok(0)
}

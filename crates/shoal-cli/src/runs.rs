//! The run subcommands (`run`, `resume`, `rerun` here; listing and results in `view`, logs in
//! `logs`, the rest in `manage`): argument handling and printing over shoal-runs.
//!
//! A run id is a number and a run name starts with a letter; session ids start with a date
//! (`20261126-052301-…`). `logs`/`cancel` try the registry first, then the sessions.

mod logs;
mod manage;
mod view;

pub use logs::{logs, LogsArgs};
pub use manage::{action, cancel, experiments, import_qanat, init, note, rm, tag};
pub use manage::{ActionCmd, ExperimentsCmd, NoteCmd, RmCmd, TagCmd};
pub use view::{results, runs, show, ResultsCmd, RunsCmd};

use crate::commands;
use serde_json::{Map, Value as Json};
use shoal_core::fsutil::{hostname, local_time, pid_alive};
use shoal_core::session::{list_sessions, SessionState};
use shoal_core::SessionDir;
use shoal_runs::config::{merge_options, parse_opt, Config, Template};
use shoal_runs::params::{check_placeholders, Grid};
use shoal_runs::progress::Eta;
use shoal_runs::registry::{dataset_vars, default_path, Counts, NewLaunch, NewRun, RunRow};
use shoal_runs::{git_state, Registry, Result, RunError};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

fn w(out: &mut dyn Write, s: impl AsRef<str>) -> Result<()> {
    Ok(commands::w(out, s)?)
}

pub fn open_registry() -> Result<Registry> {
    Registry::open(&default_path())
}

/// Session ids begin with an 8-digit date; shorter digit strings are always run ids.
const DATE_DIGITS: usize = 8;

/// A run's task number as `shoal logs RUN TASK` takes it.
pub fn task_number(text: &str) -> Result<u64> {
    text.parse().map_err(|_| {
        RunError::Command(format!(
            "{text:?} is not a task number of a run\nhint: `shoal show RUN` lists its tasks \
             (0, 1, 2, ...)"
        ))
    })
}

/// The run a `logs`/`cancel` argument names, if it names one: digits are a run id, a key
/// starting with a letter is a run name. Anything else (or no such run) is left to sessions.
/// A long digit string that is both a run id and a prefix of sessions is refused with both.
pub fn lookup(key: &str, sessions: &Path) -> Result<Option<(Registry, RunRow)>> {
    let first = key.chars().next().unwrap_or(' ');
    let digits = !key.is_empty() && key.chars().all(|c| c.is_ascii_digit());
    if !(digits || first.is_ascii_alphabetic()) || !shoal_runs::registry::exists(&default_path()) {
        return Ok(None);
    }
    let reg = open_registry()?;
    let run = match reg.resolve(key) {
        Ok(run) => run,
        Err(RunError::NoSuchRun(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if digits && key.len() >= DATE_DIGITS {
        let matching: Vec<String> = list_sessions(sessions)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, m)| m.id)
            .filter(|id| id.starts_with(key))
            .collect();
        if !matching.is_empty() {
            return Err(RunError::Command(format!(
                "{key:?} is both run {} ({}) and the start of sessions {}\nhint: give more of \
                 the session id (e.g. {}), or name the run by its name",
                run.id,
                run.name,
                matching
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                matching[0]
            )));
        }
    }
    Ok(Some((reg, run)))
}

fn fmt_time(secs: f64) -> String {
    let (y, mo, d, h, mi, se) = local_time(secs as i64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}")
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

/// The short flags `shoal run` had, which read like sbatch's (`-p` partition, `-t` time,
/// `-b` begin, `-w` nodelist), refused with what to write instead.
const OLD_FLAGS: [(&str, &str); 4] = [
    (
        "-p",
        "-P/--param NAME=VALUES (sbatch's -p is --opt partition=NAME)",
    ),
    ("-t", "-T/--template NAME (sbatch's -t is --opt time=1h)"),
    ("-b", "--backend NAME"),
    ("-w", "-j/--workers N"),
];

/// `shoal run`.
#[derive(clap::Args, Debug)]
pub struct RunCmd {
    /// An experiment of shoal.toml to run (its script and interpreter); else give COMMAND
    pub experiment: Option<String>,
    /// Run name (letters, digits, _ . -; starts with a letter) [default: the experiment's, or
    /// the script's name]
    #[arg(long)]
    pub name: Option<String>,
    /// local, slurm, sge or htcondor [default: the experiment's, else config's
    /// defaults.backend, else local]
    #[arg(long)]
    pub backend: Option<String>,
    /// Template of backend options from shoal.toml [default: the backend's `default`]
    #[arg(long, short = 'T')]
    pub template: Option<String>,
    /// KEY=VALUE: a backend option over the template's (e.g. -X partition=debug -X time=10m)
    #[arg(long = "opt", short = 'X', value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
    /// KEY=VALUE: a per-call resource of each task, which may name its parameters
    /// (e.g. -R cpus={threads} -R memory={mem}G); tasks asking alike share workers
    #[arg(long = "resources", short = 'R', value_name = "KEY=VALUE")]
    pub resources: Vec<String>,
    /// NAME=VALUES: one axis of the grid
    #[arg(long = "param", short = 'P', value_name = "NAME=VALUES")]
    pub params: Vec<String>,
    /// NAME=VALUES NAME=VALUES...: parameters zipped together into one axis
    #[arg(long = "group", short = 'g', value_name = "NAME=VALUES...")]
    pub groups: Vec<String>,
    /// A CSV (with a header), JSON/YAML (a list of objects) or JSON Lines file: one row per
    /// combination, one axis of the grid
    #[arg(long = "params-file", short = 'f', value_name = "FILE")]
    pub params_files: Vec<PathBuf>,
    /// Number of workers (overrides the template's `workers`)
    #[arg(long, short = 'j')]
    pub workers: Option<usize>,
    /// Where run dirs go [default: config's defaults.results_dir, else ./results]
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// Config file [default: shoal.toml or pyproject.toml found from the cwd upwards]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Tag the run (repeat, or separate with commas)
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// A note on the run (`shoal note RUN` changes it)
    #[arg(long)]
    pub note: Option<String>,
    /// Run in the background, surviving logout; `shoal logs --follow RUN` shows it
    #[arg(long)]
    pub detach: bool,
    /// Print the tasks without registering or running anything
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short = 'p', hide = true)]
    pub old_p: Vec<String>,
    #[arg(short = 't', hide = true)]
    pub old_t: Vec<String>,
    #[arg(short = 'b', hide = true)]
    pub old_b: Vec<String>,
    #[arg(short = 'w', hide = true)]
    pub old_w: Vec<String>,
    /// The command, after `--` (after an experiment: extra arguments for its script)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl RunCmd {
    fn check_old_flags(&self) -> Result<()> {
        let used = [&self.old_p, &self.old_t, &self.old_b, &self.old_w];
        for ((flag, instead), v) in OLD_FLAGS.iter().zip(used) {
            if let Some(value) = v.first() {
                return Err(RunError::Command(format!(
                    "`shoal run {flag} {value}`: {flag} is not a shoal run flag (it reads like \
                     sbatch's)\nhint: write {instead}"
                )));
            }
        }
        Ok(())
    }
}

/// Options a launch may change: `resume` and `rerun`.
#[derive(clap::Args, Debug)]
pub struct LaunchOpts {
    /// KEY=VALUE: a backend option over the template's, kept for later launches
    #[arg(long = "opt", short = 'X', value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
    /// Number of workers
    #[arg(long, short = 'j')]
    pub workers: Option<usize>,
    /// Use the options recorded by the run's last launch instead of re-reading its template
    #[arg(long)]
    pub recorded_options: bool,
    /// Run in the background; `shoal logs --follow RUN` shows it
    #[arg(long)]
    pub detach: bool,
}

/// `shoal resume`.
#[derive(clap::Args, Debug)]
pub struct ResumeCmd {
    /// Run id or name
    pub run: String,
    /// Seconds to wait for the previous driver's workers to stop
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    #[command(flatten)]
    pub launch: LaunchOpts,
}

/// `shoal rerun`.
#[derive(clap::Args, Debug)]
pub struct RerunCmd {
    /// Run id or name
    pub run: String,
    /// Rerun failed tasks
    #[arg(long)]
    pub failed: bool,
    /// Rerun cancelled tasks
    #[arg(long)]
    pub cancelled: bool,
    #[command(flatten)]
    pub launch: LaunchOpts,
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
    shoal_runs::registry::to_name(&stem, "run")
}

fn check_backend(backend: &str) -> Result<()> {
    if shoal_runs::config::BACKENDS.contains(&backend) {
        return Ok(());
    }
    Err(RunError::Command(format!(
        "unknown backend {backend:?}\nhint: use one of {}",
        shoal_runs::config::BACKENDS.join(", ")
    )))
}

/// `--opt` values (checked for `backend`) and `--workers`, as options over the template's.
fn overrides(backend: &str, opts: &[String], workers: Option<usize>) -> Result<Map<String, Json>> {
    let mut map = Map::new();
    for spec in opts {
        let (k, v) = parse_opt(backend, spec)?;
        map.insert(k, v);
    }
    if let Some(n) = workers {
        map.insert("workers".into(), n.into());
    }
    Ok(map)
}

/// The registry's warning for sizes given as bare numbers (a template's `memory = 4`, or
/// `--opt memory=4`), before anything is submitted. The run's driver does not repeat it.
fn warn_bare_sizes(backend: &str, options: &Map<String, Json>) {
    for w in shoal_sched::registry::bare_sizes(backend, options) {
        eprintln!("warning: {w}");
    }
}

/// How a launch's options came about, for the registry and `shoal show`.
fn options_from(
    template: Option<&Template>,
    cfg: &Config,
    overrides: &Map<String, Json>,
) -> String {
    let mut s = match (template, &cfg.path) {
        (Some(t), Some(p)) => format!("template {} of {}", t.name, p.display()),
        _ => "no template".to_string(),
    };
    if !overrides.is_empty() {
        let opts: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s += &format!(" + {}", opts.join(" "));
    }
    s
}

pub fn run(a: &RunCmd, groups: &[Vec<String>], out: &mut dyn Write) -> Result<i32> {
    a.check_old_flags()?;
    let cwd = std::env::current_dir().map_err(|e| shoal_core::CoreError::io(".", e))?;
    let cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::find(&cwd)?,
    };
    let experiment = a
        .experiment
        .as_deref()
        .map(|e| cfg.experiment(e))
        .transpose()?;
    if experiment.is_none() && a.command.is_empty() {
        return Err(RunError::Command(
            "nothing to run\nhint: give a command after `--` (shoal run -P x=1,2 -- echo {x}), \
             or an experiment of shoal.toml (shoal run NAME; `shoal experiments` lists them)"
                .into(),
        ));
    }
    let backend = a
        .backend
        .clone()
        .or_else(|| experiment.and_then(|e| e.backend.clone()))
        .or(cfg.backend.clone())
        .unwrap_or_else(|| "local".into());
    check_backend(&backend)?;
    let template_name = a
        .template
        .as_deref()
        .or_else(|| experiment.and_then(|e| e.template.as_deref()));
    let template = cfg.template(&backend, template_name)?;
    let grid = Grid::parse(&a.params, groups, &a.params_files)?;
    let mut over = overrides(&backend, &a.opts, a.workers)?;
    let task_resources = shoal_runs::resources::parse(&a.resources, &grid.names())?;
    if !task_resources.is_empty() {
        over.insert(
            shoal_runs::resources::KEY.into(),
            Json::Object(task_resources.clone()),
        );
    }
    let options = merge_options(template.as_ref(), &over);
    warn_bare_sizes(&backend, &options);
    let command = match experiment {
        Some(e) => e.command(&a.command, &grid.names()),
        None => a.command.clone(),
    };
    let datasets = cfg.datasets_json();
    let mut known = grid.names();
    known.extend(dataset_vars(&datasets).into_iter().map(|(k, _)| k));
    check_placeholders(&command, &known)?;
    let name = a
        .name
        .clone()
        .or_else(|| experiment.map(|e| e.name.clone()))
        .unwrap_or_else(|| default_name(&command));
    shoal_runs::registry::check_name(&name)?;
    let mut tags = a.tags.clone();
    for t in experiment.map(|e| e.tags.clone()).unwrap_or_default() {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    for t in &tags {
        shoal_runs::registry::check_tag(t)?;
    }
    let results_dir = match &a.results_dir {
        Some(d) => cwd.join(d),
        None => cfg
            .results_dir
            .clone()
            .unwrap_or_else(|| cfg.root.join("results")),
    };
    let combos = grid.expand();
    shoal_runs::resources::check(&backend, &options, &task_resources, &combos)?;
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
        if !options.is_empty() {
            w(out, format!("options: {}\n", Json::Object(options.clone())))?;
        }
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
            vars.extend(dataset_vars(&datasets));
            let resources = shoal_runs::resources::for_task(&task_resources, c);
            let shown = shoal_runs::resources::label(&resources);
            w(
                out,
                format!(
                    "{i}: {}{}\n",
                    shoal_runs::params::render(&command, &vars).join(" "),
                    if shown.is_empty() {
                        String::new()
                    } else {
                        format!("  [{shown}]")
                    }
                ),
            )?;
        }
        return Ok(0);
    }
    let reg = open_registry()?;
    let git = git_state(&cwd);
    let new = NewRun {
        name,
        command,
        params: serde_json::json!({
            "param": a.params,
            "group": groups,
            "file": a.params_files.iter().map(|f| cwd.join(f).display().to_string()).collect::<Vec<_>>(),
        }),
        backend: backend.clone(),
        template: template.as_ref().map(|t| t.name.clone()),
        options: Json::Object(options.clone()),
        cwd: cwd.clone(),
        results_dir,
        config_path: cfg.path.clone(),
        git: git.clone(),
        experiment: experiment.map(|e| e.name.clone()),
        overrides: Json::Object(over.clone()),
        datasets,
        note: a.note.clone(),
        tags,
    };
    let run = reg.create_run(&new, &combos)?;
    reg.begin_launch(
        run.id,
        &NewLaunch {
            kind: "run".into(),
            git,
            template: run.template.clone(),
            options: Json::Object(options),
            options_from: options_from(template.as_ref(), &cfg, &over),
            overrides: Json::Object(over),
            tasks: combos.len(),
            detached: a.detach,
        },
    )?;
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
    drive(&reg, &reg.get(run.id)?, a.detach, out)
}

/// The options of a new launch of `r`: its template as shoal.toml has it now (or, with
/// `recorded`, the options its last launch used), the run's command-line options, and this
/// launch's. Returns it with a line saying which options it uses and what changed since the
/// last launch.
fn plan_launch(r: &RunRow, kind: &str, opts: &LaunchOpts) -> Result<(NewLaunch, String)> {
    let mut over = r.overrides.as_object().cloned().unwrap_or_default();
    let new = overrides(&r.backend, &opts.opts, opts.workers)?;
    over.extend(new.clone());
    let (template, options, from) = if opts.recorded_options {
        let mut options = r.options.as_object().cloned().unwrap_or_default();
        options.extend(over.clone());
        let mut from = format!("the options recorded by launch {}", r.launch);
        if !new.is_empty() {
            let opts: Vec<String> = new.iter().map(|(k, v)| format!("{k}={v}")).collect();
            from += &format!(" + {}", opts.join(" "));
        }
        (r.template.clone(), options, from)
    } else {
        let recorded = |why: String| {
            RunError::Command(format!(
                "run {}: {why}\nhint: restore it, or pass --recorded-options to use what launch \
                 {} used: {}",
                r.id, r.launch, r.options
            ))
        };
        let cfg = match &r.config_path {
            Some(p) if Path::new(p).is_file() => Config::load(Path::new(p)),
            Some(p) => return Err(recorded(format!("its config {p} is gone"))),
            None => Config::find(Path::new(&r.cwd)),
        }
        .map_err(|e| recorded(format!("its config does not load: {e}")))?;
        let template = cfg
            .template(&r.backend, r.template.as_deref())
            .map_err(|e| recorded(e.to_string()))?;
        let options = merge_options(template.as_ref(), &over);
        let from = options_from(template.as_ref(), &cfg, &over) + ", as it is now";
        (template.map(|t| t.name), options, from)
    };
    warn_bare_sizes(&r.backend, &options);
    let before = r.options.as_object().cloned().unwrap_or_default();
    let mut changes: Vec<String> = Vec::new();
    for (k, v) in &options {
        match before.get(k) {
            Some(old) if old == v => {}
            Some(old) => changes.push(format!("{k} {old} -> {v}")),
            None => changes.push(format!("{k} = {v}")),
        }
    }
    for k in before.keys().filter(|k| !options.contains_key(*k)) {
        changes.push(format!("{k} removed"));
    }
    let said = format!(
        "options: {from}{}\n",
        if changes.is_empty() {
            String::new()
        } else {
            format!(
                " (changed since launch {}: {})",
                r.launch,
                changes.join(", ")
            )
        }
    );
    let launch = NewLaunch {
        kind: kind.into(),
        git: git_state(Path::new(&r.cwd)),
        template,
        options: Json::Object(options),
        options_from: from,
        overrides: Json::Object(over),
        tasks: 0,
        detached: opts.detach,
    };
    Ok((launch, said))
}

fn python() -> String {
    std::env::var("SHOAL_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// The driver's log: everything each launch's driver printed (`shoal logs --follow` tails it).
pub fn driver_log(r: &RunRow) -> PathBuf {
    Path::new(&r.run_dir).join("driver.log")
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| shoal_core::CoreError::io(d, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| shoal_core::CoreError::io(path, e).into())
}

/// Start the run's driver (`PYTHON -m shoal.runner ID`) for its current launch. In the
/// foreground it shows the driver's lines and a live progress line, and copies the lines to
/// the driver log; with `detach` it starts the driver in a new session (no terminal, so
/// logging out does not stop it) writing to the driver log, and returns at once.
fn drive(reg: &Registry, run: &RunRow, detach: bool, out: &mut dyn Write) -> Result<i32> {
    let python = python();
    let log_path = driver_log(run);
    let mut log = open_log(&log_path)?;
    let _ = writeln!(
        log,
        "== launch {} of run {} at {} on {}",
        run.launch,
        run.id,
        fmt_time(shoal_core::fsutil::now_secs()),
        hostname()
    );
    let mut cmd = Proc::new(&python);
    cmd.args(["-m", "shoal.runner", &run.id.to_string(), "--db"])
        .arg(reg.path())
        .current_dir(&run.cwd);
    let cannot = |e: std::io::Error| {
        RunError::Command(format!(
            "cannot start the run driver with {python:?}: {e}\nhint: set SHOAL_PYTHON to an \
             interpreter with shoal installed (the `shoal` entry point does this)"
        ))
    };
    if detach {
        let err = log
            .try_clone()
            .map_err(|e| shoal_core::CoreError::io(&log_path, e))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        {
            use std::os::unix::process::CommandExt;
            // A new session has no controlling terminal: a hang-up at logout does not reach it.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                })
            };
        }
        let child = cmd.spawn().map_err(cannot)?;
        reg.start_driver(run.id, child.id(), &hostname())?;
        w(
            out,
            format!(
                "run {} runs in the background (driver pid {} on {}), logging to {}\n\
                 follow it: shoal logs --follow {} · stop it: shoal cancel {}\n",
                run.id,
                child.id(),
                hostname(),
                log_path.display(),
                run.id,
                run.id
            ),
        )?;
        return Ok(0);
    }
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(cannot)?;
    reg.start_driver(run.id, child.id(), &hostname())?;
    // A terminal's Ctrl-C reaches the driver (same process group), which stops its workers
    // and records the run as interrupted; this process ignores it meanwhile so it can report.
    let old = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let lines = spawn_line_reader(child.stderr.take());
    let mut view = LiveView::new(reg.counts(run.id).unwrap_or_default());
    let mut ended: Option<Instant> = None;
    let status = loop {
        match lines.recv_timeout(Duration::from_millis(250)) {
            Ok(line) => {
                let _ = log.write_all(line.as_bytes());
                view.line(&line);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break child.wait(),
        }
        // A process the driver left behind may hold its stderr open: once the driver has
        // exited, take what arrives within a second and stop listening.
        match (ended, child.try_wait()) {
            (Some(t), _) if t.elapsed() > Duration::from_secs(1) => break child.wait(),
            (None, Ok(Some(_))) => ended = Some(Instant::now()),
            _ => {}
        }
        if view.due() {
            if let Ok(c) = reg.counts(run.id) {
                view.tick(&c);
            }
        }
    };
    view.clear();
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
        let msg = format!("driver ended with status {code} before the run finished");
        reg.set_status(run.id, "interrupted", Some(&msg))?;
        let _ = writeln!(log, "run {} interrupted: {msg}", run.id);
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

/// Lines of a pipe, read on a thread; the channel closes at end of file.
fn spawn_line_reader(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        let mut reader = std::io::BufReader::new(pipe);
        loop {
            let mut line = String::new();
            match std::io::BufRead::read_line(&mut reader, &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Output lines with a progress line under them on stderr: redrawn in place on a terminal,
/// printed once a minute otherwise.
pub(crate) struct LiveView {
    eta: Eta,
    started: Instant,
    tty: bool,
    shown: bool,
    last_plain: Instant,
    last_drawn: Option<Instant>,
    last: Option<String>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(60);
const DRAW_EVERY: Duration = Duration::from_millis(500);

impl LiveView {
    pub(crate) fn new(start: Counts) -> LiveView {
        LiveView {
            eta: Eta::new(&start),
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            shown: false,
            last_plain: Instant::now(),
            last_drawn: None,
            last: None,
        }
    }

    /// Whether a `tick` would show something now (so the caller reads the counts only then).
    pub(crate) fn due(&self) -> bool {
        if self.tty {
            self.last_drawn.is_none_or(|t| t.elapsed() >= DRAW_EVERY)
        } else {
            self.last_plain.elapsed() >= PLAIN_EVERY
        }
    }

    /// Print a line (ending in a newline) above the progress line.
    pub(crate) fn line(&mut self, text: &str) {
        let mut e = std::io::stderr().lock();
        if self.shown {
            let _ = write!(e, "\r\x1b[2K");
            self.shown = false;
        }
        let _ = e.write_all(text.as_bytes());
        if self.tty {
            if let Some(p) = &self.last {
                let _ = write!(e, "{p}");
                self.shown = true;
            }
        }
        let _ = e.flush();
    }

    pub(crate) fn tick(&mut self, c: &Counts) {
        let text = self.eta.line(c, self.started.elapsed().as_secs_f64());
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{text}");
            self.shown = true;
            self.last_drawn = Some(Instant::now());
        } else if self.last_plain.elapsed() >= PLAIN_EVERY {
            let _ = writeln!(e, "progress: {text}");
            self.last_plain = Instant::now();
        }
        let _ = e.flush();
        self.last = Some(text);
    }

    pub(crate) fn clear(&mut self) {
        if self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
            self.shown = false;
        }
    }
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
    // Remote workers are alive while their heartbeat counter changes, as seen on our own
    // clock (their hosts' clocks may differ from ours).
    let start = Instant::now();
    let mut beats = shoal_core::clock::ChangeWatch::<String>::default();
    loop {
        let mut alive = 0;
        let now = start.elapsed();
        for info in dir.worker_infos() {
            let live = if info.host == me {
                info.pid > 1 && pid_alive(info.pid)
            } else {
                if let Some(b) = dir.read_beat(&info.key) {
                    beats.observe(&info.key, b.seq, now);
                }
                beats
                    .silent_for(&info.key, now)
                    .is_none_or(|s| s < Duration::from_secs(15))
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

pub fn resume(a: &ResumeCmd, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(&a.run)?;
    check_not_running(&r)?;
    stop_old_session(&r, Duration::from_secs(a.wait), out)?;
    reg.set_states(r.id, &["running", "cancelled"], "pending")?;
    let c = reg.counts(r.id)?;
    if c.pending == 0 {
        w(out, format!("run {} has no unfinished tasks ({})\nhint: `shoal rerun {} --failed` runs failed tasks again\n", r.id, progress(&c), r.id))?;
        return Ok(0);
    }
    w(
        out,
        format!(
            "resuming run {} ({}): {} unfinished tasks\n",
            r.id, r.name, c.pending
        ),
    )?;
    let (mut launch, said) = plan_launch(&r, "resume", &a.launch)?;
    w(out, said)?;
    launch.tasks = c.pending as usize;
    reg.begin_launch(r.id, &launch)?;
    out.flush().ok();
    drive(&reg, &reg.get(r.id)?, a.launch.detach, out)
}

pub fn rerun(a: &RerunCmd, out: &mut dyn Write) -> Result<i32> {
    if !a.failed && !a.cancelled {
        return Err(RunError::Command(
            "say which tasks to run again\nhint: `shoal rerun RUN --failed` (and/or --cancelled); `shoal resume RUN` finishes unfinished tasks".into(),
        ));
    }
    let reg = open_registry()?;
    let r = reg.resolve(&a.run)?;
    check_not_running(&r)?;
    stop_old_session(&r, Duration::from_secs(60), out)?;
    let mut states = Vec::new();
    if a.failed {
        states.push("failed");
    }
    if a.cancelled {
        states.push("cancelled");
    }
    // Options first: a template that no longer loads must not leave tasks reset.
    let planned = if reg.tasks(r.id, Some(&states))?.is_empty() {
        None
    } else {
        Some(plan_launch(&r, "rerun", &a.launch)?)
    };
    let n = reg.new_attempt(r.id, &states)?;
    if n == 0 {
        let c = reg.counts(r.id)?;
        let never = c.pending + c.running;
        w(
            out,
            format!(
                "run {} has no {} tasks: nothing to rerun\n{}",
                r.id,
                states.join(" or "),
                if never > 0 {
                    format!(
                        "hint: {never} tasks never finished; `shoal resume {}` runs them\n",
                        r.id
                    )
                } else {
                    String::new()
                }
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
    let (mut launch, said) = match planned {
        Some(p) => p,
        None => plan_launch(&r, "rerun", &a.launch)?,
    };
    w(out, said)?;
    launch.tasks = n;
    reg.begin_launch(r.id, &launch)?;
    out.flush().ok();
    drive(&reg, &reg.get(r.id)?, a.launch.detach, out)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// sbatch's one-letter options (Slurm 22.05-24.05): a shoal flag spelled like one would
    /// read as that (`-p debug` as a partition, `-t 1h` as a time limit).
    const SBATCH_SHORT: &str = "ABCDFGHJLMNOQSVWabcdehikmnopqstvwx";

    #[test]
    fn no_short_flag_of_a_launch_reads_like_sbatch() {
        let cli = crate::Cli::command();
        for name in ["run", "resume", "rerun"] {
            let sub = cli.find_subcommand(name).unwrap();
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(c) = arg.get_short() {
                    assert!(
                        !SBATCH_SHORT.contains(c),
                        "shoal {name} -{c} (--{}) reads like sbatch's -{c}",
                        arg.get_long().unwrap_or("")
                    );
                }
            }
        }
        let run = cli.find_subcommand("run").unwrap();
        let short = |long: &str| {
            run.get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_short())
        };
        assert_eq!(
            [
                "param",
                "template",
                "opt",
                "workers",
                "params-file",
                "group"
            ]
            .map(short),
            [
                Some('P'),
                Some('T'),
                Some('X'),
                Some('j'),
                Some('f'),
                Some('g')
            ]
        );
    }
}

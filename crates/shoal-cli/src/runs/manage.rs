//! Managing runs and the project: `init`, `import-qanat`, `experiments`, `cancel`, `rm`, `tag`,
//! `note`, and `action` (a named command over a finished run's outputs).

use super::{check_not_running, open_registry, stop_old_session, table, w};
use shoal_core::fsutil::{hostname, pid_alive};
use shoal_runs::config::{init_template, Config};
use shoal_runs::params::{check_placeholders, placeholders, render};
use shoal_runs::registry::{dataset_vars, default_path, RunFilter, RunRow};
use shoal_runs::results::{collect, DEFAULT_METRICS};
use shoal_runs::{Registry, Result, RunError};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
        "wrote shoal.toml (defaults, backend templates, experiments for `shoal run`)\n",
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

/// The config a run was made with (if it is still there), else the one its cwd finds.
fn config_of(r: &RunRow) -> Result<Config> {
    match &r.config_path {
        Some(p) if Path::new(p).is_file() => Config::load(Path::new(p)),
        _ => Config::find(Path::new(&r.cwd)),
    }
}

/// `shoal experiments`.
#[derive(clap::Args, Debug)]
pub struct ExperimentsCmd {
    /// Print JSON instead of tables
    #[arg(long)]
    pub json: bool,
    /// Config file [default: shoal.toml or pyproject.toml found from the cwd upwards]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn experiments(a: &ExperimentsCmd, out: &mut dyn Write) -> Result<i32> {
    let cwd = std::env::current_dir().map_err(|e| shoal_core::CoreError::io(".", e))?;
    let cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::find(&cwd)?,
    };
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    if shoal_runs::registry::exists(&default_path()) {
        for (r, _) in open_registry()?.list_filtered(&RunFilter::default())? {
            if let Some(e) = r.experiment {
                *runs.entry(e).or_default() += 1;
            }
        }
    }
    if a.json {
        let v = serde_json::json!({
            "config": cfg.path.as_ref().map(|p| p.display().to_string()),
            "experiments": cfg.experiments.values().map(|e| serde_json::json!({
                "name": e.name,
                "description": e.description,
                "tags": e.tags,
                "script": e.script.display().to_string(),
                "interpreter": e.interpreter,
                "args": e.args,
                "datasets": e.datasets,
                "actions": e.actions.keys().collect::<Vec<_>>(),
                "runs": runs.get(&e.name).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
            "datasets": cfg.datasets_json(),
            "actions": cfg.actions.keys().collect::<Vec<_>>(),
        });
        w(
            out,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        )?;
        return Ok(0);
    }
    let Some(path) = &cfg.path else {
        w(
            out,
            "no shoal.toml here or above\nhint: `shoal init` writes one; `shoal import-qanat` \
             converts a Qanat project\n",
        )?;
        return Ok(0);
    };
    w(out, format!("{}\n\n", path.display()))?;
    if cfg.experiments.is_empty() {
        w(
            out,
            "no experiments (define [experiments.NAME] with a script)\n",
        )?;
    } else {
        let rows: Vec<Vec<String>> = cfg
            .experiments
            .values()
            .map(|e| {
                let mut cmd = e.interpreter.clone();
                cmd.push(
                    e.script
                        .strip_prefix(&cfg.root)
                        .unwrap_or(&e.script)
                        .display()
                        .to_string(),
                );
                vec![
                    e.name.clone(),
                    cmd.join(" "),
                    e.tags.join(","),
                    e.datasets.join(","),
                    e.actions.keys().cloned().collect::<Vec<_>>().join(","),
                    runs.get(&e.name).copied().unwrap_or(0).to_string(),
                    e.description.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            out,
            &[
                "EXPERIMENT",
                "SCRIPT",
                "TAGS",
                "DATASETS",
                "ACTIONS",
                "RUNS",
                "DESCRIPTION",
            ],
            &rows,
        )?;
    }
    if !cfg.datasets.is_empty() {
        let rows: Vec<Vec<String>> = cfg
            .datasets
            .values()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.path.display().to_string(),
                    if d.path.exists() {
                        ""
                    } else {
                        "(missing here)"
                    }
                    .to_string(),
                    d.description.clone().unwrap_or_default(),
                ]
            })
            .collect();
        w(out, "\n")?;
        table(out, &["DATASET", "PATH", "", "DESCRIPTION"], &rows)?;
    }
    if !cfg.actions.is_empty() {
        let rows: Vec<Vec<String>> = cfg
            .actions
            .values()
            .map(|a| {
                vec![
                    a.name.clone(),
                    a.command.join(" "),
                    a.description.clone().unwrap_or_default(),
                ]
            })
            .collect();
        w(out, "\n")?;
        table(out, &["ACTION (any run)", "COMMAND", "DESCRIPTION"], &rows)?;
    }
    Ok(0)
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

/// `shoal rm`.
#[derive(clap::Args, Debug)]
pub struct RmCmd {
    /// Run ids, names or id ranges (`3..7`)
    #[arg(required = true)]
    pub runs: Vec<String>,
    /// Keep the results dirs (only the registry entries go)
    #[arg(long)]
    pub keep_files: bool,
    /// Do not ask before deleting results
    #[arg(long, short)]
    pub yes: bool,
}

/// The runs `keys` name: ids, names, or inclusive id ranges `A..B` (ids that exist).
fn resolve_many(reg: &Registry, keys: &[String]) -> Result<Vec<RunRow>> {
    let mut out: Vec<RunRow> = Vec::new();
    for key in keys {
        let range = key
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)));
        let found = match range {
            Some((a, b)) => {
                let ids = a.min(b)..=a.max(b);
                let hits: Vec<RunRow> = reg
                    .list()?
                    .into_iter()
                    .map(|(r, _)| r)
                    .filter(|r| ids.contains(&r.id))
                    .collect();
                if hits.is_empty() {
                    return Err(RunError::NoSuchRun(key.clone()));
                }
                hits
            }
            None => vec![reg.resolve(key)?],
        };
        for r in found {
            if !out.iter().any(|o| o.id == r.id) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Ask on the terminal; without one, refuse and say how to go ahead.
fn confirm(question: &str, how: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(RunError::Command(format!(
            "{question}: not asking without a terminal\nhint: {how}"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| shoal_core::CoreError::io("<stdin>", e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn rm(a: &RmCmd, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let runs = resolve_many(&reg, &a.runs)?;
    for r in &runs {
        check_not_running(r)?;
    }
    let with_files: Vec<&RunRow> = runs
        .iter()
        .filter(|r| !a.keep_files && Path::new(&r.run_dir).is_dir())
        .collect();
    if !with_files.is_empty() && !a.yes {
        let list: Vec<String> = with_files.iter().map(|r| r.run_dir.clone()).collect();
        let question = format!(
            "delete {} run{} and {}",
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
            if list.len() <= 3 {
                list.join(", ")
            } else {
                format!(
                    "{} results dirs ({}, ...)",
                    list.len(),
                    list[..2].join(", ")
                )
            }
        );
        if !confirm(
            &question,
            "pass --yes to delete them, or --keep-files to keep the files",
        )? {
            w(out, "nothing removed\n")?;
            return Ok(1);
        }
    }
    for r in &runs {
        let dir = Path::new(&r.run_dir);
        let delete = !a.keep_files && dir.is_dir();
        if delete {
            std::fs::remove_dir_all(dir).map_err(|e| shoal_core::CoreError::io(dir, e))?;
        }
        reg.delete(r.id)?;
        w(
            out,
            format!(
                "removed run {} ({}){}\n",
                r.id,
                r.name,
                if delete {
                    format!(" and {}", r.run_dir)
                } else {
                    format!("; kept {}", r.run_dir)
                }
            ),
        )?;
    }
    Ok(0)
}

/// `shoal tag`.
#[derive(clap::Args, Debug)]
pub struct TagCmd {
    /// Run id or name
    pub run: String,
    /// Tags to add (or remove)
    #[arg(required = true)]
    pub tags: Vec<String>,
    /// Remove these tags instead
    #[arg(long)]
    pub remove: bool,
}

pub fn tag(a: &TagCmd, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(&a.run)?;
    let tags: Vec<String> = a
        .tags
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if a.remove {
        reg.remove_tags(r.id, &tags)?;
    } else {
        reg.add_tags(r.id, &tags)?;
    }
    let now = reg.tags(r.id)?;
    w(
        out,
        format!(
            "run {} ({}) tags: {}\n",
            r.id,
            r.name,
            if now.is_empty() {
                "(none)".to_string()
            } else {
                now.join(", ")
            }
        ),
    )?;
    Ok(0)
}

/// `shoal note`.
#[derive(clap::Args, Debug)]
pub struct NoteCmd {
    /// Run id or name
    pub run: String,
    /// The note (several words are joined); without it, print the note
    pub text: Vec<String>,
    /// Remove the note
    #[arg(long, conflicts_with = "text")]
    pub clear: bool,
}

pub fn note(a: &NoteCmd, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(&a.run)?;
    if a.clear {
        reg.set_note(r.id, None)?;
        w(out, format!("run {} ({}): note removed\n", r.id, r.name))?;
    } else if a.text.is_empty() {
        w(out, r.note.map(|n| n + "\n").unwrap_or_default())?;
    } else {
        reg.set_note(r.id, Some(&a.text.join(" ")))?;
        w(out, format!("run {} ({}): note set\n", r.id, r.name))?;
    }
    Ok(0)
}

/// `shoal action`.
#[derive(clap::Args, Debug)]
pub struct ActionCmd {
    /// Run id or name
    pub run: String,
    /// The action (without it: list the run's actions)
    pub name: Option<String>,
    /// Run it for one task: {out} and {task} are that task's
    #[arg(long)]
    pub task: Option<i64>,
    /// The metrics file each task wrote, for {results}
    #[arg(long, default_value = DEFAULT_METRICS, value_name = "FILE")]
    pub metrics: String,
    /// Extra arguments for the action's command, after `--`
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn action(a: &ActionCmd, out: &mut dyn Write) -> Result<i32> {
    let reg = open_registry()?;
    let r = reg.resolve(&a.run)?;
    let cfg = config_of(&r)?;
    let available = cfg.actions_for(r.experiment.as_deref());
    let Some(name) = &a.name else {
        if available.is_empty() {
            w(
                out,
                format!(
                    "run {} has no actions\nhint: define [actions.NAME] (or \
                     [experiments.EXPERIMENT.actions.NAME]) with a command in shoal.toml\n",
                    r.id
                ),
            )?;
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = available
            .values()
            .map(|x| {
                vec![
                    x.name.clone(),
                    x.command.join(" "),
                    x.description.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(out, &["ACTION", "COMMAND", "DESCRIPTION"], &rows)?;
        return Ok(0);
    };
    let Some(act) = cfg.action(r.experiment.as_deref(), name) else {
        return Err(RunError::Command(format!(
            "run {} has no action {name:?}\nhint: {}",
            r.id,
            if available.is_empty() {
                "define [actions.NAME] with a command in shoal.toml".to_string()
            } else {
                format!(
                    "its actions: {}",
                    available.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        )));
    };
    if matches!(r.display_status(), "running" | "pending") && r.launch > 0 {
        return Err(RunError::State(format!(
            "run {} is still running; an action works on a finished run's outputs\nhint: wait \
             for it (`shoal logs --follow {}`), or `shoal cancel {}`",
            r.id, r.id, r.id
        )));
    }
    let mut command = act.command.clone();
    command.extend(a.args.iter().cloned());
    let used = placeholders(&command);
    let results = Path::new(&r.run_dir).join("results.csv");
    let mut vars: Vec<(String, String)> = vec![
        ("run".into(), r.id.to_string()),
        ("name".into(), r.name.clone()),
        ("run_dir".into(), r.run_dir.clone()),
        ("results".into(), results.display().to_string()),
    ];
    vars.extend(dataset_vars(&r.datasets));
    match a.task {
        Some(i) => {
            let Some(t) = reg.task(r.id, i)? else {
                return Err(RunError::Command(format!(
                    "run {} has no task {i}\nhint: `shoal show {}` lists its tasks",
                    r.id, r.id
                )));
            };
            vars.push(("out".into(), t.out_dir.clone()));
            vars.push(("task".into(), i.to_string()));
            vars.extend(t.params.iter().cloned());
        }
        None => {
            if let Some(p) = used.iter().find(|p| *p == "out" || *p == "task") {
                return Err(RunError::Command(format!(
                    "action {name:?} uses {{{p}}}, which is one task's\nhint: pass --task N \
                     (`shoal show {}` lists the tasks)",
                    r.id
                )));
            }
        }
    }
    let known: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    check_placeholders(&command, &known)?;
    if used.iter().any(|p| p == "results") {
        let tasks = reg.tasks(r.id, None)?;
        let table = collect(&[(r.id, tasks)], &a.metrics);
        std::fs::write(&results, table.to_csv())
            .map_err(|e| shoal_core::CoreError::io(&results, e))?;
    }
    let argv = render(&command, &vars);
    w(
        out,
        format!("action {name} of run {}: {}\n", r.id, argv.join(" ")),
    )?;
    out.flush().ok();
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&cfg.root)
        .env("SHOAL_RUN_ID", r.id.to_string())
        .env("SHOAL_RUN_DIR", &r.run_dir)
        .env("SHOAL_RESULTS", &results);
    for d in r.datasets.as_array().into_iter().flatten() {
        if let (Some(env), Some(path)) = (d["env"].as_str(), d["path"].as_str()) {
            cmd.env(env, path);
        }
    }
    let status = cmd.status().map_err(|e| {
        RunError::Command(format!(
            "cannot run action {name:?} ({}): {e}\nhint: check its command in {}",
            argv[0],
            cfg.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    Ok(status.code().unwrap_or(1))
}

//! The `shoal` command line: parses arguments and prints. Behaviour lives in the library
//! crates; this crate is also linked into the Python wheel so `pip install` provides `shoal`.

mod commands;
mod observe;
mod runs;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "Run Python tasks on local processes, Slurm, HTCondor or SGE — and inspect them",
    long_about = "Run Python tasks on local processes, Slurm, HTCondor or SGE — and inspect them.\n\n\
                  In Python: `with shoal.Pool() as pool: pool.map(f, items)`.\n\
                  From here: list sessions, read a task's output and traceback, cancel a session;\n\
                  run a command over a parameter grid (`shoal run`) and inspect runs (`shoal runs`)."
)]
pub struct Cli {
    /// Directory holding session work dirs [default: $SHOAL_HOME/sessions or ~/.shoal/sessions]
    #[arg(long, global = true, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List live and kept sessions with their progress
    Sessions {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show a task's output: of a run (RUN [TASK]) or of a session (SESSION [TASK])
    ///
    /// RUN is a run id (a number) or name (starts with a letter); anything else, or a key that
    /// no run has, is a session id (or unique prefix, or path). `shoal logs RUN` lists the
    /// run's failed tasks; `shoal logs RUN TASK` prints that task's captured stdout and stderr.
    Logs {
        /// Run id or name, or session id (or unique prefix, or path)
        #[arg(value_name = "RUN|SESSION")]
        session: String,
        /// Task: a run's task number (`shoal show RUN` lists them); a session's task as errors
        /// name it — N in the session's first call (a map), CALL:N in a later one
        task: Option<String>,
        /// Only stdout
        #[arg(long, conflicts_with = "stderr")]
        stdout: bool,
        /// Only stderr
        #[arg(long)]
        stderr: bool,
        /// Show a whole worker's log instead of one task's (sessions)
        #[arg(long, value_name = "WORKER", conflicts_with = "task")]
        worker: Option<String>,
        /// For a run's task: the scheduler-side log of the worker that ran it
        #[arg(long, requires = "task")]
        worker_log: bool,
        /// Keep printing as a run (its driver log) or a run's task writes, until it ends
        #[arg(long, short, conflicts_with_all = ["worker", "worker_log"])]
        follow: bool,
    },
    /// Cancel a run (stop its driver and workers, mark unfinished tasks cancelled) or a session
    Cancel {
        /// Run id or name, or session id (or unique prefix, or path)
        #[arg(value_name = "RUN|SESSION")]
        session: String,
    },
    /// Remove kept work dirs of sessions that are no longer running
    Clean {
        /// Also remove sessions that failed or were cancelled (default: only finished ones,
        /// which keep their logs for SHOAL_KEEP_LOGS, default 7 days)
        #[arg(long)]
        all: bool,
        /// Say what would be removed and how much it would free; remove nothing
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Write a commented shoal.toml (run defaults and backend templates) here
    Init {
        /// Overwrite an existing shoal.toml
        #[arg(long)]
        force: bool,
    },
    /// Run a command, or an experiment of shoal.toml, over a parameter grid (one task per
    /// combination), recorded as a run
    ///
    /// Example: shoal run --name iris --backend slurm -T two_cpus -X time=10m
    ///   -P lr=0.1,0.01 -P seed=0..4 -- python train.py --lr {lr} --out {out}
    ///
    /// Values: `a,b,c` a list; `0..4` integers 0 to 4 inclusive; `0:1:0.25` start:stop:step
    /// (stop included); list items may be ranges; `\,` is a literal comma. Each -P/--param is
    /// one axis of the grid (product); -g/--group zips its parameters (equal lengths); each
    /// row of a -f/--params-file (CSV, JSON, YAML) is one combination.
    /// Placeholders: {NAME} for each parameter, {out} the task's output dir, {task} its
    /// number, {run} the run id, {name} the run name, {dataset:NAME} a dataset's path;
    /// {{ and }} are literal braces.
    Run(Box<runs::RunCmd>),
    /// List runs: id, name, backend, started, duration, status, progress, tags
    Runs(runs::RunsCmd),
    /// Show a run (command, parameters, template, git commit, tasks) or what happened in a session
    ///
    /// For a session (id, unique prefix, or path): tasks done, failed and retried; task
    /// durations (p50/p95/max); throughput over time; workers with their queue wait, start-up,
    /// busy and idle time; hosts; failures grouped by error. Works after the session's work dir
    /// is gone (from `$SHOAL_HOME/history`). A run id or name shows the run.
    Show {
        /// Run id or name, or session id (or unique prefix, or path)
        #[arg(value_name = "RUN|SESSION")]
        run: String,
        /// Print JSON (with every task, or the session's whole summary) instead of text
        #[arg(long)]
        json: bool,
        /// List every task (default: the first 50), or every worker of a session
        #[arg(long)]
        all: bool,
        /// Write the session's timeline (workers × time, tasks coloured by outcome) to FILE
        /// (.png or .svg; needs matplotlib)
        #[arg(long, value_name = "FILE", conflicts_with = "json")]
        plot: Option<PathBuf>,
    },
    /// Watch sessions and runs live: progress, rate, ETA, workers, failures, task output
    ///
    /// Keys: ↑/↓ or j/k move, Enter opens, Esc goes back, / filters, c cancels (after a
    /// confirmation), q quits. Read-only except for `c`.
    Top {
        /// Seconds between refreshes
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        interval: f64,
    },
    /// Each task's parameters joined with the metrics it wrote (`{out}/metrics.json`)
    Results(runs::ResultsCmd),
    /// Run a run's failed (and/or cancelled) tasks again, as a new attempt
    Rerun(runs::RerunCmd),
    /// Finish a run whose driver died or was interrupted, without redoing finished tasks
    Resume(runs::ResumeCmd),
    /// Remove runs from the registry and delete their results dirs (asks first)
    Rm(runs::RmCmd),
    /// Add (or with --remove, remove) tags of a run
    Tag(runs::TagCmd),
    /// Set, show or clear a run's note
    Note(runs::NoteCmd),
    /// Run a named action of shoal.toml over a run's outputs (e.g. `shoal action 7 plot`)
    Action(runs::ActionCmd),
    /// List the experiments, datasets and actions of shoal.toml
    Experiments(runs::ExperimentsCmd),
    /// Convert a Qanat project (.qanat/config.yaml and database.db: templates, experiments,
    /// datasets, actions) into shoal.toml
    ImportQanat {
        /// Qanat config, or its .qanat dir [default: .qanat/config.yaml]
        path: Option<PathBuf>,
        /// Write this file instead of printing
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Run the CLI with `args` (including the program name); returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(join_groups(args.into_iter().map(Into::into).collect())) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let base = cli
        .work_dir
        .clone()
        .unwrap_or_else(shoal_core::session::default_base);
    let mut out = std::io::stdout().lock();
    match dispatch(&cli.command, &base, &mut out) {
        Ok(code) => code,
        // `shoal logs ... | head`: the reader has all it wanted.
        Err(e) if broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Whether an error comes from writing to a closed pipe.
fn broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `--group a=1,2 b=x,y` takes every following word up to the next option as one group;
/// clap keeps one value per occurrence, so the words are joined here and split again later.
const GROUP_SEP: char = '\u{1f}';

fn join_groups(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    let mut seen_run = false;
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        if s == "--" {
            out.push(a);
            out.extend(it);
            break;
        }
        seen_run |= s == "run";
        if seen_run && (s == "--group" || s == "-g") {
            out.push(a);
            let mut words = Vec::new();
            while let Some(next) = it.peek() {
                let n = next.to_string_lossy();
                if n.starts_with('-') {
                    break;
                }
                words.push(n.into_owned());
                it.next();
            }
            out.push(words.join(&GROUP_SEP.to_string()).into());
            continue;
        }
        out.push(a);
    }
    out
}

fn dispatch(
    cmd: &Command,
    base: &std::path::Path,
    out: &mut dyn std::io::Write,
) -> Result<i32, shoal_runs::RunError> {
    match cmd {
        Command::Logs {
            session,
            task,
            stdout,
            stderr,
            worker_log,
            follow,
            ..
        } => {
            if let Some((reg, run)) = runs::lookup(session, base)? {
                let how = runs::LogsArgs {
                    task: task.as_deref().map(runs::task_number).transpose()?,
                    stdout: *stdout,
                    stderr: *stderr,
                    worker_log: *worker_log,
                    follow: *follow,
                };
                return runs::logs(&reg, &run, &how, base, out);
            }
            if *follow {
                return Err(shoal_runs::RunError::Command(format!(
                    "--follow follows a run, and {session:?} names a session\nhint: `shoal runs` \
                     lists runs; `shoal logs {session}` shows what the session has written"
                )));
            }
        }
        Command::Cancel { session } => {
            if let Some((reg, run)) = runs::lookup(session, base)? {
                return runs::cancel(&reg, &run, out);
            }
        }
        Command::Init { force } => return runs::init(*force, out),
        Command::Run(a) => {
            let groups: Vec<Vec<String>> = a
                .groups
                .iter()
                .map(|g| g.split(GROUP_SEP).map(str::to_string).collect())
                .collect();
            return runs::run(a, &groups, out);
        }
        Command::Runs(a) => return runs::runs(a, out),
        Command::Show {
            run,
            json,
            all,
            plot,
        } => {
            if let Some(code) = observe::show(base, run, *json, *all, plot.as_deref(), out)? {
                return Ok(code);
            }
            return runs::show(run, *json, *all, out);
        }
        Command::Top { interval } => return observe::top(base, *interval),
        Command::Results(a) => return runs::results(a, out),
        Command::Rerun(a) => return runs::rerun(a, out),
        Command::Resume(a) => return runs::resume(a, out),
        Command::Rm(a) => return runs::rm(a, out),
        Command::Tag(a) => return runs::tag(a, out),
        Command::Note(a) => return runs::note(a, out),
        Command::Action(a) => return runs::action(a, out),
        Command::Experiments(a) => return runs::experiments(a, out),
        Command::ImportQanat { path, output } => {
            return runs::import_qanat(path.as_deref(), output.as_deref(), out)
        }
        _ => {}
    }
    Ok(commands::dispatch(cmd, base, out)?)
}

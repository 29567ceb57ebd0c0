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
        /// Task number (`shoal show RUN` lists them; errors name them for sessions)
        task: Option<u64>,
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
    },
    /// Cancel a run (stop its driver and workers, mark unfinished tasks cancelled) or a session
    Cancel {
        /// Run id or name, or session id (or unique prefix, or path)
        #[arg(value_name = "RUN|SESSION")]
        session: String,
    },
    /// Remove kept work dirs of sessions that are no longer running
    Clean {
        /// Also remove sessions that failed or were cancelled (default: only finished ones)
        #[arg(long)]
        all: bool,
    },
    /// Write a commented shoal.toml (run defaults and backend templates) here
    Init {
        /// Overwrite an existing shoal.toml
        #[arg(long)]
        force: bool,
    },
    /// Run a command over a parameter grid, one task per combination, recorded as a run
    ///
    /// Example: shoal run --name iris --backend slurm --template two_cpus
    ///   --param lr=0.1,0.01 --param seed=0..4 -- python train.py --lr {lr} --out {out}
    ///
    /// Values: `a,b,c` a list; `0..4` integers 0 to 4 inclusive; `0:1:0.25` start:stop:step
    /// (stop included); list items may be ranges; `\,` is a literal comma. Each --param is
    /// one axis of the grid (product); --group zips its parameters (equal lengths).
    /// Placeholders: {NAME} for each parameter, {out} the task's output dir, {task} its
    /// number, {run} the run id, {name} the run name; {{ and }} are literal braces.
    Run {
        /// Run name (letters, digits, _ . -; starts with a letter) [default: the script's name]
        #[arg(long)]
        name: Option<String>,
        /// local, slurm, sge or htcondor [default: config's defaults.backend, else local]
        #[arg(long, short)]
        backend: Option<String>,
        /// Template of backend options from shoal.toml [default: the backend's `default`]
        #[arg(long, short)]
        template: Option<String>,
        /// NAME=VALUES: one axis of the grid
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUES")]
        params: Vec<String>,
        /// NAME=VALUES NAME=VALUES...: parameters zipped together into one axis
        #[arg(long = "group", short = 'g', value_name = "NAME=VALUES...")]
        groups: Vec<String>,
        /// Number of workers (overrides the template's `workers`)
        #[arg(long, short)]
        workers: Option<usize>,
        /// Where run dirs go [default: config's defaults.results_dir, else ./results]
        #[arg(long, value_name = "DIR")]
        results_dir: Option<PathBuf>,
        /// Config file [default: shoal.toml or pyproject.toml found from the cwd upwards]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the tasks without registering or running anything
        #[arg(long)]
        dry_run: bool,
        /// The command, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List runs: id, name, backend, started, duration, status, progress
    Runs {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
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
    /// Run a run's failed (and/or cancelled) tasks again, as a new attempt
    Rerun {
        /// Run id or name
        run: String,
        /// Rerun failed tasks
        #[arg(long)]
        failed: bool,
        /// Rerun cancelled tasks
        #[arg(long)]
        cancelled: bool,
    },
    /// Finish a run whose driver died or was interrupted, without redoing finished tasks
    Resume {
        /// Run id or name
        run: String,
        /// Seconds to wait for the previous driver's workers to stop
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Remove a run from the registry and delete its results dir
    Rm {
        /// Run id or name
        run: String,
        /// Keep the results dir
        #[arg(long)]
        keep_files: bool,
    },
    /// Convert Qanat's submit templates (.qanat/config.yaml) into shoal.toml templates
    ImportQanat {
        /// Qanat config [default: .qanat/config.yaml]
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
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
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
            ..
        } => {
            if let Some((reg, run)) = runs::lookup(session)? {
                return runs::logs(&reg, &run, *task, *stdout, *stderr, *worker_log, out);
            }
        }
        Command::Cancel { session } => {
            if let Some((reg, run)) = runs::lookup(session)? {
                return runs::cancel(&reg, &run, out);
            }
        }
        Command::Init { force } => return runs::init(*force, out),
        Command::Run {
            name,
            backend,
            template,
            params,
            groups,
            workers,
            results_dir,
            config,
            dry_run,
            command,
        } => {
            let groups: Vec<Vec<String>> = groups
                .iter()
                .map(|g| g.split(GROUP_SEP).map(str::to_string).collect())
                .collect();
            return runs::run(
                &runs::RunArgs {
                    name: name.as_deref(),
                    backend: backend.as_deref(),
                    template: template.as_deref(),
                    params,
                    groups: &groups,
                    workers: *workers,
                    results_dir: results_dir.as_deref(),
                    config: config.as_deref(),
                    dry_run: *dry_run,
                    command,
                },
                out,
            );
        }
        Command::Runs { json } => return runs::runs(*json, out),
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
        Command::Rerun {
            run,
            failed,
            cancelled,
        } => return runs::rerun(run, *failed, *cancelled, out),
        Command::Resume { run, wait } => return runs::resume(run, *wait, out),
        Command::Rm { run, keep_files } => return runs::rm(run, *keep_files, out),
        Command::ImportQanat { path, output } => {
            return runs::import_qanat(path.as_deref(), output.as_deref(), out)
        }
        _ => {}
    }
    Ok(commands::dispatch(cmd, base, out)?)
}

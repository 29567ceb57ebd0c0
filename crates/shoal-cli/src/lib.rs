//! The `shoal` command line: parses arguments and prints. Behaviour lives in the library
//! crates; this crate is also linked into the Python wheel so `pip install` provides `shoal`.

mod commands;

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
                  From here: list sessions, read a task's output and traceback, cancel a session."
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
    /// Show a task's stdout/stderr and traceback, or a session's failed tasks
    Logs {
        /// Session id (or unique prefix, or path)
        session: String,
        /// Task number as shown in errors (`shoal logs SESSION TASK`)
        task: Option<u64>,
        /// Only stdout
        #[arg(long, conflicts_with = "stderr")]
        stdout: bool,
        /// Only stderr
        #[arg(long)]
        stderr: bool,
        /// Show a whole worker's log instead of one task's
        #[arg(long, value_name = "WORKER", conflicts_with = "task")]
        worker: Option<String>,
    },
    /// Cancel a session: stop its workers and fail its pending tasks
    Cancel {
        /// Session id (or unique prefix, or path)
        session: String,
    },
    /// Remove kept work dirs of sessions that are no longer running
    Clean {
        /// Also remove sessions that failed or were cancelled (default: only finished ones)
        #[arg(long)]
        all: bool,
    },
}

/// Run the CLI with `args` (including the program name); returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
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
    match commands::dispatch(&cli.command, &base, &mut out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

//! shoal-runs: experiment runs for `shoal run` — the project config and its templates,
//! parameter grids, and the run registry shared by the CLI and the Python driver.

pub mod config;
pub mod error;
pub mod experiments;
pub mod netfs;
pub mod params;
pub mod params_file;
pub mod progress;
pub mod qanat;
pub mod records;
pub mod registry;
pub mod resources;
pub mod results;
pub mod schema;
pub mod when;

pub use error::{Result, RunError};
pub use registry::Registry;

use std::path::Path;
use std::process::{Command, Stdio};

/// The commit of the git repository holding `cwd` and whether its work tree has changes;
/// None outside a repository or without git.
pub fn git_state(cwd: &Path) -> Option<(String, bool)> {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let commit = run(&["rev-parse", "HEAD"])?.trim().to_string();
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.trim().is_empty());
    Some((commit, dirty))
}

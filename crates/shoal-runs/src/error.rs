//! Errors of runs: config files (with file and line), parameter specs, the registry.
//! Each variant says what went wrong and what to do about it.

use std::path::PathBuf;

pub type Result<T, E = RunError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}:{line}:{column}: {message}\nhint: {hint}")]
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        hint: String,
    },
    #[error("invalid parameter {spec:?}: {reason}\nhint: {hint}")]
    Param {
        spec: String,
        reason: String,
        hint: String,
    },
    #[error("{0}")]
    Command(String),
    #[error("no run {0:?} in the registry\nhint: `shoal runs` lists runs; refer to one by its id (a number) or its name")]
    NoSuchRun(String),
    #[error("run registry {path}: {source}\nhint: check that the directory is writable (set SHOAL_HOME to move it)")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Core(#[from] shoal_core::CoreError),
}

impl RunError {
    pub fn param(spec: &str, reason: impl ToString, hint: impl ToString) -> Self {
        RunError::Param {
            spec: spec.to_string(),
            reason: reason.to_string(),
            hint: hint.to_string(),
        }
    }
}

//! Errors of the work-dir protocol and option parsing.
//! Each variant says what went wrong and what the user can do about it.

use std::path::PathBuf;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("work dir {path} is not writable: {reason}\nhint: pass work_dir=... (or set SHOAL_HOME) to a directory you can write")]
    WorkDirNotWritable { path: PathBuf, reason: String },
    #[error("corrupt file {path}: {reason}\nhint: this file was truncated or written by something else; the task will be retried")]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid value {value:?} for {option}: {reason}")]
    InvalidOption {
        option: String,
        value: String,
        reason: String,
    },
    #[error("no session {0:?} found\nhint: `shoal sessions` lists the sessions under the work dir")]
    NoSuchSession(String),
}

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(option: &str, value: impl ToString, reason: impl ToString) -> Self {
        CoreError::InvalidOption {
            option: option.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Attach the path to an `io::Result`, so every I/O error names the file it concerns.
pub trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| CoreError::io(path, e))
    }
}

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
    #[error("the work dir's filesystem is full ({source}) writing {path}\nhint: free space on it (or raise your quota), or pass work_dir=... on a filesystem with room")]
    NoSpace {
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
    #[error(
        "no session {0:?} found\nhint: `shoal sessions` lists the sessions under the work dir"
    )]
    NoSuchSession(String),
    #[error("{prefix:?} matches several sessions: {}\nhint: give more of the session id (`shoal sessions` lists them)", candidates.join(", "))]
    AmbiguousSession {
        prefix: String,
        candidates: Vec<String>,
    },
    /// A TCP worker's link to its driver failed (connect, authenticate, or a send).
    #[error("{0}")]
    Transport(String),
    #[error("chunk {chunk}'s files vanished from the work dir ({detail})\nhint: something removed files under the session dir while it ran (a tmp reaper?); choose a work_dir that is not cleaned behind your back")]
    Vanished { chunk: u64, detail: String },
}

impl CoreError {
    /// An I/O error on `path`; a full filesystem or an exceeded quota becomes `NoSpace`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => CoreError::NoSpace { path, source },
            _ => CoreError::Io { path, source },
        }
    }

    /// Whether this error means the filesystem is full (the session cannot go on there).
    pub fn is_no_space(&self) -> bool {
        matches!(self, CoreError::NoSpace { .. })
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

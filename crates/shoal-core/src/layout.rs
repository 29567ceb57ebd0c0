//! Where everything of a session lives inside its work dir. One place knows the names;
//! driver, workers, backends and the CLI all go through `SessionDir`.
//!
//! ```text
//! session.json            driver-maintained state (progress, pid, scheduler job ids)
//! config.json             what workers need to start (timeouts, Python-side settings)
//! blobs/ID                payloads shared by many chunks (a mapped function, an initializer)
//! pending/CHUNK           chunks waiting for a worker
//! claimed/CHUNK@WORKER    chunks a worker took (atomic rename from pending/)
//! ran/CHUNK               claims whose result was written (kept until the driver accepts it)
//! results/CHUNK           results waiting for the driver
//! done/CHUNK              results the driver accepted (headers serve `shoal logs`)
//! workers/WORKER.json     a worker's host/pid; WORKER.hb is touched as its heartbeat
//! logs/WORKER.out|.err    the worker's stdout/stderr; result headers hold per-task offsets
//! control/stop|cancel     driver and CLI requests; control/driver.hb is the driver's heartbeat
//! ```

use crate::error::Result;
use crate::fsutil::create_private_dir;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct SessionDir {
    root: PathBuf,
}

pub const SUBDIRS: [&str; 10] = [
    "blobs", "pending", "claimed", "ran", "results", "done", "workers", "logs", "control",
    "corrupt",
];

impl SessionDir {
    pub fn open(root: impl Into<PathBuf>) -> Self {
        SessionDir { root: root.into() }
    }

    /// Create the directory tree, private to the current user.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let dir = SessionDir::open(root);
        create_private_dir(&dir.root)?;
        for sub in SUBDIRS {
            create_private_dir(&dir.root.join(sub))?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn id(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn session_file(&self) -> PathBuf {
        self.root.join("session.json")
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn sub(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn blob(&self, id: u64) -> PathBuf {
        self.root.join("blobs").join(id.to_string())
    }
    pub fn pending(&self, chunk: u64) -> PathBuf {
        self.root.join("pending").join(chunk_name(chunk))
    }
    pub fn claimed(&self, chunk: u64, worker: &str) -> PathBuf {
        self.root
            .join("claimed")
            .join(format!("{}@{worker}", chunk_name(chunk)))
    }
    pub fn ran(&self, chunk: u64) -> PathBuf {
        self.root.join("ran").join(chunk_name(chunk))
    }
    pub fn result(&self, chunk: u64) -> PathBuf {
        self.root.join("results").join(chunk_name(chunk))
    }
    pub fn done(&self, chunk: u64) -> PathBuf {
        self.root.join("done").join(chunk_name(chunk))
    }
    pub fn corrupt(&self, chunk: u64) -> PathBuf {
        self.root.join("corrupt").join(chunk_name(chunk))
    }
    pub fn worker_info(&self, worker: &str) -> PathBuf {
        self.root.join("workers").join(format!("{worker}.json"))
    }
    pub fn heartbeat(&self, worker: &str) -> PathBuf {
        self.root.join("workers").join(format!("{worker}.hb"))
    }
    pub fn log(&self, worker: &str, stream: Stream) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{worker}.{}", stream.ext()))
    }
    pub fn control(&self, name: &str) -> PathBuf {
        self.root.join("control").join(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn ext(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        }
    }
}

/// Zero-padded so that a sorted listing is submission order.
pub fn chunk_name(chunk: u64) -> String {
    format!("{chunk:012}")
}

pub fn parse_chunk_name(name: &str) -> Option<u64> {
    name.parse().ok()
}

/// A worker id must be usable in file names and claim names.
pub fn valid_worker_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

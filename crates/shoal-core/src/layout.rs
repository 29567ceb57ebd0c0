//! Where everything of a session lives inside its work dir. One place knows the names;
//! driver, workers, backends and the CLI all go through `SessionDir`. docs/protocol.md
//! describes who writes each file and with which single atomic step.
//!
//! ```text
//! session.json              driver: the session record (progress, pid, jobs, transport)
//! config.json               driver: what workers need to start (written before any starts)
//! index                     driver: one line per delivered part (worker, log offsets,
//!                           failures) — what `shoal logs` reads after results are gone
//! chunks/CHUNK              driver: the master copy of an outstanding chunk
//! blobs/ID                  driver: payloads shared by chunks (a mapped function)
//! workers/KEY.json          worker: its announcement ("hello"), written exclusively
//! workers/KEY.beat          worker: its heartbeat counter and what it is running
//! inbox/KEY/                driver: created when it accepts the worker
//! inbox/KEY/SEQ             driver: assignment number SEQ (a ticket naming a chunk)
//! inbox/KEY/SEQ.void        driver: a ticket it took back before the worker claimed it
//! claimed/CHUNK.ATTEMPT     worker: a ticket it claimed (renamed out of its inbox)
//! results/CHUNK.ATTEMPT.FROM  worker: a part of an attempt's results, from task FROM on
//! fence/KEY                 driver: a worker it gave up on; the worker exits
//! corrupt/NAME.N            driver: results that failed verification, kept for inspection
//! logs/ID.out|.err          the worker's stdout/stderr (per-task offsets are in the index)
//! control/stop|cancel       driver and CLI requests; control/driver.beat: driver heartbeat
//! ```
//! KEY is `ID+NONCE`: the worker id from its scheduler plus a random 64-bit incarnation nonce,
//! so a job the site reruns under the same id is a new worker.

use crate::error::Result;
use crate::fsutil::create_private_dir;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct SessionDir {
    root: PathBuf,
}

pub const SUBDIRS: [&str; 11] = [
    "chunks",
    "blobs",
    "workers",
    "inbox",
    "claimed",
    "results",
    "fence",
    "logs",
    "control",
    "corrupt",
    "checkpoints",
];

impl SessionDir {
    pub fn open(root: impl Into<PathBuf>) -> Self {
        SessionDir { root: root.into() }
    }

    /// Create the directory tree below an existing (or new) root, private to the user.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let dir = SessionDir::open(root);
        create_private_dir(&dir.root)?;
        dir.create_subdirs()?;
        Ok(dir)
    }

    pub(crate) fn create_subdirs(&self) -> Result<()> {
        for sub in SUBDIRS {
            create_private_dir(&self.root.join(sub))?;
        }
        Ok(())
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
    pub fn index_file(&self) -> PathBuf {
        self.root.join("index")
    }
    pub fn sub(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn chunk(&self, chunk: u64) -> PathBuf {
        self.root.join("chunks").join(chunk_name(chunk))
    }
    pub fn blob(&self, id: u64) -> PathBuf {
        self.root.join("blobs").join(id.to_string())
    }
    pub fn hello(&self, key: &str) -> PathBuf {
        self.root.join("workers").join(format!("{key}.json"))
    }
    pub fn heartbeat(&self, key: &str) -> PathBuf {
        self.root.join("workers").join(format!("{key}.beat"))
    }
    pub fn inbox(&self, key: &str) -> PathBuf {
        self.root.join("inbox").join(key)
    }
    pub fn ticket(&self, key: &str, seq: u64) -> PathBuf {
        self.inbox(key).join(seq_name(seq))
    }
    pub fn void_ticket(&self, key: &str, seq: u64) -> PathBuf {
        self.inbox(key).join(format!("{}.void", seq_name(seq)))
    }
    pub fn claimed(&self, chunk: u64, attempt: u32) -> PathBuf {
        self.root
            .join("claimed")
            .join(format!("{}.{attempt}", chunk_name(chunk)))
    }
    pub fn part(&self, chunk: u64, attempt: u32, from: u32) -> PathBuf {
        self.root
            .join("results")
            .join(part_name(chunk, attempt, from))
    }
    /// The checkpoint an interrupted task left (a pickled callable to run instead).
    pub fn checkpoint(&self, chunk: u64, task: u32) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("{}.{task}", chunk_name(chunk)))
    }
    pub fn fence(&self, key: &str) -> PathBuf {
        self.root.join("fence").join(key)
    }
    pub fn corrupt(&self, name: &str, n: u32) -> PathBuf {
        self.root.join("corrupt").join(format!("{name}.{n}"))
    }
    pub fn log(&self, worker: &str, stream: Stream) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{worker}.{}", stream.ext()))
    }
    /// Where a TCP session's job writes its own output (what its worker printed before it
    /// connected), beside the log the driver stores from the worker's stream.
    pub fn job_log(&self, worker: &str, stream: Stream) -> PathBuf {
        self.root.join("logs").join(job_log_name(worker, stream))
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
    (name.len() == 12).then(|| name.parse().ok()).flatten()
}

pub fn seq_name(seq: u64) -> String {
    format!("{seq:08}")
}

pub fn part_name(chunk: u64, attempt: u32, from: u32) -> String {
    format!("{}.{attempt}.{from:08}", chunk_name(chunk))
}

/// `CHUNK.ATTEMPT.FROM` of a result part.
pub fn parse_part_name(name: &str) -> Option<(u64, u32, u32)> {
    let mut it = name.split('.');
    let c = parse_chunk_name(it.next()?)?;
    let a = it.next()?.parse().ok()?;
    let f = it.next()?.parse().ok()?;
    it.next().is_none().then_some((c, a, f))
}

/// `CHUNK.ATTEMPT` of a claim.
pub fn parse_claim_name(name: &str) -> Option<(u64, u32)> {
    let (c, a) = name.split_once('.')?;
    Some((parse_chunk_name(c)?, a.parse().ok()?))
}

/// A worker id must be usable in file names, claim names and scheduler commands.
pub fn valid_worker_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The key of one incarnation of a worker: `ID+NONCE` (16 hex digits).
pub fn worker_key(id: &str, nonce: u64) -> String {
    format!("{id}+{nonce:016x}")
}

/// The worker id of a key (what the scheduler calls the job).
pub fn key_id(key: &str) -> &str {
    key.rsplit_once('+').map(|(id, _)| id).unwrap_or(key)
}

/// The file name of [`SessionDir::job_log`] (`WORKER.out.job`, `WORKER.err.job`); job scripts
/// use it with a shell variable for the worker.
pub fn job_log_name(worker: &str, stream: Stream) -> String {
    format!("{worker}.{}.job", stream.ext())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_part_name(&part_name(7, 2, 30)), Some((7, 2, 30)));
        assert_eq!(parse_part_name("000000000007.2"), None);
        assert_eq!(parse_claim_name("000000000007.3"), Some((7, 3)));
        assert_eq!(parse_claim_name("7.3"), None);
        let key = worker_key("123_4", 0xabc);
        assert_eq!(key, "123_4+0000000000000abc");
        assert_eq!(key_id(&key), "123_4");
        assert!(valid_worker_id("123.4") && !valid_worker_id("a+b") && !valid_worker_id("a/b"));
    }
}

//! The work-dir protocol's messages and the driver's side of it: master copies of chunks,
//! tickets in per-worker inboxes, claims, result parts, fences. Every state change is one
//! atomic step (an exclusive create, a rename, an unlink), so a crash between any two steps
//! leaves a state the driver recovers from (docs/protocol.md lists them all).
//!
//! The worker's side is in `worker.rs`. Both sides use the types here; the TCP transport
//! carries the same headers in its frames.

use crate::error::{CoreError, IoContext, Result};
use crate::frame;
use crate::fsutil::{list_names, list_names_or_empty, remove_if_exists, write_atomic};
use crate::layout::{parse_claim_name, parse_part_name, SessionDir, Stream};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;

/// What the engine knows of a chunk without unpickling it (the master copy's header).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ChunkHeader {
    pub chunk: u64,
    /// Session-wide number of the chunk's first task; its tasks are numbered consecutively.
    pub first_task: u64,
    pub ntasks: u32,
    /// Blobs (e.g. the mapped function) the chunk's payload refers to.
    #[serde(default)]
    pub blobs: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TicketKind {
    /// Run tasks `from..` of `chunk` as attempt `attempt`.
    #[default]
    Run,
    /// Finish nothing more: exit cleanly (a graceful stop or a give-back).
    Stop,
}

/// One assignment in a worker's inbox. The worker claims it by renaming it to
/// `claimed/CHUNK.ATTEMPT`; the driver takes it back by renaming it to `SEQ.void`. Exactly
/// one of the two renames succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Ticket {
    pub seq: u64,
    #[serde(default)]
    pub kind: TicketKind,
    #[serde(default)]
    pub chunk: u64,
    #[serde(default)]
    pub attempt: u32,
    /// First task of the chunk to run (tasks before it were delivered already).
    #[serde(default)]
    pub from: u32,
    /// The chunk's last attempt lost its worker without saying which task was running:
    /// publish after every task and record each task before starting it.
    #[serde(default)]
    pub careful: bool,
    /// Task `from` was interrupted last time and left a checkpoint
    /// (`checkpoints/CHUNK.TASK`): run that instead of the task (docs/checkpoints.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    /// The worker key the ticket was written for.
    #[serde(default)]
    pub worker: String,
}

/// Why a worker gives back the rest of an attempt (a part with a [`Release`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseKind {
    /// The scheduler is taking the job back (Slurm preemption, HTCondor eviction, a
    /// SIGTERM): the interrupted task runs again elsewhere without costing an attempt.
    Preempted,
    /// The job's time limit came while the task ran: an attempt of that task, unless it
    /// left a checkpoint (then it resumes from it at no cost).
    Walltime,
    /// The worker stopped before a task it could not finish in the time its job has left;
    /// nothing was interrupted and nothing is charged.
    Yield,
}

/// The worker stops after this part: the attempt's tasks from `from + count` on go back to
/// the queue. The first of them was interrupted (unless `kind` is `Yield`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    pub kind: ReleaseKind,
    /// For the user (`preempted by Slurm (SIGTERM)`, `its job's time limit (Slurm time=1m)`).
    pub reason: String,
    /// The interrupted task's checkpoint was written before this part.
    #[serde(default)]
    pub checkpoint: bool,
}

impl Release {
    /// Whether the interrupted task is charged an attempt (it outlived its job, and cannot
    /// resume).
    pub fn charged(&self) -> bool {
        self.kind == ReleaseKind::Walltime && !self.checkpoint
    }
}

/// A task that raised: its index inside the part and the remote traceback text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedTask {
    pub index: u32,
    pub traceback: String,
}

/// What the engine and `shoal logs` know of a result part without unpickling it. A part
/// holds the results of tasks `from..from + count` of one attempt of one chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ResultHeader {
    pub chunk: u64,
    #[serde(default)]
    pub attempt: u32,
    /// The chunk's first task number and size, as the worker read them: checked against the
    /// ledger so a foreign or misplaced frame is never taken for this chunk's result.
    pub first_task: u64,
    pub ntasks: u32,
    #[serde(default)]
    pub from: u32,
    #[serde(default)]
    pub count: u32,
    /// The attempt's last part: the worker is done with the chunk.
    #[serde(default)]
    pub last: bool,
    /// The worker key.
    pub worker: String,
    /// Offsets of the worker's stdout and stderr logs when the part's first task started.
    #[serde(default)]
    pub start: (u64, u64),
    /// `(task index in the part, stdout offset, stderr offset)` after the tasks whose output
    /// may have moved, in task order; a task without a mark wrote nothing. Sparse.
    #[serde(default)]
    pub marks: Vec<(u32, u64, u64)>,
    #[serde(default)]
    pub failed: Vec<FailedTask>,
    /// Set when the part as a whole could not run (e.g. its payload failed to unpickle).
    #[serde(default)]
    pub chunk_error: Option<String>,
    #[serde(default)]
    pub elapsed: f64,
    /// The worker gives the rest of the attempt back after this part (it is not `last`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

impl ResultHeader {
    /// Byte range of the part's task `i`'s output on `stream`: from where the previous
    /// tasks' output ended to the last mark at or before `i`.
    pub fn range(&self, i: usize, stream: Stream) -> Option<(u64, u64)> {
        if i >= self.count as usize {
            return None;
        }
        let pick = |m: &(u32, u64, u64)| match stream {
            Stream::Stdout => m.1,
            Stream::Stderr => m.2,
        };
        let base = match stream {
            Stream::Stdout => self.start.0,
            Stream::Stderr => self.start.1,
        };
        let end_of = |upto: usize| {
            // Last mark with index <= upto (marks are in task order; offsets only grow).
            let n = self.marks.partition_point(|m| (m.0 as usize) <= upto);
            self.marks[..n]
                .iter()
                .map(pick)
                .max()
                .unwrap_or(base)
                .max(base)
        };
        let start = if i == 0 { base } else { end_of(i - 1) };
        Some((start, end_of(i).max(start)))
    }

    pub fn nfailed(&self) -> u32 {
        if self.chunk_error.is_some() {
            self.count
        } else {
            self.failed.len() as u32
        }
    }

    /// Session number of the part's first task.
    pub fn first(&self) -> u64 {
        self.first_task + u64::from(self.from)
    }
}

/// A worker's heartbeat: a counter that changes every beat, and what it is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Beat {
    pub seq: u64,
    /// (chunk, attempt, task index in the chunk) the worker last said it started.
    pub running: Option<(u64, u32, u32)>,
}

impl Beat {
    pub fn encode(&self) -> String {
        match self.running {
            Some((c, a, t)) => format!("{} {c} {a} {t}\n", self.seq),
            None => format!("{}\n", self.seq),
        }
    }

    pub fn decode(text: &str) -> Option<Beat> {
        let mut it = text.split_whitespace();
        let seq = it.next()?.parse().ok()?;
        let running = match (it.next(), it.next(), it.next()) {
            (Some(c), Some(a), Some(t)) => {
                Some((c.parse().ok()?, a.parse().ok()?, t.parse().ok()?))
            }
            _ => None,
        };
        Some(Beat { seq, running })
    }
}

/// A result part as read back by the driver: verified frame or the reason it is corrupt.
pub type Part = std::result::Result<(ResultHeader, Vec<u8>), String>;

// ---------------------------------------------------------------- driver side

impl SessionDir {
    /// Store the master copy of a chunk (driver-private: workers read it, never change it).
    pub fn put_chunk(&self, header: &ChunkHeader, payload: &[u8]) -> Result<()> {
        let head = frame::encode(header, payload);
        write_atomic(&self.chunk(header.chunk), &[&head, payload])
    }

    /// Read a chunk's master copy. `Ok(None)` when it vanished.
    pub fn read_chunk(&self, chunk: u64) -> Result<Option<(ChunkHeader, Vec<u8>)>> {
        let path = self.chunk(chunk);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(frame::decode(&path, bytes)?)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoreError::io(&path, e)),
        }
    }

    pub fn chunk_exists(&self, chunk: u64) -> bool {
        self.chunk(chunk).exists()
    }

    pub fn remove_chunk(&self, chunk: u64) -> Result<()> {
        remove_if_exists(&self.chunk(chunk))
    }

    pub fn put_blob(&self, id: u64, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.blob(id), &[bytes])
    }

    pub fn read_blob(&self, id: u64) -> Result<Vec<u8>> {
        let p = self.blob(id);
        fs::read(&p).at(&p)
    }

    pub fn remove_blob(&self, id: u64) -> Result<()> {
        remove_if_exists(&self.blob(id))
    }

    /// Keys of the workers that announced themselves.
    pub fn hellos(&self) -> Result<Vec<String>> {
        Ok(list_names_or_empty(&self.sub("workers"))?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect())
    }

    /// A worker's last heartbeat, if readable.
    pub fn read_beat(&self, key: &str) -> Option<Beat> {
        Beat::decode(&fs::read_to_string(self.heartbeat(key)).ok()?)
    }

    /// Accept a worker: create its inbox (the worker waits for it before claiming).
    pub fn welcome(&self, key: &str) -> Result<()> {
        // Whole: the worker is polling for this very name from another host.
        crate::fsutil::create_dir_whole(&self.inbox(key))
    }

    /// Remove the checkpoint task `task` of `chunk` left (its chunk ended or moved past it).
    pub fn remove_checkpoint(&self, chunk: u64, task: u32) -> Result<()> {
        remove_if_exists(&self.checkpoint(chunk, task))
    }

    /// Put a ticket in a worker's inbox.
    pub fn put_ticket(&self, ticket: &Ticket) -> Result<()> {
        let bytes = serde_json::to_vec(ticket).expect("plain data");
        write_atomic(&self.ticket(&ticket.worker, ticket.seq), &[&bytes])
    }

    /// Take a ticket back before its worker claims it. True if it was taken back; false if
    /// the worker claimed it first (or it vanished: the audit tells the two apart).
    pub fn revoke_ticket(&self, key: &str, seq: u64) -> Result<bool> {
        let from = self.ticket(key, seq);
        let to = self.void_ticket(key, seq);
        match fs::rename(&from, &to) {
            Ok(()) => Ok(true),
            // A lost reply on NFS: the rename happened although the client saw ENOENT.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(to.exists()),
            Err(e) => Err(CoreError::io(&from, e)),
        }
    }

    pub fn ticket_exists(&self, key: &str, seq: u64) -> bool {
        self.ticket(key, seq).exists()
    }

    /// Tell a worker to exit: it stops claiming as soon as it sees this (and so does any
    /// later incarnation holding the same key, which cannot happen: keys carry a nonce).
    pub fn put_fence(&self, key: &str) -> Result<()> {
        crate::fsutil::write_exclusive(&self.fence(key), &[b"fenced\n"]).map(|_| ())
    }

    pub fn is_fenced(&self, key: &str) -> bool {
        self.fence(key).exists()
    }

    /// Remove a worker's inbox and whatever tickets are left in it.
    pub fn remove_inbox(&self, key: &str) {
        let _ = fs::remove_dir_all(self.inbox(key));
    }

    /// All current claims as (chunk, attempt).
    pub fn claims(&self) -> Result<Vec<(u64, u32)>> {
        Ok(list_names(&self.sub("claimed"))?
            .iter()
            .filter_map(|n| parse_claim_name(n))
            .collect())
    }

    /// The ticket behind a claim (who claimed it), if readable.
    pub fn read_claim(&self, chunk: u64, attempt: u32) -> Option<Ticket> {
        serde_json::from_slice(&fs::read(self.claimed(chunk, attempt)).ok()?).ok()
    }

    pub fn remove_claim(&self, chunk: u64, attempt: u32) -> Result<()> {
        remove_if_exists(&self.claimed(chunk, attempt))
    }

    /// Result parts waiting for the driver, as (chunk, attempt, from), in name order.
    pub fn parts(&self) -> Result<Vec<(u64, u32, u32)>> {
        Ok(list_names(&self.sub("results"))?
            .iter()
            .filter_map(|n| parse_part_name(n))
            .collect())
    }

    /// Read and verify a part. The outer error is I/O (`Ok(None)`: it is gone); the inner
    /// one says why the part is corrupt.
    pub fn read_part(&self, chunk: u64, attempt: u32, from: u32) -> Result<Option<Part>> {
        let path = self.part(chunk, attempt, from);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CoreError::io(&path, e)),
        };
        Ok(Some(frame::decode::<ResultHeader>(&path, bytes).map_err(
            |e| match e {
                CoreError::Corrupt { reason, .. } => reason,
                other => other.to_string(),
            },
        )))
    }

    pub fn remove_part(&self, chunk: u64, attempt: u32, from: u32) -> Result<()> {
        remove_if_exists(&self.part(chunk, attempt, from))
    }

    /// Keep a corrupt part for inspection (every copy: a numbered name per arrival). Returns
    /// where it went.
    pub fn keep_corrupt(&self, chunk: u64, attempt: u32, from: u32) -> std::path::PathBuf {
        let name = crate::layout::part_name(chunk, attempt, from);
        let src = self.part(chunk, attempt, from);
        for n in 0..10_000 {
            let dst = self.corrupt(&name, n);
            if dst.exists() {
                continue;
            }
            if fs::rename(&src, &dst).is_ok() {
                return dst;
            }
            break;
        }
        src
    }

    /// Read `[start, end)` of a worker's log, keeping at most the last `tail` bytes.
    pub fn read_log(
        &self,
        worker: &str,
        stream: Stream,
        start: u64,
        end: u64,
        tail: u64,
    ) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.log(worker, stream);
        let start = start.max(end.saturating_sub(tail));
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CoreError::io(&path, e)),
        };
        f.seek(SeekFrom::Start(start)).at(&path)?;
        let mut buf = Vec::new();
        f.take(end.saturating_sub(start))
            .read_to_end(&mut buf)
            .at(&path)?;
        Ok(buf)
    }

    /// Length of a worker's log so far (0 if missing).
    pub fn log_len(&self, worker: &str, stream: Stream) -> u64 {
        fs::metadata(self.log(worker, stream))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Write a control file (stop, cancel) or the driver's heartbeat, atomically.
    pub fn put_control(&self, name: &str, text: &str) -> Result<()> {
        write_atomic(&self.control(name), &[text.as_bytes()])
    }

    /// The driver's heartbeat counter, as the workers read it.
    pub fn read_driver_beat(&self) -> Option<u64> {
        fs::read_to_string(self.control("driver.beat"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_round_trip() {
        for b in [
            Beat {
                seq: 7,
                running: None,
            },
            Beat {
                seq: 8,
                running: Some((3, 2, 40)),
            },
        ] {
            assert_eq!(Beat::decode(&b.encode()), Some(b));
        }
        assert_eq!(Beat::decode("junk"), None);
    }

    #[test]
    fn revoke_or_claim_exactly_one_wins() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        d.welcome("w+1").unwrap();
        let ticket = Ticket {
            seq: 0,
            chunk: 5,
            attempt: 1,
            worker: "w+1".into(),
            ..Default::default()
        };
        d.put_ticket(&ticket).unwrap();
        // The worker claims first: the driver's revoke fails.
        fs::rename(d.ticket("w+1", 0), d.claimed(5, 1)).unwrap();
        assert!(!d.revoke_ticket("w+1", 0).unwrap());
        assert_eq!(d.read_claim(5, 1).unwrap().worker, "w+1");
        // The driver revokes first: the worker's claim rename fails.
        d.put_ticket(&Ticket { seq: 1, ..ticket }).unwrap();
        assert!(d.revoke_ticket("w+1", 1).unwrap());
        assert!(fs::rename(d.ticket("w+1", 1), d.claimed(5, 2)).is_err());
        assert!(d.void_ticket("w+1", 1).exists());
    }

    #[test]
    fn parts_are_listed_verified_and_corrupt_copies_kept() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        let h = ResultHeader {
            chunk: 3,
            attempt: 1,
            first_task: 30,
            ntasks: 10,
            from: 4,
            count: 6,
            last: true,
            worker: "w+1".into(),
            ..Default::default()
        };
        let head = frame::encode(&h, b"res");
        write_atomic(&d.part(3, 1, 4), &[&head, b"res"]).unwrap();
        assert_eq!(d.parts().unwrap(), vec![(3, 1, 4)]);
        let (got, payload) = d.read_part(3, 1, 4).unwrap().unwrap().unwrap();
        assert_eq!((got, payload), (h, b"res".to_vec()));
        // torn write
        let mut bytes = fs::read(d.part(3, 1, 4)).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(d.part(3, 1, 4), &bytes).unwrap();
        let err = d.read_part(3, 1, 4).unwrap().unwrap().unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let kept = d.keep_corrupt(3, 1, 4);
        assert!(kept.exists() && !d.part(3, 1, 4).exists());
        fs::write(d.part(3, 1, 4), &bytes).unwrap();
        assert_ne!(d.keep_corrupt(3, 1, 4), kept, "every corrupt copy is kept");
    }

    #[test]
    fn sparse_marks_give_each_task_its_range() {
        let h = ResultHeader {
            count: 4,
            start: (10, 5),
            marks: vec![(1, 20, 5), (3, 25, 9)],
            ..Default::default()
        };
        let out: Vec<_> = (0..4)
            .map(|i| h.range(i, Stream::Stdout).unwrap())
            .collect();
        assert_eq!(out, vec![(10, 10), (10, 20), (20, 20), (20, 25)]);
        assert_eq!(h.range(3, Stream::Stderr), Some((5, 9)));
        assert_eq!(h.range(4, Stream::Stdout), None);
    }

    #[test]
    fn log_ranges_and_tail() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        fs::write(d.log("w", Stream::Stderr), b"0123456789").unwrap();
        assert_eq!(
            d.read_log("w", Stream::Stderr, 2, 8, 100).unwrap(),
            b"234567"
        );
        assert_eq!(d.read_log("w", Stream::Stderr, 2, 8, 3).unwrap(), b"567");
        assert!(d
            .read_log("nobody", Stream::Stderr, 0, 5, 5)
            .unwrap()
            .is_empty());
    }
}

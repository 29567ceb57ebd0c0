//! The work-dir protocol: how the driver publishes chunks and collects results, and how
//! workers claim chunks and publish results. Every state change is one atomic rename or one
//! atomic write, so a crash at any point leaves a state the driver can recover from.

use crate::error::{CoreError, IoContext, Result};
use crate::frame;
use crate::fsutil::{list_names, now_secs, write_atomic};
use crate::layout::{parse_chunk_name, SessionDir, Stream};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs;
use std::io::ErrorKind;

/// What the engine knows of a chunk without unpickling it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkHeader {
    pub chunk: u64,
    /// Session-wide number of the chunk's first task; its tasks are numbered consecutively.
    pub first_task: u64,
    pub ntasks: u32,
}

/// A task that raised: its index inside the chunk and the remote traceback text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedTask {
    pub index: u32,
    pub traceback: String,
}

/// What the engine and `shoal logs` know of a result without unpickling it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ResultHeader {
    pub chunk: u64,
    pub first_task: u64,
    pub ntasks: u32,
    pub worker: String,
    /// Offsets of the worker's stdout and stderr logs when the chunk started.
    #[serde(default)]
    pub start: (u64, u64),
    /// `(task index, stdout offset, stderr offset)` after the tasks whose output may have
    /// moved, in task order; a task without a mark wrote nothing. Sparse, so a chunk of
    /// thousands of silent tasks carries a handful of numbers, not thousands.
    #[serde(default)]
    pub marks: Vec<(u32, u64, u64)>,
    #[serde(default)]
    pub failed: Vec<FailedTask>,
    /// Set when the chunk as a whole could not run (e.g. its payload failed to unpickle).
    #[serde(default)]
    pub chunk_error: Option<String>,
    #[serde(default)]
    pub elapsed: f64,
}

impl ResultHeader {
    /// Byte range of task `i`'s output on `stream`: from where the previous tasks' output
    /// ended to the last mark at or before `i`.
    pub fn range(&self, i: usize, stream: Stream) -> Option<(u64, u64)> {
        if i >= self.ntasks as usize {
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
            self.ntasks
        } else {
            self.failed.len() as u32
        }
    }
}

// ---------------------------------------------------------------- driver side

impl SessionDir {
    pub fn put_chunk(&self, header: &ChunkHeader, payload: &[u8]) -> Result<()> {
        let head = frame::encode(header, payload);
        write_atomic(&self.pending(header.chunk), &[&head, payload])
    }

    pub fn put_blob(&self, id: u64, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.blob(id), &[bytes])
    }

    pub fn read_blob(&self, id: u64) -> Result<Vec<u8>> {
        let p = self.blob(id);
        fs::read(&p).at(&p)
    }

    /// Chunk ids whose results are waiting in `results/`.
    pub fn ready_results(&self) -> Result<Vec<u64>> {
        Ok(list_names(&self.sub("results"))?
            .iter()
            .filter_map(|n| parse_chunk_name(n))
            .collect())
    }

    /// Read and verify a result, then move it to `done/`. A corrupt result is moved to
    /// `corrupt/` and its chunk put back in `pending/` so that another worker redoes it.
    pub fn take_result(&self, chunk: u64) -> Result<Option<(ResultHeader, Vec<u8>)>> {
        let path = self.result(chunk);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CoreError::io(&path, e)),
        };
        match frame::decode::<ResultHeader>(&path, bytes) {
            Ok((header, payload)) => {
                fs::rename(&path, self.done(chunk)).at(&path)?;
                let _ = fs::remove_file(self.ran(chunk));
                Ok(Some((header, payload)))
            }
            Err(err) => {
                let _ = fs::rename(&path, self.corrupt(chunk));
                // The chunk is in ran/ once its worker retired the claim, or still in
                // claimed/ if we raced that rename.
                if fs::rename(self.ran(chunk), self.pending(chunk)).is_ok() {
                    return Ok(None);
                }
                for (c, w) in self.claims()? {
                    if c == chunk && self.requeue(c, &w)? {
                        return Ok(None);
                    }
                }
                Err(err)
            }
        }
    }

    /// All current claims as (chunk, worker).
    pub fn claims(&self) -> Result<Vec<(u64, String)>> {
        Ok(list_names(&self.sub("claimed"))?
            .iter()
            .filter_map(|n| {
                let (c, w) = n.split_once('@')?;
                Some((parse_chunk_name(c)?, w.to_string()))
            })
            .collect())
    }

    /// Put a dead worker's claim back in `pending/`. False if the claim is gone (the worker
    /// finished it after all, or another requeue won).
    pub fn requeue(&self, chunk: u64, worker: &str) -> Result<bool> {
        match fs::rename(self.claimed(chunk, worker), self.pending(chunk)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CoreError::io(self.claimed(chunk, worker), e)),
        }
    }

    /// Remove a chunk nobody claimed yet. True if it was still pending.
    pub fn withdraw(&self, chunk: u64) -> Result<bool> {
        match fs::remove_file(self.pending(chunk)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CoreError::io(self.pending(chunk), e)),
        }
    }

    pub fn pending_count(&self) -> Result<usize> {
        Ok(list_names(&self.sub("pending"))?.len())
    }

    /// Seconds since `path` was last modified (heartbeats are files touched periodically).
    pub fn age_of(&self, path: &std::path::Path) -> Option<f64> {
        let m = fs::metadata(path).ok()?.modified().ok()?;
        let t = m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
        Some((now_secs() - t).max(0.0))
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

    /// Touch a heartbeat file.
    pub fn beat(&self, path: &std::path::Path) -> Result<()> {
        let now = now_secs().to_string();
        fs::write(path, now.as_bytes()).at(path)
    }
}

// ---------------------------------------------------------------- worker side

/// A worker's view of `pending/`: lists the directory only when its cached listing is used
/// up, then tries names in order until a rename succeeds.
pub struct Claimer {
    dir: SessionDir,
    worker: String,
    cache: VecDeque<String>,
}

impl Claimer {
    pub fn new(dir: SessionDir, worker: impl Into<String>) -> Self {
        Claimer {
            dir,
            worker: worker.into(),
            cache: VecDeque::new(),
        }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Claim the oldest pending chunk, if any. Losing a race for a name is normal and silent.
    pub fn try_claim(&mut self) -> Result<Option<(ChunkHeader, Vec<u8>)>> {
        for attempt in 0..2 {
            if self.cache.is_empty() {
                if attempt > 0 {
                    break;
                }
                self.cache = list_names(&self.dir.sub("pending"))?.into();
            }
            while let Some(name) = self.cache.pop_front() {
                let Some(chunk) = parse_chunk_name(&name) else {
                    continue;
                };
                let claimed = self.dir.claimed(chunk, &self.worker);
                match fs::rename(self.dir.pending(chunk), &claimed) {
                    Ok(()) => {
                        let bytes = fs::read(&claimed).at(&claimed)?;
                        let (header, payload) = frame::decode::<ChunkHeader>(&claimed, bytes)?;
                        return Ok(Some((header, payload)));
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(CoreError::io(&claimed, e)),
                }
            }
        }
        Ok(None)
    }

    /// Publish a result, then retire the claim. The order matters: a crash in between leaves
    /// a claim whose result exists, which the driver deduplicates.
    pub fn complete(&self, header: &ResultHeader, payload: &[u8]) -> Result<()> {
        let head = frame::encode(header, payload);
        write_atomic(&self.dir.result(header.chunk), &[&head, payload])?;
        let claimed = self.dir.claimed(header.chunk, &self.worker);
        match fs::rename(&claimed, self.dir.ran(header.chunk)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io(&claimed, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, SessionDir) {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        (t, d)
    }

    fn chunk(d: &SessionDir, id: u64) {
        let h = ChunkHeader {
            chunk: id,
            first_task: id * 10,
            ntasks: 10,
        };
        d.put_chunk(&h, format!("payload{id}").as_bytes()).unwrap();
    }

    fn result(id: u64, w: &str) -> ResultHeader {
        ResultHeader {
            chunk: id,
            first_task: id * 10,
            ntasks: 10,
            worker: w.into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_chunk_is_claimed_once_in_order() {
        let (_t, d) = setup();
        for i in 0..5 {
            chunk(&d, i);
        }
        let mut a = Claimer::new(d.clone(), "a");
        let mut b = Claimer::new(d.clone(), "b");
        let mut got = vec![];
        loop {
            let x = a.try_claim().unwrap();
            let y = b.try_claim().unwrap();
            if x.is_none() && y.is_none() {
                break;
            }
            got.extend(x.map(|c| c.0.chunk));
            got.extend(y.map(|c| c.0.chunk));
        }
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(d.claims().unwrap().len(), 5);
    }

    #[test]
    fn complete_then_take() {
        let (_t, d) = setup();
        chunk(&d, 3);
        let mut w = Claimer::new(d.clone(), "w1");
        let (h, p) = w.try_claim().unwrap().unwrap();
        assert_eq!(h.first_task, 30);
        assert_eq!(p, b"payload3");
        w.complete(&result(3, "w1"), b"res").unwrap();
        assert_eq!(d.ready_results().unwrap(), vec![3]);
        let (rh, rp) = d.take_result(3).unwrap().unwrap();
        assert_eq!(rh.worker, "w1");
        assert_eq!(rp, b"res");
        assert!(d.claims().unwrap().is_empty());
        assert!(d.ready_results().unwrap().is_empty());
        assert!(d.done(3).exists());
        assert!(d.take_result(3).unwrap().is_none());
    }

    #[test]
    fn requeue_dead_workers_claim() {
        let (_t, d) = setup();
        chunk(&d, 1);
        let mut dead = Claimer::new(d.clone(), "dead");
        dead.try_claim().unwrap().unwrap();
        assert_eq!(d.claims().unwrap(), vec![(1, "dead".to_string())]);
        assert!(d.requeue(1, "dead").unwrap());
        assert!(!d.requeue(1, "dead").unwrap());
        let mut alive = Claimer::new(d.clone(), "alive");
        assert_eq!(alive.try_claim().unwrap().unwrap().0.chunk, 1);
    }

    #[test]
    fn corrupt_result_requeues_chunk() {
        let (_t, d) = setup();
        chunk(&d, 2);
        let mut w = Claimer::new(d.clone(), "w");
        w.try_claim().unwrap().unwrap();
        w.complete(&result(2, "w"), b"res").unwrap();
        // Simulate a torn write on a shared filesystem.
        let p = d.result(2);
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 2);
        fs::write(&p, bytes).unwrap();
        assert!(d.take_result(2).unwrap().is_none());
        assert!(d.pending(2).exists());
        assert!(d.corrupt(2).exists());
    }

    #[test]
    fn withdraw_only_pending() {
        let (_t, d) = setup();
        chunk(&d, 1);
        chunk(&d, 2);
        let mut w = Claimer::new(d.clone(), "w");
        w.try_claim().unwrap().unwrap();
        assert!(!d.withdraw(1).unwrap());
        assert!(d.withdraw(2).unwrap());
    }

    #[test]
    fn sparse_marks_give_each_task_its_range() {
        let h = ResultHeader {
            ntasks: 4,
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
        let silent = ResultHeader {
            ntasks: 2,
            ..Default::default()
        };
        assert_eq!(silent.range(1, Stream::Stdout), Some((0, 0)));
    }

    #[test]
    fn log_ranges_and_tail() {
        let (_t, d) = setup();
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

//! The chunks' master copies, from submit until the chunk ends. Over the work dir they are
//! files the workers read. Over TCP only the driver reads them, to send: they are kept in
//! memory up to a budget, and only beyond it written to the session dir. A copy kept in
//! memory costs no write, no read back and no checksum of either (the three were a fifth of
//! the driver's CPU in benches/transport's 2 GiB numpy run); the budget keeps a `map` of
//! large arguments, which submits every chunk at once, from doubling the driver's memory.

use crate::error::Result;
use shoal_core::protocol::ChunkHeader;
use shoal_core::SessionDir;
use shoal_wire::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// Bytes of chunk payloads a TCP session keeps in memory before spilling to its session dir.
pub const MEMORY_BUDGET: usize = 512 << 20;

pub struct Chunks {
    dir: SessionDir,
    /// None: every master copy is a file (the workers read them).
    memory: Option<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    chunks: HashMap<u64, (ChunkHeader, Bytes)>,
    bytes: usize,
    budget: usize,
}

impl Chunks {
    /// Master copies as files in the work dir, for workers that read them there.
    pub fn files(dir: SessionDir) -> Chunks {
        Chunks { dir, memory: None }
    }

    /// Master copies in memory up to `budget` bytes, files beyond.
    pub fn in_memory(dir: SessionDir, budget: usize) -> Chunks {
        let held = Held {
            budget,
            ..Held::default()
        };
        Chunks {
            dir,
            memory: Some(Mutex::new(held)),
        }
    }

    pub fn put(&self, header: &ChunkHeader, payload: Bytes) -> Result<()> {
        if let Some(m) = &self.memory {
            let mut held = m.lock().unwrap_or_else(|e| e.into_inner());
            if held.bytes + payload.len() <= held.budget {
                held.bytes += payload.len();
                held.chunks.insert(header.chunk, (header.clone(), payload));
                return Ok(());
            }
        }
        Ok(self.dir.put_chunk(header, &payload)?)
    }

    /// The master copy, `None` once the chunk ended.
    pub fn get(&self, chunk: u64) -> Result<Option<(ChunkHeader, Bytes)>> {
        if let Some(m) = &self.memory {
            let held = m.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((h, p)) = held.chunks.get(&chunk) {
                return Ok(Some((h.clone(), p.clone())));
            }
        }
        Ok(self
            .dir
            .read_chunk(chunk)?
            .map(|(h, p)| (h, Bytes::from(p))))
    }

    pub fn remove(&self, chunk: u64) {
        if let Some(m) = &self.memory {
            let mut held = m.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, p)) = held.chunks.remove(&chunk) {
                held.bytes -= p.len();
                return;
            }
        }
        let _ = self.dir.remove_chunk(chunk);
    }

    /// How many bytes of master copies are held in memory now.
    pub fn in_memory_bytes(&self) -> usize {
        self.memory
            .as_ref()
            .map_or(0, |m| m.lock().unwrap_or_else(|e| e.into_inner()).bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(chunk: u64) -> ChunkHeader {
        ChunkHeader {
            chunk,
            first_task: chunk * 10,
            ntasks: 1,
            blobs: vec![],
        }
    }

    #[test]
    fn copies_beyond_the_budget_spill_to_the_session_dir_and_all_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SessionDir::create(tmp.path().join("s")).unwrap();
        let chunks = Chunks::in_memory(dir.clone(), 10);
        chunks
            .put(&header(1), Bytes::from_static(b"123456"))
            .unwrap();
        chunks
            .put(&header(2), Bytes::from_static(b"7890ab"))
            .unwrap(); // over: a file
        assert_eq!(chunks.in_memory_bytes(), 6);
        assert!(!dir.chunk_exists(1) && dir.chunk_exists(2));
        for (c, want) in [(1, &b"123456"[..]), (2, b"7890ab")] {
            let (h, p) = chunks.get(c).unwrap().unwrap();
            assert_eq!((h.first_task, &p[..]), (c * 10, want));
        }
        chunks.remove(1);
        chunks.remove(2);
        assert_eq!(chunks.in_memory_bytes(), 0);
        assert!(chunks.get(1).unwrap().is_none() && chunks.get(2).unwrap().is_none());
        // Room again: the next one stays in memory.
        chunks
            .put(&header(3), Bytes::from_static(b"cdefgh"))
            .unwrap();
        assert!(!dir.chunk_exists(3) && chunks.in_memory_bytes() == 6);
    }

    #[test]
    fn over_the_work_dir_every_copy_is_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SessionDir::create(tmp.path().join("s")).unwrap();
        let chunks = Chunks::files(dir.clone());
        chunks.put(&header(1), Bytes::from_static(b"x")).unwrap();
        assert!(dir.chunk_exists(1) && chunks.in_memory_bytes() == 0);
        chunks.remove(1);
        assert!(!dir.chunk_exists(1));
    }
}

//! What the engine thread and its callers share, behind one mutex: the ledger, the headers of
//! outstanding chunks, blob references, counters, and requests the engine thread carries out
//! (revokes and clean-ups that need the transport, which only that thread touches).

use crate::blobs::BlobRefs;
use crate::ledger::{Ledger, Outcome};
use crate::record::Stats;
use shoal_core::protocol::ChunkHeader;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    No,
    /// Let workers finish and exit; kill what remains after the grace period.
    Graceful(Duration),
    Now,
}

pub struct State {
    pub ledger: Ledger,
    pub chunks: HashMap<u64, ChunkHeader>,
    pub blobs: BlobRefs,
    pub next_chunk: u64,
    pub next_task: u64,
    pub next_blob: u64,
    pub stats: Stats,
    pub stop: Stop,
    pub fatal: Option<String>,
    pub thread_done: bool,
    pub jobs: Vec<String>,
    /// Outcomes of caller requests (withdrawals) that need the engine thread.
    pub requests: Vec<Outcome>,
    /// Blobs whose file can go.
    pub free_blobs: Vec<u64>,
    /// Worker shapes added by the caller, with their preflighted schedulers, for the engine
    /// thread to take on.
    pub new_shapes: Vec<(String, Box<dyn shoal_sched::Scheduler>)>,
}

impl State {
    pub fn new(ledger: Ledger) -> Self {
        State {
            ledger,
            chunks: HashMap::new(),
            blobs: BlobRefs::default(),
            next_chunk: 0,
            next_task: 0,
            next_blob: 0,
            stats: Stats::default(),
            stop: Stop::No,
            fatal: None,
            thread_done: false,
            jobs: Vec::new(),
            requests: Vec::new(),
            free_blobs: Vec::new(),
            new_shapes: Vec::new(),
        }
    }

    /// Whether new work is refused (stopping, failed, or the engine thread ended).
    pub fn closed(&self) -> bool {
        self.stop != Stop::No || self.thread_done || self.fatal.is_some()
    }
}

pub struct Shared {
    pub state: Mutex<State>,
    /// Signalled when outstanding work shrinks (submitters waiting for room) or on stop.
    pub room: Condvar,
}

impl Shared {
    pub fn new(ledger: Ledger) -> Self {
        Shared {
            state: Mutex::new(State::new(ledger)),
            room: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

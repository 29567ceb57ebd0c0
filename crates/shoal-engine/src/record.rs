//! The session's counters and its record on disk (`session.json`), which `shoal sessions`,
//! `shoal cancel` and `shoal top` read. The engine rewrites it every half second on a local
//! disk and every few seconds on a shared filesystem.

use shoal_core::fsutil::now_secs;
use shoal_core::session::SessionMeta;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub chunks_outstanding: u64,
    pub workers_running: u64,
    pub workers_pending: u64,
    pub workers_started: u64,
    /// Workers lost while holding work (died, killed, timed out, no heartbeat).
    pub workers_lost: u64,
    /// Workers the engine gave up on and told to exit.
    pub workers_fenced: u64,
}

/// Copy the counters and job ids into the record.
pub fn apply(meta: &mut SessionMeta, s: &Stats, jobs: &[String]) {
    meta.tasks_total = s.tasks_total;
    meta.tasks_done = s.tasks_done;
    meta.tasks_failed = s.tasks_failed;
    meta.workers_running = s.workers_running;
    meta.workers_started = s.workers_started;
    meta.workers_lost = s.workers_lost;
    meta.workers_fenced = s.workers_fenced;
    meta.jobs = jobs.to_vec();
    meta.updated = now_secs();
}

//! The handle callers hold: submit chunks, withdraw them, receive events, stop. It owns no
//! I/O beyond writing master copies and blobs; everything that talks to workers happens on
//! the engine thread (`runner.rs`).

use crate::broker::fs::FsBroker;
use crate::broker::tcp::TcpBroker;
use crate::broker::{self, Broker};
use crate::chunks::{Chunks, MEMORY_BUDGET};
use crate::error::{EngineError, Result};
use crate::ledger::{Cause, Ledger, Outcome};
use crate::record::{self, Stats};
use crate::runner::Runner;
use crate::state::{Shared, Stop};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use shoal_core::fskind::FsKind;
use shoal_core::journal::{self, Journal, SessionEnd, SessionInfo};
use shoal_core::protocol::{ChunkHeader, ResultHeader};
use shoal_core::retention;
use shoal_core::session::{SessionMeta, SessionState};
use shoal_core::watch::Waker;
use shoal_core::SessionDir;
use shoal_sched::shapes::{ShapeId, Shaped};
use shoal_sched::{LaunchSpec, Scheduler};
use shoal_wire::Bytes;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Events waiting for the caller beyond this stop the engine from reading more results
/// (they stay on disk until there is room): a slow caller cannot make the driver's memory grow.
pub(crate) const EVENTS_CAP: usize = 256;

/// Engine settings that do not depend on the backend.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Losses of its worker a task may cause before it fails with `WorkerLost` (and corrupt
    /// results a chunk may produce before its tasks fail).
    pub max_attempts: u32,
    /// Workers whose heartbeat counter has not changed for this long are given up on.
    pub heartbeat_timeout: Option<Duration>,
    /// The workers' heartbeat interval (how often their counters change).
    pub heartbeat_interval: Duration,
    /// Workers lost in a row without producing a single result before the session fails.
    pub max_start_failures: u32,
    pub progress: bool,
    /// Bytes of a lost worker's stderr quoted in errors.
    pub stderr_tail: u64,
    pub metadata: serde_json::Value,
    /// Assignments a worker may hold beyond the one it runs (hides the hand-off latency).
    pub prefetch: usize,
    /// Outstanding chunks beyond which a blocking `submit` waits (None: from the capacity).
    pub window: Option<usize>,
    /// How long a suspended worker keeps its chunks before they run elsewhere.
    pub suspend_grace: Duration,
    /// How much one blocked loop iteration (a filesystem stall) counts toward liveness.
    pub stall_step: Duration,
    /// How long a hello from a job the scheduler has not reported may wait before it is
    /// fenced.
    pub stranger_grace: Duration,
    /// Where ended sessions' journals are copied (`shoal show` after the work dir is gone);
    /// None: nowhere.
    pub history: Option<PathBuf>,
    /// "fs", "tcp" or "auto" (see [`crate::broker::choose`]).
    pub transport: String,
    /// Where a TCP session listens (docs/transport-tcp.md, "Addresses"); "" is automatic.
    pub listen: String,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_attempts: 3,
            heartbeat_timeout: Some(Duration::from_secs(120)),
            heartbeat_interval: Duration::from_secs(5),
            max_start_failures: 5,
            progress: false,
            stderr_tail: 2048,
            metadata: serde_json::Value::Null,
            prefetch: 1,
            window: None,
            suspend_grace: Duration::from_secs(10),
            stall_step: Duration::from_secs(2),
            stranger_grace: crate::fleet::STRANGER_GRACE,
            history: Some(journal::history_dir()),
            transport: "auto".into(),
            listen: String::new(),
        }
    }
}

/// What the engine tells its caller.
#[derive(Debug)]
pub enum Event {
    /// Verified results: deliver tasks `from..from + count` of the chunk, which are values
    /// `skip..` of the part's payload. Each task is delivered exactly once.
    Result {
        header: ResultHeader,
        payload: Bytes,
        from: u32,
        count: u32,
        skip: u32,
    },
    /// Tasks `from..from + count` of `chunk` failed for good (`cause` says why).
    Failed {
        chunk: ChunkHeader,
        from: u32,
        count: u32,
        cause: Cause,
        attempts: u32,
        worker: String,
        stderr_tail: String,
    },
    /// The session cannot go on (submission refused, workers cannot start, cancelled, disk
    /// full).
    Fatal { message: String },
    /// A worker claimed the chunk for the first time (its tasks are running).
    Started { chunk: u64 },
    /// A chunk `withdraw` could not take back at once was taken back after all.
    Withdrawn { chunk: u64 },
}

/// Handle to a running session's engine.
pub struct Engine {
    dir: SessionDir,
    chunks: Arc<Chunks>,
    shared: Arc<Shared>,
    events: Receiver<Event>,
    thread: Mutex<Option<JoinHandle<()>>>,
    waker: Waker,
    backend: &'static str,
    metadata: serde_json::Value,
    window: usize,
    history: Option<PathBuf>,
    /// What workers of a new shape are started with (a TCP session's address included).
    spec: LaunchSpec,
    /// The labels of the session's worker shapes, by id (0: the pool's own, "").
    shapes: Mutex<Vec<String>>,
}

impl Engine {
    /// Check the backend, then start the engine thread. Nothing is submitted if preflight
    /// fails, nor if the work dir is on a filesystem the protocol cannot use.
    pub fn start(
        dir: SessionDir,
        mut scheduler: Box<dyn Scheduler>,
        spec: LaunchSpec,
        options: EngineOptions,
    ) -> Result<Engine> {
        let fs = shoal_core::fskind::detect(dir.root());
        if let FsKind::ObjectStore(name) = &fs {
            return Err(EngineError::Unusable(format!(
                "the work dir {} is on {name}, an object store behind FUSE whose rename is a copy and a delete: shoal's claims need an atomic rename\nhint: pass work_dir=... on a POSIX filesystem (local disk, NFS, Lustre, GPFS, BeeGFS, GlusterFS)",
                dir.root().display()
            )));
        }
        let transport = broker::choose(&options.transport, scheduler.name(), &fs)?;
        let mut spec = spec;
        type Started = (Box<dyn Broker>, Waker, Option<String>, Arc<Chunks>);
        let (broker, waker, listening, chunks): Started = if transport == "tcp" {
            let chunks = Arc::new(Chunks::in_memory(dir.clone(), MEMORY_BUDGET));
            let (b, connect, listening) =
                TcpBroker::start(dir.clone(), chunks.clone(), &options.listen)?;
            spec.connect = Some(connect);
            let waker = b.waker();
            (Box::new(b), waker, Some(listening), chunks)
        } else {
            let b = FsBroker::new(dir.clone(), fs.is_network(), options.heartbeat_interval);
            let waker = b.waker();
            (
                Box::new(b),
                waker,
                None,
                Arc::new(Chunks::files(dir.clone())),
            )
        };
        scheduler.preflight(&spec)?;
        let backend = scheduler.name();
        let mut meta = SessionMeta::new(dir.id(), backend);
        meta.metadata = options.metadata.clone();
        meta.filesystem = fs.name().to_string();
        meta.transport = transport.into();
        dir.write_meta(&meta)?;
        if let Some(line) = &listening {
            // Where workers connect, why that address, and what they pin: for the record.
            let _ = std::fs::write(dir.sub("logs").join("transport.log"), format!("{line}\n"));
            if options.progress {
                eprintln!("shoal {}: tcp transport {line}", dir.id());
            }
        }
        // The session's event record for `shoal top` and `shoal show` (never fatal).
        let journal =
            Journal::open(&dir, &SessionInfo::of(&meta)).unwrap_or_else(|_| Journal::disabled());
        let history = options.history.clone();
        let window = options
            .window
            .unwrap_or_else(|| (scheduler.capacity() * (options.prefetch + 1) * 2).max(8));
        let shared = Arc::new(Shared::new(Ledger::new(
            options.max_attempts,
            options.prefetch,
        )));
        let (tx, rx) = bounded(EVENTS_CAP);
        let metadata = options.metadata.clone();
        let mut runner = Runner::new(
            dir.clone(),
            shared.clone(),
            tx,
            spec.clone(),
            options,
            meta,
            broker,
            fs.is_network() && transport == "fs",
            journal,
        );
        let thread = std::thread::Builder::new()
            .name("shoal-engine".into())
            .spawn(move || {
                runner.run(&mut Shaped::new(scheduler));
                runner.shared.lock().thread_done = true;
                runner.shared.room.notify_all();
            })
            .map_err(|e| shoal_core::CoreError::io("shoal-engine thread", e))?;
        Ok(Engine {
            dir,
            chunks,
            shared,
            events: rx,
            thread: Mutex::new(Some(thread)),
            waker,
            backend,
            metadata,
            window,
            history,
            spec,
            shapes: Mutex::new(vec![String::new()]),
        })
    }

    /// The worker shape with this label (docs/resources.md), added if new: `build` makes its
    /// scheduler for the shape id it is given, which must pass its preflight before the
    /// shape exists. Nothing of it is submitted until a chunk of the shape waits.
    pub fn add_shape(
        &self,
        label: &str,
        build: impl FnOnce(ShapeId) -> shoal_sched::Result<Box<dyn Scheduler>>,
    ) -> Result<ShapeId> {
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = shapes.iter().position(|l| l == label) {
            return Ok(k as ShapeId);
        }
        let id = shapes.len() as ShapeId;
        let mut scheduler = build(id)?;
        scheduler.preflight(&self.spec)?;
        {
            let mut st = self.shared.lock();
            if st.closed() {
                return Err(EngineError::Ended);
            }
            st.new_shapes.push((label.to_string(), scheduler));
        }
        shapes.push(label.to_string());
        self.waker.wake();
        Ok(id)
    }

    pub fn dir(&self) -> &SessionDir {
        &self.dir
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Store a payload shared by many chunks; returns its id. It stays until `release_blob`
    /// and the end of the last chunk that refers to it.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<u64> {
        let id = {
            let mut st = self.shared.lock();
            st.next_blob += 1;
            let id = st.next_blob;
            st.blobs.add(id);
            id
        };
        self.dir.put_blob(id, bytes)?;
        Ok(id)
    }

    /// The caller will make no more chunks referring to `blob`.
    pub fn release_blob(&self, blob: u64) {
        let free = self.shared.lock().blobs.release(blob);
        if free {
            let _ = self.dir.remove_blob(blob);
        }
    }

    /// Wait while the session has its window of outstanding chunks (a feeder thread's
    /// backpressure: files in the work dir and the driver's memory stay bounded).
    pub fn wait_room(&self) {
        let mut st = self.shared.lock();
        while !st.closed() && st.ledger.outstanding() >= self.window {
            st = self
                .shared
                .room
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Publish a chunk of `ntasks` tasks referring to `blobs`; returns (chunk id, session
    /// number of its first task).
    pub fn submit(&self, payload: &[u8], ntasks: u32, blobs: &[u64]) -> Result<(u64, u64)> {
        self.submit_shaped(Bytes::copy_from_slice(payload), ntasks, blobs, 0)
    }

    /// `submit`, for workers of `shape` (from [`Engine::add_shape`]) only. The payload is
    /// kept as given while a TCP session holds it in memory (the bindings pass Python's own
    /// bytes object, uncopied).
    pub fn submit_shaped(
        &self,
        payload: Bytes,
        ntasks: u32,
        blobs: &[u64],
        shape: ShapeId,
    ) -> Result<(u64, u64)> {
        let header = {
            let st = self.shared.lock();
            if st.closed() {
                return Err(match &st.fatal {
                    Some(m) => EngineError::Failed(m.clone()),
                    None => EngineError::Ended,
                });
            }
            drop(st);
            let mut st = self.shared.lock();
            let header = ChunkHeader {
                chunk: st.next_chunk,
                first_task: st.next_task,
                ntasks,
                blobs: blobs.to_vec(),
            };
            st.next_chunk += 1;
            st.next_task += u64::from(ntasks);
            header
        };
        // The master copy is written outside the lock (it may be large); the engine learns
        // of the chunk only once it exists.
        self.chunks.put(&header, payload)?;
        {
            let mut st = self.shared.lock();
            st.stats.tasks_total += u64::from(ntasks);
            st.blobs.chunk_submitted(blobs);
            let ended = st.ledger.submit_shaped(header.chunk, ntasks, shape);
            if ended.is_empty() {
                st.chunks.insert(header.chunk, header.clone());
            }
        }
        self.waker.wake();
        Ok((header.chunk, header.first_task))
    }

    /// Take back chunks no worker has started. Returns how many were withdrawn now; one
    /// sitting in a worker's inbox is taken back shortly after (an `Event::Withdrawn`), or
    /// runs if its worker claims it first.
    pub fn withdraw(&self, chunks: &[u64]) -> Result<usize> {
        let mut n = 0;
        {
            let mut st = self.shared.lock();
            for &c in chunks {
                for o in st.ledger.withdraw(c) {
                    match o {
                        Outcome::Ended { chunk } => {
                            n += 1;
                            if let Some(h) = st.chunks.remove(&chunk) {
                                st.stats.tasks_total -= u64::from(h.ntasks);
                                let free = st.blobs.chunk_ended(&h.blobs);
                                st.free_blobs.extend(free);
                            }
                            st.requests.push(o);
                        }
                        other => st.requests.push(other),
                    }
                }
            }
        }
        self.shared.room.notify_all();
        self.waker.wake();
        Ok(n)
    }

    /// Wait up to `timeout` for events; returns all that are ready.
    pub fn events(&self, timeout: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        match self.events.recv_timeout(timeout) {
            Ok(e) => out.push(e),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return out,
        }
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        let mut s = st.stats.clone();
        s.chunks_outstanding = st.ledger.outstanding() as u64;
        s
    }

    pub fn fatal(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// Stop the session's workers: gracefully (let them finish and exit, kill leftovers after
    /// `grace`) or at once. Returns when the engine thread has ended and nothing is left.
    pub fn shutdown(&self, graceful: Option<Duration>) {
        {
            let mut st = self.shared.lock();
            let req = match graceful {
                Some(g) => Stop::Graceful(g),
                None => Stop::Now,
            };
            if st.stop == Stop::No || req == Stop::Now {
                st.stop = req;
            }
        }
        self.shared.room.notify_all();
        self.waker.wake();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Record the final state. The work dir is removed when the session finished cleanly
    /// and `keep` is false; otherwise its path is returned for the user to inspect.
    pub fn finish(
        &self,
        state: SessionState,
        message: Option<String>,
        keep: bool,
    ) -> Option<PathBuf> {
        self.shutdown(None);
        let st = self.shared.lock();
        let mut meta = self
            .dir
            .read_meta()
            .unwrap_or_else(|_| SessionMeta::new(self.dir.id(), self.backend));
        meta.state = state;
        meta.message = message.or_else(|| st.fatal.clone());
        meta.metadata = self.metadata.clone();
        record::apply(&mut meta, &st.stats, &st.jobs);
        drop(st);
        let _ = self.dir.write_meta(&meta);
        // The engine thread and its journal writer have ended: record the end, keep a copy.
        journal::end_session(
            &self.dir,
            &SessionEnd {
                at: meta.updated,
                state: state.as_str().to_string(),
                message: meta.message.clone(),
                tasks_total: meta.tasks_total,
                tasks_done: meta.tasks_done,
                tasks_failed: meta.tasks_failed,
            },
        );
        if let Some(history) = &self.history {
            journal::archive(&self.dir, history);
        }
        if state == SessionState::Failed || keep {
            return Some(self.dir.root().to_path_buf());
        }
        retire(&self.dir, state);
        None
    }
}

/// What a session that did not fail leaves behind: a finished one keeps what `shoal logs`
/// needs for a while (`shoal_core::retention`); an interrupted or cancelled one without
/// failed tasks, nothing.
fn retire(dir: &SessionDir, state: SessionState) {
    let policy = retention::Policy::from_env().unwrap_or_default();
    if state != SessionState::Finished || !policy.keeps() {
        let _ = std::fs::remove_dir_all(dir.root());
        return;
    }
    retention::slim(dir);
    if let Some(base) = dir.root().parent() {
        retention::enforce_in_background(base, &policy);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(None);
    }
}

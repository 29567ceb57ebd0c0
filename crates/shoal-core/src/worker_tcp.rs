//! The worker side of the TCP transport: the same assignments, results and heartbeats as the
//! work dir (`worker.rs`), carried over one authenticated TLS link to the driver
//! (`shoal-wire`). Nothing is read from or written to a shared filesystem: the driver pushes
//! assignments (with the blobs they need) and the worker streams back results and its own
//! stdout/stderr, which the driver stores in its session dir for `shoal logs`.
//!
//! A dispatcher thread reads the link all the time, so a fence or the driver's loss is seen
//! while a task runs (the process then exits, as with the work dir), and a revoke of a chunk
//! that has not started is answered at once.

use crate::error::{CoreError, Result};
use crate::fsutil::random_u64;
use crate::layout::worker_key;
use crate::protocol::{ChunkHeader, ResultHeader, Ticket, TicketKind};
use crate::worker::{
    resolve_worker_id, Assignment, ExitReason, Interrupter, WorkerConfig, WorkerTransport,
};
use serde::{Deserialize, Serialize};
use shoal_wire::{Bytes, ClientOptions, Credentials, Hello, Link, Stream, ToDriver, ToWorker};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The header of an `Assign` message: the ticket and the chunk's master-copy header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssignHeader {
    pub ticket: Ticket,
    pub chunk: ChunkHeader,
}

/// Blobs kept as bytes (a later chunk of the same map needs its function again); one evicted
/// is asked for again with `NeedBlob`.
const BLOBS_KEPT: usize = 8;
/// How often captured output is sent while a task runs.
const OUTPUT_EVERY: Duration = Duration::from_millis(200);
/// Bytes of output per `Output` message.
const OUTPUT_PIECE: u64 = 1 << 20;
const BLOB_WAIT: Duration = Duration::from_secs(120);
/// Longest wait for a published part to reach the socket (the driver is reading slowly).
const FLUSH_WAIT: Duration = Duration::from_secs(60);

enum Item {
    Run(Assignment),
    Stop,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Item>,
    blobs: VecDeque<(u64, Vec<u8>)>,
    /// Checkpoints of `resume` assignments, by (chunk, task): the driver sends each just
    /// before its assignment.
    checkpoints: Vec<((u64, u32), Vec<u8>)>,
    exit: Option<ExitReason>,
    /// `interrupt()` was called: `next` returns `Timeout` at once.
    interrupted: bool,
}

struct State {
    key: String,
    inbox: Mutex<Inbox>,
    changed: Condvar,
    /// A chunk is running: a fence or the driver's loss ends the process at once.
    busy: AtomicBool,
    beating: AtomicBool,
    seq: AtomicU64,
    /// (chunk, task) the worker runs now, for the heartbeat.
    running: Mutex<Option<(u64, u32)>>,
}

impl State {
    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn beat(&self) -> ToDriver {
        let running = *self.running.lock().unwrap_or_else(|e| e.into_inner());
        ToDriver::Beat {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            chunk: running.map(|r| r.0),
            task: running.map(|r| r.1),
        }
    }

    fn end(&self, reason: ExitReason, why: &str) {
        if self.busy.load(Ordering::Relaxed) {
            // Mid-task: nothing this process still computes can be delivered usefully.
            eprintln!("shoal worker {}: {why}; exiting", self.key);
            std::process::exit(if reason == ExitReason::Fenced { 75 } else { 76 });
        }
        self.inbox().exit.get_or_insert(reason);
        self.changed.notify_all();
    }
}

/// This process's stdout and stderr, redirected into private unlinked files whose new bytes
/// are streamed to the driver. Offsets in result headers are positions in these streams, so
/// the driver's copies in `logs/` line up with them exactly.
struct Capture {
    readers: [File; 2],
    sent: Mutex<[u64; 2]>,
}

impl Capture {
    fn start(key: &str) -> Result<Capture> {
        let dir = std::env::temp_dir();
        let mut readers = Vec::new();
        for (fd, ext) in [(1, "out"), (2, "err")] {
            let path = dir.join(format!(".shoal-{key}-{:016x}.{ext}", random_u64()));
            let writer = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| CoreError::io(&path, e))?;
            let reader = File::open(&path).map_err(|e| CoreError::io(&path, e))?;
            // Unlinked at once: nothing is left on the node, whatever ends the process.
            let _ = std::fs::remove_file(&path);
            // SAFETY: dup2 onto the standard descriptors; both fds are valid.
            if unsafe { libc::dup2(writer.as_raw_fd(), fd) } < 0 {
                return Err(CoreError::io(&path, std::io::Error::last_os_error()));
            }
            readers.push(reader);
        }
        let [out, err]: [File; 2] = readers.try_into().expect("two streams");
        Ok(Capture {
            readers: [out, err],
            sent: Mutex::new([0, 0]),
        })
    }

    /// Send what was written since the last call (in order with the messages sent after it).
    fn flush(&self, link: &Link) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        for (i, stream) in [Stream::Out, Stream::Err].into_iter().enumerate() {
            let file = &self.readers[i];
            let end = file.metadata().map(|m| m.len()).unwrap_or(0);
            while sent[i] < end {
                let n = (end - sent[i]).min(OUTPUT_PIECE) as usize;
                let mut buf = vec![0u8; n];
                let Ok(got) = file.read_at(&mut buf, sent[i]) else {
                    break;
                };
                if got == 0 {
                    break;
                }
                buf.truncate(got);
                let offset = sent[i];
                sent[i] += got as u64;
                let msg = ToDriver::Output {
                    stream,
                    offset,
                    bytes: Bytes::from(buf),
                };
                if link.send(msg).is_err() {
                    return;
                }
            }
        }
    }
}

pub struct TcpWorker {
    id: String,
    config: WorkerConfig,
    state: Arc<State>,
    link: Option<Arc<Link>>,
    capture: Option<Arc<Capture>>,
    threads: Vec<JoinHandle<()>>,
    careful: bool,
    /// Since when it has had no work: kept across `next` calls, which callers make in short
    /// slices (the bindings wait one second at a time), so that `idle_timeout` still counts.
    idle_since: Option<Instant>,
}

fn transport(e: impl std::fmt::Display) -> CoreError {
    CoreError::Transport(e.to_string())
}

impl TcpWorker {
    /// Connect to the driver at `addr`, pinning `fingerprint`, with the token from the
    /// environment (`SHOAL_TOKEN`). `session` names the session (the driver's dir name).
    pub fn connect(
        session: &str,
        worker_id: Option<&str>,
        addr: &str,
        fingerprint: &str,
    ) -> Result<TcpWorker> {
        let id = resolve_worker_id(worker_id)?;
        let credentials = match std::env::var_os(shoal_wire::TOKEN_FILE_VAR) {
            // Shipped with the job (HTCondor's file transfer), when its environment is public.
            Some(file) if std::env::var_os(shoal_wire::ENV_VAR).is_none() => {
                let token = std::fs::read_to_string(&file).map_err(|e| CoreError::io(&file, e))?;
                Credentials::decode(&format!("{}:{}", fingerprint.trim(), token.trim()))
            }
            _ => Credentials::from_env(fingerprint),
        }
        .map_err(transport)?;
        let mut hello = Hello::for_this_process(session, &id);
        hello.incarnation = random_u64();
        hello.startup_ms =
            crate::worker::process_age().map(|s| (s * 1000.0).min(u32::MAX as f64 - 1.0) as u32);
        let key = worker_key(&id, hello.incarnation);
        let (config, link) =
            shoal_wire::connect(addr, &credentials, &hello, &ClientOptions::default())
                .map_err(|e| transport(format!("cannot reach the driver at {addr}: {e}")))?;
        let config: WorkerConfig = config
            .parse()
            .map_err(|e| transport(format!("the driver's worker configuration: {e}")))?;
        let state = Arc::new(State {
            key,
            inbox: Mutex::new(Inbox::default()),
            changed: Condvar::new(),
            busy: AtomicBool::new(false),
            beating: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            running: Mutex::new(None),
        });
        let link = Arc::new(link);
        let capture = Arc::new(Capture::start(&state.key)?);
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| transport(format!("cannot start a thread: {e}")))
        };
        {
            let (state, link) = (state.clone(), link.clone());
            threads.push(spawn(
                "shoal-dispatch",
                Box::new(move || dispatch(&state, &link)),
            )?);
        }
        {
            let (state, link, capture) = (state.clone(), link.clone(), capture.clone());
            let every = Duration::from_secs_f64(config.heartbeat_interval.max(0.05));
            threads.push(spawn(
                "shoal-heartbeat",
                Box::new(move || beat_loop(&state, &link, &capture, every)),
            )?);
        }
        Ok(TcpWorker {
            id,
            config,
            state,
            link: Some(link),
            capture: Some(capture),
            threads,
            careful: false,
            idle_since: None,
        })
    }

    fn link(&self) -> Result<&Link> {
        self.link
            .as_deref()
            .ok_or_else(|| transport("the link to the driver is closed"))
    }

    fn send(&self, msg: ToDriver) -> Result<()> {
        self.link()?
            .send(msg)
            .map_err(|_| transport("the connection to the driver ended"))
    }
}

/// Read the link until it ends: assignments and blobs into the inbox, revokes answered,
/// fences and the driver's loss acted on at once.
fn dispatch(state: &State, link: &Link) {
    let rx = link.inbox().clone();
    while let Ok(msg) = rx.recv() {
        match msg {
            ToWorker::Assign { header, payload } => match header.parse::<AssignHeader>() {
                Ok(h) => {
                    let item = match h.ticket.kind {
                        TicketKind::Stop => Item::Stop,
                        TicketKind::Run => Item::Run(Assignment {
                            ticket: h.ticket,
                            header: h.chunk,
                            payload: payload.to_vec(),
                        }),
                    };
                    state.inbox().queue.push_back(item);
                    state.changed.notify_all();
                }
                Err(e) => eprintln!("shoal worker {}: unreadable assignment: {e}", state.key),
            },
            ToWorker::Blob { id, payload } => {
                let mut inbox = state.inbox();
                inbox.blobs.retain(|b| b.0 != id);
                inbox.blobs.push_back((id, payload.to_vec()));
                while inbox.blobs.len() > BLOBS_KEPT {
                    inbox.blobs.pop_front();
                }
                drop(inbox);
                state.changed.notify_all();
            }
            ToWorker::Revoke { chunk } => {
                let mut inbox = state.inbox();
                let before = inbox.queue.len();
                inbox
                    .queue
                    .retain(|i| !matches!(i, Item::Run(a) if a.header.chunk == chunk));
                let ok = inbox.queue.len() < before;
                drop(inbox);
                let _ = link.send(ToDriver::Revoked { chunk, ok });
            }
            ToWorker::Stop { graceful: true } => {
                state.inbox().queue.push_back(Item::Stop);
                state.changed.notify_all();
            }
            ToWorker::Stop { graceful: false } => {
                state.end(ExitReason::Stopped, "stopped by the driver")
            }
            ToWorker::Fence { reason } => state.end(
                ExitReason::Fenced,
                &format!("fenced by the driver (it gave up on this worker: {reason})"),
            ),
            ToWorker::Checkpoint {
                chunk,
                task,
                payload,
            } => {
                let mut inbox = state.inbox();
                inbox.checkpoints.retain(|c| c.0 != (chunk, task));
                inbox.checkpoints.push(((chunk, task), payload.to_vec()));
            }
            ToWorker::Beat { .. } | ToWorker::Welcome { .. } | ToWorker::Refused { .. } => {}
        }
    }
    if state.beating.load(Ordering::Relaxed) {
        let why = link.ended().map(|d| d.to_string()).unwrap_or_default();
        state.end(
            ExitReason::DriverGone,
            &format!("the connection to the driver ended ({why})"),
        );
    }
}

fn beat_loop(state: &State, link: &Link, capture: &Capture, every: Duration) {
    let mut last_beat = Instant::now() - every;
    while state.beating.load(Ordering::Relaxed) {
        if last_beat.elapsed() >= every {
            last_beat = Instant::now();
            // Skipped, not queued, while the link is backed up: the driver sees traffic then.
            let _ = link.try_send(state.beat());
        }
        capture.flush(link);
        // Unparked by `close`: a worker leaving does not wait out the pause.
        std::thread::park_timeout(OUTPUT_EVERY.min(every));
    }
}

impl WorkerTransport for TcpWorker {
    fn id(&self) -> &str {
        &self.id
    }

    fn key(&self) -> &str {
        &self.state.key
    }

    fn config(&self) -> &WorkerConfig {
        &self.config
    }

    fn next(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<std::result::Result<Assignment, ExitReason>> {
        self.state.busy.store(false, Ordering::Relaxed);
        *self.state.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let start = Instant::now();
        let idle_since = *self.idle_since.get_or_insert(start);
        let idle = self.config.idle_timeout.map(Duration::from_secs_f64);
        let mut inbox = self.state.inbox();
        loop {
            if let Some(reason) = inbox.exit.take() {
                return Ok(Err(reason));
            }
            if std::mem::take(&mut inbox.interrupted) {
                return Ok(Err(ExitReason::Timeout));
            }
            match inbox.queue.pop_front() {
                Some(Item::Stop) => return Ok(Err(ExitReason::Stopped)),
                Some(Item::Run(a)) => {
                    self.state.busy.store(true, Ordering::Relaxed);
                    drop(inbox);
                    self.idle_since = None;
                    self.careful = a.ticket.careful;
                    self.send(ToDriver::Started {
                        chunk: a.header.chunk,
                        attempt: a.ticket.attempt,
                    })?;
                    return Ok(Ok(a));
                }
                None => {}
            }
            let waited = start.elapsed();
            let idled = idle_since.elapsed();
            if idle.is_some_and(|i| idled >= i) {
                return Ok(Err(ExitReason::Idle));
            }
            if wait.is_some_and(|w| waited >= w) {
                return Ok(Err(ExitReason::Timeout));
            }
            let left = [
                idle.map(|d| d.saturating_sub(idled)),
                wait.map(|d| d.saturating_sub(waited)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
            inbox = self
                .state
                .changed
                .wait_timeout(inbox, left.max(Duration::from_millis(1)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn running(&self, chunk: u64, _attempt: u32, task: u32) -> Result<()> {
        *self.state.running.lock().unwrap_or_else(|e| e.into_inner()) = Some((chunk, task));
        if self.careful {
            // The driver must know the task before it runs (docs/protocol.md, careful mode).
            self.send(self.state.beat())?;
        }
        Ok(())
    }

    fn publish(
        &mut self,
        header: &ResultHeader,
        payload: &[u8],
        checkpoint: Option<&[u8]>,
    ) -> Result<()> {
        let link = self.link()?;
        // Output first: the part's log offsets then name bytes the driver already stored.
        if let Some(c) = &self.capture {
            c.flush(link);
        }
        // The checkpoint before the part that names it (the link keeps the order), as on
        // the work dir: the driver never sends a `resume` for a checkpoint it lacks.
        if let Some(bytes) = checkpoint {
            self.send(ToDriver::Checkpoint {
                chunk: header.chunk,
                task: header.from + header.count,
                payload: Bytes::copy_from_slice(bytes),
            })?;
        }
        let json = shoal_wire::Json::new(header).map_err(transport)?;
        self.send(ToDriver::Part {
            header: json,
            payload: Bytes::copy_from_slice(payload),
        })?;
        // Published means on its way, as a file renamed into place is: a kill right after
        // this must not take the results with it.
        link.flush(FLUSH_WAIT);
        if header.last || header.release.is_some() {
            self.state.busy.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_blob(&self, id: u64) -> Result<Vec<u8>> {
        let deadline = Instant::now() + BLOB_WAIT;
        let mut asked = false;
        let mut inbox = self.state.inbox();
        loop {
            if let Some((_, b)) = inbox.blobs.iter().find(|b| b.0 == id) {
                return Ok(b.clone());
            }
            if inbox.exit.is_some() || Instant::now() >= deadline {
                return Err(transport(format!(
                    "blob {id} did not arrive from the driver"
                )));
            }
            if !asked {
                asked = true;
                drop(inbox);
                self.send(ToDriver::NeedBlob { id })?;
                inbox = self.state.inbox();
                continue;
            }
            inbox = self
                .state
                .changed
                .wait_timeout(inbox, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn read_checkpoint(&self, chunk: u64, task: u32) -> Result<Vec<u8>> {
        let mut inbox = self.state.inbox();
        match inbox.checkpoints.iter().position(|c| c.0 == (chunk, task)) {
            Some(i) => Ok(inbox.checkpoints.swap_remove(i).1),
            None => Err(transport(format!(
                "the checkpoint of chunk {chunk} task {task} did not come with its assignment"
            ))),
        }
    }

    fn interrupter(&self) -> Interrupter {
        let state = self.state.clone();
        Arc::new(move || {
            state.inbox().interrupted = true;
            state.changed.notify_all();
        })
    }

    fn close(&mut self, reason: &str) {
        if self.link.is_none() {
            return;
        }
        self.state.beating.store(false, Ordering::Relaxed);
        if let (Some(link), Some(c)) = (&self.link, &self.capture) {
            let _ = std::io::Write::flush(&mut std::io::stdout());
            c.flush(link);
        }
        if let Some(link) = self.link.take() {
            link.leave(reason);
        }
        // The dispatcher ends with the link, the heartbeat thread on `beating` (woken now:
        // its pause between beats made every TCP worker's exit 200 ms slower).
        for t in &self.threads {
            t.thread().unpark();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for TcpWorker {
    fn drop(&mut self) {
        self.close("the worker ended");
    }
}

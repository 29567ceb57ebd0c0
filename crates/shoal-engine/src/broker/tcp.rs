//! The TCP broker: workers connect to the driver over authenticated TLS (`shoal-wire`) and
//! the engine's decisions travel as messages instead of files. The driver pushes each ticket
//! (with the blobs its chunk needs, once per connection) to the worker it names: there are no
//! claims to race for. Liveness comes from the connection (a disconnect is reported at once,
//! so a lost worker's chunks are requeued without waiting for a heartbeat timeout) and from
//! heartbeats counted on the driver's clock, as with the work dir.
//!
//! The session dir stays the driver's record: chunks' master copies and blobs are written
//! there by the handle, workers' stdout/stderr arrive as `Output` and are stored at their
//! offsets in `logs/ID.out|err`, so `shoal logs` reads the same files on both transports.

use super::{Broker, BrokerEvent, PartRef};
use crate::chunks::Chunks;
use crate::error::{EngineError, Result};
use crossbeam_channel::{select, Receiver, Sender};
use shoal_core::layout::{key_id, worker_key, Stream};
use shoal_core::protocol::{Beat, ResultHeader, Ticket, TicketKind};
use shoal_core::watch::Waker;
use shoal_core::worker::{WorkerConfig, WorkerInfo};
use shoal_core::worker_tcp::AssignHeader;
use shoal_core::SessionDir;
use shoal_sched::Connect;
use shoal_wire::{
    BindSpec, Bytes, Event, Json, PeerId, SendError, Server, ServerOptions, SessionSecrets,
    ToDriver, ToWorker,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

/// Events taken from the server per poll (the rest wait for the next one).
const POLL_MAX: usize = 4096;

struct Peer {
    key: String,
    admitted: bool,
    bye: bool,
    /// Blobs this connection has been sent.
    blobs: HashSet<u64>,
    /// Messages its full send queue refused, in order (sent on `Writable` or the next poll).
    backlog: VecDeque<ToWorker>,
    /// Chunks assigned to it and not ended or taken back, with their attempt.
    assigned: HashMap<u64, u32>,
    /// Chunks a `Revoke` was sent for and not answered yet. The engine asks again on every
    /// loop while it waits; one question at a time keeps each answer about the assignment
    /// it was asked for (a late answer could otherwise settle a later assignment).
    revoking: HashSet<u64>,
}

pub struct TcpBroker {
    dir: SessionDir,
    /// The chunks' master copies (in memory: only this broker reads them).
    chunks: Arc<Chunks>,
    server: Server,
    config: Json,
    peers: HashMap<PeerId, Peer>,
    by_key: HashMap<String, PeerId>,
    /// Keys the engine gave up on: a reconnection under one of them is refused.
    fenced: HashSet<String>,
    stopping: bool,
    /// Events taken by `wait`, handled by the next poll.
    early: VecDeque<Event>,
    /// Parts received while the engine has no room for results (and which they are).
    parts: VecDeque<BrokerEvent>,
    queued: HashSet<PartRef>,
    /// Parts handed to the engine and not consumed yet (one that starts past the resolved
    /// prefix waits here and is offered again when another part of its chunk arrives).
    held: HashMap<u64, Vec<(PartRef, ResultHeader, Bytes)>>,
    /// Open log files by (worker id, stream: 0 stdout, 1 stderr).
    logs: HashMap<(String, u8), File>,
    wake: Receiver<()>,
    waker: Waker,
    /// Workers the engine addressed whose connection had already ended unseen (it left
    /// before its welcome): reported as lost by the next poll, so nothing waits on them.
    vanished: Vec<String>,
}

impl TcpBroker {
    /// Listen (per `bind`: see docs/transport-tcp.md) with fresh session secrets. Returns the
    /// broker and what workers need to connect back.
    pub fn start(
        dir: SessionDir,
        chunks: Arc<Chunks>,
        bind: &str,
    ) -> Result<(TcpBroker, Connect, String)> {
        let unusable = |e: String| EngineError::Unusable(e);
        let bind: BindSpec = bind.parse().map_err(|e| {
            unusable(format!(
                "invalid listen address {bind:?}: {e}\nhint: listen=\"auto\", an address, or an interface name, each optionally followed by :PORT or :LOW-HIGH"
            ))
        })?;
        let secrets = SessionSecrets::generate().map_err(|e| unusable(e.to_string()))?;
        let server = Server::start(
            ServerOptions {
                bind,
                ..ServerOptions::default()
            },
            &secrets,
        )
        .map_err(|e| {
            unusable(format!(
                "the tcp transport cannot listen: {e}\nhint: pass listen=\"ADDRESS:LOW-HIGH\" with an address of this host and a port range the nodes may reach"
            ))
        })?;
        let config = dir.read_config()?;
        let config: WorkerConfig = config;
        let config = Json::new(&config).map_err(|e| unusable(e.to_string()))?;
        let creds = secrets.credentials();
        let (var, token) = creds.to_env();
        let token_file = dir.root().join("shoal-token");
        write_private(&token_file, token.as_bytes())?;
        let connect = Connect {
            addr: server.advertised_addr().to_string(),
            fingerprint: creds.fingerprint_text(),
            token: (var.to_string(), token),
            token_file: (shoal_wire::TOKEN_FILE_VAR.to_string(), token_file),
        };
        let listening = server.listening_on();
        let (tx, wake): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let waker = Waker::from_fn(move || {
            let _ = tx.try_send(());
        });
        Ok((
            TcpBroker {
                dir,
                chunks,
                server,
                config,
                peers: HashMap::new(),
                by_key: HashMap::new(),
                fenced: HashSet::new(),
                stopping: false,
                early: VecDeque::new(),
                parts: VecDeque::new(),
                queued: HashSet::new(),
                held: HashMap::new(),
                logs: HashMap::new(),
                wake,
                waker,
                vanished: Vec::new(),
            },
            connect,
            listening,
        ))
    }

    /// Pokes the engine's wait from another thread.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn send(&mut self, peer: PeerId, msg: ToWorker) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.backlog.is_empty() {
            p.backlog.push_back(msg);
            return;
        }
        if let Err(SendError::Full(m)) = self.server.send(peer, msg) {
            p.backlog.push_back(m);
        }
    }

    fn drain_backlog(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        while let Some(msg) = p.backlog.pop_front() {
            match self.server.send(peer, msg) {
                Ok(()) => {}
                Err(SendError::Full(m)) => {
                    p.backlog.push_front(m);
                    return;
                }
                Err(_) => {
                    p.backlog.clear();
                    return;
                }
            }
        }
    }

    fn note(out: &mut Vec<BrokerEvent>, text: String) {
        out.push(BrokerEvent::Note(text));
    }

    fn store_output(&mut self, key: &str, stream: shoal_wire::Stream, offset: u64, bytes: &[u8]) {
        let stream = match stream {
            shoal_wire::Stream::Out => Stream::Stdout,
            shoal_wire::Stream::Err => Stream::Stderr,
        };
        let id = key_id(key).to_string();
        let index = u8::from(stream == Stream::Stderr);
        let file = match self.logs.entry((id.clone(), index)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match open_log(&self.dir, &id, stream) {
                    Ok(f) => v.insert(f),
                    Err(_) => return,
                }
            }
        };
        // Positional: a worker's stream is the file, byte for byte, whatever arrives first.
        let _ = file.write_all_at(bytes, offset);
    }

    fn on_event(&mut self, ev: Event, out: &mut Vec<BrokerEvent>) {
        match ev {
            Event::Connected { peer, hello, addr } => {
                let key = worker_key(&hello.worker, hello.incarnation);
                let fenced = self.fenced.contains(&key);
                if self.stopping && !fenced {
                    // Its job started as the session ends: it is told to stop, as a late
                    // worker on the work dir finds `control/stop`, and exits quietly (it held
                    // nothing). A refusal made it print an error and exit 3 for no fault.
                    self.server.admit(peer, self.config.clone());
                    let _ = self.server.send(peer, ToWorker::Stop { graceful: true });
                    return;
                }
                let refuse = if fenced {
                    Some("the driver gave up on this worker (fenced)")
                } else if self.by_key.contains_key(&key) {
                    Some("this worker is connected already")
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    self.server.refuse(peer, reason);
                    Self::note(
                        out,
                        format!("refused worker {key} connecting from {addr}: {reason}"),
                    );
                    return;
                }
                self.peers.insert(
                    peer,
                    Peer {
                        key: key.clone(),
                        admitted: false,
                        bye: false,
                        blobs: HashSet::new(),
                        backlog: VecDeque::new(),
                        assigned: HashMap::new(),
                        revoking: HashSet::new(),
                    },
                );
                self.by_key.insert(key.clone(), peer);
                let info = WorkerInfo {
                    worker: hello.worker,
                    key: key.clone(),
                    host: hello.host,
                    pid: hello.pid,
                    started: shoal_core::fsutil::now_secs(),
                    startup: hello.startup_ms.map(|ms| f64::from(ms) / 1000.0),
                };
                // The same record of who joined as on the work dir (`workers/KEY.json`), for
                // the tools that read the session dir; written by the driver here. Its logs
                // exist from now on too, as a job's own would (a worker may never print).
                let _ = shoal_core::fsutil::write_json(&self.dir.hello(&key), &info);
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let _ = open_log(&self.dir, &info.worker, stream);
                }
                out.push(BrokerEvent::Hello { info, key });
            }
            Event::Message(peer, msg) => self.on_message(peer, msg, out),
            Event::Writable(peer) => self.drain_backlog(peer),
            Event::Disconnected(peer, why) => {
                let Some(p) = self.peers.remove(&peer) else {
                    return;
                };
                self.by_key.remove(&p.key);
                if !p.admitted || self.fenced.contains(&p.key) {
                    return;
                }
                if p.bye && p.assigned.is_empty() {
                    out.push(BrokerEvent::Left { key: p.key });
                } else {
                    out.push(BrokerEvent::Gone {
                        key: p.key,
                        reason: format!("its connection to the driver ended: {why}"),
                    });
                }
            }
            Event::Rejected(r) => Self::note(out, format!("refused a connection: {r}")),
        }
    }

    fn on_message(&mut self, peer: PeerId, msg: ToDriver, out: &mut Vec<BrokerEvent>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let key = p.key.clone();
        match msg {
            ToDriver::Started { chunk, attempt } => {
                out.push(BrokerEvent::Claimed { chunk, attempt })
            }
            ToDriver::Part { header, payload } => {
                let mut header: ResultHeader = match header.parse() {
                    Ok(h) => h,
                    Err(e) => {
                        Self::note(out, format!("worker {key} sent an unreadable result header ({e}); its connection is closed"));
                        self.server.close(peer, "unreadable result header");
                        return;
                    }
                };
                // The link says who sent it, whatever the header claims.
                header.worker = key;
                let at = PartRef {
                    chunk: header.chunk,
                    attempt: header.attempt,
                    from: header.from,
                };
                let chunk = at.chunk;
                self.held
                    .entry(chunk)
                    .or_default()
                    .push((at, header, payload));
                self.offer(chunk);
            }
            ToDriver::Beat { seq, chunk, task } => {
                let running = match (chunk, task) {
                    (Some(c), Some(t)) => Some((c, p.assigned.get(&c).copied().unwrap_or(0), t)),
                    _ => None,
                };
                out.push(BrokerEvent::Beat {
                    key,
                    beat: Beat { seq, running },
                });
            }
            ToDriver::Output {
                stream,
                offset,
                bytes,
            } => self.store_output(&key, stream, offset, &bytes),
            ToDriver::NeedBlob { id } => match self.dir.read_blob(id) {
                Ok(b) => {
                    p.blobs.insert(id);
                    self.send(
                        peer,
                        ToWorker::Blob {
                            id,
                            payload: Bytes::from(b),
                        },
                    );
                }
                Err(e) => Self::note(out, format!("worker {key} asked for blob {id}: {e}")),
            },
            ToDriver::Revoked { chunk, ok } => {
                p.revoking.remove(&chunk);
                let attempt = if ok {
                    p.assigned.remove(&chunk)
                } else {
                    p.assigned.get(&chunk).copied()
                };
                if let Some(attempt) = attempt {
                    out.push(BrokerEvent::Revoked { chunk, attempt, ok });
                }
            }
            ToDriver::Bye { .. } => p.bye = true,
            ToDriver::Checkpoint {
                chunk,
                task,
                payload,
            } => {
                // Stored where the work dir keeps it, before the release part that names it
                // arrives (the link keeps the order): the engine resumes from it and removes it
                // when the chunk ends, whatever the transport.
                let path = self.dir.checkpoint(chunk, task);
                if let Err(e) = shoal_core::fsutil::write_atomic(&path, &[&payload]) {
                    Self::note(out, format!("worker {key}'s checkpoint of chunk {chunk} task {task} could not be stored: {e}"));
                }
            }
        }
    }

    /// Queue the held parts of `chunk` for the engine (the newest first, then those that
    /// waited for it).
    fn offer(&mut self, chunk: u64) {
        if let Some(list) = self.held.get(&chunk) {
            for (at, header, payload) in list.iter().rev() {
                if !self.queued.insert(*at) {
                    continue;
                }
                self.parts.push_back(BrokerEvent::Part {
                    header: header.clone(),
                    payload: payload.clone(),
                    at: *at,
                });
            }
        }
    }

    fn drop_held(&mut self, at: PartRef) {
        if let Some(list) = self.held.get_mut(&at.chunk) {
            list.retain(|p| p.0 != at);
            if list.is_empty() {
                self.held.remove(&at.chunk);
            }
        }
    }
}

impl Broker for TcpBroker {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn poll(&mut self, parts: bool) -> Result<Vec<BrokerEvent>> {
        let mut out = Vec::new();
        let mut n = 0;
        while n < POLL_MAX {
            let ev = match self.early.pop_front() {
                Some(e) => e,
                None => match self.server.events().try_recv() {
                    Ok(e) => e,
                    Err(_) => break,
                },
            };
            n += 1;
            self.on_event(ev, &mut out);
        }
        let backed: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.backlog.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for peer in backed {
            self.drain_backlog(peer);
        }
        if parts {
            out.extend(self.parts.drain(..));
            self.queued.clear();
        }
        for key in self.vanished.drain(..) {
            out.push(BrokerEvent::Gone {
                key,
                reason: "its connection to the driver ended".into(),
            });
        }
        Ok(out)
    }

    fn poll_now(&mut self) -> Result<Vec<BrokerEvent>> {
        self.poll(true)
    }

    fn wait(&mut self, timeout: Duration) {
        if !self.early.is_empty() || !self.parts.is_empty() {
            return;
        }
        select! {
            recv(self.server.events()) -> ev => {
                if let Ok(ev) = ev {
                    self.early.push_back(ev);
                }
            }
            recv(self.wake) -> _ => {}
            default(timeout) => {}
        }
    }

    fn welcome(&mut self, key: &str) -> Result<()> {
        match self.by_key.get(key) {
            Some(&peer) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.admitted = true;
                }
                // A peer gone meanwhile is reported by its Disconnected event.
                self.server.admit(peer, self.config.clone());
            }
            None => self.vanished.push(key.to_string()),
        }
        Ok(())
    }

    fn assign(&mut self, ticket: &Ticket) -> Result<()> {
        let Some(&peer) = self.by_key.get(&ticket.worker) else {
            // Its connection ended: the engine hears `Gone` for it and requeues (from its
            // Disconnected event, or from here if that came before the welcome).
            if !self.fenced.contains(&ticket.worker) && !self.vanished.contains(&ticket.worker) {
                self.vanished.push(ticket.worker.clone());
            }
            return Ok(());
        };
        let msg = match ticket.kind {
            TicketKind::Stop => ToWorker::Stop { graceful: true },
            TicketKind::Run => {
                let Some((chunk, payload)) = self.chunks.get(ticket.chunk)? else {
                    return Ok(()); // ended meanwhile
                };
                let missing: Vec<u64> = match self.peers.get(&peer) {
                    Some(p) => chunk
                        .blobs
                        .iter()
                        .copied()
                        .filter(|b| !p.blobs.contains(b))
                        .collect(),
                    None => return Ok(()),
                };
                for id in missing {
                    let bytes = self.dir.read_blob(id)?;
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.blobs.insert(id);
                    }
                    self.send(
                        peer,
                        ToWorker::Blob {
                            id,
                            payload: Bytes::from(bytes),
                        },
                    );
                }
                if ticket.resume {
                    let path = self.dir.checkpoint(ticket.chunk, ticket.from);
                    let bytes = std::fs::read(&path)
                        .map_err(|e| EngineError::Core(shoal_core::CoreError::io(&path, e)))?;
                    self.send(
                        peer,
                        ToWorker::Checkpoint {
                            chunk: ticket.chunk,
                            task: ticket.from,
                            payload: Bytes::from(bytes),
                        },
                    );
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.assigned.insert(ticket.chunk, ticket.attempt);
                }
                let header = AssignHeader {
                    ticket: ticket.clone(),
                    chunk,
                };
                ToWorker::Assign {
                    header: Json::new(&header).map_err(|e| EngineError::Unusable(e.to_string()))?,
                    payload,
                }
            }
        };
        self.send(peer, msg);
        Ok(())
    }

    fn revoke(&mut self, key: &str, chunk: u64, _attempt: u32, _seq: u64) -> Result<Option<bool>> {
        let Some(&peer) = self.by_key.get(key) else {
            return Ok(Some(true)); // nothing there can run it
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(Some(true));
        };
        // Still in the send backlog: take it back here.
        let before = p.backlog.len();
        p.backlog.retain(|m| match m {
            ToWorker::Assign { header, .. } => header
                .parse::<AssignHeader>()
                .map_or(true, |h| h.chunk.chunk != chunk),
            _ => true,
        });
        if p.backlog.len() < before {
            p.assigned.remove(&chunk);
            return Ok(Some(true));
        }
        if p.revoking.insert(chunk) {
            self.send(peer, ToWorker::Revoke { chunk });
        }
        Ok(None)
    }

    fn fence(&mut self, key: &str) -> Result<()> {
        self.fenced.insert(key.to_string());
        if let Some(peer) = self.by_key.remove(key) {
            let admitted = self.peers.get(&peer).is_some_and(|p| p.admitted);
            if admitted {
                let _ = self.server.send(
                    peer,
                    ToWorker::Fence {
                        reason: "the driver gave up on this worker".into(),
                    },
                );
                self.server.close(peer, "fenced");
            } else {
                self.server
                    .refuse(peer, "the driver gave up on this worker (fenced)");
            }
        }
        Ok(())
    }

    fn forget(&mut self, key: &str) {
        if let Some(peer) = self.by_key.get(key) {
            if let Some(p) = self.peers.get_mut(peer) {
                // Its end is known already: its disconnect reports nothing more.
                p.admitted = false;
            }
        }
    }

    fn consumed(&mut self, at: PartRef) {
        self.drop_held(at);
    }

    fn reject(&mut self, at: PartRef) -> String {
        let name = format!("{}.{}.{}", at.chunk, at.attempt, at.from);
        let path = self.dir.sub("corrupt").join(&name);
        if let Some((_, header, payload)) = self
            .held
            .get(&at.chunk)
            .and_then(|l| l.iter().find(|p| p.0 == at))
        {
            let head = shoal_core::frame::encode(header, payload);
            let _ = std::fs::create_dir_all(self.dir.sub("corrupt"));
            let _ = shoal_core::fsutil::write_atomic(&path, &[&head, payload]);
        }
        self.drop_held(at);
        path.display().to_string()
    }

    fn ended(&mut self, chunk: u64) {
        self.chunks.remove(chunk);
        self.held.remove(&chunk);
        for p in self.peers.values_mut() {
            p.assigned.remove(&chunk);
            p.revoking.remove(&chunk);
        }
    }

    fn stop_all(&mut self) -> Result<()> {
        self.stopping = true;
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            if self.peers.get(&peer).is_some_and(|p| p.admitted) {
                self.send(peer, ToWorker::Stop { graceful: true });
            }
        }
        Ok(())
    }

    fn heartbeat(&mut self, seq: u64) -> Result<()> {
        for (peer, p) in &self.peers {
            if p.admitted {
                // Skipped while its queue is full: it sees traffic then.
                let _ = self.server.send(*peer, ToWorker::Beat { seq });
            }
        }
        Ok(())
    }

    fn audit(&mut self, _assignments: &[(u64, u32, String, u64, bool)]) -> Vec<(u64, u32, bool)> {
        Vec::new()
    }
}

/// A worker's log in the session dir, created if it is not there yet, for the driver to write
/// what the worker streams at the offsets it names.
fn open_log(dir: &SessionDir, worker: &str, stream: Stream) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.log(worker, stream))
}

/// A new file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| shoal_core::CoreError::io(path, e);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_wire::{ClientOptions, ConnectError, Credentials, Hello};

    fn broker() -> (tempfile::TempDir, TcpBroker, Connect) {
        let t = tempfile::tempdir().unwrap();
        let dir = SessionDir::create(t.path().join("s")).unwrap();
        dir.write_config(&WorkerConfig::default()).unwrap();
        let chunks = Arc::new(Chunks::in_memory(dir.clone(), 1 << 20));
        let (b, connect, line) = TcpBroker::start(dir, chunks, "127.0.0.1").unwrap();
        assert!(
            line.contains("127.0.0.1") && line.contains("sha256:"),
            "{line}"
        );
        (t, b, connect)
    }

    fn hello_of(b: &mut TcpBroker) -> String {
        for _ in 0..500 {
            for ev in b.poll(true).unwrap() {
                if let BrokerEvent::Hello { key, .. } = ev {
                    return key;
                }
            }
            b.wait(Duration::from_millis(10));
        }
        panic!("no hello");
    }

    fn connect(c: &Connect, hello: &Hello) -> std::result::Result<shoal_wire::Link, ConnectError> {
        let creds = Credentials::decode(&format!("{}:{}", c.fingerprint, c.token.1)).unwrap();
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            welcome_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        shoal_wire::connect(&c.addr, &creds, hello, &options).map(|(_, link)| link)
    }

    #[test]
    fn a_fenced_worker_that_connects_again_is_refused() {
        let (_t, mut b, c) = broker();
        let hello = Hello::for_this_process("s", "w1");
        let worker = std::thread::spawn({
            let (c, hello) = (c.clone(), hello.clone());
            move || connect(&c, &hello)
        });
        let key = hello_of(&mut b);
        assert_eq!(key, worker_key("w1", hello.incarnation));
        b.welcome(&key).unwrap();
        let link = worker.join().unwrap().expect("admitted");
        b.fence(&key).unwrap();
        // The fenced incarnation is told, then cut off ...
        let got = (0..200).find_map(|_| link.recv(Duration::from_millis(20)).ok().flatten());
        assert!(matches!(got, Some(ToWorker::Fence { .. })), "{got:?}");
        // ... and refused if it connects again, before the engine hears of it.
        let again = std::thread::spawn({
            let (c, hello) = (c.clone(), hello.clone());
            move || connect(&c, &hello)
        });
        let mut notes = Vec::new();
        let result = loop {
            for ev in b.poll(true).unwrap() {
                match ev {
                    BrokerEvent::Note(n) => notes.push(n),
                    BrokerEvent::Hello { .. } => panic!("a fenced key reached the engine"),
                    _ => {}
                }
            }
            if again.is_finished() {
                break again.join().unwrap();
            }
            b.wait(Duration::from_millis(10));
        };
        match result {
            Err(ConnectError::Refused { reason, .. }) => {
                assert!(reason.contains("fenced"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(notes.iter().any(|n| n.contains("fenced")), "{notes:?}");
    }

    #[test]
    fn a_disconnect_mid_chunk_is_a_loss_and_a_goodbye_holding_nothing_is_not() {
        let (_t, mut b, c) = broker();
        b.chunks
            .put(
                &shoal_core::protocol::ChunkHeader {
                    chunk: 3,
                    ntasks: 1,
                    ..Default::default()
                },
                Bytes::from_static(b"calls"),
            )
            .unwrap();
        for (id, leave) in [("w1", false), ("w2", true)] {
            let hello = Hello::for_this_process("s", id);
            let worker = std::thread::spawn({
                let c = c.clone();
                move || connect(&c, &hello)
            });
            let key = hello_of(&mut b);
            b.welcome(&key).unwrap();
            let link = worker.join().unwrap().unwrap();
            if leave {
                link.close("idle");
            } else {
                b.assign(&Ticket {
                    seq: 0,
                    chunk: 3,
                    attempt: 1,
                    worker: key.clone(),
                    ..Default::default()
                })
                .unwrap();
                let got =
                    (0..200).find_map(|_| link.recv(Duration::from_millis(20)).ok().flatten());
                assert!(matches!(got, Some(ToWorker::Assign { .. })), "{got:?}");
                drop(link); // killed mid-chunk
            }
            let ended = (0..500).find_map(|_| {
                b.wait(Duration::from_millis(10));
                b.poll(true).unwrap().into_iter().find_map(|ev| match ev {
                    BrokerEvent::Gone { key, .. } => Some(("gone", key)),
                    BrokerEvent::Left { key } => Some(("left", key)),
                    _ => None,
                })
            });
            let want = if leave { "left" } else { "gone" };
            assert_eq!(ended, Some((want, key)));
        }
    }
}

//! The driver's side: listen, authenticate each connection (TLS, then the token in its fixed-
//! layout Hello), let the engine admit or refuse it, and then move messages between the peers
//! and the engine through one bounded event channel and a bounded queue per peer.

use crate::bind::{self, BindSpec};
use crate::budget::Budget;
use crate::error::{Disconnect, Rejection, SendError, ServerError};
use crate::frame::{Limits, PREFIX_LEN};
use crate::link::{self, Core, LinkStats, Timeouts};
use crate::message::{Hello, Json, Message, ToDriver, ToWorker, HELLO_MAX};
use crate::secrets::{Fingerprint, SessionSecrets, Token};
use crate::tls;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connected, authenticated worker connection; never reused within one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// Bounds of one peer's outgoing queue: `send` answers `Full` instead of growing past either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub messages: usize,
    /// Payload bytes queued; a single message larger than this is accepted into an empty queue.
    pub bytes: u64,
}

/// Everything the server can be told; `Default` suits a cluster.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub bind: BindSpec,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// How long a connected worker waits for the engine's `admit`/`refuse` (default 30 s).
    pub admit_timeout: Duration,
    /// Capacity of the event channel (default 1024 events).
    pub events: usize,
    pub peer_queue: QueueLimits,
    /// Payload bytes received from all peers and not yet dropped by the engine (default 1 GiB);
    /// past it, readers stop reading their sockets.
    pub receive_budget: u64,
    /// Connections allowed to be in the TLS handshake or Hello at once (default 64); more are
    /// dropped at once, so a flood of connections cannot exhaust threads.
    pub max_authenticating: usize,
    /// Authenticated peers allowed at once (default 4096).
    pub max_peers: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bind: BindSpec::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            admit_timeout: Duration::from_secs(30),
            events: 1024,
            peer_queue: QueueLimits {
                messages: 64,
                bytes: 256 << 20,
            },
            receive_budget: 1 << 30,
            max_authenticating: 64,
            max_peers: 4096,
        }
    }
}

/// What the server tells the engine, in order per peer: `Connected`, then `Message`s (only after
/// `admit`), then exactly one `Disconnected`.
#[derive(Debug)]
pub enum Event {
    /// An authenticated worker introduced itself; answer with [`Server::admit`] or
    /// [`Server::refuse`] within `admit_timeout`.
    Connected {
        peer: PeerId,
        hello: Hello,
        addr: SocketAddr,
    },
    Message(PeerId, ToDriver),
    /// A peer whose `send` once returned `Full` has an empty queue again (best effort: also
    /// retry on the engine's own tick).
    Writable(PeerId),
    Disconnected(PeerId, Disconnect),
    /// A connection that failed authentication, or was dropped before it (never a peer). Sent
    /// only if the channel has room; [`Server::stats`] counts the ones left out.
    Rejected(Rejection),
}

/// Counters of the whole server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub peers: usize,
    pub authenticating: usize,
    pub rejected: u64,
    /// Rejections not reported as events because the channel was full.
    pub rejected_unreported: u64,
    /// Received payload bytes the engine still holds.
    pub buffered: u64,
}

enum PeerState {
    Admitting(Sender<bool>),
    Open,
    Closing,
}

struct Peer {
    core: Arc<Core>,
    queue: Sender<ToWorker>,
    queued_bytes: Arc<AtomicU64>,
    want_writable: Arc<AtomicBool>,
    state: PeerState,
}

struct Shared {
    options: ServerOptions,
    tls: Arc<rustls::ServerConfig>,
    token: Token,
    peers: Mutex<HashMap<PeerId, Peer>>,
    events: Sender<Event>,
    budget: Arc<Budget>,
    next_id: AtomicU64,
    authenticating: AtomicUsize,
    stopping: AtomicBool,
    rejected: AtomicU64,
    rejected_unreported: AtomicU64,
    /// Graceful closes to cut after `linger`; `None` stops the reaper.
    reaper: Sender<Option<(Instant, Arc<Core>)>>,
}

/// The driver's listening side of the TCP transport.
pub struct Server {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    local: SocketAddr,
    advertised: SocketAddr,
    why: String,
    fingerprint: Fingerprint,
    threads: Vec<JoinHandle<()>>,
}

const STACK: usize = 512 * 1024;

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(STACK)
        .spawn(f)
}

impl Server {
    /// Bind, then accept and authenticate connections on background threads.
    pub fn start(options: ServerOptions, secrets: &SessionSecrets) -> Result<Server, ServerError> {
        let (bind_ip, advertised_ip, why) = bind::resolve(&options.bind)?;
        let listener = bind::bind(bind_ip, &options.bind)?;
        let local = listener.local_addr().map_err(|e| ServerError::Bind {
            addr: bind_ip.to_string(),
            source: e,
        })?;
        let tls = tls::server_config(secrets).map_err(ServerError::Tls)?;
        let (events_tx, events) = crossbeam_channel::bounded(options.events.max(1));
        let (reaper_tx, reaper_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            tls,
            token: secrets.credentials().token.clone(),
            peers: Mutex::new(HashMap::new()),
            events: events_tx,
            budget: Budget::new(options.receive_budget),
            next_id: AtomicU64::new(1),
            authenticating: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            rejected_unreported: AtomicU64::new(0),
            reaper: reaper_tx,
            options,
        });
        let accept = {
            let shared = Arc::clone(&shared);
            spawn("wire-accept".into(), move || {
                accept_loop(&shared, &listener)
            })
            .map_err(ServerError::Thread)?
        };
        let reaper =
            spawn("wire-reaper".into(), move || reap(&reaper_rx)).map_err(ServerError::Thread)?;
        Ok(Server {
            shared,
            events,
            local,
            advertised: SocketAddr::new(advertised_ip, local.port()),
            why,
            fingerprint: secrets.fingerprint(),
            threads: vec![accept, reaper],
        })
    }

    /// The engine's event stream (use it with `select!` next to other channels).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// The address workers should connect to.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.advertised
    }

    /// The address the listening socket is bound to (may be `0.0.0.0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// One line for the user: where workers connect, why that address, what they will pin.
    pub fn listening_on(&self) -> String {
        let bound = if self.local.ip().is_unspecified() {
            format!(", bound to {}", self.local)
        } else {
            String::new()
        };
        format!(
            "listening on {} ({}{bound}); TLS 1.3, certificate {}",
            self.advertised, self.why, self.fingerprint
        )
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, Peer>> {
        self.shared.peers()
    }

    /// Admit a `Connected` peer: it gets `Welcome { config }` and its messages start to flow.
    /// False if the peer is gone or was already answered.
    pub fn admit(&self, peer: PeerId, config: Json) -> bool {
        let mut peers = self.peers();
        let Some(entry) = peers.get_mut(&peer) else {
            return false;
        };
        let PeerState::Admitting(answer) = &entry.state else {
            return false;
        };
        // The queue is empty before admission, so this cannot be refused for space.
        let queued = entry.queue.try_send(ToWorker::Welcome { config }).is_ok();
        let answered = answer.send(true).is_ok();
        entry.state = PeerState::Open;
        queued && answered
    }

    /// Refuse a `Connected` peer (fenced, unknown, duplicate): it gets `Refused { reason }` and
    /// is closed; none of its messages are read.
    pub fn refuse(&self, peer: PeerId, reason: &str) -> bool {
        let mut peers = self.peers();
        let Some(entry) = peers.get_mut(&peer) else {
            return false;
        };
        let PeerState::Admitting(answer) = &entry.state else {
            return false;
        };
        let _ = entry.queue.try_send(ToWorker::Refused {
            reason: reason.to_string(),
        });
        let _ = answer.send(false);
        entry.state = PeerState::Closing;
        self.shared
            .close_core(&entry.core, Disconnect::Local(format!("refused: {reason}")));
        true
    }

    /// Queue a message for an admitted peer without blocking. The message comes back in the
    /// error when the peer's queue is full, the peer is not admitted, or it is gone.
    pub fn send(&self, peer: PeerId, msg: ToWorker) -> Result<(), SendError<ToWorker>> {
        if matches!(msg, ToWorker::Welcome { .. } | ToWorker::Refused { .. }) {
            return Err(SendError::NotAdmitted(msg));
        }
        let peers = self.peers();
        let Some(entry) = peers.get(&peer) else {
            return Err(SendError::Closed(msg));
        };
        match entry.state {
            PeerState::Open => {}
            PeerState::Admitting(_) => return Err(SendError::NotAdmitted(msg)),
            PeerState::Closing => return Err(SendError::Closed(msg)),
        }
        let size = msg.payload_len();
        let limit = self.shared.options.peer_queue.bytes;
        let before = entry.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > limit {
            entry.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            entry.want_writable.store(true, Ordering::Release);
            return Err(SendError::Full(msg));
        }
        match entry.queue.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                entry.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                match e {
                    TrySendError::Full(m) => {
                        entry.want_writable.store(true, Ordering::Release);
                        Err(SendError::Full(m))
                    }
                    TrySendError::Disconnected(m) => Err(SendError::Closed(m)),
                }
            }
        }
    }

    /// Close a peer: what is queued is still sent (e.g. a `Fence` or `Stop` sent just before),
    /// then the TLS session is closed; after `linger` the connection is cut regardless. Its
    /// `Disconnected` event follows. For a peer not admitted yet, prefer [`Server::refuse`]:
    /// a worker that gets no verdict tries again.
    pub fn close(&self, peer: PeerId, reason: &str) -> bool {
        let mut peers = self.peers();
        let Some(entry) = peers.get_mut(&peer) else {
            return false;
        };
        if let PeerState::Admitting(answer) = &entry.state {
            let _ = answer.send(false);
        }
        entry.state = PeerState::Closing;
        self.shared
            .close_core(&entry.core, Disconnect::Local(reason.to_string()));
        true
    }

    /// Traffic counters of one peer (`since_rx` helps judge a peer that is busy sending one very
    /// large frame, during which no heartbeat can arrive).
    pub fn peer_stats(&self, peer: PeerId) -> Option<LinkStats> {
        self.peers().get(&peer).map(|p| p.core.stats())
    }

    pub fn stats(&self) -> ServerStats {
        ServerStats {
            peers: self.peers().len(),
            authenticating: self.shared.authenticating.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            rejected_unreported: self.shared.rejected_unreported.load(Ordering::Relaxed),
            buffered: self.shared.budget.used(),
        }
    }

    /// Stop listening and cut every connection now. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop with a connection of our own.
        let wake = match self.local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.local.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), self.local.port())
            }
            _ => self.local,
        };
        let woken = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
        let peers: Vec<Peer> = self.peers().drain().map(|(_, p)| p).collect();
        for peer in &peers {
            peer.core
                .abort(Disconnect::Local("the driver shut down".into()));
        }
        drop(peers);
        let _ = self.shared.reaper.send(None);
        for (i, t) in self.threads.drain(..).enumerate() {
            // Thread 0 accepts; if it could not be woken (a firewall on our own address), it
            // is left blocked rather than hanging the shutdown. It holds no peer.
            if i > 0 || woken {
                let _ = t.join();
            }
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("advertised", &self.advertised)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_core(&self, core: &Arc<Core>, reason: Disconnect) {
        core.close(reason);
        let _ = self.reaper.send(Some((
            Instant::now() + self.options.timeouts.linger,
            Arc::clone(core),
        )));
    }

    fn reject(&self, addr: SocketAddr, reason: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let event = Event::Rejected(Rejection { addr, reason });
        if self.events.try_send(event).is_err() {
            self.rejected_unreported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let max = shared.options.max_authenticating;
        if shared.authenticating.fetch_add(1, Ordering::AcqRel) >= max {
            shared.authenticating.fetch_sub(1, Ordering::AcqRel);
            shared.reject(
                addr,
                format!("more than {max} connections authenticating at once"),
            );
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let started = spawn(format!("wire-conn-{addr}"), move || {
            serve(&conn_shared, tcp, addr)
        });
        if let Err(e) = started {
            shared.authenticating.fetch_sub(1, Ordering::AcqRel);
            shared.reject(addr, format!("cannot start a thread: {e}"));
        }
    }
}

/// Counts a connection as authenticating until it is dropped or authenticated.
struct Authenticating<'a>(Option<&'a AtomicUsize>);

impl Authenticating<'_> {
    fn done(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Authenticating<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Best effort: tell a peer why it is refused, then close the TLS session.
fn refuse_unadmitted(conn: &mut rustls::Connection, tcp: &mut TcpStream, reason: &str) {
    let mut frame = Vec::new();
    ToWorker::Refused {
        reason: reason.to_string(),
    }
    .encode(&mut frame);
    let deadline = Instant::now() + Duration::from_secs(1);
    if tls::write_all(conn, tcp, &frame, deadline).is_ok() {
        conn.send_close_notify();
        let _ = tls::write_all(conn, tcp, &[], deadline);
    }
}

/// Authenticate one connection. Before the token matches, only the fixed-layout Hello is read:
/// its prefix (checked to be a Hello of at most `HELLO_MAX` bytes) and its body, whose first 32
/// bytes are compared with the token in constant time before anything else in it is looked at.
fn authenticate(
    shared: &Shared,
    conn: &mut rustls::Connection,
    tcp: &mut TcpStream,
) -> Result<Hello, String> {
    let deadline = Instant::now() + shared.options.timeouts.handshake;
    tls::handshake(conn, tcp, deadline).map_err(|e| format!("TLS handshake failed: {e}"))?;
    let mut prefix = [0u8; PREFIX_LEN];
    tls::read_exact(conn, tcp, &mut prefix, deadline)
        .map_err(|e| format!("no Hello after the handshake: {e}"))?;
    let len = Hello::body_len(&prefix).map_err(|e| format!("first frame is not a Hello: {e}"))?;
    let mut body = [0u8; HELLO_MAX];
    let body = &mut body[..len];
    tls::read_exact(conn, tcp, body, deadline).map_err(|e| format!("incomplete Hello: {e}"))?;
    if !Hello::token_of(body).is_some_and(|t| shared.token.matches(t)) {
        refuse_unadmitted(conn, tcp, "invalid session token");
        return Err("invalid session token".into());
    }
    Hello::decode_authenticated(body).map_err(|e| {
        refuse_unadmitted(conn, tcp, &e.to_string());
        e.to_string()
    })
}

fn serve(shared: &Arc<Shared>, mut tcp: TcpStream, addr: SocketAddr) {
    let mut authenticating = Authenticating(Some(&shared.authenticating));
    // Before the handshake, as the client does (its flights are small and answered).
    if let Err(e) = tcp.set_nodelay(true) {
        return shared.reject(addr, format!("socket setup failed: {e}"));
    }
    let mut conn = match rustls::ServerConnection::new(Arc::clone(&shared.tls)) {
        Ok(c) => rustls::Connection::Server(c),
        Err(e) => return shared.reject(addr, format!("TLS setup failed: {e}")),
    };
    let hello = match authenticate(shared, &mut conn, &mut tcp) {
        Ok(h) => h,
        Err(reason) => return shared.reject(addr, reason),
    };
    authenticating.done();
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let max = shared.options.max_peers;
    if shared.peers().len() >= max {
        let reason = format!("the driver already has {max} workers connected");
        refuse_unadmitted(&mut conn, &mut tcp, &reason);
        return shared.reject(addr, reason);
    }
    let (core, ctl) = match Core::new(conn, tcp, shared.options.timeouts) {
        Ok(c) => c,
        Err(e) => return shared.reject(addr, format!("socket setup failed: {e}")),
    };
    let peer = PeerId(shared.next_id.fetch_add(1, Ordering::Relaxed));
    let (queue_tx, queue_rx) =
        crossbeam_channel::bounded(shared.options.peer_queue.messages.max(1));
    let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
    let queued_bytes = Arc::new(AtomicU64::new(0));
    let want_writable = Arc::new(AtomicBool::new(false));
    let writer = {
        let (core, shared) = (Arc::clone(&core), Arc::clone(shared));
        let (queued_bytes, want_writable) = (Arc::clone(&queued_bytes), Arc::clone(&want_writable));
        let queue = queue_rx.clone();
        spawn(format!("wire-send-{peer}"), move || {
            link::write_loop(&core, queue_rx, ctl, |msg: &ToWorker| {
                queued_bytes.fetch_sub(msg.payload_len(), Ordering::AcqRel);
                if queue.is_empty() && want_writable.swap(false, Ordering::AcqRel) {
                    // Under the peers lock: the reader removes the peer under it before sending
                    // Disconnected, so Writable never follows Disconnected.
                    let peers = shared.peers();
                    if peers
                        .get(&peer)
                        .is_some_and(|p| matches!(p.state, PeerState::Open))
                    {
                        let _ = shared.events.try_send(Event::Writable(peer));
                    }
                }
            })
        })
    };
    if let Err(e) = writer {
        core.abort(Disconnect::Local(format!("cannot start a thread: {e}")));
        return shared.reject(addr, format!("cannot start a thread: {e}"));
    }
    shared.peers().insert(
        peer,
        Peer {
            core: Arc::clone(&core),
            queue: queue_tx,
            queued_bytes,
            want_writable,
            state: PeerState::Admitting(answer_tx),
        },
    );
    let end = |reason: Disconnect| {
        core.abort(reason);
        shared.peers().remove(&peer);
        let _ = shared.events.send(Event::Disconnected(peer, core.reason()));
    };
    if shared
        .events
        .send(Event::Connected { peer, hello, addr })
        .is_err()
    {
        return end(Disconnect::Local("the driver shut down".into()));
    }
    match answer_rx.recv_timeout(shared.options.admit_timeout) {
        Ok(true) => {}
        Ok(false) => {
            // Refused: the writer sends `Refused` and closes; nothing from the peer is read.
            shared.peers().remove(&peer);
            let _ = shared.events.send(Event::Disconnected(peer, core.reason()));
            return;
        }
        Err(RecvTimeoutError::Timeout) => {
            let waited = shared.options.admit_timeout;
            return end(Disconnect::Local(format!(
                "the engine did not admit the worker within {waited:?}"
            )));
        }
        Err(RecvTimeoutError::Disconnected) => {
            return end(Disconnect::Local("the driver shut down".into()))
        }
    }
    let reason = link::read_loop(&core, shared.options.limits, &shared.budget, |msg| {
        shared.events.send(Event::Message(peer, msg)).is_ok()
    });
    end(reason);
}

/// Cuts connections whose graceful close has not finished within `linger`.
fn reap(requests: &Receiver<Option<(Instant, Arc<Core>)>>) {
    struct Due(Instant, u64, Arc<Core>);
    impl PartialEq for Due {
        fn eq(&self, other: &Self) -> bool {
            (self.0, self.1) == (other.0, other.1)
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.0, self.1).cmp(&(other.0, other.1))
        }
    }
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let wait = due
            .peek()
            .map(|Reverse(d)| d.0.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match requests.recv_timeout(wait) {
            Ok(Some((when, core))) => {
                seq += 1;
                due.push(Reverse(Due(when, seq, core)));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                for Reverse(Due(_, _, core)) in due.drain() {
                    core.abort(core.reason());
                }
                return;
            }
        }
        while due.peek().is_some_and(|Reverse(d)| d.0 <= Instant::now()) {
            let Some(Reverse(Due(_, _, core))) = due.pop() else {
                break;
            };
            if !core.is_closed() {
                core.abort(core.reason());
            }
        }
    }
}

//! The worker's side: connect to the driver (retrying with back-off while it is not listening
//! yet), pin its certificate, introduce itself with the token, wait for `Welcome`, then exchange
//! messages over a [`Link`]; a [`Heartbeat`] thread keeps the driver informed.

use crate::budget::Budget;
use crate::error::{ConnectError, Disconnect, SendError};
use crate::frame::{Decoder, Limits};
use crate::link::{self, Core, LinkStats, Timeouts};
use crate::message::{Hello, Json, Message, ToDriver, ToWorker};
use crate::secrets::{Credentials, Fingerprint};
use crate::tls::{self, HandshakeError};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Everything a worker's connection can be told; `Default` suits a cluster.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// How long to keep retrying while the driver cannot be reached (default 60 s).
    pub connect_timeout: Duration,
    /// How long to keep retrying while the driver's host refuses the connection (default
    /// 10 s): the driver listens before it submits anything, so nothing listening there means
    /// it is gone, and a job that started after its driver was killed ends soon, not after a
    /// minute of its allocation (a lost or filtered route still gets `connect_timeout`).
    pub refused_timeout: Duration,
    /// How long to wait for the engine's Welcome or Refused after the Hello (default 60 s,
    /// longer than the driver's own admission limit, so its verdict arrives first).
    pub welcome_timeout: Duration,
    /// Messages received and not yet taken by `recv` (default 64).
    pub inbox: usize,
    /// Messages queued for sending; `send` blocks beyond it (default 16).
    pub outbox: usize,
    /// Payload bytes received and not yet dropped (default 1 GiB); past it the link stops
    /// reading and the driver's sends back up.
    pub receive_budget: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            connect_timeout: Duration::from_secs(60),
            refused_timeout: Duration::from_secs(10),
            welcome_timeout: Duration::from_secs(60),
            inbox: 64,
            outbox: 16,
            receive_budget: 1 << 30,
        }
    }
}

/// One attempt's failure: worth retrying (the driver may not be up yet) or final.
enum Attempt {
    Retry(io::Error),
    Final(ConnectError),
}

/// Connect to the driver at `addr` (`HOST:PORT`), authenticate, and wait for its verdict.
/// Returns the engine's worker configuration from `Welcome` and the open link.
pub fn connect(
    addr: &str,
    credentials: &Credentials,
    hello: &Hello,
    options: &ClientOptions,
) -> Result<(Json, Link), ConnectError> {
    let hello_frame = hello
        .encode(&credentials.token)
        .map_err(ConnectError::BadHello)?;
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt(
            addr,
            credentials.fingerprint,
            &hello_frame,
            options,
            started,
        ) {
            Ok(done) => return Ok(done),
            Err(Attempt::Final(e)) => return Err(e),
            Err(Attempt::Retry(source)) => {
                let waited = started.elapsed();
                let limit = if source.kind() == io::ErrorKind::ConnectionRefused {
                    options.refused_timeout.min(options.connect_timeout)
                } else {
                    options.connect_timeout
                };
                if waited + backoff >= limit {
                    return Err(ConnectError::Unreachable {
                        addr: addr.to_string(),
                        waited,
                        source,
                    });
                }
                std::thread::sleep(jitter(backoff));
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Between 50 % and 100 % of `d`, so workers started together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b).map_or(u16::MAX, |()| u16::from_le_bytes(b));
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

fn tcp_connect(
    addr: &str,
    options: &ClientOptions,
    started: Instant,
) -> Result<TcpStream, Attempt> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(Attempt::Retry)?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for sa in addrs {
        let left = options.connect_timeout.saturating_sub(started.elapsed());
        let per_try = left.clamp(Duration::from_millis(100), Duration::from_secs(5));
        match TcpStream::connect_timeout(&sa, per_try) {
            Ok(tcp) => {
                // Before the handshake: its small flights would otherwise wait out Nagle's
                // algorithm against the peer's delayed ACK (~40 ms a join).
                tcp.set_nodelay(true).map_err(Attempt::Retry)?;
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(Attempt::Retry(last))
}

fn attempt(
    addr: &str,
    pinned: Fingerprint,
    hello_frame: &[u8],
    options: &ClientOptions,
    started: Instant,
) -> Result<(Json, Link), Attempt> {
    let mut tcp = tcp_connect(addr, options, started)?;
    let seen = Arc::new(Mutex::new(None));
    let config = tls::client_config(pinned, Arc::clone(&seen)).map_err(|reason| {
        Attempt::Final(ConnectError::Tls {
            addr: addr.to_string(),
            reason,
        })
    })?;
    let conn = rustls::ClientConnection::new(config, tls::server_name()).map_err(|e| {
        Attempt::Final(ConnectError::Tls {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
    })?;
    let mut conn = rustls::Connection::Client(conn);
    let deadline = Instant::now() + options.timeouts.handshake;
    let failed = |e: HandshakeError, stage: &'static str| -> Attempt {
        match e {
            HandshakeError::Tls(rustls::Error::InvalidCertificate(_)) => {
                let found = *seen.lock().unwrap_or_else(|e| e.into_inner());
                match found {
                    Some(found) => Attempt::Final(ConnectError::WrongCertificate {
                        addr: addr.to_string(),
                        expected: pinned,
                        found,
                    }),
                    None => Attempt::Final(ConnectError::Tls {
                        addr: addr.to_string(),
                        reason: "invalid certificate".into(),
                    }),
                }
            }
            HandshakeError::Tls(e) => Attempt::Final(ConnectError::Tls {
                addr: addr.to_string(),
                reason: e.to_string(),
            }),
            // A driver at its limit of authenticating connections drops new ones at once.
            HandshakeError::Io(e) => Attempt::Retry(e),
            HandshakeError::Eof => Attempt::Retry(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the driver closed the connection during the {stage}"),
            )),
            HandshakeError::TimedOut => Attempt::Retry(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the {stage} timed out"),
            )),
        }
    };
    tls::handshake(&mut conn, &mut tcp, deadline).map_err(|e| failed(e, "TLS handshake"))?;
    tls::write_all(&mut conn, &mut tcp, hello_frame, deadline).map_err(|e| failed(e, "Hello"))?;
    let welcome_deadline = Instant::now() + options.welcome_timeout;
    let reply = read_reply(&mut conn, &mut tcp, &options.limits, welcome_deadline);
    let config = match reply {
        Ok(ToWorker::Welcome { config }) => config,
        Ok(ToWorker::Refused { reason }) => {
            return Err(Attempt::Final(ConnectError::Refused {
                addr: addr.to_string(),
                reason,
            }))
        }
        Ok(other) => {
            return Err(Attempt::Final(ConnectError::Protocol {
                addr: addr.to_string(),
                reason: format!("expected Welcome or Refused, got {other:?}"),
            }))
        }
        Err(Ok(HandshakeError::TimedOut)) => {
            return Err(Attempt::Final(ConnectError::Timeout {
                addr: addr.to_string(),
                stage: "waiting for Welcome",
                waited: options.welcome_timeout,
            }))
        }
        Err(Ok(e)) => return Err(failed(e, "wait for Welcome")),
        Err(Err(reason)) => {
            return Err(Attempt::Final(ConnectError::Protocol {
                addr: addr.to_string(),
                reason,
            }))
        }
    };
    let link = Link::start(conn, tcp, addr, options).map_err(Attempt::Retry)?;
    Ok((config, link))
}

/// The driver's first frame. The driver is authenticated by now (pinned certificate), so the
/// ordinary decoder reads it; nothing after it is consumed.
fn read_reply(
    conn: &mut rustls::Connection,
    tcp: &mut TcpStream,
    limits: &Limits,
    deadline: Instant,
) -> Result<ToWorker, Result<HandshakeError, String>> {
    let mut dec = Decoder::new(*limits, ToWorker::known);
    loop {
        if dec.lease_needed().is_some() {
            dec.grant(None);
        }
        // The decoder's buffer is exactly the rest of the current part of the frame, so this
        // never reads past the reply.
        let buf = dec.buf();
        let n = buf.len();
        tls::read_exact(conn, tcp, buf, deadline).map_err(Ok)?;
        if let Some(frame) = dec.advance(n).map_err(|e| Err(e.to_string()))? {
            if frame.kind == crate::message::kind::PING {
                continue;
            }
            return ToWorker::decode(frame).map_err(|e| Err(e.to_string()));
        }
    }
}

/// Hand a message to the inbox, waiting while it is full, until the link is closed.
fn deliver(core: &Core, inbox: &Sender<ToWorker>, mut msg: ToWorker) -> bool {
    loop {
        match inbox.send_timeout(msg, Duration::from_millis(200)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(m)) if !core.is_closed() => msg = m,
            Err(_) => return false,
        }
    }
}

/// A worker's open connection to its driver.
pub struct Link {
    core: Arc<Core>,
    /// Messages queued by `send` so far (see [`Link::flush`]).
    queued: AtomicU64,
    outbox: Sender<ToDriver>,
    inbox: Receiver<ToWorker>,
    /// Disconnected when the reader thread has ended.
    reader_done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    addr: String,
}

impl Link {
    fn start(
        conn: rustls::Connection,
        tcp: TcpStream,
        addr: &str,
        options: &ClientOptions,
    ) -> io::Result<Link> {
        let (core, ctl) = Core::new(conn, tcp, options.timeouts)?;
        let (outbox, out_rx) = crossbeam_channel::bounded(options.outbox.max(1));
        let (in_tx, inbox) = crossbeam_channel::bounded(options.inbox.max(1));
        let (done_tx, reader_done) = crossbeam_channel::bounded::<()>(0);
        let budget = Budget::new(options.receive_budget);
        let limits = options.limits;
        let writer = {
            let core = Arc::clone(&core);
            std::thread::Builder::new()
                .name("wire-send".into())
                .spawn(move || link::write_loop(&core, out_rx, ctl, |_: &ToDriver| {}))?
        };
        let reader = {
            let core = Arc::clone(&core);
            std::thread::Builder::new()
                .name("wire-recv".into())
                .spawn(move || {
                    let _done = done_tx;
                    link::read_loop(&core, limits, &budget, |msg| deliver(&core, &in_tx, msg));
                })
        };
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                core.abort(Disconnect::Local(format!("cannot start a thread: {e}")));
                return Err(e);
            }
        };
        Ok(Link {
            core,
            queued: AtomicU64::new(0),
            outbox,
            inbox,
            reader_done,
            threads: vec![writer, reader],
            addr: addr.to_string(),
        })
    }

    /// Queue a message; blocks while the outgoing queue is full (the driver is slower than this
    /// worker). Fails once the link has ended.
    pub fn send(&self, msg: ToDriver) -> Result<(), SendError<ToDriver>> {
        if self.core.is_closed() {
            return Err(SendError::Closed(msg));
        }
        self.outbox
            .send(msg)
            .map_err(|e| SendError::Closed(e.into_inner()))?;
        self.queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Wait until every message `send` queued before this call has been written to the socket
    /// (it then survives this process being killed), at most `timeout`. False if it was not.
    pub fn flush(&self, timeout: Duration) -> bool {
        let want = self.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(20);
        while self.core.written.load(Ordering::Acquire) < want {
            if self.core.is_closed() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        }
        true
    }

    /// Queue a message without blocking.
    pub fn try_send(&self, msg: ToDriver) -> Result<(), SendError<ToDriver>> {
        if self.core.is_closed() {
            return Err(SendError::Closed(msg));
        }
        self.outbox.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) => SendError::Full(m),
            TrySendError::Disconnected(m) => SendError::Closed(m),
        })?;
        self.queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The next message from the driver: `Ok(None)` when `timeout` passes first, `Err` once the
    /// link has ended and every message that arrived before has been taken.
    pub fn recv(&self, timeout: Duration) -> Result<Option<ToWorker>, Disconnect> {
        match self.inbox.recv_timeout(timeout) {
            Ok(msg) => Ok(Some(msg)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.core.reason()),
        }
    }

    /// The incoming channel itself, to wait on it with `select!` next to other channels. It
    /// disconnects when the link ends; [`Link::ended`] then says why.
    pub fn inbox(&self) -> &Receiver<ToWorker> {
        &self.inbox
    }

    /// Why the link ended, once it has.
    pub fn ended(&self) -> Option<Disconnect> {
        self.core.is_closed().then(|| self.core.reason())
    }

    pub fn stats(&self) -> LinkStats {
        self.core.stats()
    }

    /// The negotiated TLS cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub fn cipher_suite(&self) -> Option<String> {
        self.core.cipher_suite()
    }

    /// The driver's address as given to [`connect`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send `Beat`s every `every` until the returned handle is dropped.
    pub fn heartbeat(&self, every: Duration) -> Heartbeat {
        Heartbeat::start(self.outbox.clone(), every)
    }

    /// Say `Bye { reason }`, close the TLS session after everything queued, and wait up to
    /// `linger` for the driver to close its side. Returns why the link ended.
    pub fn close(mut self, reason: &str) -> Disconnect {
        self.leave(reason);
        self.finish();
        self.core.reason()
    }

    /// [`Link::close`] for a link shared between threads (behind an `Arc`): say `Bye`, close
    /// the TLS session and wait up to `linger` for the driver's side; the threads end when the
    /// last reference is dropped.
    pub fn leave(&self, reason: &str) -> Disconnect {
        let linger = self.core.timeouts.linger;
        let bye = ToDriver::Bye {
            reason: reason.to_string(),
        };
        let _ = self.outbox.send_timeout(bye, linger);
        self.core
            .close(Disconnect::Local(format!("the worker left: {reason}")));
        let _ = self.reader_done.recv_timeout(linger);
        self.core.reason()
    }

    fn finish(&mut self) {
        self.core
            .abort(Disconnect::Local("the worker dropped its link".into()));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.finish();
    }
}

const NONE: u64 = u64::MAX;

/// Sends `Beat { seq, chunk, task }` at a fixed interval, with what [`Heartbeat::running`] last
/// said. A beat is skipped, not queued, while the outgoing queue is full: the driver then sees
/// traffic anyway (`LinkStats`).
pub struct Heartbeat {
    chunk: Arc<AtomicU64>,
    task: Arc<AtomicU64>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(outbox: Sender<ToDriver>, every: Duration) -> Heartbeat {
        let chunk = Arc::new(AtomicU64::new(NONE));
        let task = Arc::new(AtomicU64::new(NONE));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = {
            let (chunk, task) = (Arc::clone(&chunk), Arc::clone(&task));
            std::thread::Builder::new()
                .name("wire-beat".into())
                .spawn(move || {
                    let mut seq = 0u64;
                    loop {
                        seq += 1;
                        let get = |v: &AtomicU64| {
                            let v = v.load(Ordering::Acquire);
                            (v != NONE).then_some(v)
                        };
                        let beat = ToDriver::Beat {
                            seq,
                            chunk: get(&chunk),
                            task: get(&task).and_then(|t| u32::try_from(t).ok()),
                        };
                        if let Err(TrySendError::Disconnected(_)) = outbox.try_send(beat) {
                            return;
                        }
                        match stopped.recv_timeout(every) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                    }
                })
                .ok()
        };
        Heartbeat {
            chunk,
            task,
            stop: Some(stop),
            thread,
        }
    }

    /// What the worker runs now (`None` when idle); the next beat carries it.
    pub fn running(&self, chunk: Option<u64>, task: Option<u32>) {
        self.chunk.store(chunk.unwrap_or(NONE), Ordering::Release);
        self.task
            .store(task.map_or(NONE, u64::from), Ordering::Release);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_is_not_held_back_by_nagles_algorithm() {
        // Without TCP_NODELAY from the first byte, each of the handshake's small flights
        // waited for the driver's delayed ACK: ~44 ms a join (benches/wire), 1 ms with it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let Ok(tcp) = tcp_connect(&addr, &ClientOptions::default(), Instant::now()) else {
            panic!("cannot connect to {addr}");
        };
        assert!(tcp.nodelay().unwrap());
    }
}

//! One established, authenticated TLS connection, run by two threads that share the rustls state
//! under a mutex held only for crypto, never across socket I/O (two peers each blocked writing
//! to the other would otherwise deadlock): a reader that decodes frames into messages and stops
//! reading while the application does not take them, and a writer that drains a bounded queue,
//! coalesces small frames into few TLS records, and sends keep-alives when idle.

use crate::budget::Budget;
use crate::error::Disconnect;
use crate::frame::{encode_head, Decoder, FrameError, Limits};
use crate::message::{kind, Message};
use crossbeam_channel::{select, Receiver, Sender};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Time limits of a link; the defaults suit a cluster's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TLS handshake plus the Hello/Welcome exchange must finish within this (default 10 s).
    pub handshake: Duration,
    /// A link on which nothing arrives for this long, not even a keep-alive, is dropped
    /// (default 60 s). Each side sends a keep-alive after a quarter of it without traffic.
    pub idle: Duration,
    /// A write that makes no progress for this long drops the link (default 60 s).
    pub write_stall: Duration,
    /// A graceful close waits this long for queued frames and the peer's close (default 5 s).
    pub linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            write_stall: Duration::from_secs(60),
            linger: Duration::from_secs(5),
        }
    }
}

impl Timeouts {
    fn keepalive(&self) -> Duration {
        (self.idle / 4).max(Duration::from_millis(10))
    }
}

/// Traffic counters of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// TLS bytes received and sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames received and sent, keep-alives included.
    pub frames_in: u64,
    pub frames_out: u64,
    /// Time since anything last arrived.
    pub since_rx: Duration,
}

pub(crate) enum Ctl {
    /// The reader produced TLS data (a key update answer, an alert) for the writer to send.
    Flush,
    /// Send what is queued, then close.
    Close,
    /// Stop at once: the link is already cut.
    Abort,
}

/// State shared by a link's reader, writer and owner.
pub(crate) struct Core {
    conn: Mutex<rustls::Connection>,
    tcp: TcpStream,
    reason: OnceLock<Disconnect>,
    closed: AtomicBool,
    flush_pending: AtomicBool,
    ctl: Sender<Ctl>,
    born: Instant,
    last_rx_ns: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    /// Application messages written to the socket (handed to the kernel) so far.
    pub(crate) written: AtomicU64,
    pub(crate) timeouts: Timeouts,
}

/// Plaintext bytes given to rustls per lock: big enough that locking and syscalls are noise,
/// small enough that the reader never waits long for the lock.
const SEAL_STEP: usize = 256 * 1024;
/// Payloads up to this size are copied into the staging buffer with their frame head, so runs
/// of small frames become a few full TLS records and one syscall.
const SMALL: usize = 16 * 1024;
const STAGE_MAX: usize = 64 * 1024;
const RAW_READ: usize = 256 * 1024;

impl Core {
    pub(crate) fn new(
        mut conn: rustls::Connection,
        tcp: TcpStream,
        timeouts: Timeouts,
    ) -> io::Result<(Arc<Core>, Receiver<Ctl>)> {
        conn.set_buffer_limit(Some(2 * SEAL_STEP));
        tcp.set_nodelay(true)?;
        let (ctl, ctl_rx) = crossbeam_channel::unbounded();
        let core = Arc::new(Core {
            conn: Mutex::new(conn),
            tcp,
            reason: OnceLock::new(),
            closed: AtomicBool::new(false),
            flush_pending: AtomicBool::new(false),
            ctl,
            born: Instant::now(),
            last_rx_ns: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            written: AtomicU64::new(0),
            timeouts,
        });
        Ok((core, ctl_rx))
    }

    fn lock(&self) -> MutexGuard<'_, rustls::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// End the link now with `reason` (the first reason recorded wins); both threads wake up.
    pub(crate) fn abort(&self, reason: Disconnect) {
        let _ = self.reason.set(reason);
        self.closed.store(true, Ordering::Release);
        let _ = self.tcp.shutdown(Shutdown::Both);
        let _ = self.ctl.send(Ctl::Abort);
    }

    /// Send what is queued, then the TLS close; the owner bounds this by `linger`.
    pub(crate) fn close(&self, reason: Disconnect) {
        let _ = self.reason.set(reason);
        let _ = self.ctl.send(Ctl::Close);
    }

    pub(crate) fn reason(&self) -> Disconnect {
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| Disconnect::Local("closed".into()))
    }

    fn request_flush(&self) {
        if !self.flush_pending.swap(true, Ordering::AcqRel) {
            let _ = self.ctl.send(Ctl::Flush);
        }
    }

    pub(crate) fn cipher_suite(&self) -> Option<String> {
        let suite = self.lock().negotiated_cipher_suite()?;
        Some(format!("{:?}", suite.suite()))
    }

    pub(crate) fn stats(&self) -> LinkStats {
        let now = self.born.elapsed().as_nanos() as u64;
        let last = self.last_rx_ns.load(Ordering::Relaxed);
        LinkStats {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            since_rx: Duration::from_nanos(now.saturating_sub(last)),
        }
    }
}

enum Eof {
    CloseNotify,
    Abrupt,
}

/// Read frames until the link ends; hand each message to `deliver`, which may block (that is
/// the backpressure) and returns false when nobody takes messages any more. Returns the reason
/// the link ended; the link is aborted on return.
pub(crate) fn read_loop<M: Message>(
    core: &Core,
    limits: Limits,
    budget: &Arc<Budget>,
    mut deliver: impl FnMut(M) -> bool,
) -> Disconnect {
    let reason = read_frames(core, limits, budget, &mut deliver);
    core.abort(reason);
    core.reason()
}

fn read_frames<M: Message>(
    core: &Core,
    limits: Limits,
    budget: &Arc<Budget>,
    deliver: &mut impl FnMut(M) -> bool,
) -> Disconnect {
    let mut tcp = match core.tcp.try_clone() {
        Ok(t) => t,
        Err(e) => return Disconnect::Io(e.to_string()),
    };
    let idle = core.timeouts.idle;
    if let Err(e) = tcp.set_read_timeout(Some(idle)) {
        return Disconnect::Io(e.to_string());
    }
    let mut dec = Decoder::new(limits, M::known);
    let mut raw = vec![0u8; RAW_READ];
    let (mut start, mut end) = (0usize, 0usize);
    let mut socket_eof = false;
    loop {
        if core.is_closed() {
            return core.reason();
        }
        if let Some(bytes) = dec.lease_needed() {
            match budget.acquire(bytes, &|| core.is_closed()) {
                Some(lease) => dec.grant(Some(lease)),
                None => return core.reason(),
            }
            continue;
        }
        let mut frame = None;
        let mut eof = None;
        let wants_write;
        {
            let mut conn = core.lock();
            loop {
                let dst = dec.buf();
                if dst.is_empty() {
                    break; // a lease is needed first
                }
                match conn.reader().read(dst) {
                    Ok(0) => {
                        eof = Some(Eof::CloseNotify);
                        break;
                    }
                    Ok(n) => match dec.advance(n) {
                        Ok(Some(f)) => {
                            frame = Some(f);
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => return Disconnect::Protocol(e),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if start < end {
                            let mut pending = &raw[start..end];
                            match conn.read_tls(&mut pending) {
                                Ok(n) => start += n,
                                Err(e) => return Disconnect::Io(e.to_string()),
                            }
                        } else if socket_eof {
                            // Tell rustls about the end of the stream so it can say whether it
                            // was a clean TLS close.
                            let _ = conn.read_tls(&mut io::empty());
                        } else {
                            break; // need bytes from the socket
                        }
                        if let Err(e) = conn.process_new_packets() {
                            drop(conn);
                            core.request_flush();
                            return Disconnect::Tls(e.to_string());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        eof = Some(Eof::Abrupt);
                        break;
                    }
                    Err(e) => return Disconnect::Io(e.to_string()),
                }
            }
            wants_write = conn.wants_write();
        }
        if wants_write {
            core.request_flush();
        }
        if let Some(frame) = frame {
            core.frames_in.fetch_add(1, Ordering::Relaxed);
            if frame.kind == kind::PING {
                if frame.header.is_empty() && frame.payload.is_empty() {
                    continue;
                }
                return Disconnect::Protocol(FrameError::Malformed {
                    kind: "Ping",
                    reason: "a keep-alive carries nothing".into(),
                });
            }
            match M::decode(frame) {
                Ok(msg) => {
                    if !deliver(msg) {
                        return Disconnect::Local("nobody takes messages any more".into());
                    }
                }
                Err(e) => return Disconnect::Protocol(e),
            }
            continue;
        }
        if let Some(eof) = eof {
            return match (dec.progress(), eof) {
                (Some((received, total)), _) => Disconnect::Truncated { received, total },
                (None, Eof::CloseNotify) => Disconnect::Closed,
                (None, Eof::Abrupt) => Disconnect::Eof,
            };
        }
        if dec.lease_needed().is_some() {
            continue;
        }
        match tcp.read(&mut raw) {
            Ok(0) => socket_eof = true,
            Ok(n) => {
                start = 0;
                end = n;
                core.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                let now = core.born.elapsed().as_nanos() as u64;
                core.last_rx_ns.store(now, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Disconnect::Idle(idle);
            }
            Err(e) => {
                if core.is_closed() {
                    return core.reason();
                }
                return match dec.progress() {
                    Some((received, total)) => Disconnect::Truncated { received, total },
                    None => Disconnect::Io(e.to_string()),
                };
            }
        }
    }
}

/// Encrypts plaintext and sends it: TLS data is moved out under the lock and written without it.
struct Sealer<'a> {
    core: &'a Core,
    tcp: TcpStream,
    staged: Vec<u8>,
    out: Vec<u8>,
}

impl Sealer<'_> {
    fn seal(&mut self, mut plain: &[u8]) -> Result<(), Disconnect> {
        loop {
            {
                let mut conn = self.core.lock();
                if !plain.is_empty() {
                    let step = plain.len().min(SEAL_STEP);
                    let n = conn
                        .writer()
                        .write(&plain[..step])
                        .map_err(|e| Disconnect::Io(e.to_string()))?;
                    plain = &plain[n..];
                }
                while conn.wants_write() {
                    conn.write_tls(&mut self.out)
                        .map_err(|e| Disconnect::Io(e.to_string()))?;
                }
            }
            self.send_out()?;
            if plain.is_empty() {
                return Ok(());
            }
        }
    }

    fn send_out(&mut self) -> Result<(), Disconnect> {
        if self.out.is_empty() {
            return Ok(());
        }
        let stall = self.core.timeouts.write_stall;
        let result = self.tcp.write_all(&self.out);
        self.core
            .bytes_out
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        self.out.clear();
        result.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Disconnect::WriteStalled(stall),
            _ => Disconnect::Io(e.to_string()),
        })
    }

    /// Stage or seal one message; large payloads are sealed straight from the caller's bytes.
    fn put<M: Message>(&mut self, msg: &M) -> Result<(), Disconnect> {
        let payload = msg.encode(&mut self.staged);
        self.core.frames_out.fetch_add(1, Ordering::Relaxed);
        match payload {
            Some(p) if p.len() > SMALL => {
                self.flush_staged()?;
                self.seal(p)
            }
            Some(p) => {
                self.staged.extend_from_slice(p);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn flush_staged(&mut self) -> Result<(), Disconnect> {
        let staged = std::mem::take(&mut self.staged);
        let result = self.seal(&staged);
        self.staged = staged;
        self.staged.clear();
        result
    }
}

/// Drain `queue` onto the link until it is closed. `sent` is told of each message once it has
/// been handed to the socket (queue accounting).
pub(crate) fn write_loop<M: Message>(
    core: &Core,
    queue: Receiver<M>,
    ctl: Receiver<Ctl>,
    mut sent: impl FnMut(&M),
) {
    // After a graceful close the reader runs on until the peer closes too; the link's owner
    // cuts it after `linger` if the peer does not.
    if let Err(reason) = write_frames(core, &queue, &ctl, &mut sent) {
        if !core.is_closed() {
            core.abort(reason);
        }
    }
}

fn write_frames<M: Message>(
    core: &Core,
    queue: &Receiver<M>,
    ctl: &Receiver<Ctl>,
    sent: &mut impl FnMut(&M),
) -> Result<(), Disconnect> {
    let tcp = core
        .tcp
        .try_clone()
        .map_err(|e| Disconnect::Io(e.to_string()))?;
    tcp.set_write_timeout(Some(core.timeouts.write_stall))
        .map_err(|e| Disconnect::Io(e.to_string()))?;
    let mut sealer = Sealer {
        core,
        tcp,
        staged: Vec::with_capacity(STAGE_MAX + SMALL),
        out: Vec::new(),
    };
    let keepalive = core.timeouts.keepalive();
    loop {
        if core.is_closed() {
            return Ok(());
        }
        select! {
            recv(ctl) -> c => match c {
                Ok(Ctl::Flush) => {
                    core.flush_pending.store(false, Ordering::Release);
                    sealer.seal(&[])?;
                }
                Ok(Ctl::Abort) | Err(_) => return Ok(()),
                Ok(Ctl::Close) => {
                    let _ = core.tcp.set_write_timeout(Some(core.timeouts.linger));
                    while let Ok(msg) = queue.try_recv() {
                        sealer.put(&msg)?;
                        sent(&msg);
                        if sealer.staged.len() >= STAGE_MAX {
                            sealer.flush_staged()?;
                        }
                    }
                    sealer.flush_staged()?;
                    core.lock().send_close_notify();
                    sealer.seal(&[])?;
                    let _ = core.tcp.shutdown(Shutdown::Write);
                    return Ok(());
                }
            },
            recv(queue) -> msg => {
                let Ok(msg) = msg else {
                    // The owner dropped the queue: close as if asked to.
                    core.lock().send_close_notify();
                    sealer.seal(&[])?;
                    let _ = core.tcp.shutdown(Shutdown::Write);
                    return Ok(());
                };
                sealer.put(&msg)?;
                sent(&msg);
                let mut n = 1;
                // Coalesce whatever else is already queued, up to a few records' worth.
                while sealer.staged.len() < STAGE_MAX {
                    let Ok(next) = queue.try_recv() else { break };
                    sealer.put(&next)?;
                    sent(&next);
                    n += 1;
                }
                sealer.flush_staged()?;
                core.written.fetch_add(n, Ordering::Release);
            },
            default(keepalive) => {
                encode_head(&mut sealer.staged, kind::PING, b"", 0);
                core.frames_out.fetch_add(1, Ordering::Relaxed);
                sealer.flush_staged()?;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ToDriver, ToWorker};
    use crate::secrets::SessionSecrets;
    use crate::tls;
    use std::net::TcpListener;

    struct Side<Out, In> {
        core: Arc<Core>,
        out: Sender<Out>,
        inbox: Receiver<In>,
    }

    fn run<Out: Message, In: Message>(conn: rustls::Connection, tcp: TcpStream) -> Side<Out, In> {
        let (core, ctl) = Core::new(conn, tcp, Timeouts::default()).unwrap();
        let (out, queue) = crossbeam_channel::bounded(8);
        let (deliver, inbox) = crossbeam_channel::bounded(8);
        let writer = Arc::clone(&core);
        std::thread::spawn(move || write_loop(&writer, queue, ctl, |_: &Out| {}));
        let reader = Arc::clone(&core);
        std::thread::spawn(move || {
            let budget = Budget::new(1 << 20);
            read_loop(&reader, Limits::default(), &budget, |m| {
                deliver.send(m).is_ok()
            })
        });
        Side { core, out, inbox }
    }

    /// A driver side and a worker side of one TLS connection, without the Hello.
    fn pair() -> (Side<ToWorker, ToDriver>, Side<ToDriver, ToWorker>) {
        let secrets = SessionSecrets::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = tls::server_config(&secrets).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let accept = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(server_config).unwrap();
            let mut conn = rustls::Connection::Server(conn);
            tls::handshake(&mut conn, &mut tcp, deadline).unwrap();
            (conn, tcp)
        });
        let seen = Arc::new(Mutex::new(None));
        let config = tls::client_config(secrets.fingerprint(), seen).unwrap();
        let conn = rustls::ClientConnection::new(config, tls::server_name()).unwrap();
        let mut conn = rustls::Connection::Client(conn);
        let mut tcp = TcpStream::connect(addr).unwrap();
        tls::handshake(&mut conn, &mut tcp, deadline).unwrap();
        let (sconn, stcp) = accept.join().unwrap();
        (run(sconn, stcp), run(conn, tcp))
    }

    fn exchange(driver: &Side<ToWorker, ToDriver>, worker: &Side<ToDriver, ToWorker>, seq: u64) {
        let wait = Duration::from_secs(10);
        driver.out.send(ToWorker::Beat { seq }).unwrap();
        assert_eq!(
            worker.inbox.recv_timeout(wait).unwrap(),
            ToWorker::Beat { seq }
        );
        worker.out.send(ToDriver::NeedBlob { id: seq }).unwrap();
        let got = driver.inbox.recv_timeout(wait).unwrap();
        assert_eq!(got, ToDriver::NeedBlob { id: seq });
    }

    /// rustls updates keys on its own near AES-GCM's record limit (after ~2^23 records, i.e.
    /// hundreds of GiB), and the peer answers with its next record: the link must go on working
    /// through updates started from either side.
    #[test]
    fn key_updates_from_either_side_keep_the_link_working() {
        let (driver, worker) = pair();
        exchange(&driver, &worker, 1);
        for (seq, updater) in [(2, &worker.core), (3, &driver.core)] {
            updater.lock().refresh_traffic_keys().unwrap();
            updater.request_flush();
            exchange(&driver, &worker, seq);
        }
        for seq in 4..100 {
            exchange(&driver, &worker, seq);
        }
        assert!(!driver.core.is_closed() && !worker.core.is_closed());
    }
}

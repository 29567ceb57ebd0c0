//! The crate's errors and reasons, as data: why a link ended, why a peer was rejected before it
//! became a peer, why a send or a connect failed, why the server could not start.

use crate::frame::FrameError;
use crate::secrets::Fingerprint;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a link ended. Every peer that was `Connected` ends with exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    #[error("closed cleanly by the peer")]
    Closed,
    #[error(
        "the peer's connection ended without a TLS close (its process was killed or its host lost)"
    )]
    Eof,
    #[error("the connection ended in the middle of a frame ({received} of {total} bytes)")]
    Truncated { received: u64, total: u64 },
    #[error("nothing received for {0:?} (not even a keep-alive)")]
    Idle(Duration),
    #[error("the peer stopped reading: a write made no progress for {0:?}")]
    WriteStalled(Duration),
    #[error("protocol error: {0}")]
    Protocol(FrameError),
    #[error("TLS error: {0}")]
    Tls(String),
    #[error("I/O error: {0}")]
    Io(String),
    /// This side ended it: the engine's `close`, a refusal, a shutdown.
    #[error("closed by this side: {0}")]
    Local(String),
}

/// Why a connection was dropped before it became a peer (no `PeerId` was ever given out, and
/// nothing but the fixed-layout Hello was read from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub addr: SocketAddr,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rejected connection from {}: {}", self.addr, self.reason)
    }
}

/// A message that could not be queued, handed back to the caller.
#[derive(Debug, thiserror::Error)]
pub enum SendError<M> {
    /// The peer's queue is at its message or byte limit; try again after `Event::Writable` or on
    /// the next tick.
    #[error("the peer's send queue is full")]
    Full(M),
    /// The peer is not (or no longer) connected, or is closing.
    #[error("the peer is not connected")]
    Closed(M),
    /// The peer has not been admitted yet (`Welcome`/`Refused` go through `admit`/`refuse`).
    #[error("the peer is not admitted yet")]
    NotAdmitted(M),
}

impl<M> SendError<M> {
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(m) | SendError::Closed(m) | SendError::NotAdmitted(m) => m,
        }
    }
}

/// Why a worker could not connect to its driver. Each names the address.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the driver at {addr}: {source} (kept trying for {waited:?})\nhint: check that the driver is still running and that this node can reach {addr} (firewall, interface: set the TCP transport's address to one the nodes can reach)")]
    Unreachable {
        addr: String,
        waited: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("the server at {addr} presented certificate {found}, but this worker trusts only {expected}\nhint: another program (or another session's driver) is listening there; the worker refuses to talk to it")]
    WrongCertificate {
        addr: String,
        expected: Fingerprint,
        found: Fingerprint,
    },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("the driver at {addr} refused this worker: {reason}")]
    Refused { addr: String, reason: String },
    #[error("the driver at {addr} did not answer within {waited:?} ({stage})")]
    Timeout {
        addr: String,
        stage: &'static str,
        waited: Duration,
    },
    #[error("the driver at {addr} broke the protocol: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("invalid worker introduction: {0}")]
    BadHello(String),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid TCP transport address {spec:?}: {reason}\nhint: use ADDRESS[:PORT[-PORT]], INTERFACE[:PORT[-PORT]] or :PORT[-PORT], e.g. \"0.0.0.0\", \"10.1.2.3:40000-40100\", \"eth0\"")]
    BadAddress { spec: String, reason: String },
    #[error("cannot listen on {addr}: {source}\nhint: pick a free port or a port range (\"ADDRESS:40000-40100\")")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

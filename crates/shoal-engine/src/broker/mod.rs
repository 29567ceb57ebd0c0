//! The transport seam: how the engine reaches workers. The engine decides (with its ledger)
//! what each worker gets; a broker only carries it out and reports what happened. Two
//! brokers speak the same protocol (docs/protocol.md): [`fs::FsBroker`] through the session's
//! work dir, and [`tcp::TcpBroker`] over authenticated TLS connections. Both keep the chunks'
//! master copies and the session record in the driver's own session dir.

pub mod fs;
pub mod tcp;

use crate::error::{EngineError, Result};
use shoal_core::fskind::FsKind;
use shoal_core::protocol::{Beat, ResultHeader, Ticket};
use shoal_core::worker::WorkerInfo;
use shoal_wire::Bytes;
use std::time::Duration;

/// What a broker saw since its last poll.
#[derive(Debug)]
pub enum BrokerEvent {
    /// A worker announced itself (it gets no work until the engine welcomes it).
    Hello { key: String, info: WorkerInfo },
    /// A worker claimed an assignment: its tasks are running.
    Claimed { chunk: u64, attempt: u32 },
    /// A result part whose frame verified. The engine still checks it against the chunk.
    Part {
        header: ResultHeader,
        payload: Bytes,
        at: PartRef,
    },
    /// A result part that failed verification; a copy is kept at `kept`.
    Corrupt {
        at: PartRef,
        reason: String,
        kept: String,
    },
    /// A worker's heartbeat counter, read now (the engine judges change).
    Beat { key: String, beat: Beat },
    /// The connection to a worker ended (TCP); the work dir never says this.
    Gone { key: String, reason: String },
    /// The answer to a revoke that could not be settled at once (TCP).
    Revoked { chunk: u64, attempt: u32, ok: bool },
    /// A worker said goodbye holding nothing and disconnected (TCP): it exited normally.
    Left { key: String },
    /// Something for the user (a connection refused: wrong token or certificate, fenced).
    Note(String),
}

/// Where a part came from, so that the engine can tell the broker when it is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartRef {
    pub chunk: u64,
    pub attempt: u32,
    pub from: u32,
}

/// What the engine asks of a transport. Called from the engine thread only.
pub trait Broker: Send {
    /// "fs" or "tcp", recorded in the session record.
    fn name(&self) -> &'static str;

    /// What happened since the last call (hellos, claims, parts, heartbeats, ...). With
    /// `parts` false, results are left where they are (the caller has no room for them);
    /// everything else is still reported. A broker on a shared filesystem rate-limits its
    /// own directory scans.
    fn poll(&mut self, parts: bool) -> Result<Vec<BrokerEvent>>;

    /// Like `poll`, but scan for results and claims now, whatever the cadence: called before
    /// the engine acts on a lost worker, so results it published just before count.
    fn poll_now(&mut self) -> Result<Vec<BrokerEvent>>;

    /// Whether workers are on their way (jobs queued or starting that have not said hello).
    /// A broker that must look for hellos may look more often meanwhile.
    fn awaiting(&mut self, _workers: bool) {}

    /// Block until something may have changed, at most `timeout`.
    fn wait(&mut self, timeout: Duration);

    /// Accept a worker that announced itself: it may now receive tickets.
    fn welcome(&mut self, key: &str) -> Result<()>;

    /// Give a worker an assignment (or a stop ticket).
    fn assign(&mut self, ticket: &Ticket) -> Result<()>;

    /// Give workers their assignments: one result per ticket, in order. The order tickets
    /// become visible in is free (a worker takes its tickets by number).
    fn assign_all(&mut self, tickets: &[Ticket]) -> Vec<Result<()>> {
        tickets.iter().map(|t| self.assign(t)).collect()
    }

    /// Take back a ticket its worker has not claimed. `Some(ok)` when settled at once;
    /// `None` when the answer comes later as [`BrokerEvent::Revoked`].
    fn revoke(&mut self, key: &str, chunk: u64, attempt: u32, seq: u64) -> Result<Option<bool>>;

    /// The engine gave up on a worker: it must never get work again and should exit.
    fn fence(&mut self, key: &str) -> Result<()>;

    /// The worker's incarnation is gone (ended or fenced): forget it.
    fn forget(&mut self, key: &str);

    /// A part was consumed (delivered or found stale): it may go.
    fn consumed(&mut self, at: PartRef);

    /// A part that verified but does not belong where it was found: keep it for inspection;
    /// returns where.
    fn reject(&mut self, at: PartRef) -> String;

    /// A chunk ended: remove what is left of it (claims, leftover parts).
    fn ended(&mut self, chunk: u64);

    /// Every worker should finish what it holds and exit.
    fn stop_all(&mut self) -> Result<()>;

    /// The driver's own heartbeat, for the workers' liveness judgement. Called every few
    /// seconds; on a shared filesystem it also shows whether the filesystem answers.
    fn heartbeat(&mut self, seq: u64) -> Result<()>;

    /// Of these assignments (chunk, attempt, worker key, ticket seq, claimed), the ones whose
    /// files vanished, with whether the master copy still exists. Brokers whose workers hold
    /// assignments in memory (TCP) return nothing.
    fn audit(&mut self, assignments: &[(u64, u32, String, u64, bool)]) -> Vec<(u64, u32, bool)>;
}

/// The values of the `transport` option.
pub const TRANSPORTS: &[&str] = &["auto", "fs", "tcp"];

/// Which transport a session uses: `requested` as given; `auto` means the work dir when the
/// workers can share it (the local backend, or a network filesystem) and TCP otherwise.
pub fn choose(requested: &str, backend: &str, fs: &FsKind) -> Result<&'static str> {
    match requested {
        "fs" => Ok("fs"),
        "tcp" => Ok("tcp"),
        "auto" | "" if backend == "local" || fs.is_network() => Ok("fs"),
        "auto" | "" => Ok("tcp"),
        other => Err(EngineError::Unusable(format!(
            "invalid value {other:?} for transport: expected one of {}\nhint: transport=\"fs\" needs a work dir the workers share, \"tcp\" needs the workers to reach this host, \"auto\" picks one by the work dir's filesystem",
            TRANSPORTS.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_shares_the_work_dir_where_workers_can_and_connects_back_elsewhere() {
        let local = FsKind::Local("ext4".into());
        let nfs = FsKind::Network("nfs".into());
        assert_eq!(choose("auto", "local", &local).unwrap(), "fs");
        assert_eq!(choose("auto", "slurm", &nfs).unwrap(), "fs");
        assert_eq!(choose("auto", "htcondor", &local).unwrap(), "tcp");
        assert_eq!(choose("fs", "slurm", &local).unwrap(), "fs");
        assert_eq!(choose("tcp", "local", &local).unwrap(), "tcp");
        let err = choose("udp", "local", &local).unwrap_err().to_string();
        assert!(
            err.contains("\"udp\"") && err.contains("auto, fs, tcp"),
            "{err}"
        );
    }
}

//! The work-dir broker: tickets in per-worker inboxes, claims and result parts as files.
//!
//! On a shared (network) filesystem it is a polite client: directory listings are rate-limited
//! (results ≤ 5/s, claims ≤ 2/s, announcements ≤ 1/s; while workers are on their way,
//! announcements ≤ 2.5/s, results ≤ 4/s and claims ≤ 0.5/s: with the backends' own looks,
//! under the 10 per second a site can accept from one driver either way), heartbeats are
//! read every half heartbeat interval, and nothing relies on inotify, which sees only this host's changes. On a local disk inotify wakes the
//! engine the moment a worker writes, and scans follow every wake-up.

use super::{Broker, BrokerEvent, PartRef};
use crate::error::Result;
use shoal_core::protocol::Ticket;
use shoal_core::watch::{DirWatch, Waker};
use shoal_core::SessionDir;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Threads that write a round of tickets together on a network filesystem.
const ASSIGN_LANES: usize = 8;

/// How often each directory may be listed.
#[derive(Debug, Clone, Copy)]
struct Cadence {
    parts: Duration,
    claims: Duration,
    hellos: Duration,
    beats: Duration,
}

pub struct FsBroker {
    dir: SessionDir,
    network: bool,
    cadence: Cadence,
    /// The cadence while workers are on their way (`awaiting`).
    awaited: Cadence,
    /// The cadence while workers are on their way and none is welcomed: only a hello can
    /// come (a cold pool's first tasks wait for it).
    first: Cadence,
    watch: DirWatch,
    hellos: HashSet<String>,
    keys: BTreeSet<String>,
    claims: HashSet<(u64, u32)>,
    /// Parts seen but left in place (they start past the prefix), per chunk.
    left: HashMap<u64, HashSet<PartRef>>,
    last_parts: Option<Instant>,
    last_claims: Option<Instant>,
    last_hellos: Option<Instant>,
    last_beats: Option<Instant>,
    awaiting: bool,
    /// The last look at the hellos found one: an array's workers start together, so the
    /// rest of it is probably close behind (looked for at the `first` cadence meanwhile).
    arriving: bool,
    /// Assignments found missing by the last audit (a second miss confirms).
    missing: HashSet<(u64, u32)>,
    /// Directory listings made, for the fsload benchmark and tests.
    pub listings: u64,
}

impl FsBroker {
    /// `network`: the work dir is on a filesystem other hosts share. `heartbeat` is the
    /// workers' heartbeat interval.
    pub fn new(dir: SessionDir, network: bool, heartbeat: Duration) -> Self {
        let beats = (heartbeat / 2).max(Duration::from_millis(500));
        let (cadence, awaited, first) = if network {
            let usual = Cadence {
                parts: Duration::from_millis(200),
                claims: Duration::from_millis(500),
                hellos: Duration::from_secs(1),
                beats,
            };
            // A new worker waits for its welcome: announcements are looked for more often,
            // results a little less often and claims (which only refine what results tell)
            // seldom: 7 listings a second instead of 8.
            let awaited = Cadence {
                parts: Duration::from_millis(250),
                claims: Duration::from_secs(2),
                hellos: Duration::from_millis(400),
                beats,
            };
            // No worker to hear from but new ones: hellos 6 times a second, the rest
            // seldom (7 listings a second; with the backends' own, 9.75).
            let first = Cadence {
                parts: Duration::from_secs(2),
                claims: Duration::from_secs(2),
                hellos: Duration::from_millis(160),
                beats,
            };
            (usual, awaited, first)
        } else {
            // inotify wakes the engine for a hello on a local disk.
            let local = Cadence {
                parts: Duration::ZERO,
                claims: Duration::ZERO,
                hellos: Duration::from_millis(20),
                beats,
            };
            (local, local, local)
        };
        let watch = DirWatch::new(&[
            &dir.sub("results"),
            &dir.sub("claimed"),
            &dir.sub("workers"),
        ]);
        FsBroker {
            dir,
            network,
            cadence,
            awaited,
            first,
            watch,
            hellos: HashSet::new(),
            keys: BTreeSet::new(),
            claims: HashSet::new(),
            left: HashMap::new(),
            last_parts: None,
            last_claims: None,
            last_hellos: None,
            last_beats: None,
            awaiting: false,
            arriving: false,
            missing: HashSet::new(),
            listings: 0,
        }
    }

    /// Pokes the engine's wait from another thread.
    pub fn waker(&self) -> Waker {
        self.watch.waker()
    }

    /// How often to look now.
    fn current(&self) -> Cadence {
        match (self.awaiting, self.keys.is_empty()) {
            (true, true) => self.first,
            // For the few scans an array's start takes, 2.5 more listings a second: its
            // later workers waited up to 400 ms each for their welcome.
            (true, false) if self.arriving => Cadence {
                hellos: self.first.hellos,
                ..self.awaited
            },
            (true, false) => self.awaited,
            (false, _) => self.cadence,
        }
    }

    fn due(last: &mut Option<Instant>, every: Duration) -> bool {
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn scan_hellos(&mut self, out: &mut Vec<BrokerEvent>) -> Result<()> {
        self.listings += 1;
        self.arriving = false;
        for key in self.dir.hellos()? {
            if self.hellos.contains(&key) {
                continue;
            }
            // Unreadable yet (being replaced?): try again on the next scan.
            if let Some(info) = self.dir.read_hello(&key) {
                self.hellos.insert(key.clone());
                self.arriving = true;
                out.push(BrokerEvent::Hello { key, info });
            }
        }
        Ok(())
    }

    /// Whether `key` is a new incarnation of a worker id that said hello before.
    fn reruns(&self, key: &str) -> bool {
        let id = shoal_core::layout::key_id(key);
        self.hellos
            .iter()
            .any(|k| k != key && shoal_core::layout::key_id(k) == id)
    }

    fn scan_claims(&mut self, out: &mut Vec<BrokerEvent>) -> Result<()> {
        self.listings += 1;
        for (chunk, attempt) in self.dir.claims()? {
            if self.claims.insert((chunk, attempt)) {
                out.push(BrokerEvent::Claimed { chunk, attempt });
            }
        }
        Ok(())
    }

    fn scan_parts(&mut self, out: &mut Vec<BrokerEvent>) -> Result<()> {
        self.listings += 1;
        for (chunk, attempt, from) in self.dir.parts()? {
            let at = PartRef {
                chunk,
                attempt,
                from,
            };
            match self.dir.read_part(chunk, attempt, from) {
                Ok(Some(Ok((header, payload)))) => out.push(BrokerEvent::Part {
                    header,
                    payload: payload.into(),
                    at,
                }),
                Ok(Some(Err(reason))) => {
                    let kept = self.dir.keep_corrupt(chunk, attempt, from);
                    out.push(BrokerEvent::Corrupt {
                        at,
                        reason,
                        kept: kept.display().to_string(),
                    });
                }
                // Gone since the listing, or unreadable for now (ESTALE on NFS): next scan.
                Ok(None) | Err(_) => {}
            }
        }
        Ok(())
    }

    fn read_beats(&mut self, out: &mut Vec<BrokerEvent>) {
        for key in &self.keys {
            if let Some(beat) = self.dir.read_beat(key) {
                out.push(BrokerEvent::Beat {
                    key: key.clone(),
                    beat,
                });
            }
        }
    }
}

impl Broker for FsBroker {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn poll(&mut self, parts: bool) -> Result<Vec<BrokerEvent>> {
        let mut out = Vec::new();
        let c = self.current();
        let mut hellos = Vec::new();
        if Self::due(&mut self.last_hellos, c.hellos) {
            self.scan_hellos(&mut hellos)?;
        }
        // A rerun's hello supersedes (fences) the incarnation before it: a claim that one made
        // must reach the engine first, or its loss goes uncounted. Claims are listed then
        // whatever their cadence (a rerun is rare), and always before the hellos.
        let rerun = hellos.iter().any(|e| match e {
            BrokerEvent::Hello { key, .. } => self.reruns(key),
            _ => false,
        });
        if rerun || Self::due(&mut self.last_claims, c.claims) {
            self.last_claims = Some(Instant::now());
            self.scan_claims(&mut out)?;
        }
        out.append(&mut hellos);
        if parts && Self::due(&mut self.last_parts, c.parts) {
            self.scan_parts(&mut out)?;
        }
        if Self::due(&mut self.last_beats, c.beats) {
            self.read_beats(&mut out);
        }
        Ok(out)
    }

    fn poll_now(&mut self) -> Result<Vec<BrokerEvent>> {
        self.last_parts = None;
        self.last_claims = None;
        self.poll(true)
    }

    fn awaiting(&mut self, workers: bool) {
        self.awaiting = workers;
    }

    fn wait(&mut self, timeout: Duration) {
        let timeout = if self.network {
            let c = self.current();
            timeout.min(c.parts.min(c.hellos))
        } else {
            timeout
        };
        // Locally a new worker's hello is seen at once, not at the next scan (a cold pool's
        // first tasks waited up to the hello cadence): what woke the watch may be one.
        if self.watch.wait(timeout) && !self.network {
            self.last_hellos = None;
        }
    }

    fn welcome(&mut self, key: &str) -> Result<()> {
        self.dir.welcome(key)?;
        self.keys.insert(key.to_string());
        Ok(())
    }

    fn assign(&mut self, ticket: &Ticket) -> Result<()> {
        Ok(self.dir.put_ticket(ticket)?)
    }

    /// On a network filesystem a ticket is a few round trips: a round of them (a new
    /// array's first tickets) goes out on `ASSIGN_LANES` threads, not one after the other
    /// (24 workers on slurm-multinode: 0.2 s from the first ticket to the last, serially).
    fn assign_all(&mut self, tickets: &[Ticket]) -> Vec<Result<()>> {
        if !self.network || tickets.len() < 2 {
            return tickets.iter().map(|t| self.assign(t)).collect();
        }
        let lanes = tickets.len().min(ASSIGN_LANES);
        let dir = &self.dir;
        let mut written: Vec<(usize, Result<()>)> = std::thread::scope(|s| {
            let running: Vec<_> = (0..lanes)
                .map(|lane| {
                    s.spawn(move || {
                        tickets
                            .iter()
                            .enumerate()
                            .skip(lane)
                            .step_by(lanes)
                            .map(|(i, t)| (i, dir.put_ticket(t).map_err(Into::into)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            running
                .into_iter()
                .flat_map(|lane| lane.join().expect("a ticket write does not panic"))
                .collect()
        });
        written.sort_by_key(|(i, _)| *i);
        written.into_iter().map(|(_, r)| r).collect()
    }

    fn revoke(&mut self, key: &str, _chunk: u64, _attempt: u32, seq: u64) -> Result<Option<bool>> {
        Ok(Some(self.dir.revoke_ticket(key, seq)?))
    }

    fn fence(&mut self, key: &str) -> Result<()> {
        self.dir.put_fence(key)?;
        // Tickets left in the inbox go with it: the worker's claim fails and it finds the fence.
        self.dir.remove_inbox(key);
        self.keys.remove(key);
        Ok(())
    }

    fn forget(&mut self, key: &str) {
        self.keys.remove(key);
    }

    fn consumed(&mut self, at: PartRef) {
        let _ = self.dir.remove_part(at.chunk, at.attempt, at.from);
        if let Some(set) = self.left.get_mut(&at.chunk) {
            set.remove(&at);
        }
    }

    fn reject(&mut self, at: PartRef) -> String {
        self.dir
            .keep_corrupt(at.chunk, at.attempt, at.from)
            .display()
            .to_string()
    }

    fn ended(&mut self, chunk: u64) {
        let _ = self.dir.remove_chunk(chunk);
        let claims: Vec<(u64, u32)> = self
            .claims
            .iter()
            .filter(|c| c.0 == chunk)
            .copied()
            .collect();
        for (c, a) in claims {
            let _ = self.dir.remove_claim(c, a);
            self.claims.remove(&(c, a));
            self.missing.remove(&(c, a));
        }
        // Parts of this chunk still on disk (late duplicates) are dropped with it.
        if let Ok(parts) = self.dir.parts() {
            for (c, a, f) in parts.into_iter().filter(|p| p.0 == chunk) {
                let _ = self.dir.remove_part(c, a, f);
            }
        }
        self.left.remove(&chunk);
    }

    fn stop_all(&mut self) -> Result<()> {
        Ok(self.dir.put_control("stop", "stop\n")?)
    }

    fn heartbeat(&mut self, seq: u64) -> Result<()> {
        Ok(self.dir.put_control("driver.beat", &format!("{seq}\n"))?)
    }

    fn audit(&mut self, assignments: &[(u64, u32, String, u64, bool)]) -> Vec<(u64, u32, bool)> {
        let mut now_missing = HashSet::new();
        let mut confirmed = Vec::new();
        for (chunk, attempt, key, seq, claimed) in assignments {
            let (c, a) = (*chunk, *attempt);
            let present = if *claimed {
                self.dir.claimed(c, a).exists()
            } else {
                self.dir.ticket_exists(key, *seq)
                    || self.dir.void_ticket(key, *seq).exists()
                    || self.dir.claimed(c, a).exists()
            };
            if present {
                continue;
            }
            if self.missing.contains(&(c, a)) {
                confirmed.push((c, a, self.dir.chunk_exists(c)));
            } else {
                now_missing.insert((c, a));
            }
        }
        self.missing = now_missing;
        confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::worker::{WorkerConfig, WorkerSession};

    fn network_broker() -> (tempfile::TempDir, FsBroker) {
        let t = tempfile::tempdir().unwrap();
        let dir = SessionDir::create(t.path().join("s")).unwrap();
        dir.write_config(&WorkerConfig::default()).unwrap();
        let b = FsBroker::new(dir, true, Duration::from_secs(5));
        (t, b)
    }

    fn hellos(events: &[BrokerEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, BrokerEvent::Hello { .. }))
            .count()
    }

    #[test]
    fn a_round_of_tickets_is_written_together_with_each_result_in_its_place() {
        let (_t, mut b) = network_broker();
        let keys: Vec<String> = (0..20).map(|i| format!("b1-{i}+00{i:02}")).collect();
        for k in &keys[..19] {
            b.welcome(k).unwrap();
        }
        // Two tickets each (a run and a prefetch), the last worker never welcomed: its
        // inbox does not exist, so its ticket fails, and only its.
        let tickets: Vec<Ticket> = keys
            .iter()
            .flat_map(|k| [0, 1].map(|seq| (k, seq)))
            .map(|(k, seq)| Ticket {
                seq,
                kind: shoal_core::protocol::TicketKind::Run,
                chunk: seq,
                attempt: 1,
                worker: k.clone(),
                ..Ticket::default()
            })
            .collect();
        let written = b.assign_all(&tickets);
        assert_eq!(written.len(), tickets.len());
        for (t, r) in tickets.iter().zip(&written) {
            let unwelcomed = t.worker == keys[19];
            assert_eq!(r.is_err(), unwelcomed, "{} {}: {r:?}", t.worker, t.seq);
            assert_eq!(b.dir.ticket_exists(&t.worker, t.seq), !unwelcomed);
        }
    }

    #[test]
    fn on_a_shared_filesystem_hellos_are_looked_for_more_often_while_workers_are_awaited() {
        for awaited in [false, true] {
            let (t, mut b) = network_broker();
            b.awaiting(awaited);
            assert_eq!(hellos(&b.poll(true).unwrap()), 0);
            let _worker = WorkerSession::open(t.path().join("s"), Some("w1")).unwrap();
            // Past the 400 ms of an awaited worker, well short of the usual second.
            std::thread::sleep(Duration::from_millis(450));
            assert_eq!(hellos(&b.poll(true).unwrap()), usize::from(awaited));
        }
    }

    #[test]
    fn awaiting_workers_costs_no_more_listings_than_the_usual_cadence() {
        let (_t, mut b) = network_broker();
        b.welcome("w0+1").unwrap();
        b.awaiting(true);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            b.poll(true).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        // The first poll lists all three directories; after that, 7 a second (8 usually).
        assert!(b.listings <= 3 + 14, "{} listings in 2 s", b.listings);
    }

    #[test]
    fn while_an_array_arrives_its_next_hellos_are_looked_for_six_times_a_second() {
        let (t, mut b) = network_broker();
        b.welcome("w0+1").unwrap();
        b.awaiting(true);
        let found = |b: &mut FsBroker| {
            let seen = Instant::now();
            while hellos(&b.poll(true).unwrap()) == 0 {
                assert!(seen.elapsed() < Duration::from_secs(2), "no hello");
                b.wait(Duration::from_secs(1));
            }
            seen.elapsed()
        };
        b.poll(true).unwrap();
        let _w1 = WorkerSession::open(t.path().join("s"), Some("w1")).unwrap();
        found(&mut b);
        // The scan found one: the next worker of the array is seen within one short cadence.
        let _w2 = WorkerSession::open(t.path().join("s"), Some("w2")).unwrap();
        let took = found(&mut b);
        assert!(took < Duration::from_millis(300), "{took:?}");
        // Once a scan finds none, back to the awaited cadence (7 listings a second).
        b.poll(true).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        b.poll(true).unwrap();
        let before = b.listings;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            b.poll(true).unwrap();
            b.wait(Duration::from_secs(1));
        }
        assert!(
            b.listings - before <= 15,
            "{} listings in 2 s",
            b.listings - before
        );
    }

    #[test]
    fn before_any_worker_is_welcomed_hellos_are_looked_for_six_times_a_second() {
        let (t, mut b) = network_broker();
        b.awaiting(true);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            b.poll(true).unwrap();
            b.wait(Duration::from_secs(1));
        }
        // The first poll lists all three directories; after that, 7 a second at most.
        assert!(b.listings <= 3 + 14, "{} listings in 2 s", b.listings);
        let _worker = WorkerSession::open(t.path().join("s"), Some("w1")).unwrap();
        let seen = Instant::now();
        while hellos(&b.poll(true).unwrap()) == 0 {
            assert!(seen.elapsed() < Duration::from_secs(1), "no hello");
            b.wait(Duration::from_secs(1));
        }
        assert!(
            seen.elapsed() < Duration::from_millis(300),
            "{:?}",
            seen.elapsed()
        );
    }
}

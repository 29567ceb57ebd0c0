//! The engine thread's loop: it feeds the ledger what the broker and the scheduler report,
//! carries out the ledger's decisions through the broker, keeps the right number of workers,
//! judges liveness, and keeps the session record and the progress display current. All the
//! engine's I/O happens here; the decisions are made by `ledger.rs` and `fleet.rs`.

use crate::broker::{Broker, BrokerEvent, PartRef};
use crate::fleet::{self, Fleet, Welcome};
use crate::handle::{EngineOptions, Event, EVENTS_CAP};
use crate::ledger::{Cause, Outcome, PartFate, PartInfo, Released};
use crate::progress::Progress;
use crate::record;
use crate::state::{Shared, Stop};
use crossbeam_channel::{Sender, TrySendError};
use shoal_core::clock::{ChangeWatch, StallClock};
use shoal_core::index::{IndexEntry, IndexWriter};
use shoal_core::journal::{ChunkDone, Journal, WorkerEnd};
use shoal_core::layout::{key_id, Stream};
use shoal_core::protocol::{ResultHeader, Ticket, TicketKind};
use shoal_core::session::SessionMeta;
use shoal_core::{CoreError, SessionDir};
use shoal_sched::shapes::{shape_of, ShapeId, Shaped};
use shoal_sched::{LaunchSpec, Scheduler, WorkerState};
use shoal_wire::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIN_SLEEP: Duration = Duration::from_micros(500);
const MAX_SLEEP_LOCAL: Duration = Duration::from_millis(10);
const MAX_SLEEP_SHARED: Duration = Duration::from_millis(200);
const CONTROL_EVERY: Duration = Duration::from_millis(250);
/// The driver's heartbeat for the workers (and, on a shared filesystem, its own probe).
const BEAT_EVERY: Duration = Duration::from_secs(2);
/// How often assignments are checked for vanished files (a miss must repeat to count).
const AUDIT_EVERY: Duration = Duration::from_secs(2);
/// The scheduler's events are cheap to take (its queries run on its own thread, at their own
/// pace): take them this often, so a running worker is not mistaken for a queued one.
const EVENTS_EVERY: Duration = Duration::from_millis(100);
/// A cluster scale-up waits this long after the work first asked for more workers, so that a
/// burst of chunks (a map sends its chunks one by one) becomes one submission.
const GATHER: Duration = Duration::from_millis(50);
/// ... and while the burst goes on (a chunk came within GATHER) and is short of the capacity,
/// up to this long: on a network filesystem each chunk is a few round trips, so a map's
/// first 50 ms held 16 of 24 chunks, and the other 8 workers were asked for a poll interval
/// later (1.2 s late on slurm-multinode: 8 of 24 CPUs idle that long).
const GATHER_MAX: Duration = Duration::from_millis(400);
/// Queued workers are given back only after the work has been short of them this long:
/// back-to-back maps must not make the engine cancel and resubmit jobs in between.
const GIVE_BACK_AFTER: Duration = Duration::from_secs(3);
/// A worker whose connection ended (TCP) is lost with the scheduler's reason when the
/// scheduler reports its job's end within this long (at least two of its polls), else with
/// the connection's: messages say the same on both transports.
const GONE_GRACE: Duration = Duration::from_secs(3);
/// A worker's next ticket is written when it has about this much work left: more than the
/// driver takes to see its parts (a part of quick tasks is published once a second, listed
/// within a quarter second) and little enough that the ticket's chunk, cut for the map's
/// progress when it was made, does not wait behind a long one (`Ledger::prefetch_tasks`).
const PREFETCH_AHEAD: f64 = 2.0;
/// ... and never fewer tasks than this: a chunk of one slow task gets its next ticket when
/// it starts.
const PREFETCH_MIN_TASKS: u64 = 2;

/// Since when a shape's work has wanted more workers, and when its outstanding chunks last
/// grew (a burst still arriving).
#[derive(Debug, Clone, Copy)]
struct Wanted {
    since: Instant,
    outstanding: usize,
    grew: Instant,
}

pub(crate) struct Runner {
    dir: SessionDir,
    pub(crate) shared: Arc<Shared>,
    tx: Sender<Event>,
    /// Events the caller has not taken yet (the channel was full).
    outbox: VecDeque<Event>,
    spec: LaunchSpec,
    options: EngineOptions,
    meta: SessionMeta,
    broker: Box<dyn Broker>,
    network: bool,
    fleet: Fleet,
    liveness: ChangeWatch<String>,
    clock: StallClock,
    /// What each worker last said it runs (from its heartbeat).
    hints: HashMap<String, (u64, u32, u32)>,
    detached: HashSet<String>,
    /// Checkpoints interrupted tasks left, by chunk (removed when the chunk ends).
    checkpoints: HashMap<u64, Vec<u32>>,
    /// Workers whose loss the broker reported (TCP: a disconnect) and counted already.
    lost_by_broker: HashSet<String>,
    /// Workers whose connection ended, waiting for the scheduler's reason (see GONE_GRACE).
    gone: HashMap<String, (Instant, String)>,
    index: IndexWriter,
    /// The session's event record for `shoal top` / `shoal show`, by worker id.
    journal: Journal,
    progress: Progress,
    /// Workers in a row that ended before finishing any task, per shape.
    start_failures: HashMap<ShapeId, u32>,
    /// Shapes whose workers can never start, with the reason their tasks fail with (the
    /// pool's own shape never: its failure ends the session).
    dead: HashMap<ShapeId, String>,
    /// Per worker shape: since when there have been more queued workers than work (see
    /// GIVE_BACK_AFTER), how the work has wanted more workers than there are (see
    /// GATHER), and the last submission.
    surplus_since: HashMap<ShapeId, Instant>,
    wanted: HashMap<ShapeId, Wanted>,
    last_submit: HashMap<ShapeId, Instant>,
    driver_seq: u64,
    /// New scheduler jobs since the record was last written: write it now, so that a driver
    /// killed right after a submission leaves jobs `shoal cancel` can find.
    jobs_changed: bool,
    /// A moving mean of how long a task takes here, from the parts (None: none seen yet).
    task_secs: Option<f64>,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dir: SessionDir,
        shared: Arc<Shared>,
        tx: Sender<Event>,
        spec: LaunchSpec,
        options: EngineOptions,
        meta: SessionMeta,
        broker: Box<dyn Broker>,
        network: bool,
        journal: Journal,
    ) -> Self {
        let progress = Progress::new(options.progress, &dir.id());
        let clock = StallClock::new(options.stall_step);
        let fleet = Fleet::new(options.stranger_grace);
        Runner {
            index: IndexWriter::new(&dir),
            journal,
            dir,
            shared,
            tx,
            outbox: VecDeque::new(),
            spec,
            options,
            meta,
            broker,
            network,
            fleet,
            liveness: ChangeWatch::default(),
            clock,
            hints: HashMap::new(),
            detached: HashSet::new(),
            checkpoints: HashMap::new(),
            lost_by_broker: HashSet::new(),
            gone: HashMap::new(),
            progress,
            start_failures: HashMap::new(),
            dead: HashMap::new(),
            last_submit: HashMap::new(),
            surplus_since: HashMap::new(),
            wanted: HashMap::new(),
            driver_seq: 0,
            jobs_changed: false,
            task_secs: None,
        }
    }

    pub(crate) fn run(&mut self, sched: &mut Shaped) {
        let max_sleep = if self.network {
            MAX_SLEEP_SHARED
        } else {
            MAX_SLEEP_LOCAL
        };
        let meta_every = if self.network {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        let mut sleep = MIN_SLEEP;
        let mut last_poll: Option<Instant> = None;
        let mut last_meta = Instant::now();
        let mut last_beat: Option<Instant> = None;
        let mut last_control = Instant::now();
        let mut last_audit = Instant::now();
        loop {
            let stop = self.shared.lock().stop;
            if stop == Stop::Now {
                break;
            }
            self.clock.tick();
            let mut busy = self.flush_outbox();
            busy |= self.serve_requests(sched);
            busy |= self.poll_broker(sched);
            if last_poll.is_none_or(|t| t.elapsed() >= sched.poll_interval().min(EVENTS_EVERY)) {
                last_poll = Some(Instant::now());
                busy |= self.poll_scheduler(sched);
                self.broker.awaiting(self.fleet.awaited() > 0);
                self.settle_gone(sched);
                self.check_liveness(sched);
                self.check_suspended(sched);
                self.check_strangers(sched);
            }
            if last_audit.elapsed() >= AUDIT_EVERY && self.outbox.is_empty() {
                last_audit = Instant::now();
                self.audit(sched);
            }
            if let Stop::Graceful(grace) = stop {
                self.stop_gracefully(sched, grace);
                break;
            }
            if !self.failed() {
                self.adopt_shapes(sched);
                busy |= self.assign(sched);
                self.scale(sched);
            }
            if last_control.elapsed() >= CONTROL_EVERY {
                last_control = Instant::now();
                if self.dir.control("cancel").exists() && !self.failed() {
                    self.fail(sched, "session cancelled by `shoal cancel`".into());
                }
            }
            if last_beat.is_none_or(|t| t.elapsed() >= BEAT_EVERY) {
                last_beat = Some(Instant::now());
                self.driver_seq += 1;
                if let Err(e) = self.broker.heartbeat(self.driver_seq) {
                    self.io_failed(sched, e);
                }
            }
            if last_meta.elapsed() >= meta_every || std::mem::take(&mut self.jobs_changed) {
                last_meta = Instant::now();
                self.write_meta(sched);
            }
            if busy || last_meta.elapsed().is_zero() {
                let stats = self.shared.lock().stats.clone();
                self.progress.draw(&stats);
            }
            sleep = if busy {
                MIN_SLEEP
            } else {
                (sleep * 2).min(max_sleep)
            };
            if self.shared.lock().stop == Stop::No {
                self.broker.wait(sleep);
            }
        }
        let _ = sched.cancel_all();
        self.refresh(sched);
        self.write_meta(sched);
        let stats = self.shared.lock().stats.clone();
        self.progress.finish(&stats);
    }

    fn failed(&self) -> bool {
        self.shared.lock().fatal.is_some()
    }

    // ------------------------------------------------------------ events to the caller

    fn emit(&mut self, ev: Event) {
        if !self.outbox.is_empty() {
            self.outbox.push_back(ev);
            return;
        }
        match self.tx.try_send(ev) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(ev)) => self.outbox.push_back(ev),
        }
    }

    fn flush_outbox(&mut self) -> bool {
        let mut sent = false;
        while let Some(ev) = self.outbox.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => sent = true,
                Err(TrySendError::Full(ev)) => {
                    self.outbox.push_front(ev);
                    break;
                }
            }
        }
        sent
    }

    /// Whether there is room to read more results (a slow caller holds them on disk).
    fn room(&self) -> bool {
        self.outbox.is_empty() && self.tx.len() < EVENTS_CAP / 2
    }

    // ------------------------------------------------------------ requests and the broker

    fn serve_requests(&mut self, sched: &mut Shaped) -> bool {
        let (requests, free) = {
            let mut st = self.shared.lock();
            (
                std::mem::take(&mut st.requests),
                std::mem::take(&mut st.free_blobs),
            )
        };
        for b in free {
            let _ = self.dir.remove_blob(b);
        }
        let any = !requests.is_empty();
        for o in requests {
            match o {
                // Withdrawn while queued: the handle settled the books, its files go now.
                Outcome::Ended { chunk } => self.broker.ended(chunk),
                other => self.outcomes(sched, vec![other], None),
            }
        }
        any
    }

    fn poll_broker(&mut self, sched: &mut Shaped) -> bool {
        self.broker_events(sched, false)
    }

    /// Handle what the broker saw; `now`: scan results and claims whatever the cadence.
    fn broker_events(&mut self, sched: &mut Shaped, now: bool) -> bool {
        let polled = if now && self.room() {
            self.broker.poll_now()
        } else {
            self.broker.poll(self.room())
        };
        let events = match polled {
            Ok(e) => e,
            Err(e) => {
                self.io_failed(sched, e);
                return false;
            }
        };
        let mut busy = false;
        for ev in events {
            busy |= !matches!(ev, BrokerEvent::Beat { .. });
            match ev {
                BrokerEvent::Hello { key, info } => {
                    self.journal_startup(key_id(&key), info.startup);
                    self.journal
                        .worker_announced(key_id(&key), &info.host, info.pid);
                    self.on_hello(sched, &key);
                }
                BrokerEvent::Claimed { chunk, attempt } => {
                    let (first, holder, ntasks) = {
                        let mut st = self.shared.lock();
                        let first = st.ledger.started(chunk, attempt);
                        let holder = st
                            .ledger
                            .holder(chunk)
                            .filter(|h| h.1 == attempt)
                            .map(|h| key_id(h.0).to_string());
                        let ntasks = st.ledger.progress(chunk).map_or(0, |(n, c)| n - c);
                        (first, holder, ntasks)
                    };
                    if let Some(worker) = holder {
                        self.journal.chunk_started(chunk, &worker, ntasks);
                    }
                    if first {
                        self.emit(Event::Started { chunk });
                    }
                }
                BrokerEvent::Part {
                    header,
                    payload,
                    at,
                } => self.on_part(sched, header, payload, at),
                BrokerEvent::Corrupt { at, reason, kept } => {
                    let why = format!("{reason} (a copy is kept at {kept})");
                    let o = self
                        .shared
                        .lock()
                        .ledger
                        .corrupt(at.chunk, at.attempt, &why);
                    self.outcomes(sched, o, None);
                }
                BrokerEvent::Beat { key, beat } => {
                    let now = self.clock.now();
                    self.liveness.observe(&key, beat.seq, now);
                    if let Some(r) = beat.running {
                        self.hints.insert(key, r);
                    }
                }
                BrokerEvent::Gone { key, reason } => {
                    // The scheduler usually says why soon after (killed by its time limit,
                    // out of memory): its reason is the user's; the connection's is the
                    // fallback after GONE_GRACE (see settle_gone).
                    self.gone.entry(key).or_insert((Instant::now(), reason));
                }
                BrokerEvent::Left { key } => self.left(sched, &key),
                BrokerEvent::Note(text) => self.broker_note(&text),
                BrokerEvent::Revoked { chunk, attempt, ok } => {
                    let o = self.shared.lock().ledger.revoked(chunk, attempt, ok);
                    self.outcomes(sched, o, None);
                }
            }
        }
        busy
    }

    /// A worker's own measure of its start-up, with its first announcement only.
    fn journal_startup(&mut self, worker: &str, startup: Option<f64>) {
        if let Some(secs) = startup.filter(|_| self.journal.needs_announcement(worker)) {
            self.journal.worker_startup(worker, secs);
        }
    }

    fn on_hello(&mut self, sched: &mut Shaped, key: &str) {
        let decision = self.fleet.hello(key, Instant::now());
        match decision {
            Welcome::Wait => {}
            Welcome::Fence(reason) => self.fence(sched, key, &reason, false),
            Welcome::Accept | Welcome::Supersede(_) => {
                if let Welcome::Supersede(old) = &decision {
                    self.lose(
                        sched,
                        old,
                        "its job started again under the same id (the site reran it)",
                    );
                }
                let shape = shape_of(key_id(key));
                if !self.shared.lock().ledger.join_shaped(key, shape) {
                    self.fence(sched, key, "it was given up on before", false);
                    return;
                }
                if let Err(e) = self.broker.welcome(key) {
                    self.io_failed(sched, e);
                    return;
                }
                self.liveness.start(&key.to_string(), self.clock.now());
            }
        }
    }

    fn on_part(&mut self, sched: &mut Shaped, header: ResultHeader, payload: Bytes, at: PartRef) {
        let Some(chunk) = self.shared.lock().chunks.get(&at.chunk).cloned() else {
            self.broker.consumed(at); // its chunk ended: a late duplicate
            return;
        };
        let fits = header.chunk == at.chunk
            && header.attempt == at.attempt
            && header.from == at.from
            && header.first_task == chunk.first_task
            && header.ntasks == chunk.ntasks
            && u64::from(header.from) + u64::from(header.count) <= u64::from(chunk.ntasks);
        if !fits {
            let kept = self.broker.reject(at);
            let why = format!(
                "a result that does not answer this chunk: its header says chunk {}, tasks {}..{} of {} (attempt {}), but chunk {} has tasks {}..{} (a copy is kept at {kept})",
                header.chunk,
                header.first_task + u64::from(header.from),
                header.first_task + u64::from(header.from + header.count),
                header.ntasks,
                header.attempt,
                chunk.chunk,
                chunk.first_task,
                chunk.first_task + u64::from(chunk.ntasks),
            );
            let o = self
                .shared
                .lock()
                .ledger
                .corrupt(at.chunk, at.attempt, &why);
            self.outcomes(sched, o, None);
            return;
        }
        let info = PartInfo {
            chunk: at.chunk,
            attempt: at.attempt,
            from: header.from,
            count: header.count,
            last: header.last,
            release: header.release.as_ref().map(|r| Released {
                charged: r.charged(),
                checkpoint: r.checkpoint,
                reason: r.reason.clone(),
            }),
        };
        if header.release.is_some() {
            self.released(sched, &header);
        }
        let bound = self.learn_task_time(&header);
        let fate = {
            let mut st = self.shared.lock();
            if bound.is_some() {
                st.ledger.set_prefetch_tasks(bound);
            }
            st.ledger.part(info)
        };
        self.fleet.produced(&header.worker);
        self.start_failures.remove(&shape_of(&header.worker));
        let part_done = |duplicate| ChunkDone {
            chunk: at.chunk,
            worker: key_id(&header.worker),
            ntasks: header.count,
            nfailed: header.nfailed(),
            elapsed: header.elapsed,
            durations: &[],
            duplicate,
        };
        match fate {
            PartFate::Later => {}
            PartFate::Stale => {
                self.journal.chunk_finished(&part_done(true));
                self.broker.consumed(at);
            }
            PartFate::Used(outcomes) => {
                self.journal.chunk_finished(&part_done(false));
                if let Err(e) = self.index.append(&IndexEntry::of(&header)) {
                    self.io_failed(sched, e);
                }
                let mut payload = Some(payload);
                let mut rest = Vec::new();
                // A result is emitted once its part (and, if it was the chunk's last, the
                // chunk's files) are gone: whoever holds every result sees a settled work dir.
                let mut results = Vec::new();
                for o in outcomes {
                    match o {
                        Outcome::Deliver {
                            from, count, skip, ..
                        } => {
                            let first = header.first_task + u64::from(from);
                            if let Some(e) = &header.chunk_error {
                                self.journal.tasks_failed(first, count, e);
                            }
                            for f in header.failed.iter().filter(|f| f.index >= skip) {
                                let task = first + u64::from(f.index - skip);
                                self.journal.tasks_failed(task, 1, &f.traceback);
                            }
                            let failed = if header.chunk_error.is_some() {
                                count
                            } else {
                                header
                                    .failed
                                    .iter()
                                    .filter(|f| (skip..skip + count).contains(&f.index))
                                    .count() as u32
                            };
                            {
                                let mut st = self.shared.lock();
                                st.stats.tasks_done += u64::from(count);
                                st.stats.tasks_failed += u64::from(failed);
                            }
                            results.push(Event::Result {
                                header: header.clone(),
                                payload: payload.take().unwrap_or_default(),
                                from,
                                count,
                                skip,
                            });
                        }
                        other => rest.push(other),
                    }
                }
                self.broker.consumed(at);
                let worker = header.worker.clone();
                self.outcomes(sched, rest, Some(&worker));
                for ev in results {
                    self.emit(ev);
                }
                self.journal_still_running(&header);
            }
        }
    }

    /// How long tasks take, from a part's time since its attempt started; and so how many
    /// tasks a worker may have left when it is given its next ticket (`PREFETCH_AHEAD`), for
    /// `Ledger::set_prefetch_tasks` (None: this part tells nothing). Until a part is seen, a
    /// worker's prefetch waits for nothing (quick tasks must not idle the first round, and
    /// the first round's chunks are the map's first ones).
    fn learn_task_time(&mut self, header: &ResultHeader) -> Option<u64> {
        if header.count == 0 || header.elapsed <= 0.0 || header.chunk_error.is_some() {
            return None;
        }
        let sample = header.elapsed / f64::from(header.from + header.count);
        let mean = match self.task_secs {
            Some(m) => 0.8 * m + 0.2 * sample,
            None => sample,
        };
        self.task_secs = Some(mean);
        let tasks = (PREFETCH_AHEAD / mean.max(1e-9))
            .ceil()
            .min(u32::MAX as f64) as u64;
        Some(tasks.max(PREFETCH_MIN_TASKS))
    }

    /// A worker gave an attempt back (preempted, or its job is out of time): it is leaving,
    /// so it gets no more work and its unclaimed tickets go to others now. The checkpoint
    /// it may have left is remembered for removal when its chunk ends.
    fn released(&mut self, sched: &mut Shaped, header: &ResultHeader) {
        if header.release.as_ref().is_some_and(|r| r.checkpoint) {
            self.checkpoints
                .entry(header.chunk)
                .or_default()
                .push(header.from + header.count);
        }
        let steals = {
            let mut st = self.shared.lock();
            st.ledger.drain(&header.worker);
            st.ledger.steal_from(&header.worker)
        };
        self.outcomes(sched, steals, None);
    }

    /// A part that is not its attempt's last: the worker still runs the chunk (the journal
    /// closed it with the part, so `shoal top` would show the worker idle).
    fn journal_still_running(&mut self, header: &ResultHeader) {
        if header.last {
            return;
        }
        let st = self.shared.lock();
        let running = st
            .ledger
            .holder(header.chunk)
            .is_some_and(|h| h.0 == header.worker && h.1 == header.attempt && h.2);
        let left = st.ledger.progress(header.chunk).map_or(0, |(n, c)| n - c);
        drop(st);
        if running && left > 0 {
            self.journal
                .chunk_started(header.chunk, key_id(&header.worker), left);
        }
    }

    /// Carry out ledger outcomes. `worker` is the worker the outcomes concern, if any.
    fn outcomes(&mut self, sched: &mut Shaped, outcomes: Vec<Outcome>, worker: Option<&str>) {
        for o in outcomes {
            match o {
                Outcome::Deliver { .. } => {} // only parts deliver (see on_part)
                Outcome::Fail {
                    chunk,
                    from,
                    count,
                    cause,
                    attempts,
                } => {
                    let Some(header) = self.shared.lock().chunks.get(&chunk).cloned() else {
                        continue;
                    };
                    let who = worker.map(key_id).unwrap_or("").to_string();
                    let tail = if who.is_empty() {
                        String::new()
                    } else {
                        self.stderr_tail(&who)
                    };
                    let entry = IndexEntry {
                        chunk,
                        attempt: 0,
                        first: header.first_task + u64::from(from),
                        count,
                        worker: who.clone(),
                        start: (0, 0),
                        marks: Vec::new(),
                        failed: Vec::new(),
                        chunk_error: Some(describe(&cause, attempts)),
                    };
                    if let Err(e) = self.index.append(&entry) {
                        self.io_failed(sched, e);
                    }
                    self.journal.chunk_lost(chunk, &who, count);
                    self.journal.tasks_failed(
                        header.first_task + u64::from(from),
                        count,
                        entry.chunk_error.as_deref().unwrap_or(""),
                    );
                    {
                        let mut st = self.shared.lock();
                        st.stats.tasks_done += u64::from(count);
                        st.stats.tasks_failed += u64::from(count);
                    }
                    self.emit(Event::Failed {
                        chunk: header,
                        from,
                        count,
                        cause,
                        attempts,
                        worker: who,
                        stderr_tail: tail,
                    });
                }
                Outcome::Ended { chunk } => self.end_chunk(chunk),
                Outcome::Revoke {
                    chunk,
                    attempt,
                    worker,
                    seq,
                } => match self.broker.revoke(&worker, chunk, attempt, seq) {
                    Ok(Some(ok)) => {
                        let withdrawn = self.shared.lock().ledger.progress(chunk).is_some();
                        let o = self.shared.lock().ledger.revoked(chunk, attempt, ok);
                        let ended = o.iter().any(|x| matches!(x, Outcome::Ended { .. }));
                        if ended && withdrawn {
                            self.withdrawn(chunk);
                        }
                        self.outcomes(sched, o, None);
                    }
                    Ok(None) => {}
                    Err(e) => self.io_failed(sched, e),
                },
            }
        }
    }

    /// A chunk withdrawn after its ticket was taken back: settle the books like `withdraw`.
    fn withdrawn(&mut self, chunk: u64) {
        let mut st = self.shared.lock();
        if let Some(h) = st.chunks.get(&chunk).cloned() {
            st.stats.tasks_total -= u64::from(h.ntasks);
        }
        drop(st);
        self.emit(Event::Withdrawn { chunk });
    }

    fn end_chunk(&mut self, chunk: u64) {
        self.broker.ended(chunk);
        for task in self.checkpoints.remove(&chunk).unwrap_or_default() {
            let _ = self.dir.remove_checkpoint(chunk, task);
        }
        let free = {
            let mut st = self.shared.lock();
            match st.chunks.remove(&chunk) {
                Some(h) => st.blobs.chunk_ended(&h.blobs),
                None => Vec::new(),
            }
        };
        for b in free {
            let _ = self.dir.remove_blob(b);
        }
        self.shared.room.notify_all();
    }

    // ------------------------------------------------------------ assignment

    fn assign(&mut self, sched: &mut Shaped) -> bool {
        let assigns = {
            let mut st = self.shared.lock();
            let mut a = st.ledger.assign();
            if a.is_empty() && st.ledger.queued() == 0 {
                // Idle workers and prefetched tickets elsewhere: move those to the idle ones
                // (of the same shape: no other worker could take them).
                let mut idle: HashMap<ShapeId, usize> = HashMap::new();
                for w in st.ledger.idle_workers() {
                    if !self.detached.contains(&w) {
                        *idle
                            .entry(st.ledger.worker_shape(&w).unwrap_or(0))
                            .or_default() += 1;
                    }
                }
                if !idle.is_empty() {
                    let busy: Vec<String> = st
                        .ledger
                        .unclaimed()
                        .into_iter()
                        .filter(|u| st.ledger.load(&u.2) > 1)
                        .map(|u| u.2)
                        .collect();
                    let mut steals = Vec::new();
                    for w in busy {
                        let shape = st.ledger.worker_shape(&w).unwrap_or(0);
                        if let Some(n) = idle.get_mut(&shape).filter(|n| **n > 0) {
                            *n -= 1;
                            steals.extend(st.ledger.steal_from(&w));
                        }
                    }
                    drop(st);
                    if !steals.is_empty() {
                        self.outcomes(sched, steals, None);
                        a = self.shared.lock().ledger.assign();
                    }
                }
            }
            a
        };
        let any = !assigns.is_empty();
        let tickets: Vec<Ticket> = assigns
            .into_iter()
            .map(|a| Ticket {
                seq: a.seq,
                kind: TicketKind::Run,
                chunk: a.chunk,
                attempt: a.attempt,
                from: a.from,
                careful: a.careful,
                resume: a.resume,
                worker: a.worker,
            })
            .collect();
        let written = self.broker.assign_all(&tickets);
        for (ticket, r) in tickets.iter().zip(written) {
            if let Err(e) = r {
                if e_is_no_space(&e) {
                    self.io_failed(sched, e);
                    return any;
                }
                let reason = format!("its ticket could not be written: {e}");
                self.fence(sched, &ticket.worker, &reason, true);
            }
        }
        if any {
            self.shared.room.notify_all();
        }
        any
    }

    // ------------------------------------------------------------ workers

    /// A worker incarnation is gone: what it held runs elsewhere (the task it was running
    /// charged one loss).
    fn lose(&mut self, sched: &mut Shaped, key: &str, reason: &str) {
        let hint = self.hints.remove(key);
        let (outcomes, requeued) = {
            let mut st = self.shared.lock();
            let held: Vec<(u64, u32)> = st
                .ledger
                .running()
                .into_iter()
                .filter(|r| r.2 == key)
                .filter_map(|r| st.ledger.progress(r.0).map(|(n, c)| (r.0, n - c)))
                .collect();
            if !held.is_empty() {
                st.stats.workers_lost += 1;
            }
            (st.ledger.worker_gone(key, reason, hint), held)
        };
        let id = key_id(key).to_string();
        self.journal.worker_ended(&id, WorkerEnd::Lost, reason);
        for (chunk, ntasks) in requeued {
            self.journal.chunk_requeued(chunk, &id, ntasks);
        }
        self.outcomes(sched, outcomes, Some(key));
        self.broker.forget(key);
        self.liveness.forget(&key.to_string());
        self.detached.remove(key);
    }

    /// Workers whose connection ended and whose job the scheduler has not reported ended
    /// within the grace: lost with the connection's reason.
    fn settle_gone(&mut self, sched: &mut Shaped) {
        let grace = GONE_GRACE.max(sched.poll_interval() * 2);
        let due: Vec<(String, String)> = self
            .gone
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= grace)
            .map(|(k, (_, r))| (k.clone(), r.clone()))
            .collect();
        for (key, reason) in due {
            self.gone.remove(&key);
            let before = self.shared.lock().stats.workers_lost;
            self.lose(sched, &key, &reason);
            if self.shared.lock().stats.workers_lost > before {
                // Its job's end, reported later by the backend, is the same loss.
                self.lost_by_broker.insert(key);
            }
        }
    }

    /// A worker left on its own holding nothing (TCP: it said goodbye, then disconnected).
    fn left(&mut self, sched: &mut Shaped, key: &str) {
        self.gone.remove(key);
        self.journal
            .worker_ended(key_id(key), WorkerEnd::Exited, "");
        let o = self.shared.lock().ledger.worker_gone(key, "it left", None);
        self.outcomes(sched, o, Some(key));
        self.hints.remove(key);
        self.broker.forget(key);
        self.liveness.forget(&key.to_string());
        self.detached.remove(key);
    }

    /// A transport's message for the user, shown once and kept in `logs/transport.log`.
    fn broker_note(&mut self, text: &str) {
        self.progress
            .println(&format!("shoal {}: {text}", self.dir.id()));
        let path = self.dir.sub("logs").join("transport.log");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes());
        }
    }

    /// Give up on a worker: it must never get work again and should exit. `cancel`: also
    /// cancel its job (it cannot be trusted to exit by itself).
    fn fence(&mut self, sched: &mut Shaped, key: &str, reason: &str, cancel: bool) {
        // Counted first: whoever sees the fence file sees the count too. A fenced worker that
        // held a claimed chunk is also a lost one (docs/protocol.md: every such loss counts).
        {
            let mut st = self.shared.lock();
            st.stats.workers_fenced += 1;
            if st.ledger.running().iter().any(|r| r.2 == key) {
                st.stats.workers_lost += 1;
            }
        }
        self.gone.remove(key);
        if let Err(e) = self.broker.fence(key) {
            if e_is_no_space(&e) {
                self.io_failed(sched, e);
            }
        }
        self.journal
            .worker_ended(key_id(key), WorkerEnd::Fenced, reason);
        let o = self
            .shared
            .lock()
            .ledger
            .fence(key, reason, self.hints.get(key).copied());
        self.outcomes(sched, o, Some(key));
        self.hints.remove(key);
        self.liveness.forget(&key.to_string());
        if cancel {
            let id = key_id(key).to_string();
            let _ = sched.cancel(std::slice::from_ref(&id));
            self.fleet.retire(&id, Instant::now());
        }
    }

    fn poll_scheduler(&mut self, sched: &mut Shaped) -> bool {
        for note in sched.notes() {
            self.progress
                .println(&format!("shoal {}: {note}", self.dir.id()));
        }
        for (worker, job) in sched.placed() {
            let shown = shown_job(sched, &worker, &job);
            self.journal.worker_submitted(&worker, Some(&shown));
            self.jobs_changed = true;
        }
        let events = match sched.poll() {
            Ok(e) => e,
            Err(e) => {
                // The backend rides out transient failures itself: an error here is final.
                if !self.failed() {
                    self.fail(sched, e.to_string());
                }
                return false;
            }
        };
        let any = !events.is_empty();
        if events.iter().any(|e| {
            matches!(
                e.state,
                WorkerState::Exited | WorkerState::Lost(_) | WorkerState::Suspended
            )
        }) {
            // Results a worker published just before it ended count before its loss does.
            self.broker_events(sched, true);
        }
        let now = Instant::now();
        for ev in events {
            let was = self.fleet.job(&ev.worker).cloned();
            if let WorkerState::Unsatisfiable(reason) = &ev.state {
                let shape = shape_of(&ev.worker);
                self.shape_failed(sched, shape, format!("workers can never start: {reason}"));
                continue;
            }
            let resumed = was.as_ref().is_some_and(|j| j.suspended_since.is_some())
                && ev.state == WorkerState::Running;
            let Some(keys) = self.fleet.state(&ev.worker, &ev.state, now) else {
                if resumed {
                    for key in was.map(|j| j.keys).unwrap_or_default() {
                        if self.detached.remove(&key) {
                            self.shared.lock().ledger.resume(&key);
                        }
                    }
                }
                continue;
            };
            let lost = match &ev.state {
                WorkerState::Lost(r) => Some(r.clone()),
                _ => None,
            };
            let produced = was.as_ref().is_some_and(|j| j.produced);
            // A fenced incarnation was counted when it was fenced; one the broker reported lost
            // (TCP: a disconnect) was counted then.
            let mut counted = {
                let st = self.shared.lock();
                keys.iter().any(|k| st.ledger.is_fenced(k))
            };
            counted |= keys.iter().any(|k| self.lost_by_broker.remove(k));
            for key in &keys {
                self.gone.remove(key);
                let (known, holds) = {
                    let st = self.shared.lock();
                    (st.ledger.knows(key), st.ledger.load(key) > 0)
                };
                if known && (lost.is_some() || holds) {
                    let reason = lost
                        .clone()
                        .unwrap_or_else(|| "worker exited while holding a chunk".into());
                    let before = self.shared.lock().stats.workers_lost;
                    self.lose(sched, key, &reason);
                    counted |= self.shared.lock().stats.workers_lost > before;
                } else {
                    // It held nothing: gone without cost, but gone (no ticket may go to it).
                    let _ = self.shared.lock().ledger.worker_gone(key, "exited", None);
                    self.journal
                        .worker_ended(key_id(key), WorkerEnd::Exited, "");
                    self.broker.forget(key);
                    self.liveness.forget(key);
                }
            }
            if let Some(reason) = lost {
                if !counted {
                    self.shared.lock().stats.workers_lost += 1;
                }
                if self.disk_full() {
                    self.fail(sched, self.full_message());
                    continue;
                }
                if !produced {
                    self.start_failure(sched, &ev.worker, &reason);
                }
            }
        }
        self.refresh(sched);
        any
    }

    fn start_failure(&mut self, sched: &mut Shaped, id: &str, reason: &str) {
        let shape = shape_of(id);
        let failures = self.start_failures.entry(shape).or_insert(0);
        *failures += 1;
        let failures = *failures;
        if failures < self.options.max_start_failures {
            return;
        }
        let tail = self.stderr_tail(id);
        let mut msg =
            format!("{failures} workers in a row ended before finishing any task; last: {reason}");
        if !tail.trim().is_empty() {
            msg.push_str(&format!("\nworker stderr (tail):\n{}", tail.trim_end()));
        }
        msg.push_str(&format!(
            "\nhint: the last worker's reason is quoted above; workers' logs are in {}",
            self.dir.sub("logs").display()
        ));
        self.shape_failed(sched, shape, msg);
    }

    /// Workers of `shape` can never start (`message` says why). The pool's own
    /// shape ends the session; another shape's queued jobs are given back and its tasks fail
    /// with `message` (now and on every later call for it), while the pool's other work goes
    /// on.
    fn shape_failed(&mut self, sched: &mut Shaped, shape: ShapeId, message: String) {
        if shape == 0 {
            self.fail(sched, message);
            return;
        }
        if !self.dead.contains_key(&shape) {
            let label = sched.label(shape).to_string();
            // "workers can never start: ..." -> "workers of shape (gpus=1) can never start: ..."
            let message = match message.strip_prefix("workers ") {
                Some(rest) => format!("workers of shape ({label}) {rest}"),
                None => format!("workers of shape ({label}) cannot start: {message}"),
            };
            self.progress.println(&format!(
                "shoal {}: {message}; its tasks fail, the pool's other work goes on",
                self.dir.id()
            ));
            self.dead.insert(shape, message);
        }
        let (queued, _) = self.fleet.counts_of(shape);
        let ids = self.fleet.give_back_of(shape, queued);
        self.give_back(sched, ids);
        self.fail_dead(sched, shape);
    }

    /// Fail the queued chunks of a shape that can never start (see `shape_failed`).
    fn fail_dead(&mut self, sched: &mut Shaped, shape: ShapeId) {
        let Some(message) = self.dead.get(&shape).cloned() else {
            return;
        };
        let o = self
            .shared
            .lock()
            .ledger
            .fail_queued(shape, &Cause::Unstartable(message));
        self.outcomes(sched, o, None);
    }

    fn check_liveness(&mut self, sched: &mut Shaped) {
        let Some(timeout) = self.options.heartbeat_timeout else {
            return;
        };
        let now = self.clock.now();
        let mut silent = self.liveness.silent(now, timeout);
        if !silent.is_empty() {
            // Read once more (results and heartbeats) before giving up on anyone.
            self.broker_events(sched, true);
            silent = self.liveness.silent(now, timeout);
        }
        for key in silent {
            if self.detached.contains(&key) {
                continue; // suspended: judged when it resumes
            }
            let reason = format!(
                "no heartbeat from worker for {:.0} s",
                timeout.as_secs_f64()
            );
            self.fence(sched, &key, &reason, true);
            self.broker.forget(&key);
        }
    }

    fn check_suspended(&mut self, sched: &mut Shaped) {
        for keys in self
            .fleet
            .suspended_past(self.options.suspend_grace, Instant::now())
        {
            for key in keys {
                let o = self.shared.lock().ledger.detach(&key);
                self.detached.insert(key.clone());
                self.outcomes(sched, o, Some(&key));
            }
        }
    }

    fn check_strangers(&mut self, sched: &mut Shaped) {
        for key in self.fleet.strangers() {
            self.on_hello(sched, &key);
        }
    }

    fn audit(&mut self, sched: &mut Shaped) {
        let assignments: Vec<(u64, u32, String, u64, bool)> = {
            let st = self.shared.lock();
            let mut v: Vec<_> = st
                .ledger
                .unclaimed()
                .into_iter()
                .map(|(c, a, w, s)| (c, a, w, s, false))
                .collect();
            v.extend(
                st.ledger
                    .running()
                    .into_iter()
                    .map(|(c, a, w)| (c, a, w, 0, true)),
            );
            v
        };
        for (chunk, attempt, recoverable) in self.broker.audit(&assignments) {
            let detail = if recoverable {
                format!("the ticket or claim of attempt {attempt} disappeared; it runs again")
            } else {
                format!(
                    "its master copy {} and the ticket or claim of attempt {attempt} disappeared",
                    self.dir.chunk(chunk).display()
                )
            };
            let why = CoreError::Vanished { chunk, detail }.to_string();
            let o = self.shared.lock().ledger.vanished(chunk, recoverable, &why);
            self.outcomes(sched, o, None);
        }
    }

    // ------------------------------------------------------------ scaling

    /// Shapes the caller added (`Engine::add_shape`): their schedulers join the session's.
    fn adopt_shapes(&mut self, sched: &mut Shaped) {
        let new = std::mem::take(&mut self.shared.lock().new_shapes);
        for (label, scheduler) in new {
            sched.add(label, scheduler);
        }
    }

    /// Keep each worker shape's workers in line with its work: a shape's workers are asked
    /// for only while chunks of that shape are outstanding, and its queued ones given back
    /// when none are (its running ones exit by themselves once idle).
    fn scale(&mut self, sched: &mut Shaped) {
        for shape in sched.shapes() {
            self.scale_shape(sched, shape);
        }
    }

    fn scale_shape(&mut self, sched: &mut Shaped, shape: ShapeId) {
        if self.dead.contains_key(&shape) {
            self.fail_dead(sched, shape);
            return;
        }
        let outstanding = self.shared.lock().ledger.outstanding_of(shape);
        let (queued, running) = self.fleet.counts_of(shape);
        let warm = sched.keep_warm_of(shape);
        let capacity = sched.capacity_of(shape);
        let target = if warm {
            capacity
        } else {
            capacity.min(outstanding)
        };
        if !warm {
            let surplus = fleet::surplus(target, queued, running);
            if surplus > 0 {
                let since = *self.surplus_since.entry(shape).or_insert_with(Instant::now);
                let patience = GIVE_BACK_AFTER.max(sched.poll_interval() * 2);
                if since.elapsed() >= patience {
                    let ids = self.fleet.give_back_of(shape, surplus);
                    self.give_back(sched, ids);
                    self.surplus_since.remove(&shape);
                }
                return;
            }
            self.surplus_since.remove(&shape);
        }
        let active = queued + running;
        if active >= target {
            self.wanted.remove(&shape);
            return;
        }
        if !warm {
            let now = Instant::now();
            let w = self.wanted.entry(shape).or_insert(Wanted {
                since: now,
                outstanding,
                grew: now,
            });
            if outstanding > w.outstanding {
                w.outstanding = outstanding;
                w.grew = now;
            }
            let bursting = target < capacity && w.grew.elapsed() < GATHER;
            if w.since.elapsed() < GATHER || (bursting && w.since.elapsed() < GATHER_MAX) {
                return;
            }
        }
        self.wanted.remove(&shape);
        // While workers are still queued, work arriving in a trickle (single submits) is
        // grouped into one submission per poll interval instead of one array per chunk.
        let recently = self
            .last_submit
            .get(&shape)
            .is_some_and(|t| t.elapsed() < sched.poll_interval());
        if !warm && queued > 0 && recently {
            return;
        }
        match sched.submit_to(shape, &self.spec, target - active) {
            Ok(ids) => {
                // Their jobs are named when the submission goes through (`placed`).
                for id in &ids {
                    let shown = shown_job(sched, id, "");
                    self.journal
                        .worker_submitted(id, Some(shown.as_str()).filter(|s| !s.is_empty()));
                }
                self.last_submit.insert(shape, Instant::now());
                self.shared.lock().stats.workers_started += ids.len() as u64;
                self.fleet.submitted(&ids, Instant::now());
            }
            Err(e) => self.shape_failed(sched, shape, format!("workers could not be started: {e}")),
        }
    }

    /// Cancel queued jobs that never announced a worker (`Fleet::give_back`): they hold
    /// nothing.
    fn give_back(&mut self, sched: &mut Shaped, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let _ = sched.cancel(&ids);
        let now = Instant::now();
        for id in &ids {
            self.fleet.retire(id, now);
            self.journal.worker_ended(id, WorkerEnd::Retired, "");
        }
        self.refresh(sched);
    }

    fn stop_gracefully(&mut self, sched: &mut Shaped, grace: Duration) {
        let keys: Vec<String> = self
            .fleet
            .ids()
            .iter()
            .filter_map(|id| self.fleet.job(id))
            .flat_map(|j| j.keys.clone())
            .collect();
        for key in keys {
            let seq = self.shared.lock().ledger.take_seq(&key);
            let _ = self.broker.assign(&Ticket {
                seq,
                kind: TicketKind::Stop,
                worker: key.clone(),
                ..Default::default()
            });
        }
        let _ = self.broker.stop_all();
        if !sched.keep_warm() {
            // Queued workers have nothing to finish: do not wait for them to start.
            let (queued, _) = self.fleet.counts();
            let ids = self.fleet.give_back(queued);
            self.give_back(sched, ids);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.fleet.is_empty() {
            self.flush_outbox();
            self.poll_broker(sched);
            self.poll_scheduler(sched);
            std::thread::sleep(Duration::from_millis(5));
        }
        self.poll_broker(sched);
    }

    fn fail(&mut self, sched: &mut Shaped, message: String) {
        let _ = sched.cancel_all();
        {
            let mut st = self.shared.lock();
            if st.fatal.is_some() {
                return;
            }
            st.fatal = Some(message.clone());
        }
        self.shared.room.notify_all();
        self.emit(Event::Fatal { message });
    }

    /// A filesystem error on the driver's side. A full filesystem ends the session with that
    /// reason; other errors are noted and the loop goes on (the next try may succeed).
    fn io_failed(&mut self, sched: &mut Shaped, e: impl Into<crate::EngineError>) {
        let e = e.into();
        if e_is_no_space(&e) {
            self.fail(sched, e.to_string());
        } else {
            self.progress.note(&format!("{e}"));
        }
    }

    fn disk_full(&self) -> bool {
        nix::sys::statvfs::statvfs(self.dir.root())
            .map(|s| s.blocks_available() * s.fragment_size() <= 1 << 20)
            .unwrap_or(false)
    }

    fn full_message(&self) -> String {
        format!(
            "the work dir's filesystem is full (No space left on device): workers cannot write their results to {}\nhint: free space on it (or raise your quota), or pass work_dir=... on a filesystem with room",
            self.dir.root().display()
        )
    }

    fn stderr_tail(&self, worker: &str) -> String {
        let end = self.dir.log_len(worker, Stream::Stderr);
        let mut bytes = self
            .dir
            .read_log(worker, Stream::Stderr, 0, end, self.options.stderr_tail)
            .unwrap_or_default();
        if bytes.is_empty() {
            // TCP: a worker that died before it connected streamed nothing; its job's own
            // stderr is beside the log (`ID.err.job`) where the job could write it.
            if let Ok(all) = std::fs::read(self.dir.job_log(worker, Stream::Stderr)) {
                let keep = (self.options.stderr_tail as usize).min(all.len());
                bytes = all[all.len() - keep..].to_vec();
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn refresh(&mut self, sched: &Shaped) {
        let (queued, running) = self.fleet.counts();
        let mut st = self.shared.lock();
        st.stats.workers_running = running as u64;
        st.stats.workers_pending = queued as u64;
        st.stats.chunks_outstanding = st.ledger.outstanding() as u64;
        st.jobs = sched.job_ids();
    }

    fn write_meta(&mut self, sched: &mut Shaped) {
        self.refresh(sched);
        let st = self.shared.lock();
        record::apply(&mut self.meta, &st.stats, &st.jobs);
        if st.fatal.is_some() {
            self.meta.message = st.fatal.clone();
        }
        let total = st.stats.tasks_total;
        drop(st);
        if let Err(e) = self.dir.write_meta(&self.meta) {
            self.io_failed(sched, e);
        }
        self.journal.tasks_total(total);
        self.journal.flush();
    }
}

/// A worker's job as `shoal top`/`show` list it: the scheduler's name for it, and the label
/// of its worker shape when it has one (`1234_5 (cpus=2)`).
fn shown_job(sched: &Shaped, worker: &str, job: &str) -> String {
    let label = sched.label(shape_of(worker));
    match (job.is_empty(), label.is_empty()) {
        (_, true) => job.to_string(),
        (true, false) => format!("({label})"),
        (false, false) => format!("{job} ({label})"),
    }
}

fn e_is_no_space(e: &crate::EngineError) -> bool {
    matches!(e, crate::EngineError::Core(c) if c.is_no_space())
}

/// What a failure says, for errors and the index.
pub fn describe(cause: &Cause, attempts: u32) -> String {
    match cause {
        Cause::Lost(r) if attempts > 1 => {
            format!("{r} (its worker was lost {attempts} times while it ran; not retried again)")
        }
        Cause::Lost(r) => format!("{r} (its worker was lost while it ran; not retried)"),
        Cause::Corrupt(r) => {
            format!("its results could not be read back {attempts} times; last: {r}")
        }
        Cause::Incomplete(r) => r.clone(),
        Cause::Vanished(r) => r.clone(),
        Cause::Walltime(r) if attempts > 1 => format!(
            "{r}, {attempts} times: it alone needs longer than one job may run (not retried again)"
        ),
        Cause::Walltime(r) => format!("{r} (not retried)"),
        Cause::Preempted(r) => format!("{r}, without finishing (not retried again)"),
        Cause::Unstartable(r) => r.clone(),
    }
}

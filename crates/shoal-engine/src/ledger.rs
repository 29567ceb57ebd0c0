//! The ledger: who holds which chunk, which of its tasks are resolved, and how often it was
//! lost. It does no I/O; the engine feeds it what the transport and the scheduler report and
//! carries out the outcomes it returns. `tests/ledger_props.rs` drives it with random
//! interleavings and checks the promises of docs/protocol.md:
//!
//! - every task of every chunk is resolved exactly once (delivered, or failed for good), in
//!   order, so every result is *delivered* exactly once;
//! - a task is charged at most `max_attempts` losses of its worker before it fails; a lost
//!   worker costs only the task it was running (tasks it finished and published are kept,
//!   tasks it finished but had not yet published run again: execution is at-least-once);
//! - nothing stays pending forever while a healthy worker is there to take it;
//! - a chunk goes only to a worker of its *shape* (the resources its map or submit asked
//!   for, docs/resources.md): each shape has a queue of its own;
//! - a worker that gives an attempt back (preempted, out of time: a part with a release)
//!   costs nothing unless its task outlived the job's time limit without a checkpoint, and
//!   a task released [`MAX_RELEASES`] times in a row fails, so a preemption storm ends.
//!
//! A chunk's tasks run in order, so what is resolved is always a prefix `0..cursor`. An
//! attempt runs `cursor..ntasks` on one worker and publishes its results in *parts*; a part
//! from any attempt (an earlier one whose worker the engine gave up on included) extends the
//! prefix, and whatever it repeats is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

pub type ChunkId = u64;

/// A worker shape (0: the pool's own resources); chunks and workers carry one.
pub type Shape = u32;

/// What a worker last said it was running: (chunk, attempt, task index in the chunk).
pub type Hint = (ChunkId, u32, u32);

/// Releases of one task (preemptions, checkpointed walltime ends, yields) before it fails:
/// generous, since each one with a checkpoint is progress, but finite, so that a
/// preemption storm ends (docs/protocol.md, "Preemption and walltime").
pub const MAX_RELEASES: u32 = 50;

/// Why tasks failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The task's worker was lost while it ran, `attempts` times (the reason of the last).
    Lost(String),
    /// Its results could not be verified (torn, foreign, misplaced), `attempts` times.
    Corrupt(String),
    /// The worker finished the attempt without results for these tasks.
    Incomplete(String),
    /// The chunk's files disappeared from the work dir and its master copy with them.
    Vanished(String),
    /// The task ran past its worker job's time limit `attempts` times (the worker's words).
    Walltime(String),
    /// The task was given back (preempted, its job out of time) [`MAX_RELEASES`] times.
    Preempted(String),
    /// No worker of its shape can start (the scheduler refuses or can never run its jobs);
    /// the pool's other shapes go on.
    Unstartable(String),
}

/// Run tasks `from..` of `chunk` on `worker` as attempt `attempt` (ticket number `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    pub chunk: ChunkId,
    pub attempt: u32,
    pub worker: String,
    pub seq: u64,
    pub from: u32,
    pub careful: bool,
    /// Task `from` left a checkpoint: run it instead of the task.
    pub resume: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Deliver tasks `from..from + count` of `chunk`; they start `skip` values into the
    /// part's payload.
    Deliver {
        chunk: ChunkId,
        from: u32,
        count: u32,
        skip: u32,
    },
    /// Tasks `from..from + count` of `chunk` failed for good.
    Fail {
        chunk: ChunkId,
        from: u32,
        count: u32,
        cause: Cause,
        attempts: u32,
    },
    /// Every task of `chunk` is resolved: its files can go.
    Ended { chunk: ChunkId },
    /// Take back an assignment its worker has not claimed yet.
    Revoke {
        chunk: ChunkId,
        attempt: u32,
        worker: String,
        seq: u64,
    },
}

/// What a part says about itself, checked by the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub chunk: ChunkId,
    pub attempt: u32,
    pub from: u32,
    pub count: u32,
    pub last: bool,
    /// The worker gives the rest of the attempt back after this part.
    pub release: Option<Released>,
}

/// A release, as the ledger needs it (from `shoal_core::protocol::Release`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The interrupted task is charged an attempt (it outlived its job, no checkpoint).
    pub charged: bool,
    /// It left a checkpoint: the next attempt resumes from it.
    pub checkpoint: bool,
    pub reason: String,
}

/// What became of a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartFate {
    /// Used (its outcomes say what to deliver); remove the file.
    Used(Vec<Outcome>),
    /// Nothing new in it (a duplicate, or its chunk ended): remove the file.
    Stale,
    /// It starts past the resolved prefix (an earlier part not seen yet): leave it.
    Later,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Queued,
    Assigned {
        worker: String,
        attempt: u32,
        seq: u64,
    },
    Running {
        worker: String,
        attempt: u32,
        careful: bool,
    },
}

#[derive(Debug, Clone)]
struct Chunk {
    ntasks: u32,
    /// Tasks `0..cursor` are resolved.
    cursor: u32,
    /// Losses charged to task `suspect` (reset when the prefix moves past it).
    attempts: u32,
    suspect: u32,
    /// Losses of attempts that could not say which task was running (not careful yet).
    blind: u32,
    /// Corrupt results since the prefix last moved.
    corrupt: u32,
    /// Attempt numbers handed out so far.
    attempts_made: u32,
    /// Releases of the task at the prefix (reset when the prefix moves).
    releases: u32,
    /// The task whose checkpoint the next attempt resumes from.
    checkpoint: Option<u32>,
    careful: bool,
    place: Place,
    started: bool,
    withdrawing: bool,
    shape: Shape,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    next_seq: u64,
    held: BTreeSet<ChunkId>,
    /// Takes no new work (stopping, suspended, given back).
    draining: bool,
    shape: Shape,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    max_attempts: u32,
    /// Assignments a worker may hold beyond the one it runs.
    prefetch: usize,
    /// ... and only while what it holds has at most this many tasks left (None: no bound).
    /// A ticket is a promise of its chunk to one worker: given behind a long chunk, it runs
    /// late and makes the map's tail (1 s tasks on 24 workers: a chunk of 5 prefetched
    /// behind one of 21 ended 4 s after every other worker).
    prefetch_tasks: Option<u64>,
    chunks: BTreeMap<ChunkId, Chunk>,
    /// Chunks waiting for a worker, per shape.
    queues: BTreeMap<Shape, VecDeque<ChunkId>>,
    workers: HashMap<String, Slot>,
    fenced: HashSet<String>,
}

impl Ledger {
    pub fn new(max_attempts: u32, prefetch: usize) -> Self {
        Ledger {
            max_attempts: max_attempts.max(1),
            prefetch,
            prefetch_tasks: None,
            chunks: BTreeMap::new(),
            queues: BTreeMap::new(),
            workers: HashMap::new(),
            fenced: HashSet::new(),
        }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Bound the tasks a worker may have left when it gets a ticket beyond the one it runs
    /// (see `prefetch_tasks`); the engine sets it from how long tasks take.
    pub fn set_prefetch_tasks(&mut self, tasks: Option<u64>) {
        self.prefetch_tasks = tasks;
    }

    /// Tasks not yet resolved in what a worker holds (assigned or running).
    pub fn tasks_left(&self, worker: &str) -> u64 {
        self.workers
            .get(worker)
            .map_or(0, |s| Self::left_in(&self.chunks, s))
    }

    fn left_in(chunks: &BTreeMap<ChunkId, Chunk>, slot: &Slot) -> u64 {
        slot.held
            .iter()
            .filter_map(|id| chunks.get(id))
            .map(|c| u64::from(c.ntasks - c.cursor))
            .sum()
    }

    // ------------------------------------------------------------ chunks

    pub fn submit(&mut self, chunk: ChunkId, ntasks: u32) -> Vec<Outcome> {
        self.submit_shaped(chunk, ntasks, 0)
    }

    /// A chunk for workers of `shape` only.
    pub fn submit_shaped(&mut self, chunk: ChunkId, ntasks: u32, shape: Shape) -> Vec<Outcome> {
        if ntasks == 0 {
            return vec![Outcome::Ended { chunk }];
        }
        self.chunks.insert(
            chunk,
            Chunk {
                ntasks,
                cursor: 0,
                attempts: 0,
                suspect: 0,
                blind: 0,
                corrupt: 0,
                attempts_made: 0,
                releases: 0,
                checkpoint: None,
                careful: false,
                place: Place::Queued,
                started: false,
                withdrawing: false,
                shape,
            },
        );
        self.queues.entry(shape).or_default().push_back(chunk);
        Vec::new()
    }

    pub fn outstanding(&self) -> usize {
        self.chunks.len()
    }

    /// Chunks waiting for a worker (not assigned to anyone).
    pub fn queued(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Outstanding chunks of `shape` (queued or held).
    pub fn outstanding_of(&self, shape: Shape) -> usize {
        self.chunks.values().filter(|c| c.shape == shape).count()
    }

    /// The shape of an outstanding chunk.
    pub fn shape(&self, chunk: ChunkId) -> Option<Shape> {
        self.chunks.get(&chunk).map(|c| c.shape)
    }

    /// The shape a worker joined with.
    pub fn worker_shape(&self, worker: &str) -> Option<Shape> {
        self.workers.get(worker).map(|s| s.shape)
    }

    pub fn contains(&self, chunk: ChunkId) -> bool {
        self.chunks.contains_key(&chunk)
    }

    /// (ntasks, resolved prefix) of an outstanding chunk.
    pub fn progress(&self, chunk: ChunkId) -> Option<(u32, u32)> {
        self.chunks.get(&chunk).map(|c| (c.ntasks, c.cursor))
    }

    /// Where an outstanding chunk is: (worker, attempt, started), if assigned.
    pub fn holder(&self, chunk: ChunkId) -> Option<(&str, u32, bool)> {
        match &self.chunks.get(&chunk)?.place {
            Place::Queued => None,
            Place::Assigned {
                worker, attempt, ..
            } => Some((worker, *attempt, false)),
            Place::Running {
                worker, attempt, ..
            } => Some((worker, *attempt, true)),
        }
    }

    /// Every assignment not yet claimed, as (chunk, attempt, worker, seq).
    pub fn unclaimed(&self) -> Vec<(ChunkId, u32, String, u64)> {
        self.chunks
            .iter()
            .filter_map(|(&id, c)| match &c.place {
                Place::Assigned {
                    worker,
                    attempt,
                    seq,
                } => Some((id, *attempt, worker.clone(), *seq)),
                _ => None,
            })
            .collect()
    }

    /// Every claimed (running) attempt, as (chunk, attempt, worker).
    pub fn running(&self) -> Vec<(ChunkId, u32, String)> {
        self.chunks
            .iter()
            .filter_map(|(&id, c)| match &c.place {
                Place::Running {
                    worker, attempt, ..
                } => Some((id, *attempt, worker.clone())),
                _ => None,
            })
            .collect()
    }

    // ------------------------------------------------------------ workers

    /// A worker announced itself. False if it was fenced: it must not get work.
    pub fn join(&mut self, worker: &str) -> bool {
        self.join_shaped(worker, 0)
    }

    /// A worker of `shape` announced itself: it gets chunks of that shape only.
    pub fn join_shaped(&mut self, worker: &str, shape: Shape) -> bool {
        if self.fenced.contains(worker) {
            return false;
        }
        self.workers.entry(worker.to_string()).or_default().shape = shape;
        true
    }

    pub fn knows(&self, worker: &str) -> bool {
        self.workers.contains_key(worker)
    }

    pub fn is_fenced(&self, worker: &str) -> bool {
        self.fenced.contains(worker)
    }

    /// How many chunks a worker holds (assigned or running).
    pub fn load(&self, worker: &str) -> usize {
        self.workers.get(worker).map_or(0, |s| s.held.len())
    }

    /// Workers that hold nothing and may take work (candidates for a give-back).
    pub fn idle_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(_, s)| s.held.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Give this worker no new work (it is stopping, suspended, or being given back).
    pub fn drain(&mut self, worker: &str) {
        if let Some(s) = self.workers.get_mut(worker) {
            s.draining = true;
        }
    }

    /// A drained (suspended) worker resumed: it may take work again.
    pub fn resume(&mut self, worker: &str) {
        if let Some(s) = self.workers.get_mut(worker) {
            s.draining = false;
        }
    }

    /// Next ticket number for `worker` (stop tickets use them too).
    pub fn take_seq(&mut self, worker: &str) -> u64 {
        let slot = self.workers.entry(worker.to_string()).or_default();
        slot.next_seq += 1;
        slot.next_seq - 1
    }

    /// Hand queued chunks to workers of their shape with room: the least loaded first, so
    /// every worker gets one before any gets a second (its prefetch, once what it holds is
    /// nearly done: `set_prefetch_tasks`).
    pub fn assign(&mut self) -> Vec<Assign> {
        let mut out = Vec::new();
        let shapes: Vec<Shape> = self.queues.keys().copied().collect();
        for shape in shapes {
            self.assign_shape(shape, &mut out);
        }
        self.queues.retain(|_, q| !q.is_empty());
        out
    }

    fn assign_shape(&mut self, shape: Shape, out: &mut Vec<Assign>) {
        while self.queues.get(&shape).is_some_and(|q| !q.is_empty()) {
            let chunks = &self.chunks;
            let room = |s: &Slot| {
                s.held.is_empty()
                    || (s.held.len() <= self.prefetch
                        && self
                            .prefetch_tasks
                            .is_none_or(|n| Self::left_in(chunks, s) <= n))
            };
            let Some(worker) = self
                .workers
                .iter()
                .filter(|(_, s)| s.shape == shape && !s.draining && room(s))
                .min_by(|a, b| a.1.held.len().cmp(&b.1.held.len()).then(a.0.cmp(b.0)))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let id = self
                .queues
                .get_mut(&shape)
                .and_then(VecDeque::pop_front)
                .expect("not empty");
            let seq = self.take_seq(&worker);
            let chunk = self
                .chunks
                .get_mut(&id)
                .expect("queued chunks are outstanding");
            chunk.attempts_made += 1;
            let attempt = chunk.attempts_made;
            chunk.place = Place::Assigned {
                worker: worker.clone(),
                attempt,
                seq,
            };
            let (from, careful) = (chunk.cursor, chunk.careful);
            let resume = chunk.checkpoint == Some(from);
            self.workers
                .get_mut(&worker)
                .expect("chosen above")
                .held
                .insert(id);
            out.push(Assign {
                chunk: id,
                attempt,
                worker,
                seq,
                from,
                careful,
                resume,
            });
        }
    }

    /// A worker claimed its assignment. True the first time any attempt of the chunk starts
    /// (its tasks are now running: they can no longer be cancelled).
    pub fn started(&mut self, chunk: ChunkId, attempt: u32) -> bool {
        let Some(c) = self.chunks.get_mut(&chunk) else {
            return false;
        };
        if let Place::Assigned {
            worker, attempt: a, ..
        } = &c.place
        {
            if *a == attempt {
                c.place = Place::Running {
                    worker: worker.clone(),
                    attempt,
                    careful: c.careful,
                };
            }
        }
        let first = !c.started && matches!(c.place, Place::Running { .. });
        c.started |= first;
        first
    }

    /// A verified part arrived.
    pub fn part(&mut self, p: PartInfo) -> PartFate {
        let Some(c) = self.chunks.get_mut(&p.chunk) else {
            return PartFate::Stale;
        };
        if p.from > c.cursor {
            return PartFate::Later;
        }
        let end = p.from.saturating_add(p.count).min(c.ntasks);
        let mut out = Vec::new();
        if end > c.cursor {
            out.push(Outcome::Deliver {
                chunk: p.chunk,
                from: c.cursor,
                count: end - c.cursor,
                skip: c.cursor - p.from,
            });
            c.cursor = end;
            c.corrupt = 0;
            c.releases = 0;
            if c.cursor > c.suspect {
                c.attempts = 0;
            }
        }
        let current = match &c.place {
            Place::Running { attempt, .. } | Place::Assigned { attempt, .. } => {
                *attempt == p.attempt
            }
            Place::Queued => false,
        };
        // A release counts only from the current attempt, cut exactly at the prefix (an
        // earlier attempt's, or one another part already went past, says nothing new).
        if let Some(r) = p.release.as_ref().filter(|_| current && end == c.cursor) {
            if c.cursor < c.ntasks {
                self.give_back(p.chunk, r, &mut out);
                return if out.is_empty() {
                    PartFate::Stale
                } else {
                    PartFate::Used(out)
                };
            }
        } else if p.last && current && c.cursor < c.ntasks {
            // The worker says it is done, yet tasks are missing: fail them loudly.
            let missing = c.ntasks - c.cursor;
            out.push(Outcome::Fail {
                chunk: p.chunk,
                from: c.cursor,
                count: missing,
                cause: Cause::Incomplete(format!(
                    "the worker's results for this chunk stop after task {} of {}",
                    c.cursor, c.ntasks
                )),
                attempts: 1,
            });
            c.cursor = c.ntasks;
        }
        if c.cursor >= c.ntasks {
            self.end(p.chunk, &mut out);
        }
        if out.is_empty() {
            PartFate::Stale
        } else {
            PartFate::Used(out)
        }
    }

    /// The current attempt of `chunk` was given back at its prefix: queue the chunk again,
    /// charging the interrupted task only if it outlived its job without a checkpoint.
    fn give_back(&mut self, chunk: ChunkId, r: &Released, out: &mut Vec<Outcome>) {
        let max = self.max_attempts;
        let c = self.chunks.get_mut(&chunk).expect("outstanding");
        let at = c.cursor;
        if r.checkpoint {
            c.checkpoint = Some(at);
        }
        let failed = if r.charged {
            if c.suspect != at || c.attempts == 0 {
                c.suspect = at;
                c.attempts = std::mem::take(&mut c.blind);
            }
            c.attempts = (c.attempts + 1).min(max);
            (c.attempts >= max).then(|| (Cause::Walltime(r.reason.clone()), c.attempts))
        } else {
            c.releases += 1;
            (c.releases >= MAX_RELEASES).then(|| {
                let why = format!("{}; given back {MAX_RELEASES} times", r.reason);
                (Cause::Preempted(why), 0)
            })
        };
        if let Some((cause, attempts)) = failed {
            out.push(Outcome::Fail {
                chunk,
                from: at,
                count: 1,
                cause,
                attempts,
            });
            c.cursor += 1;
            c.attempts = 0;
            c.releases = 0;
            if c.cursor >= c.ntasks {
                self.end(chunk, out);
                return;
            }
        }
        self.requeue(chunk);
    }

    /// A part of `chunk`'s attempt `attempt` failed verification. The current attempt counts
    /// as failed; an earlier attempt's bad part costs nothing more.
    pub fn corrupt(&mut self, chunk: ChunkId, attempt: u32, reason: &str) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(c) = self.chunks.get_mut(&chunk) else {
            return out;
        };
        let current = match &c.place {
            Place::Running { attempt: a, .. } | Place::Assigned { attempt: a, .. } => *a == attempt,
            Place::Queued => false,
        };
        if !current {
            return out;
        }
        c.corrupt += 1;
        if c.corrupt >= self.max_attempts {
            let (from, count, attempts) = (c.cursor, c.ntasks - c.cursor, c.corrupt);
            out.push(Outcome::Fail {
                chunk,
                from,
                count,
                cause: Cause::Corrupt(reason.to_string()),
                attempts,
            });
            c.cursor = c.ntasks;
            self.end(chunk, &mut out);
        } else {
            self.requeue(chunk);
        }
        out
    }

    /// `worker` is gone (died, cancelled, timed out). `hint` is the last (chunk, attempt, task)
    /// it said it started. Work it had not claimed goes back without cost; the chunk it ran
    /// is charged one loss, blamed on the task that was running.
    pub fn worker_gone(&mut self, worker: &str, reason: &str, hint: Option<Hint>) -> Vec<Outcome> {
        self.release(worker, Some((reason, hint)))
    }

    /// `worker` is suspended: its chunks run elsewhere at no cost, and whatever it publishes
    /// if it resumes is still accepted (the first result wins).
    pub fn detach(&mut self, worker: &str) -> Vec<Outcome> {
        let out = self.release(worker, None);
        if let Some(s) = self.workers.get_mut(worker) {
            s.draining = true;
        }
        out
    }

    /// The engine gave up on `worker`: like `worker_gone`, and it may never take work again.
    pub fn fence(&mut self, worker: &str, reason: &str, hint: Option<Hint>) -> Vec<Outcome> {
        let out = self.release(worker, Some((reason, hint)));
        self.fenced.insert(worker.to_string());
        out
    }

    fn release(&mut self, worker: &str, lost: Option<(&str, Option<Hint>)>) -> Vec<Outcome> {
        let mut out = Vec::new();
        let held: Vec<ChunkId> = match self.workers.get(worker) {
            Some(s) => s.held.iter().copied().collect(),
            None => return out,
        };
        if lost.is_some() {
            self.workers.remove(worker);
        }
        for id in held {
            let c = self
                .chunks
                .get_mut(&id)
                .expect("held chunks are outstanding");
            match (&c.place, lost) {
                (
                    Place::Running {
                        attempt, careful, ..
                    },
                    Some((reason, hint)),
                ) => {
                    let (attempt, careful) = (*attempt, *careful);
                    let said = hint.filter(|h| h.0 == id && h.1 == attempt).map(|h| h.2);
                    if !careful {
                        // Tasks this fast are not reported one by one: which one was running
                        // is unknown. Run the rest carefully to find out.
                        c.blind += 1;
                        c.careful = true;
                        if c.blind >= self.max_attempts {
                            let (from, count, attempts) = (c.cursor, c.ntasks - c.cursor, c.blind);
                            out.push(Outcome::Fail {
                                chunk: id,
                                from,
                                count,
                                cause: Cause::Lost(reason.to_string()),
                                attempts,
                            });
                            c.cursor = c.ntasks;
                            self.end(id, &mut out);
                        } else {
                            self.requeue(id);
                        }
                        continue;
                    }
                    // A careful attempt records each task before running it: the running task
                    // is the one it named (or the first, if it named none yet).
                    let running = said.map_or(c.cursor, |t| t.max(c.cursor));
                    if running != c.suspect || c.attempts == 0 {
                        // A new suspect inherits the blind losses: they were probably its.
                        c.suspect = running;
                        c.attempts = std::mem::take(&mut c.blind);
                    }
                    // A task fails only once every task before it is resolved, so a suspect
                    // past the prefix is charged at most up to the limit meanwhile.
                    let limit = if running == c.cursor {
                        self.max_attempts
                    } else {
                        self.max_attempts - 1
                    };
                    c.attempts = (c.attempts + 1).min(limit);
                    if c.attempts >= self.max_attempts && running == c.cursor {
                        out.push(Outcome::Fail {
                            chunk: id,
                            from: running,
                            count: 1,
                            cause: Cause::Lost(reason.to_string()),
                            attempts: c.attempts,
                        });
                        c.cursor += 1;
                        c.attempts = 0;
                        if c.cursor >= c.ntasks {
                            self.end(id, &mut out);
                            continue;
                        }
                    }
                    self.requeue(id);
                }
                _ => self.requeue(id),
            }
        }
        if let Some(s) = self.workers.get_mut(worker) {
            s.held.clear();
        }
        out
    }

    /// The driver's rename of an unclaimed ticket succeeded (`ok`) or lost to the worker's
    /// claim.
    pub fn revoked(&mut self, chunk: ChunkId, attempt: u32, ok: bool) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(c) = self.chunks.get_mut(&chunk) else {
            return out;
        };
        let Place::Assigned {
            worker, attempt: a, ..
        } = &c.place
        else {
            return out;
        };
        if *a != attempt {
            return out;
        }
        let worker = worker.clone();
        if !ok {
            c.place = Place::Running {
                worker,
                attempt,
                careful: c.careful,
            };
            return out;
        }
        if let Some(s) = self.workers.get_mut(&worker) {
            s.held.remove(&chunk);
        }
        if c.withdrawing {
            self.chunks.remove(&chunk);
            out.push(Outcome::Ended { chunk });
        } else {
            c.place = Place::Queued;
            self.queues.entry(c.shape).or_default().push_front(chunk);
        }
        out
    }

    /// Take back assignments a busy worker has not started, so that idle workers can run
    /// them (and a worker can be given back holding nothing).
    pub fn steal_from(&mut self, worker: &str) -> Vec<Outcome> {
        self.chunks
            .iter()
            .filter_map(|(&id, c)| match &c.place {
                Place::Assigned {
                    worker: w,
                    attempt,
                    seq,
                } if w == worker => Some(Outcome::Revoke {
                    chunk: id,
                    attempt: *attempt,
                    worker: w.clone(),
                    seq: *seq,
                }),
                _ => None,
            })
            .collect()
    }

    /// The chunk's files vanished from the work dir. With its master copy still there it
    /// simply runs again; without it, its unresolved tasks fail.
    pub fn vanished(&mut self, chunk: ChunkId, recoverable: bool, detail: &str) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(c) = self.chunks.get_mut(&chunk) else {
            return out;
        };
        if recoverable {
            if let Place::Running { worker, .. } | Place::Assigned { worker, .. } = &c.place {
                let w = worker.clone();
                if let Some(s) = self.workers.get_mut(&w) {
                    s.held.remove(&chunk);
                }
                self.requeue(chunk);
            }
            return out;
        }
        let (from, count) = (c.cursor, c.ntasks - c.cursor);
        out.push(Outcome::Fail {
            chunk,
            from,
            count,
            cause: Cause::Vanished(detail.to_string()),
            attempts: 0,
        });
        c.cursor = c.ntasks;
        self.end(chunk, &mut out);
        out
    }

    /// No worker of `shape` can start: every chunk of it that no worker holds fails now, its
    /// unresolved tasks with `cause`. Chunks a worker of the shape already holds are left to
    /// that worker (it may well finish them); should it be lost, they come back to the queue
    /// and fail on the next call.
    pub fn fail_queued(&mut self, shape: Shape, cause: &Cause) -> Vec<Outcome> {
        let mut out = Vec::new();
        let queued: Vec<ChunkId> = self
            .queues
            .get(&shape)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default();
        for chunk in queued {
            let Some(c) = self.chunks.get_mut(&chunk) else {
                continue;
            };
            if !matches!(c.place, Place::Queued) {
                continue;
            }
            let (from, count) = (c.cursor, c.ntasks - c.cursor);
            if count > 0 {
                out.push(Outcome::Fail {
                    chunk,
                    from,
                    count,
                    cause: cause.clone(),
                    attempts: 0,
                });
            }
            c.cursor = c.ntasks;
            self.end(chunk, &mut out);
        }
        out
    }

    /// Cancel a chunk that has not started. `Ended` at once if it was only queued; a
    /// `Revoke` if it sits in an inbox (it ends when the revoke succeeds); nothing if a
    /// worker runs it already.
    pub fn withdraw(&mut self, chunk: ChunkId) -> Vec<Outcome> {
        let Some(c) = self.chunks.get_mut(&chunk) else {
            return Vec::new();
        };
        match &c.place {
            Place::Queued if !c.started && c.cursor == 0 => {
                if let Some(q) = self.queues.get_mut(&c.shape) {
                    q.retain(|&q| q != chunk);
                }
                self.chunks.remove(&chunk);
                vec![Outcome::Ended { chunk }]
            }
            Place::Assigned {
                worker,
                attempt,
                seq,
            } if !c.started && c.cursor == 0 => {
                c.withdrawing = true;
                vec![Outcome::Revoke {
                    chunk,
                    attempt: *attempt,
                    worker: worker.clone(),
                    seq: *seq,
                }]
            }
            _ => Vec::new(),
        }
    }

    /// Put a chunk back at the front of the queue (it was already waiting once).
    fn requeue(&mut self, chunk: ChunkId) {
        let c = self.chunks.get_mut(&chunk).expect("outstanding");
        if let Place::Assigned { worker, .. } | Place::Running { worker, .. } = &c.place {
            if let Some(s) = self.workers.get_mut(worker) {
                s.held.remove(&chunk);
            }
        }
        c.place = Place::Queued;
        c.withdrawing = false;
        let q = self.queues.entry(c.shape).or_default();
        if !q.contains(&chunk) {
            q.push_front(chunk);
        }
    }

    fn end(&mut self, chunk: ChunkId, out: &mut Vec<Outcome>) {
        if let Some(c) = self.chunks.remove(&chunk) {
            if let Place::Assigned { worker, .. } | Place::Running { worker, .. } = &c.place {
                if let Some(s) = self.workers.get_mut(worker) {
                    s.held.remove(&chunk);
                }
            }
            if let Some(q) = self.queues.get_mut(&c.shape) {
                q.retain(|&q| q != chunk);
            }
            out.push(Outcome::Ended { chunk });
        }
    }

    /// Losses charged to a chunk's suspect task so far (for tests and the session record).
    pub fn attempts(&self, chunk: ChunkId) -> Option<u32> {
        self.chunks
            .get(&chunk)
            .map(|c| c.attempts.max(c.corrupt).max(c.blind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(chunk: u64, attempt: u32, from: u32, count: u32, last: bool) -> PartInfo {
        PartInfo {
            chunk,
            attempt,
            from,
            count,
            last,
            release: None,
        }
    }

    fn used(f: PartFate) -> Vec<Outcome> {
        match f {
            PartFate::Used(o) => o,
            other => panic!("expected Used, got {other:?}"),
        }
    }

    #[test]
    fn one_worker_two_chunks_prefetch() {
        let mut l = Ledger::new(3, 1);
        l.submit(0, 2);
        l.submit(1, 2);
        l.submit(2, 2);
        assert!(l.join("w"));
        let a = l.assign();
        assert_eq!(a.len(), 2, "one to run, one prefetched");
        assert_eq!((a[0].chunk, a[0].seq, a[1].seq), (0, 0, 1));
        assert!(l.started(0, 1));
        let o = used(l.part(part(0, 1, 0, 2, true)));
        assert_eq!(
            o,
            vec![
                Outcome::Deliver {
                    chunk: 0,
                    from: 0,
                    count: 2,
                    skip: 0
                },
                Outcome::Ended { chunk: 0 }
            ]
        );
        assert_eq!(l.assign().len(), 1);
    }

    #[test]
    fn a_prefetch_waits_until_what_the_worker_holds_is_nearly_done() {
        let mut l = Ledger::new(3, 1);
        l.set_prefetch_tasks(Some(2));
        l.submit(0, 10);
        l.submit(1, 4);
        l.submit(2, 1);
        assert!(l.join("w"));
        let a = l.assign();
        assert_eq!(a.len(), 1, "10 tasks left: no ticket behind them yet");
        assert!(l.started(0, 1));
        // 7 of the 10 resolved: 3 left, still more than 2.
        assert!(matches!(l.part(part(0, 1, 0, 7, false)), PartFate::Used(_)));
        assert!(l.assign().is_empty());
        assert_eq!(l.tasks_left("w"), 3);
        assert!(matches!(l.part(part(0, 1, 7, 1, false)), PartFate::Used(_)));
        let a = l.assign();
        assert_eq!(a.len(), 1, "2 left: the next chunk is prefetched");
        assert_eq!((a[0].chunk, a[0].seq), (1, 1));
        // One prefetch at most, whatever is left.
        assert_eq!(l.tasks_left("w"), 6);
        l.set_prefetch_tasks(None);
        assert!(l.assign().is_empty());
        // Another worker takes the last chunk, though the first could hold no more.
        assert!(l.join("v"));
        assert_eq!(l.assign()[0].chunk, 2);
    }

    #[test]
    fn lost_worker_costs_only_the_running_task() {
        let mut l = Ledger::new(2, 0);
        l.submit(7, 4);
        l.join("a");
        l.assign();
        l.started(7, 1);
        used(l.part(part(7, 1, 0, 2, false)));
        // dies running task 2 (normal mode: no exact hint)
        let o = l.worker_gone("a", "SIGKILL", None);
        assert!(o.is_empty());
        l.join("b");
        let a = l.assign();
        assert_eq!((a[0].from, a[0].careful, a[0].attempt), (2, true, 2));
        l.started(7, 2);
        // careful mode: it says it started task 2, then dies again
        let o = l.worker_gone("b", "SIGKILL", Some((7, 2, 2)));
        assert_eq!(
            o,
            vec![Outcome::Fail {
                chunk: 7,
                from: 2,
                count: 1,
                cause: Cause::Lost("SIGKILL".into()),
                attempts: 2
            }]
        );
        l.join("c");
        let a = l.assign();
        assert_eq!(a[0].from, 3);
        l.started(7, 3);
        let o = used(l.part(part(7, 3, 3, 1, true)));
        assert_eq!(o.last(), Some(&Outcome::Ended { chunk: 7 }));
    }

    #[test]
    fn late_result_of_an_abandoned_attempt_wins_and_duplicates_drop() {
        let mut l = Ledger::new(3, 0);
        l.submit(1, 10);
        l.join("slow");
        l.assign();
        l.started(1, 1);
        l.fence("slow", "no heartbeat", None);
        assert!(!l.join("slow"), "a fenced worker gets nothing again");
        l.join("fast");
        l.assign();
        l.started(1, 2);
        // the fenced worker's late part arrives first
        let o = used(l.part(part(1, 1, 0, 6, false)));
        assert_eq!(
            o[0],
            Outcome::Deliver {
                chunk: 1,
                from: 0,
                count: 6,
                skip: 0
            }
        );
        assert_eq!(l.part(part(1, 2, 0, 4, false)), PartFate::Stale);
        let o = used(l.part(part(1, 2, 4, 6, true)));
        assert_eq!(
            o[0],
            Outcome::Deliver {
                chunk: 1,
                from: 6,
                count: 4,
                skip: 2
            }
        );
        assert!(!l.contains(1));
    }

    #[test]
    fn a_suspect_past_the_prefix_is_never_charged_beyond_the_limit() {
        let mut l = Ledger::new(2, 0);
        l.submit(0, 5);
        let run = |l: &mut Ledger, w: &str| {
            l.join(w);
            let a = l.assign().pop().unwrap();
            l.started(0, a.attempt);
            a
        };
        let a = run(&mut l, "w0");
        assert!(l.worker_gone("w0", "lost", None).is_empty(), "blind");
        // Careful attempts keep dying on task 3 while the parts of tasks 0..3 are not yet seen.
        for k in 1..6 {
            let w = format!("w{k}");
            let a = run(&mut l, &w);
            assert!(a.careful);
            assert!(l
                .worker_gone(&w, "lost", Some((0, a.attempt, 3)))
                .is_empty());
            assert!(l.attempts(0).unwrap() <= 1, "capped below the limit");
        }
        let _ = a;
        // The prefix catches up; the next death on task 3 is the one that fails it.
        let a = run(&mut l, "w9");
        used(l.part(part(0, a.attempt, 0, 3, false)));
        let o = l.worker_gone("w9", "lost", Some((0, a.attempt, 3)));
        assert!(
            matches!(
                o[0],
                Outcome::Fail {
                    from: 3,
                    count: 1,
                    attempts: 2,
                    ..
                }
            ),
            "{o:?}"
        );
    }

    #[test]
    fn short_last_part_fails_the_missing_tasks() {
        let mut l = Ledger::new(3, 0);
        l.submit(2, 5);
        l.join("w");
        l.assign();
        l.started(2, 1);
        let o = used(l.part(part(2, 1, 0, 3, true)));
        assert!(matches!(
            o[1],
            Outcome::Fail {
                from: 3,
                count: 2,
                cause: Cause::Incomplete(_),
                ..
            }
        ));
    }

    #[test]
    fn corrupt_results_are_bounded_by_max_attempts() {
        let mut l = Ledger::new(2, 0);
        l.submit(3, 4);
        l.join("w");
        for attempt in 1..=2 {
            let a = l.assign();
            assert_eq!(a[0].attempt, attempt);
            l.started(3, attempt);
            let o = l.corrupt(3, attempt, "checksum mismatch");
            if attempt == 2 {
                assert!(matches!(
                    &o[0],
                    Outcome::Fail { from: 0, count: 4, cause: Cause::Corrupt(r), attempts: 2, .. }
                        if r.contains("checksum")
                ));
            } else {
                assert!(o.is_empty());
            }
        }
        assert!(!l.contains(3));
    }

    #[test]
    fn withdraw_queued_or_revoke_assigned_never_running() {
        let mut l = Ledger::new(3, 1);
        for c in 0..3 {
            l.submit(c, 1);
        }
        l.join("w");
        l.assign(); // 0 and 1 to w
        l.started(0, 1);
        assert_eq!(l.withdraw(2), vec![Outcome::Ended { chunk: 2 }]);
        assert!(l.withdraw(0).is_empty(), "running: not withdrawn");
        let o = l.withdraw(1);
        assert!(matches!(o[0], Outcome::Revoke { chunk: 1, .. }));
        assert_eq!(l.revoked(1, 1, true), vec![Outcome::Ended { chunk: 1 }]);
    }

    #[test]
    fn a_suspended_worker_is_detached_at_no_cost() {
        let mut l = Ledger::new(1, 0);
        l.submit(5, 2);
        l.join("s");
        l.assign();
        l.started(5, 1);
        assert!(l.detach("s").is_empty());
        assert_eq!(l.attempts(5), Some(0));
        assert!(l.assign().is_empty(), "a detached worker takes no work");
        l.join("t");
        assert_eq!(l.assign()[0].attempt, 2);
        // the suspended worker resumes and finishes first
        let o = used(l.part(part(5, 1, 0, 2, true)));
        assert_eq!(o.last(), Some(&Outcome::Ended { chunk: 5 }));
    }

    fn released(charged: bool, checkpoint: bool) -> Option<Released> {
        Some(Released {
            charged,
            checkpoint,
            reason: "preempted".into(),
        })
    }

    #[test]
    fn preemption_costs_no_attempt_and_a_checkpoint_is_resumed() {
        let mut l = Ledger::new(1, 0);
        l.submit(0, 3);
        for k in 0..5 {
            let w = format!("w{k}");
            l.join(&w);
            let a = l.assign().pop().unwrap();
            assert_eq!((a.from, a.resume), (1.min(k), k > 1), "attempt {k}");
            l.started(0, a.attempt);
            // the first attempt finishes task 0; every attempt is preempted in task 1,
            // from the second on with a checkpoint
            let count = u32::from(k == 0);
            let mut p = part(0, a.attempt, a.from, count, false);
            p.release = released(false, k >= 1);
            assert!(matches!(l.part(p), PartFate::Used(_) | PartFate::Stale));
            assert!(l.worker_gone(&w, "exited", None).is_empty());
            assert_eq!(l.attempts(0), Some(0));
        }
        l.join("last");
        let a = l.assign().pop().unwrap();
        assert!(a.resume);
        l.started(0, a.attempt);
        let o = used(l.part(part(0, a.attempt, 1, 2, true)));
        assert_eq!(o.last(), Some(&Outcome::Ended { chunk: 0 }));
    }

    #[test]
    fn a_task_that_outlives_the_walltime_is_charged_and_fails() {
        let mut l = Ledger::new(2, 0);
        l.submit(0, 2);
        for k in 0..2 {
            let w = format!("w{k}");
            l.join(&w);
            let a = l.assign().pop().unwrap();
            l.started(0, a.attempt);
            let mut p = part(0, a.attempt, 0, 0, false);
            p.release = released(true, false);
            let o = match l.part(p) {
                PartFate::Used(o) => o,
                _ => Vec::new(),
            };
            if k == 1 {
                assert!(
                    matches!(
                        &o[0],
                        Outcome::Fail {
                            from: 0,
                            count: 1,
                            cause: Cause::Walltime(_),
                            attempts: 2,
                            ..
                        }
                    ),
                    "{o:?}"
                );
            } else {
                assert!(o.is_empty());
            }
        }
        l.join("w9");
        assert_eq!(l.assign()[0].from, 1, "the next task goes on");
    }

    #[test]
    fn a_preemption_storm_ends() {
        let mut l = Ledger::new(3, 0);
        l.submit(0, 1);
        let mut n = 0;
        while l.contains(0) {
            let w = format!("w{n}");
            n += 1;
            l.join(&w);
            let a = l.assign().pop().unwrap();
            l.started(0, a.attempt);
            let mut p = part(0, a.attempt, 0, 0, false);
            p.release = released(false, true);
            if let PartFate::Used(o) = l.part(p) {
                assert!(matches!(
                    &o[0],
                    Outcome::Fail {
                        cause: Cause::Preempted(_),
                        ..
                    }
                ));
            }
        }
        assert_eq!(n, MAX_RELEASES);
    }
}

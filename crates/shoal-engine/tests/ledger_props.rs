//! Properties of the ledger under random interleavings of everything the transport and the
//! scheduler can report: submissions, workers joining, claims, result parts (partial,
//! duplicated, from abandoned attempts, short), corrupt results, workers lost with or without
//! saying what they ran, suspended, fenced, revokes won or lost, vanished files, withdrawals.
//!
//! Chunks and workers come in two shapes (the resources a map asked for).
//!
//! Checked after every step: every task of a chunk is resolved exactly once and in order; an
//! ended chunk never speaks again; no task is charged more than `max_attempts` losses; a chunk
//! never reaches a worker of another shape. Checked at the end: once a healthy worker of each
//! shape is there, every chunk ends.

use proptest::prelude::*;
use shoal_engine::ledger::{
    Assign, Cause, ChunkId, Ledger, Outcome, PartFate, PartInfo, Released, Shape,
};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
enum Op {
    Submit(u32, Shape),
    Join(u8),
    Assign,
    Claim(usize),
    /// `seen: false`: the part is written, but the driver's listing does not show it yet.
    Publish {
        run: usize,
        count: u32,
        last: bool,
        seen: bool,
    },
    /// The worker publishes `count` tasks and gives the rest back (preempted, out of time).
    Release {
        run: usize,
        count: u32,
        charged: bool,
        checkpoint: bool,
    },
    Reveal(usize),
    Duplicate(usize),
    Corrupt(usize),
    Lose {
        worker: u8,
        hint: bool,
    },
    Detach(u8),
    Fence(u8),
    AnswerRevoke {
        which: usize,
        ok: bool,
    },
    Steal(u8),
    Vanish {
        chunk: usize,
        recoverable: bool,
    },
    Withdraw(usize),
    /// No worker of the shape can start: its queued chunks fail.
    FailShape(Shape),
    /// The engine learnt how long tasks take: a prefetch waits until a worker has at most
    /// this many tasks left.
    PrefetchTasks(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u32..9, 0u32..2).prop_map(|(n, shape)| Op::Submit(n, shape)),
        2 => (0u8..4).prop_map(Op::Join),
        4 => Just(Op::Assign),
        4 => (0usize..16).prop_map(Op::Claim),
        6 => (0usize..16, 1u32..4, any::<bool>(), prop::bool::weighted(0.7))
            .prop_map(|(run, count, last, seen)| Op::Publish { run, count, last, seen }),
        2 => (0usize..16, 0u32..3, any::<bool>(), any::<bool>())
            .prop_map(|(run, count, charged, checkpoint)| Op::Release { run, count, charged, checkpoint }),
        3 => (0usize..16).prop_map(Op::Reveal),
        1 => (0usize..16).prop_map(Op::Duplicate),
        1 => (0usize..16).prop_map(Op::Corrupt),
        2 => (0u8..4, any::<bool>()).prop_map(|(worker, hint)| Op::Lose { worker, hint }),
        2 => (0u8..4).prop_map(Op::Detach),
        2 => (0u8..4).prop_map(Op::Fence),
        2 => (0usize..8, any::<bool>()).prop_map(|(which, ok)| Op::AnswerRevoke { which, ok }),
        1 => (0u8..4).prop_map(Op::Steal),
        1 => (0usize..16, any::<bool>())
            .prop_map(|(chunk, recoverable)| Op::Vanish { chunk, recoverable }),
        1 => (0usize..16).prop_map(Op::Withdraw),
        1 => (0u32..2).prop_map(Op::FailShape),
        1 => proptest::option::of(0u64..6).prop_map(Op::PrefetchTasks),
    ]
}

/// A claimed attempt being run by a (simulated) worker: it publishes its tasks in order.
#[derive(Debug, Clone)]
struct Run {
    chunk: ChunkId,
    attempt: u32,
    worker: String,
    /// Next task it would publish.
    next: u32,
    careful: bool,
    last_part: Option<PartInfo>,
}

struct World {
    ledger: Ledger,
    max_attempts: u32,
    next_chunk: ChunkId,
    ntasks: BTreeMap<ChunkId, u32>,
    shapes: BTreeMap<ChunkId, Shape>,
    /// Next task index each chunk must resolve (the model of the prefix).
    resolved: BTreeMap<ChunkId, u32>,
    ended: BTreeMap<ChunkId, bool>,
    withdrawn: BTreeMap<ChunkId, bool>,
    assigned: Vec<Assign>,
    runs: Vec<Run>,
    revokes: Vec<(ChunkId, u32)>,
    /// Parts written but not yet seen by the driver.
    unseen: Vec<PartInfo>,
    epoch: HashMap<u8, u32>,
    prefetch_tasks: Option<u64>,
}

impl World {
    fn new(max_attempts: u32, prefetch: usize) -> Self {
        World {
            ledger: Ledger::new(max_attempts, prefetch),
            max_attempts,
            next_chunk: 0,
            ntasks: BTreeMap::new(),
            shapes: BTreeMap::new(),
            resolved: BTreeMap::new(),
            ended: BTreeMap::new(),
            withdrawn: BTreeMap::new(),
            assigned: Vec::new(),
            runs: Vec::new(),
            revokes: Vec::new(),
            unseen: Vec::new(),
            epoch: HashMap::new(),
            prefetch_tasks: None,
        }
    }

    /// Workers are named by slot and incarnation: a lost worker's slot comes back as a new one.
    fn worker(&self, slot: u8) -> String {
        format!("w{slot}+{}", self.epoch.get(&slot).copied().unwrap_or(0))
    }

    /// Slots 0 and 2 are workers of shape 0, slots 1 and 3 of shape 1.
    fn shape_of_worker(worker: &str) -> Shape {
        match worker.strip_prefix('w').and_then(|w| w.split('+').next()) {
            Some(slot) => slot.parse::<Shape>().map_or(0, |s| s % 2),
            None => worker.starts_with("healthy1").into(),
        }
    }

    /// Every assignment goes to a worker of its chunk's shape.
    fn check_shapes(&self, assigned: &[Assign]) -> Result<(), TestCaseError> {
        for a in assigned {
            prop_assert_eq!(
                self.shapes[&a.chunk],
                Self::shape_of_worker(&a.worker),
                "chunk {} reached {}, a worker of another shape",
                a.chunk,
                &a.worker
            );
        }
        Ok(())
    }

    fn chunk_at(&self, i: usize) -> Option<ChunkId> {
        let ids: Vec<ChunkId> = self.ntasks.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    fn apply(&mut self, outcomes: Vec<Outcome>) -> Result<(), TestCaseError> {
        for o in outcomes {
            match o {
                Outcome::Deliver {
                    chunk, from, count, ..
                }
                | Outcome::Fail {
                    chunk, from, count, ..
                } => {
                    prop_assert!(!self.ended[&chunk], "chunk {chunk} spoke after it ended");
                    prop_assert!(count > 0);
                    let r = self.resolved.get_mut(&chunk).unwrap();
                    prop_assert_eq!(*r, from, "chunk {} resolved out of order", chunk);
                    *r += count;
                    prop_assert!(*r <= self.ntasks[&chunk]);
                    if let Outcome::Fail {
                        attempts, cause, ..
                    } = &o
                    {
                        prop_assert!(*attempts <= self.max_attempts, "{:?}", o);
                        if matches!(cause, Cause::Lost(_)) && *attempts > 0 {
                            prop_assert!(*attempts >= 1);
                        }
                    }
                }
                Outcome::Ended { chunk } => {
                    prop_assert!(!self.ended[&chunk], "chunk {chunk} ended twice");
                    let done = self.resolved[&chunk] == self.ntasks[&chunk];
                    let withdrawn = self.withdrawn[&chunk] && self.resolved[&chunk] == 0;
                    prop_assert!(done || withdrawn, "chunk {} ended unresolved", chunk);
                    self.ended.insert(chunk, true);
                    self.runs.retain(|r| r.chunk != chunk);
                }
                Outcome::Revoke { chunk, attempt, .. } => self.revokes.push((chunk, attempt)),
            }
        }
        Ok(())
    }

    /// Hand a part to the ledger; one it cannot use yet stays unseen (the file stays).
    fn feed(&mut self, p: PartInfo) -> Result<(), TestCaseError> {
        match self.ledger.part(p.clone()) {
            PartFate::Used(o) => self.apply(o),
            PartFate::Stale => Ok(()),
            PartFate::Later => {
                self.unseen.push(p);
                Ok(())
            }
        }
    }

    fn check_bounds(&self) -> Result<(), TestCaseError> {
        for (&c, &ended) in &self.ended {
            if !ended {
                let a = self.ledger.attempts(c).unwrap();
                prop_assert!(a <= self.max_attempts, "chunk {c} charged {a} times");
            } else {
                prop_assert!(!self.ledger.contains(c));
            }
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Submit(n, shape) => {
                let id = self.next_chunk;
                self.next_chunk += 1;
                self.ntasks.insert(id, n);
                self.shapes.insert(id, shape);
                self.resolved.insert(id, 0);
                self.ended.insert(id, false);
                self.withdrawn.insert(id, false);
                let o = self.ledger.submit_shaped(id, n, shape);
                self.apply(o)?;
            }
            Op::Join(slot) => {
                let w = self.worker(slot);
                self.ledger.join_shaped(&w, Self::shape_of_worker(&w));
            }
            Op::Assign => {
                let mut held: HashMap<String, (usize, u64)> = (0..4)
                    .map(|slot| self.worker(slot))
                    .map(|w| {
                        let h = (self.ledger.load(&w), self.ledger.tasks_left(&w));
                        (w, h)
                    })
                    .collect();
                let a = self.ledger.assign();
                self.check_shapes(&a)?;
                // A ticket beyond the first goes only to a worker nearly done with the rest.
                for x in &a {
                    if let Some((n, left)) = held.get_mut(&x.worker) {
                        if let (true, Some(bound)) = (*n > 0, self.prefetch_tasks) {
                            prop_assert!(
                                *left <= bound,
                                "{} prefetched with {} tasks left",
                                &x.worker,
                                *left
                            );
                        }
                        *n += 1;
                        *left += u64::from(self.ntasks[&x.chunk] - x.from);
                    }
                }
                for x in &a {
                    prop_assert!(self.ledger.contains(x.chunk));
                    prop_assert_eq!(x.from, self.resolved[&x.chunk]);
                }
                self.assigned.extend(a);
            }
            Op::Claim(i) => {
                if self.assigned.is_empty() {
                    return Ok(());
                }
                let a = self.assigned.remove(i % self.assigned.len());
                // Only a claim of a ticket that is still in the inbox succeeds.
                let still = self
                    .ledger
                    .unclaimed()
                    .iter()
                    .any(|u| u.0 == a.chunk && u.1 == a.attempt);
                if still {
                    self.ledger.started(a.chunk, a.attempt);
                    self.runs.push(Run {
                        chunk: a.chunk,
                        attempt: a.attempt,
                        worker: a.worker.clone(),
                        next: a.from,
                        careful: a.careful,
                        last_part: None,
                    });
                }
            }
            Op::Publish {
                run,
                count,
                last,
                seen,
            } => {
                if self.runs.is_empty() {
                    return Ok(());
                }
                let i = run % self.runs.len();
                let r = &mut self.runs[i];
                let n = self.ntasks[&r.chunk];
                if r.next >= n {
                    return Ok(());
                }
                let count = count.min(n - r.next);
                // A worker normally says "last" only at the end; sometimes it is buggy.
                let last = r.next + count == n || (last && count == 1 && r.next % 7 == 3);
                let p = PartInfo {
                    chunk: r.chunk,
                    attempt: r.attempt,
                    from: r.next,
                    count,
                    last,
                    release: None,
                };
                r.next += count;
                r.last_part = Some(p.clone());
                if last {
                    self.runs
                        .retain(|x| !(x.chunk == p.chunk && x.attempt == p.attempt));
                }
                if seen {
                    self.feed(p)?;
                } else {
                    self.unseen.push(p);
                }
            }
            Op::Release {
                run,
                count,
                charged,
                checkpoint,
            } => {
                if self.runs.is_empty() {
                    return Ok(());
                }
                let r = self.runs.remove(run % self.runs.len());
                let n = self.ntasks[&r.chunk];
                let count = count.min(n - r.next.min(n));
                let p = PartInfo {
                    chunk: r.chunk,
                    attempt: r.attempt,
                    from: r.next,
                    count,
                    last: false,
                    release: Some(Released {
                        charged,
                        checkpoint,
                        reason: "preempted".into(),
                    }),
                };
                self.feed(p)?;
            }
            Op::Reveal(i) => {
                if !self.unseen.is_empty() {
                    let p = self.unseen.remove(i % self.unseen.len());
                    self.feed(p)?;
                }
            }
            Op::Duplicate(run) => {
                if let Some(p) = self
                    .runs
                    .get(run % self.runs.len().max(1))
                    .and_then(|r| r.last_part.clone())
                {
                    if let PartFate::Used(o) = self.ledger.part(p) {
                        self.apply(o)?;
                    }
                }
            }
            Op::Corrupt(run) => {
                if self.runs.is_empty() {
                    return Ok(());
                }
                let r = self.runs.remove(run % self.runs.len());
                let o = self.ledger.corrupt(r.chunk, r.attempt, "checksum mismatch");
                self.apply(o)?;
            }
            Op::Lose { worker, hint } => {
                let w = self.worker(worker);
                // Only a careful attempt says which task it runs; others may say something stale.
                let h = if hint {
                    self.runs
                        .iter()
                        .find(|r| r.worker == w)
                        .map(|r| (r.chunk, r.attempt, if r.careful { r.next } else { 0 }))
                } else {
                    None
                };
                let o = self.ledger.worker_gone(&w, "lost", h);
                self.apply(o)?;
                self.runs.retain(|r| r.worker != w);
                self.assigned.retain(|a| a.worker != w);
                *self.epoch.entry(worker).or_default() += 1;
            }
            Op::Detach(worker) => {
                let w = self.worker(worker);
                let o = self.ledger.detach(&w);
                self.apply(o)?;
                // It may still publish what it runs (kept in `runs`).
                self.assigned.retain(|a| a.worker != w);
                *self.epoch.entry(worker).or_default() += 1;
            }
            Op::Fence(worker) => {
                let w = self.worker(worker);
                let o = self.ledger.fence(&w, "no heartbeat", None);
                self.apply(o)?;
                prop_assert!(!self.ledger.join(&w));
                self.assigned.retain(|a| a.worker != w);
                *self.epoch.entry(worker).or_default() += 1;
            }
            Op::AnswerRevoke { which, ok } => {
                if self.revokes.is_empty() {
                    return Ok(());
                }
                let (chunk, attempt) = self.revokes.remove(which % self.revokes.len());
                let claimable = self
                    .ledger
                    .unclaimed()
                    .iter()
                    .any(|u| u.0 == chunk && u.1 == attempt);
                if !claimable {
                    return Ok(());
                }
                if !ok {
                    // The worker's claim won the race.
                    if let Some(pos) = self
                        .assigned
                        .iter()
                        .position(|a| a.chunk == chunk && a.attempt == attempt)
                    {
                        let a = self.assigned.remove(pos);
                        self.ledger.started(chunk, attempt);
                        self.runs.push(Run {
                            chunk,
                            attempt,
                            worker: a.worker,
                            next: a.from,
                            careful: a.careful,
                            last_part: None,
                        });
                    }
                } else {
                    self.assigned
                        .retain(|a| !(a.chunk == chunk && a.attempt == attempt));
                    let o = self.ledger.revoked(chunk, attempt, true);
                    self.apply(o)?;
                }
            }
            Op::Steal(worker) => {
                let w = self.worker(worker);
                let o = self.ledger.steal_from(&w);
                self.apply(o)?;
            }
            Op::Vanish { chunk, recoverable } => {
                if let Some(c) = self.chunk_at(chunk) {
                    let o = self.ledger.vanished(c, recoverable, "gone");
                    self.apply(o)?;
                    self.runs.retain(|r| r.chunk != c);
                    self.assigned.retain(|a| a.chunk != c);
                }
            }
            Op::Withdraw(chunk) => {
                if let Some(c) = self.chunk_at(chunk) {
                    if !self.ended[&c] {
                        self.withdrawn.insert(c, true);
                    }
                    let o = self.ledger.withdraw(c);
                    self.apply(o)?;
                }
            }
            Op::PrefetchTasks(n) => {
                self.prefetch_tasks = n;
                self.ledger.set_prefetch_tasks(n);
            }
            Op::FailShape(shape) => {
                let queued: Vec<ChunkId> = self
                    .shapes
                    .iter()
                    .filter(|(c, s)| **s == shape && !self.ended[c])
                    .filter(|(c, _)| self.ledger.holder(**c).is_none())
                    .map(|(c, _)| *c)
                    .collect();
                let held: Vec<ChunkId> = self
                    .shapes
                    .iter()
                    .filter(|(c, _)| !self.ended[c] && self.ledger.holder(**c).is_some())
                    .map(|(c, _)| *c)
                    .collect();
                let o = self
                    .ledger
                    .fail_queued(shape, &Cause::Unstartable("none".into()));
                for out in &o {
                    if let Outcome::Fail {
                        cause, attempts, ..
                    } = out
                    {
                        prop_assert_eq!(cause, &Cause::Unstartable("none".into()));
                        prop_assert_eq!(*attempts, 0);
                    }
                }
                self.apply(o)?;
                for c in queued {
                    prop_assert!(
                        self.ended[&c],
                        "queued chunk {} of shape {} lives on",
                        c,
                        shape
                    );
                }
                for c in held {
                    prop_assert!(!self.ended[&c], "held chunk {} was failed", c);
                }
            }
        }
        self.check_bounds()
    }

    /// A healthy worker of each shape arrives; every other worker is lost, every pending revoke answered,
    /// and the healthy one runs whatever it gets to the end. Everything must end.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for slot in 0..4u8 {
            let w = self.worker(slot);
            let o = self.ledger.worker_gone(&w, "lost", None);
            self.apply(o)?;
        }
        self.runs.clear();
        self.assigned.clear();
        // Listings catch up: every written part is seen (in any order) until none is usable.
        loop {
            let before = self.unseen.len();
            for p in std::mem::take(&mut self.unseen) {
                self.feed(p)?;
            }
            if self.unseen.len() == before {
                break;
            }
        }
        while let Some((chunk, attempt)) = self.revokes.pop() {
            let o = self.ledger.revoked(chunk, attempt, true);
            self.apply(o)?;
        }
        prop_assert!(self.ledger.join_shaped("healthy0+0", 0));
        prop_assert!(self.ledger.join_shaped("healthy1+0", 1));
        for _ in 0..10_000 {
            if self.ledger.outstanding() == 0 {
                break;
            }
            let assigned = self.ledger.assign();
            self.check_shapes(&assigned)?;
            prop_assert!(
                !assigned.is_empty() || !self.revokes.is_empty(),
                "outstanding chunks but nothing to assign: {} left",
                self.ledger.outstanding()
            );
            for a in assigned {
                self.ledger.started(a.chunk, a.attempt);
                let n = self.ntasks[&a.chunk];
                let p = PartInfo {
                    chunk: a.chunk,
                    attempt: a.attempt,
                    from: a.from,
                    count: n - a.from,
                    last: true,
                    release: None,
                };
                if let PartFate::Used(o) = self.ledger.part(p) {
                    self.apply(o)?;
                }
            }
            while let Some((chunk, attempt)) = self.revokes.pop() {
                let o = self.ledger.revoked(chunk, attempt, true);
                self.apply(o)?;
            }
        }
        prop_assert_eq!(self.ledger.outstanding(), 0, "pending forever");
        for (&c, &ended) in &self.ended {
            prop_assert!(ended, "chunk {} never ended", c);
            let all = self.resolved[&c] == self.ntasks[&c];
            prop_assert!(all || self.withdrawn[&c], "chunk {} half resolved", c);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_chunk_ends_exactly_once(
        max_attempts in 1u32..4,
        prefetch in 0usize..3,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut w = World::new(max_attempts, prefetch);
        for o in ops {
            w.step(o)?;
        }
        w.drain()?;
    }
}

/// A deterministic killer task is charged exactly `max_attempts` times, in total, and only it
/// fails: the first (blind) loss counts toward the task the careful attempt then names.
#[test]
fn a_deterministic_killer_runs_max_attempts_times() {
    for max in 1..=4u32 {
        let mut l = Ledger::new(max, 0);
        l.submit(0, 5);
        let mut runs_of_killer = 0;
        let mut epoch = 0;
        let mut failed = vec![];
        let mut delivered = 0;
        while l.contains(0) {
            let w = format!("w+{epoch}");
            epoch += 1;
            l.join(&w);
            let a = l.assign().pop().expect("work for the new worker");
            l.started(0, a.attempt);
            // tasks before 3 succeed and are published one by one; task 3 kills the worker
            let mut t = a.from;
            while t < 5 && t != 3 {
                if let PartFate::Used(o) = l.part(PartInfo {
                    chunk: 0,
                    attempt: a.attempt,
                    from: t,
                    count: 1,
                    last: t == 4,
                    release: None,
                }) {
                    delivered += o
                        .iter()
                        .filter(|x| matches!(x, Outcome::Deliver { .. }))
                        .count();
                }
                t += 1;
            }
            if t == 5 {
                break;
            }
            runs_of_killer += 1;
            let hint = a.careful.then_some((0, a.attempt, 3));
            for o in l.worker_gone(&w, "SIGKILL", hint) {
                if let Outcome::Fail { from, count, .. } = o {
                    failed.push((from, count));
                }
            }
        }
        assert_eq!(runs_of_killer, max, "max_attempts={max}");
        if max == 1 {
            // No retry at all: the first loss cannot tell which task it was.
            assert_eq!(failed, vec![(3, 2)]);
        } else {
            assert_eq!(failed, vec![(3, 1)], "only the killer fails (max={max})");
            assert_eq!(delivered, 4);
        }
    }
}

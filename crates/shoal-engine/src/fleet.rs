//! The fleet: the scheduler's jobs (by worker id) joined with the worker incarnations that
//! announced themselves (by key, `ID+NONCE`). It decides who may work — a hello from a job the
//! engine cancelled, declared lost, or never submitted is fenced; a second incarnation of a
//! job means the site reran it and the first is gone — and which queued jobs can be given back.
//! A job is given back only while no incarnation of it has announced itself, so no worker that
//! could hold a chunk is ever cancelled. Pure bookkeeping: the runner does the I/O.

use shoal_core::layout::key_id;
use shoal_sched::shapes::{shape_of, ShapeId};
use shoal_sched::WorkerState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a hello from an id the scheduler has not reported yet may wait to be recognised.
pub const STRANGER_GRACE: Duration = Duration::from_secs(30);
/// How long a job the engine cancelled is remembered (late hellos are fenced).
const RETIRED_KEEP: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Job {
    pub state: WorkerState,
    /// Submission order: give-backs take the newest first.
    pub seq: u64,
    pub keys: Vec<String>,
    /// Any of its incarnations delivered a result.
    pub produced: bool,
    pub submitted: Instant,
    pub suspended_since: Option<Instant>,
    /// Its worker shape (from its id).
    pub shape: ShapeId,
}

/// What to do about a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Welcome {
    Accept,
    /// Accept, after treating an earlier incarnation of the same job as lost.
    Supersede(String),
    /// Not yet: the scheduler has not reported this id (it may be submitting still).
    Wait,
    Fence(String),
}

#[derive(Debug)]
pub struct Fleet {
    stranger_grace: Duration,
    jobs: HashMap<String, Job>,
    seq: u64,
    retired: HashMap<String, Instant>,
    /// Ids the scheduler reported ended: a later hello of theirs is stale.
    ended: HashMap<String, Instant>,
    strangers: HashMap<String, Instant>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(STRANGER_GRACE)
    }
}

impl Fleet {
    pub fn new(stranger_grace: Duration) -> Self {
        Fleet {
            stranger_grace,
            jobs: HashMap::new(),
            seq: 0,
            retired: HashMap::new(),
            ended: HashMap::new(),
            strangers: HashMap::new(),
        }
    }

    pub fn submitted(&mut self, ids: &[String], now: Instant) {
        for id in ids {
            self.seq += 1;
            self.jobs.insert(
                id.clone(),
                Job {
                    state: WorkerState::Pending,
                    seq: self.seq,
                    keys: Vec::new(),
                    produced: false,
                    submitted: now,
                    suspended_since: None,
                    shape: shape_of(id),
                },
            );
        }
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    pub fn job_of(&self, key: &str) -> Option<&Job> {
        self.jobs.get(key_id(key))
    }

    /// A hello arrived.
    pub fn hello(&mut self, key: &str, now: Instant) -> Welcome {
        let id = key_id(key);
        if self.retired.contains_key(id) {
            return Welcome::Fence("its job was given back to the scheduler".into());
        }
        if self.ended.contains_key(id) && !self.jobs.contains_key(id) {
            return Welcome::Fence("the scheduler reported its job ended".into());
        }
        let Some(job) = self.jobs.get_mut(id) else {
            let first = *self.strangers.entry(key.to_string()).or_insert(now);
            if now.duration_since(first) > self.stranger_grace {
                self.strangers.remove(key);
                return Welcome::Fence("no job of this session has its id".into());
            }
            return Welcome::Wait;
        };
        self.strangers.remove(key);
        if job.keys.iter().any(|k| k == key) {
            return Welcome::Accept;
        }
        let previous = job.keys.last().cloned();
        job.keys.push(key.to_string());
        if job.state == WorkerState::Pending {
            job.state = WorkerState::Running;
        }
        match previous {
            Some(old) => Welcome::Supersede(old),
            None => Welcome::Accept,
        }
    }

    /// Hellos still waiting to be recognised.
    pub fn strangers(&self) -> Vec<String> {
        self.strangers.keys().cloned().collect()
    }

    /// The scheduler reported `id` in `state`. Returns the keys of its incarnations when the
    /// job ended (they are gone with it).
    pub fn state(&mut self, id: &str, state: &WorkerState, now: Instant) -> Option<Vec<String>> {
        let ended = matches!(
            state,
            WorkerState::Exited | WorkerState::Lost(_) | WorkerState::Unsatisfiable(_)
        );
        if self.retired.contains_key(id) {
            // Cancelled by the engine: what the scheduler says of it now changes nothing.
            return None;
        }
        if ended {
            self.ended.insert(id.to_string(), now);
            self.ended
                .retain(|_, at| now.duration_since(*at) < RETIRED_KEEP);
            return self.jobs.remove(id).map(|j| j.keys);
        }
        let job = self.jobs.entry(id.to_string()).or_insert_with(|| {
            self.seq += 1;
            Job {
                state: WorkerState::Pending,
                seq: self.seq,
                keys: Vec::new(),
                produced: false,
                submitted: now,
                suspended_since: None,
                shape: shape_of(id),
            }
        });
        match state {
            WorkerState::Suspended => {
                job.suspended_since.get_or_insert(now);
            }
            _ => job.suspended_since = None,
        }
        if !(job.state == WorkerState::Running && *state == WorkerState::Pending) {
            job.state = state.clone();
        }
        None
    }

    /// The job was cancelled by the engine (heartbeat lost, or given back).
    pub fn retire(&mut self, id: &str, now: Instant) -> Option<Job> {
        self.retired.insert(id.to_string(), now);
        self.retired
            .retain(|_, at| now.duration_since(*at) < RETIRED_KEEP);
        self.jobs.remove(id)
    }

    pub fn produced(&mut self, key: &str) {
        if let Some(j) = self.jobs.get_mut(key_id(key)) {
            j.produced = true;
        }
    }

    /// Jobs suspended for longer than `grace`, with their keys (each reported once).
    pub fn suspended_past(&mut self, grace: Duration, now: Instant) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for job in self.jobs.values_mut() {
            if let Some(since) = job.suspended_since {
                if now.duration_since(since) >= grace && !job.keys.is_empty() {
                    out.push(job.keys.clone());
                    // Reported; it stays suspended but is not reported again.
                    job.suspended_since = Some(since + Duration::from_secs(86_400 * 365));
                }
            }
        }
        out
    }

    /// (queued, running) jobs. A job is running once the scheduler or a hello says so; a
    /// suspended job is neither (it runs nothing, and work may need a replacement).
    pub fn counts(&self) -> (usize, usize) {
        self.tally(|_| true)
    }

    /// (queued, running) jobs of one worker shape.
    pub fn counts_of(&self, shape: ShapeId) -> (usize, usize) {
        self.tally(|j| j.shape == shape)
    }

    fn tally(&self, of: impl Fn(&Job) -> bool) -> (usize, usize) {
        let jobs = || self.jobs.values().filter(|j| of(j));
        let queued = jobs()
            .filter(|j| j.state == WorkerState::Pending && j.keys.is_empty())
            .count();
        let suspended = jobs().filter(|j| j.state == WorkerState::Suspended).count();
        (queued, jobs().count() - queued - suspended)
    }

    /// Jobs queued or started whose worker has not said hello yet.
    pub fn awaited(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| {
                j.keys.is_empty() && matches!(j.state, WorkerState::Pending | WorkerState::Running)
            })
            .count()
    }

    /// The newest `n` jobs that are still queued and never announced a worker: the only
    /// ones that can be given back without losing work.
    pub fn give_back(&self, n: usize) -> Vec<String> {
        self.give_back_where(n, |_| true)
    }

    /// Like `give_back`, among the jobs of one worker shape.
    pub fn give_back_of(&self, shape: ShapeId, n: usize) -> Vec<String> {
        self.give_back_where(n, |j| j.shape == shape)
    }

    fn give_back_where(&self, n: usize, of: impl Fn(&Job) -> bool) -> Vec<String> {
        let mut queued: Vec<(u64, &String)> = self
            .jobs
            .iter()
            .filter(|(_, j)| of(j) && j.state == WorkerState::Pending && j.keys.is_empty())
            .map(|(id, j)| (j.seq, id))
            .collect();
        queued.sort_unstable_by(|a, b| b.cmp(a));
        queued
            .into_iter()
            .take(n)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.jobs.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// Queued workers to give back: those beyond what the outstanding work can use. Running
/// workers are never taken away (they exit by themselves when idle).
pub fn surplus(target: usize, queued: usize, running: usize) -> usize {
    (queued + running).saturating_sub(target).min(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surplus_is_only_queued_workers_beyond_the_work() {
        assert_eq!(surplus(4, 3, 2), 1);
        assert_eq!(surplus(0, 5, 0), 5);
        assert_eq!(surplus(0, 2, 6), 2);
        assert_eq!(surplus(16, 10, 10), 4);
        assert_eq!(surplus(10, 2, 3), 0);
        assert_eq!(surplus(0, 0, 3), 0, "running workers are never cancelled");
    }

    #[test]
    fn hellos_from_given_back_unknown_and_rerun_jobs() {
        let now = Instant::now();
        let mut f = Fleet::default();
        f.submitted(&["7_1".into(), "7_2".into(), "7_3".into()], now);
        assert_eq!(f.hello("7_1+01", now), Welcome::Accept);
        assert_eq!(f.give_back(5), vec!["7_3".to_string(), "7_2".to_string()]);
        f.retire("7_3", now);
        assert!(matches!(f.hello("7_3+02", now), Welcome::Fence(_)));
        // the site reran 7_1: a second incarnation supersedes the first
        assert_eq!(f.hello("7_1+03", now), Welcome::Supersede("7_1+01".into()));
        // an id the scheduler has not reported: wait, then fence
        assert_eq!(f.hello("9_9+04", now), Welcome::Wait);
        assert!(matches!(
            f.hello("9_9+04", now + STRANGER_GRACE + Duration::from_secs(1)),
            Welcome::Fence(_)
        ));
        // an ended job's late hello
        assert_eq!(f.state("7_2", &WorkerState::Exited, now), Some(vec![]));
        assert!(matches!(f.hello("7_2+05", now), Welcome::Fence(_)));
        assert_eq!(f.counts(), (0, 1));
    }

    #[test]
    fn a_job_that_announced_itself_is_never_given_back() {
        let now = Instant::now();
        let mut f = Fleet::default();
        f.submitted(&["a".into(), "b".into()], now);
        // the scheduler still says pending (its last poll is old), but "b" said hello
        f.hello("b+1", now);
        assert_eq!(f.give_back(2), vec!["a".to_string()]);
    }
}

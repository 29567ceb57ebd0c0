//! Engine behaviour with in-process workers: a test scheduler whose "workers" are threads
//! speaking the real work-dir protocol, and which can be told to die holding a claim.

use shoal_core::protocol::ResultHeader;
use shoal_core::worker::{WorkerConfig, WorkerSession};
use shoal_core::SessionDir;
use shoal_engine::{Engine, EngineOptions, Event};
use shoal_sched::{LaunchSpec, Scheduler, WorkerEvent, WorkerState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a thread worker behaves.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Echo each payload back as the result.
    Echo,
    /// Claim one chunk, then die without a result.
    DieHoldingClaim,
    /// Die at once, before claiming.
    DieAtStart,
}

struct ThreadScheduler {
    capacity: usize,
    behaviour: Arc<Mutex<Vec<Behaviour>>>,
    events: Arc<Mutex<Vec<WorkerEvent>>>,
    started: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    keep_warm: bool,
    submit_error: Option<String>,
}

impl ThreadScheduler {
    /// Workers behave as `plan` says, in order; after the plan runs out they echo.
    fn new(capacity: usize, plan: Vec<Behaviour>) -> Self {
        ThreadScheduler {
            capacity,
            behaviour: Arc::new(Mutex::new(plan)),
            events: Arc::new(Mutex::new(Vec::new())),
            started: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            keep_warm: false,
            submit_error: None,
        }
    }
}

impl Scheduler for ThreadScheduler {
    fn name(&self) -> &'static str {
        "threads"
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn keep_warm(&self) -> bool {
        self.keep_warm
    }
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(5)
    }
    fn preflight(&mut self, _: &LaunchSpec) -> shoal_sched::Result<()> {
        Ok(())
    }
    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> shoal_sched::Result<Vec<String>> {
        if let Some(msg) = &self.submit_error {
            return Err(shoal_sched::SchedError::Command {
                command: "submit".into(),
                message: msg.clone(),
            });
        }
        let mut ids = vec![];
        for _ in 0..n {
            let k = self.started.fetch_add(1, Ordering::SeqCst);
            let id = format!("t{k}");
            let behaviour = {
                let mut plan = self.behaviour.lock().unwrap();
                if plan.is_empty() {
                    Behaviour::Echo
                } else {
                    plan.remove(0)
                }
            };
            let (root, events, stop, wid) = (
                spec.session.root().to_path_buf(),
                self.events.clone(),
                self.stop.clone(),
                id.clone(),
            );
            events.lock().unwrap().push(WorkerEvent {
                worker: id.clone(),
                state: WorkerState::Running,
            });
            std::thread::spawn(move || {
                let state = run_worker(&root, &wid, behaviour, &stop);
                events
                    .lock()
                    .unwrap()
                    .push(WorkerEvent { worker: wid, state });
            });
            ids.push(id);
        }
        Ok(ids)
    }
    fn poll(&mut self) -> shoal_sched::Result<Vec<WorkerEvent>> {
        Ok(std::mem::take(&mut *self.events.lock().unwrap()))
    }
    fn cancel(&mut self, _: &[String]) -> shoal_sched::Result<()> {
        Ok(())
    }
    fn cancel_all(&mut self) -> shoal_sched::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn run_worker(
    root: &std::path::Path,
    id: &str,
    behaviour: Behaviour,
    stop: &AtomicBool,
) -> WorkerState {
    if behaviour == Behaviour::DieAtStart {
        return WorkerState::Lost("died at start".into());
    }
    let mut w = WorkerSession::open(root, Some(id)).unwrap();
    while !stop.load(Ordering::SeqCst) {
        match w.next_chunk(Some(Duration::from_millis(20))).unwrap() {
            Ok((h, payload)) => {
                if behaviour == Behaviour::DieHoldingClaim {
                    return WorkerState::Lost("killed by signal 9 (SIGKILL)".into());
                }
                let r = ResultHeader {
                    chunk: h.chunk,
                    first_task: h.first_task,
                    ntasks: h.ntasks,
                    worker: id.into(),
                    ..Default::default()
                };
                w.complete(&r, &payload).unwrap();
            }
            Err(shoal_core::worker::ExitReason::Timeout) => continue,
            Err(_) => break,
        }
    }
    WorkerState::Exited
}

fn start(sched: ThreadScheduler, options: EngineOptions) -> (tempfile::TempDir, Engine) {
    let t = tempfile::tempdir().unwrap();
    let dir = SessionDir::create(t.path().join("s")).unwrap();
    dir.write_config(&WorkerConfig {
        heartbeat_interval: 0.05,
        ..Default::default()
    })
    .unwrap();
    let spec = LaunchSpec {
        session: dir.clone(),
        python: "python3".into(),
        env: vec![],
        cwd: t.path().into(),
    };
    let options = EngineOptions {
        history: Some(t.path().join("history")),
        ..options
    };
    let engine = Engine::start(dir, Box::new(sched), spec, options).unwrap();
    (t, engine)
}

/// Collect events until `n` results/losses arrived or a fatal error; panics after 20 s.
fn collect(engine: &Engine, n: usize) -> (HashMap<u64, Vec<u8>>, Vec<Event>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut results = HashMap::new();
    let mut other = vec![];
    while results.len()
        + other
            .iter()
            .filter(|e| matches!(e, Event::Lost { .. }))
            .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "timed out: {} results, {other:?}",
            results.len()
        );
        for ev in engine.events(Duration::from_millis(50)) {
            match ev {
                Event::Result { header, payload } => {
                    assert!(
                        results.insert(header.chunk, payload).is_none(),
                        "chunk delivered twice"
                    );
                }
                Event::Started { .. } => {}
                Event::Fatal { .. } => return (results, vec![ev]),
                e => other.push(e),
            }
        }
    }
    (results, other)
}

#[test]
fn every_chunk_delivered_once() {
    let (_t, engine) = start(ThreadScheduler::new(3, vec![]), EngineOptions::default());
    for i in 0..50u32 {
        engine.submit(format!("p{i}").as_bytes(), 2).unwrap();
    }
    let (results, other) = collect(&engine, 50);
    assert!(other.is_empty());
    assert_eq!(results.len(), 50);
    assert_eq!(results[&7], b"p7");
    let stats = engine.stats();
    assert_eq!(
        (stats.tasks_total, stats.tasks_done, stats.tasks_failed),
        (100, 100, 0)
    );
}

#[test]
fn dead_workers_claims_are_requeued() {
    let plan = vec![Behaviour::DieHoldingClaim, Behaviour::DieHoldingClaim];
    let (_t, engine) = start(ThreadScheduler::new(2, plan), EngineOptions::default());
    for i in 0..10u32 {
        engine.submit(format!("p{i}").as_bytes(), 1).unwrap();
    }
    let (results, other) = collect(&engine, 10);
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(results.len(), 10);
    assert!(engine.stats().workers_lost >= 2);
}

#[test]
fn chunk_lost_too_often_is_reported_not_retried_forever() {
    let plan = vec![Behaviour::DieHoldingClaim; 3];
    let options = EngineOptions {
        max_attempts: 2,
        ..Default::default()
    };
    let (_t, engine) = start(ThreadScheduler::new(1, plan), options);
    engine.submit(b"doomed", 4).unwrap();
    let (results, other) = collect(&engine, 1);
    assert!(results.is_empty());
    match &other[0] {
        Event::Lost { chunk, reason, .. } => {
            assert_eq!(chunk.ntasks, 4);
            assert!(
                reason.contains("SIGKILL") && reason.contains("2 times"),
                "{reason}"
            );
        }
        e => panic!("expected Lost, got {e:?}"),
    }
    assert_eq!(engine.stats().tasks_failed, 4);
}

#[test]
fn workers_that_never_start_fail_the_session() {
    let plan = vec![Behaviour::DieAtStart; 10];
    let options = EngineOptions {
        max_start_failures: 3,
        ..Default::default()
    };
    let (_t, engine) = start(ThreadScheduler::new(1, plan), options);
    engine.submit(b"x", 1).unwrap();
    let (_, evs) = collect(&engine, 1);
    match &evs[0] {
        Event::Fatal { message } => assert!(message.contains("died at start"), "{message}"),
        e => panic!("expected Fatal, got {e:?}"),
    }
}

#[test]
fn refused_submission_is_fatal_with_the_schedulers_message() {
    let mut sched = ThreadScheduler::new(1, vec![]);
    sched.submit_error = Some("sbatch: error: invalid partition specified: nope".into());
    let (_t, engine) = start(sched, EngineOptions::default());
    engine.submit(b"x", 1).unwrap();
    let (_, evs) = collect(&engine, 1);
    match &evs[0] {
        Event::Fatal { message } => assert!(message.contains("invalid partition"), "{message}"),
        e => panic!("expected Fatal, got {e:?}"),
    }
    assert!(engine.fatal().is_some());
}

#[test]
fn finish_records_state_and_keeps_a_failed_sessions_dir() {
    let (t, engine) = start(ThreadScheduler::new(1, vec![]), EngineOptions::default());
    let (_, evs) = collect(&engine, 0);
    assert!(evs.is_empty());
    engine.shutdown(Some(Duration::from_secs(2)));
    let root = t.path().join("s");
    assert!(engine
        .finish(shoal_core::session::SessionState::Failed, None, false)
        .is_some());
    assert!(root.exists());
    let meta = SessionDir::open(&root).read_meta().unwrap();
    assert_eq!(meta.state, shoal_core::session::SessionState::Failed);
}

#[test]
fn the_journal_records_workers_chunks_retries_and_the_end() {
    use shoal_core::journal::{Log, Summary, WorkerStatus};
    // One worker at a time: the first claims a chunk and dies, the second does everything.
    let plan = vec![Behaviour::DieHoldingClaim];
    let (t, engine) = start(ThreadScheduler::new(1, plan), EngineOptions::default());
    for i in 0..6u32 {
        engine.submit(format!("p{i}").as_bytes(), 3).unwrap();
    }
    let (results, _) = collect(&engine, 6);
    assert_eq!(results.len(), 6);
    engine.shutdown(Some(Duration::from_secs(2)));
    engine.finish(shoal_core::session::SessionState::Finished, None, true);
    let log = Log::read(&t.path().join("s").join("journal")).unwrap();
    let s = Summary::of(&log, 0.0);
    assert_eq!(s.state, "finished");
    assert_eq!(
        (s.tasks.total, s.tasks.finished, s.tasks.failed),
        (18, 18, 0)
    );
    assert_eq!(
        s.tasks.retried, 3,
        "the dead worker's chunk ran again: {s:?}"
    );
    let lost: Vec<_> = s
        .workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Lost)
        .collect();
    assert_eq!(lost.len(), 1);
    assert!(lost[0].reason.as_deref().unwrap().contains("SIGKILL"));
    assert_eq!(s.workers.iter().map(|w| w.tasks).sum::<u64>(), 18);
    assert!(
        s.workers
            .iter()
            .all(|w| w.host.as_deref() == Some(shoal_core::fsutil::hostname().as_str())),
        "every worker announced its host: {:?}",
        s.workers
    );
    let copy = Log::read(&t.path().join("history").join("s.journal")).unwrap();
    assert_eq!(copy.events, log.events, "the history keeps a copy");
}

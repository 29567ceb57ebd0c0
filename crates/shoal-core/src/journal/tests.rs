use super::*;

fn info(id: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        backend: "slurm".into(),
        host: "login1".into(),
        pid: 4242,
        started: 1_700_000_000.0,
        metadata: serde_json::json!({"run": 3}),
    }
}

fn session(t: &tempfile::TempDir) -> SessionDir {
    SessionDir::create(t.path().join("20260101-000000-00000000000000aa")).unwrap()
}

fn done(chunk: u64, worker: &str, ntasks: u32, nfailed: u32, elapsed: f64) -> ChunkDone<'_> {
    ChunkDone {
        chunk,
        worker,
        ntasks,
        nfailed,
        elapsed,
        ..ChunkDone::default()
    }
}

/// Two workers on two hosts: w1 queues 10 s and starts in 2 s, runs chunks 0 and 2 (chunk 2
/// fails one of its tasks); w2 is lost holding chunk 1, which is retried on w1 as chunk 1.
fn sample(dir: &SessionDir) -> Journal {
    let mut j = Journal::open(dir, &info("s1")).unwrap();
    j.set_clock(0);
    j.tasks_total(7);
    j.worker_submitted("100_0", Some("100"));
    j.worker_submitted("100_1", Some("100"));
    j.set_clock(10_000);
    j.worker_running("100_0");
    j.set_clock(12_000);
    j.worker_announced("100_0", "node1", 11);
    j.chunk_started(0, "100_0", 3);
    j.set_clock(20_000);
    j.worker_running("100_1");
    j.worker_announced("100_1", "node2", 22);
    j.chunk_started(1, "100_1", 1);
    j.set_clock(22_000);
    j.chunk_finished(&ChunkDone {
        durations: &[(0, 1.0), (1, 2.0), (2, 7.0)],
        ..done(0, "100_0", 3, 0, 10.0)
    });
    j.chunk_started(2, "100_0", 3);
    j.set_clock(30_000);
    j.worker_ended("100_1", WorkerEnd::Lost, "node failure\nmore");
    j.chunk_requeued(1, "100_1", 1);
    j.set_clock(32_000);
    j.chunk_finished(&done(2, "100_0", 3, 1, 9.0));
    j.tasks_failed(5, 1, "Traceback (most recent call last):\n  File \"t.py\", line 1, in f\n    raise ValueError('bad 5')\nValueError: bad 5\n");
    j.chunk_started(1, "100_0", 1);
    j.set_clock(33_500);
    j.chunk_finished(&done(1, "100_0", 1, 0, 1.5));
    j.flush();
    j
}

#[test]
fn events_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    drop(sample(&dir));
    end_session(
        &dir,
        &SessionEnd {
            at: 1_700_000_040.0,
            state: "failed".into(),
            message: None,
            tasks_total: 7,
            tasks_done: 7,
            tasks_failed: 1,
        },
    );
    let log = Log::of(&dir).unwrap();
    assert_eq!(log.info, info("s1"));
    assert_eq!(log.workers, ["100_0", "100_1"]);
    assert_eq!(log.messages, ["ValueError: bad 5"]);
    assert_eq!(log.events.len(), 17);
    assert_eq!(
        log.events[8],
        Event::ChunkStarted {
            t: 20.0,
            chunk: 1,
            worker: 1,
            ntasks: 1
        }
    );
    assert_eq!(
        log.events[9],
        Event::ChunkFinished(Finished {
            t: 22.0,
            chunk: 0,
            worker: 0,
            ntasks: 3,
            nfailed: 0,
            elapsed: 10.0,
            durations: vec![(0, 1.0), (1, 2.0), (2, 7.0)],
            duplicate: false,
        })
    );
    assert_eq!(
        log.events[11],
        Event::WorkerEnded {
            t: 30.0,
            worker: 1,
            how: WorkerEnd::Lost,
            reason: "node failure".into()
        }
    );
    assert_eq!(log.end.as_ref().unwrap().state, "failed");
}

#[test]
fn a_reader_stops_before_a_record_cut_short_and_resumes_there() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    drop(sample(&dir));
    let path = dir.root().join(FILE);
    let full = fs::read(&path).unwrap();
    let whole = Log::read(&path).unwrap();
    for cut in MAGIC.len()..full.len() {
        fs::write(&path, &full[..cut]).unwrap();
        let mut log = Log::read(&path).unwrap();
        assert!(log.events.len() <= whole.events.len());
        assert_eq!(
            log.events[..],
            whole.events[..log.events.len()],
            "cut at {cut}"
        );
        fs::write(&path, &full).unwrap();
        log.refresh().unwrap();
        assert_eq!(log.events, whole.events, "resumed after a cut at {cut}");
        assert_eq!(log.workers, whole.workers);
    }
}

#[test]
fn a_file_that_is_not_a_journal_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("journal");
    fs::write(&p, b"{\"json\": true}\n").unwrap();
    let e = Log::read(&p).unwrap_err().to_string();
    assert!(e.contains("not a shoal journal"), "{e}");
}

#[test]
fn summary_of_the_sample() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    drop(sample(&dir));
    let log = Log::of(&dir).unwrap();
    let s = Summary::of(&log, log.info.started + 40.0);
    assert_eq!(s.state, "running");
    assert_eq!(
        s.tasks,
        TaskCounts {
            total: 7,
            finished: 7,
            failed: 1,
            retried: 1,
            lost: 0,
            running: 0
        }
    );
    // Durations: 1, 2, 7 (timed), three of 3 s (chunk 2's mean), 1.5 (chunk of one).
    let d = s.durations.clone().unwrap();
    assert_eq!((d.n, d.min, d.p50, d.p95, d.max), (7, 1.0, 3.0, 7.0, 7.0));
    assert!(!s.durations_exact);
    let w0 = &s.workers[0];
    assert_eq!(w0.status, WorkerStatus::Idle);
    assert_eq!((w0.queue_wait, w0.startup), (Some(10.0), Some(2.0)));
    assert_eq!((w0.tasks, w0.failed, w0.chunks), (7, 1, 3));
    assert_eq!(w0.busy, 20.5);
    assert_eq!(w0.idle, 28.0 - 20.5, "up from 12 s to 40 s");
    assert_eq!(w0.host.as_deref(), Some("node1"));
    assert_eq!(w0.job.as_deref(), Some("100"));
    let w1 = &s.workers[1];
    assert_eq!(w1.status, WorkerStatus::Lost);
    assert_eq!(w1.reason.as_deref(), Some("node failure"));
    assert_eq!(
        (w1.queue_wait, w1.startup),
        (Some(20.0), None),
        "seen running and announced at once: start-up unknown"
    );
    assert_eq!(s.hosts.len(), 2);
    assert_eq!((s.hosts[0].host.as_str(), s.hosts[0].tasks), ("node1", 7));
    assert_eq!(
        s.failures,
        [FailureGroup {
            message: "ValueError: bad 5".into(),
            count: 1,
            distinct: 1,
            tasks: vec![5]
        }]
    );
    assert_eq!(s.workers_by_status[&WorkerStatus::Idle], 1);
    assert_eq!(s.throughput.bin, 1.0);
    let binned: f64 = s
        .throughput
        .rates
        .iter()
        .map(|r| r * s.throughput.bin)
        .sum();
    assert!((binned - 7.0).abs() < 1e-6, "{binned}");
    assert_eq!(s.eta, None, "everything submitted has finished");
}

#[test]
fn a_live_session_has_running_workers_rate_and_eta() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    let mut j = Journal::open(&dir, &info("live")).unwrap();
    j.set_clock(0);
    j.tasks_total(100);
    j.worker_submitted("w1", None);
    j.worker_announced("w1", "h", 1);
    for c in 0..10u64 {
        j.set_clock(c * 1000);
        j.chunk_started(c, "w1", 1);
        j.set_clock(c * 1000 + 1000);
        j.chunk_finished(&done(c, "w1", 1, 0, 1.0));
    }
    j.chunk_started(10, "w1", 1);
    j.flush();
    let log = Log::of(&dir).unwrap();
    let s = Summary::of(&log, log.info.started + 10.5);
    assert_eq!(s.workers[0].status, WorkerStatus::Running);
    assert_eq!(s.workers[0].current, Some((10, 10.0)));
    assert_eq!(s.tasks.running, 1);
    assert!(
        (s.recent_rate - 10.0 / 10.5).abs() < 0.01,
        "{}",
        s.recent_rate
    );
    let eta = s.eta.unwrap();
    assert!((eta - 90.0 / s.recent_rate).abs() < 1e-6, "{eta}");
    let tl = Timeline::of(&log, log.info.started + 10.5);
    let bars = &tl.workers[0].bars;
    assert_eq!(bars.len(), 11);
    assert_eq!(bars[10].outcome, Outcome::Running);
    assert_eq!((bars[3].start, bars[3].end), (3.0, 4.0));
}

#[test]
fn ended_session_stops_remaining_workers_and_marks_open_chunks_unfinished() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    let mut j = Journal::open(&dir, &info("e")).unwrap();
    j.set_clock(0);
    j.worker_submitted("w1", None);
    j.worker_submitted("w2", None);
    j.set_clock(500);
    j.worker_announced("w1", "h", 1);
    j.chunk_started(0, "w1", 4);
    j.set_clock(800);
    j.worker_ended("w2", WorkerEnd::Retired, "");
    drop(j);
    end_session(
        &dir,
        &SessionEnd {
            at: info("e").started + 2.0,
            state: "cancelled".into(),
            message: Some("session cancelled by `shoal cancel`".into()),
            tasks_total: 4,
            ..SessionEnd::default()
        },
    );
    let log = Log::of(&dir).unwrap();
    let s = Summary::of(&log, 0.0);
    assert_eq!(s.elapsed, 2.0);
    assert_eq!(s.state, "cancelled");
    assert_eq!(s.workers[0].status, WorkerStatus::Exited);
    assert_eq!(s.workers[1].status, WorkerStatus::Retired);
    assert_eq!(s.tasks.running, 0);
    let tl = Timeline::of(&log, 0.0);
    assert_eq!(tl.workers[0].bars[0].outcome, Outcome::Unfinished);
    assert_eq!(tl.workers[0].bars[0].end, 2.0);
}

#[test]
fn percentiles_weight_chunk_means_by_their_tasks() {
    let d = Dist::weighted(vec![(1.0, 90), (10.0, 10)]).unwrap();
    assert_eq!((d.n, d.p50, d.p95, d.max), (100, 1.0, 10.0, 10.0));
    assert!((d.mean - 1.9).abs() < 1e-9);
    let d = Dist::of((1..=100).map(f64::from)).unwrap();
    assert_eq!((d.p50, d.p95, d.max, d.min), (50.0, 95.0, 100.0, 1.0));
    assert!(Dist::of([]).is_none());
}

#[test]
fn error_line_is_the_exception_line_of_a_traceback() {
    let tb = "Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n    raise KeyError(1)\nKeyError: 1\n";
    assert_eq!(error_line(tb), "KeyError: 1");
    let chained = format!(
        "{tb}\nThe above exception was the direct cause of the following exception:\n\n{}",
        tb.replace("KeyError: 1", "RuntimeError: wrapped\nsecond line")
    );
    assert_eq!(error_line(&chained), "RuntimeError: wrapped");
    assert_eq!(
        error_line("\n  worker exited while holding a chunk\n"),
        "worker exited while holding a chunk"
    );
    assert_eq!(error_line(""), "");
}

#[test]
fn distinct_error_texts_and_failure_records_are_capped() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    let mut j = Journal::open(&dir, &info("many")).unwrap();
    for i in 0..(MAX_MESSAGES as u64 + 50) {
        j.tasks_failed(i, 1, &format!("ValueError: bad {i}"));
    }
    j.flush();
    let log = Log::of(&dir).unwrap();
    assert_eq!(log.messages.len(), MAX_MESSAGES as usize + 1);
    let s = Summary::of(&log, 0.0);
    let other = s
        .failures
        .iter()
        .find(|g| g.message.contains("too many"))
        .unwrap();
    assert_eq!(other.count, 50);
}

#[test]
fn archive_copies_the_journal_and_keeps_the_newest() {
    let t = tempfile::tempdir().unwrap();
    let history = t.path().join("history");
    for i in 0..8 {
        let dir = SessionDir::create(t.path().join(format!("20260101-{i:06}-00"))).unwrap();
        drop(Journal::open(&dir, &info("x")).unwrap());
        assert!(archive_keeping(&dir, &history, 5).is_some());
    }
    let names = crate::fsutil::list_names(&history).unwrap();
    assert_eq!(names.len(), 5);
    assert_eq!(
        names[0], "20260101-000003-00.journal",
        "the oldest went first"
    );
    assert!(Log::read(&history.join(&names[0])).is_ok());
}

/// A week-long sweep's shape: `n` one-task chunks of 5-15 minutes on 16 workers, every chunk
/// started and finished in the journal, as `shoal run` (chunksize 1) produces.
fn one_task_chunks(dir: &SessionDir, n: u64) -> u64 {
    let mut j = Journal::open(dir, &info("sweep")).unwrap();
    let mut seed = 7u64;
    let mut rand = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % 600_000
    };
    let workers: Vec<String> = (0..16).map(|i| format!("123456_{i}")).collect();
    j.set_clock(0);
    j.tasks_total(n);
    for w in &workers {
        j.worker_submitted(w, Some("123456"));
    }
    // (end time ms, worker, chunk, started at)
    let mut running: Vec<(u64, usize, u64, u64)> = Vec::new();
    let mut next = 0u64;
    let mut clock = 0u64;
    for (i, w) in workers.iter().enumerate() {
        clock += 700;
        j.set_clock(clock);
        j.worker_running(w);
        j.worker_announced(w, &format!("node{:02}", i / 4), 1000 + i as u32);
        j.chunk_started(next, w, 1);
        running.push((clock + 300_000 + rand(), i, next, clock));
        next += 1;
    }
    while let Some(pos) = (0..running.len()).min_by_key(|&k| running[k].0) {
        let (end, i, chunk, start) = running.swap_remove(pos);
        j.set_clock(end);
        j.chunk_finished(&done(
            chunk,
            &workers[i],
            1,
            0,
            (end - start) as f64 / 1000.0 - 0.05,
        ));
        if next < n {
            j.chunk_started(next, &workers[i], 1);
            running.push((end + 300_000 + rand(), i, next, end));
            next += 1;
        }
    }
    drop(j);
    fs::metadata(dir.root().join(FILE)).unwrap().len()
}

#[test]
fn size_per_thousand_tasks() {
    let t = tempfile::tempdir().unwrap();
    // One-task chunks (runs, imap chunksize=1): every task has a start and a finish record.
    let a = SessionDir::create(t.path().join("a")).unwrap();
    let one = one_task_chunks(&a, 10_000) as f64 / 10.0;
    // A map of 10,000 tasks in 64 chunks on 16 workers.
    let b = SessionDir::create(t.path().join("b")).unwrap();
    let mut j = Journal::open(&b, &info("map")).unwrap();
    for c in 0..64u64 {
        let w = format!("w{}", c % 16);
        j.set_clock(c * 250);
        j.chunk_started(c, &w, 157);
        j.set_clock(c * 250 + 4000);
        j.chunk_finished(&done(c, &w, 157, 0, 3.9));
    }
    drop(j);
    let map = fs::metadata(b.root().join(FILE)).unwrap().len() as f64 / 10.0;
    // The same with every task timed by its worker (slow tasks).
    let c = SessionDir::create(t.path().join("c")).unwrap();
    let mut j = Journal::open(&c, &info("timed")).unwrap();
    for ch in 0..64u64 {
        let w = format!("w{}", ch % 16);
        let durations: Vec<(u32, f64)> = (0..157)
            .map(|i| (i, 1.0 + f64::from(i % 13) * 0.37))
            .collect();
        j.set_clock(ch * 60_000);
        j.chunk_started(ch, &w, 157);
        j.set_clock(ch * 60_000 + 300_000);
        j.chunk_finished(&ChunkDone {
            durations: &durations,
            ..done(ch, &w, 157, 0, 300.0)
        });
    }
    drop(j);
    let timed = fs::metadata(c.root().join(FILE)).unwrap().len() as f64 / 10.0;
    eprintln!("bytes per 1,000 tasks: one-task chunks {one:.0}, map {map:.0}, map with per-task durations {timed:.0}");
    assert!(
        one < 14_000.0,
        "one-task chunks: {one} bytes per 1,000 tasks"
    );
    assert!(map < 200.0, "map: {map} bytes per 1,000 tasks");
    assert!(timed < 4_000.0, "timed map: {timed} bytes per 1,000 tasks");
    let log = Log::of(&a).unwrap();
    let s = Summary::of(&log, 0.0);
    assert_eq!(s.tasks.finished, 10_000);
    assert_eq!(s.workers.len(), 16);
    assert_eq!(s.hosts.len(), 4);
    let d = s.durations.unwrap();
    assert!(d.p50 > 500.0 && d.p50 < 700.0 && d.max < 900.0, "{d:?}");
}

#[test]
fn repeated_sightings_record_nothing_new() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    let mut j = Journal::open(&dir, &info("idem")).unwrap();
    j.worker_submitted("w1", None);
    assert!(j.needs_announcement("w1"));
    for _ in 0..3 {
        j.worker_announced("w1", "h", 1);
        j.chunk_started(0, "w1", 2);
    }
    assert!(!j.needs_announcement("w1"));
    j.chunk_requeued(0, "w1", 2);
    j.chunk_started(0, "w2", 2);
    j.chunk_started(0, "w2", 2);
    j.worker_ended(
        "w1",
        WorkerEnd::Fenced,
        "no heartbeat from worker for 120 s",
    );
    j.worker_ended("w1", WorkerEnd::Lost, "worker exited while holding a chunk");
    drop(j);
    let log = Log::of(&dir).unwrap();
    let kinds: Vec<&str> = log
        .events
        .iter()
        .map(|e| match e {
            Event::WorkerSubmitted { .. } => "submitted",
            Event::WorkerAnnounced { .. } => "announced",
            Event::ChunkStarted { .. } => "started",
            Event::ChunkRequeued { .. } => "requeued",
            Event::WorkerEnded { .. } => "ended",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "announced",
            "started",
            "requeued",
            "started",
            "ended"
        ]
    );
    let s = Summary::of(&log, 0.0);
    assert_eq!(s.workers[0].status, WorkerStatus::Fenced);
}

#[test]
fn start_up_is_the_workers_own_measure_when_the_backend_saw_it_running_late() {
    let t = tempfile::tempdir().unwrap();
    let dir = session(&t);
    let mut j = Journal::open(&dir, &info("startup")).unwrap();
    j.set_clock(0);
    j.worker_submitted("b1-0", Some("7001_0"));
    j.worker_submitted("b1-1", Some("7001_1"));
    j.set_clock(1000);
    j.worker_running("b1-0"); // seen running before it announced itself: measured here
    j.set_clock(1800);
    j.worker_startup("b1-0", 0.5);
    j.worker_announced("b1-0", "node1", 1);
    j.worker_startup("b1-1", 0.25); // announced before its backend's poll saw it running
    j.worker_announced("b1-1", "node1", 2);
    j.set_clock(2500);
    j.worker_running("b1-1");
    j.flush();
    let log = Log::of(&dir).unwrap();
    let s = Summary::of(&log, log.info.started + 3.0);
    assert_eq!(s.workers[0].startup, Some(0.8));
    assert_eq!(s.workers[1].startup, Some(0.25));
    assert_eq!(s.workers[1].queue_wait, Some(1.8));
}

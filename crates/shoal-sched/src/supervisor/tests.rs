//! The supervisor with a real adapter (Slurm's) over fake `sbatch`/`squeue` that fail K times
//! or hang: what the engine sees must never wait for the scheduler, transient failures are
//! ridden out, permanent ones end the session with the scheduler's words.

use super::*;
use crate::slurm;
use serde_json::json;
use shoal_core::SessionDir;
use std::fs;
use std::path::PathBuf;

const CONFIG: &str = "AccountingStorageType = accounting_storage/none\nMaxArraySize = 1001\n\
                      MaxJobCount = 50000\nMinJobAge = 300 sec\n";

struct Fake {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    spec: LaunchSpec,
}

impl Fake {
    /// `sbatch` fails with the words in sbatch.fail while the counter sbatch.left is above
    /// zero (decremented per call); `squeue` fails likewise, or sleeps squeue.hang seconds.
    fn new() -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let tool = |name: &str, body: &str| crate::testing::fake_tool(&bin, name, body);
        let failing = |name: &str| {
            format!(
                "n=$(cat $D/{name}.left 2>/dev/null || echo 0)\n\
                 if [ \"$n\" -gt 0 ]; then echo $((n-1)) > $D/{name}.left; cat $D/{name}.fail >&2; exit 1; fi"
            )
        };
        tool(
            "sbatch",
            &format!(
                "case \"$*\" in *--test-only*) exit 0;; esac\n{}\n\
                 n=$(cat $D/next 2>/dev/null || echo 100); echo $((n+1)) > $D/next; echo \"$n\"",
                failing("sbatch")
            ),
        );
        tool(
            "squeue",
            &format!(
                "[ -f $D/squeue.hang ] && sleep $(cat $D/squeue.hang)\n{}\ncat $D/squeue.out 2>/dev/null; exit 0",
                failing("squeue")
            ),
        );
        // Cancelling a whole array empties the listing and ends any outage.
        tool(
            "scancel",
            "case \"$*\" in *_*) ;; *) rm -f $D/squeue.out $D/squeue.left $D/squeue.hang;; esac; exit 0",
        );
        tool(
            "scontrol",
            "case \"$*\" in 'show config') cat $D/config;; esac",
        );
        fs::write(bin.join("config"), CONFIG).unwrap();
        let session = SessionDir::create(tmp.path().join("s")).unwrap();
        let spec = LaunchSpec {
            session,
            python: "/bin/sh".into(),
            env: vec![],
            cwd: tmp.path().to_path_buf(),
            connect: None,
        };
        Fake {
            _tmp: tmp,
            bin,
            spec,
        }
    }

    fn put(&self, name: &str, text: &str) {
        fs::write(self.bin.join(name), text).unwrap();
    }

    fn calls(&self, tool: &str) -> Vec<String> {
        fs::read_to_string(self.bin.join(format!("{tool}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("--test-only"))
            .map(String::from)
            .collect()
    }

    fn supervisor(&self, timeout: Duration) -> Supervisor {
        let backend = slurm::backend(4, &json!({"poll_interval": 0.05}))
            .unwrap()
            .with_tools(&self.bin)
            .with_timeout(timeout)
            .with_cancel_wait(Duration::from_secs(2));
        let mut s = Supervisor::new(Box::new(backend)).with_policy(Policy {
            attempts: 3,
            grace: Duration::from_millis(300),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        });
        s.preflight(&self.spec).unwrap();
        s
    }
}

/// Poll until `done` says so or `limit` passes; every poll must return at once.
fn poll_until(
    s: &mut Supervisor,
    limit: Duration,
    mut done: impl FnMut(&Result<Vec<WorkerEvent>>) -> bool,
) -> Result<Vec<WorkerEvent>> {
    let start = Instant::now();
    let mut all = Vec::new();
    loop {
        let t = Instant::now();
        let r = s.poll();
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "poll waited {:?}",
            t.elapsed()
        );
        if let Ok(ev) = &r {
            all.extend(ev.iter().cloned());
        }
        let r = r.map(|_| all.clone());
        if done(&r) || start.elapsed() > limit {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn submit_returns_ids_at_once_and_transient_failures_are_retried() {
    let f = Fake::new();
    f.put(
        "sbatch.fail",
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
    );
    f.put("sbatch.left", "3");
    f.put("squeue.out", "100_0 R 0 None\n100_1 R 0 None\n");
    let mut s = f.supervisor(Duration::from_secs(10));
    let t = Instant::now();
    let ids = s.submit(&f.spec, 2).unwrap();
    assert!(t.elapsed() < Duration::from_millis(50));
    assert_eq!(ids, ["b1-0", "b1-1"]);
    let ev = poll_until(&mut s, Duration::from_secs(10), |r| {
        r.as_ref().is_ok_and(|e| e.len() >= 2)
    })
    .unwrap();
    assert!(ev.iter().all(|e| e.state == WorkerState::Running), "{ev:?}");
    assert_eq!(
        f.calls("sbatch").len(),
        4,
        "3 failures, then the submission"
    );
    let notes = s.notes();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("retrying") && n.contains("Socket timed out")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("work again after 3 failed calls")),
        "{notes:?}"
    );
    assert_eq!(s.job_ids(), ["100"]);
    assert_eq!(s.calls()["sbatch"].failures, 3);
}

#[test]
fn a_permanent_refusal_ends_the_session_at_once_with_the_schedulers_words() {
    let f = Fake::new();
    f.put(
        "sbatch.fail",
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
    );
    f.put("sbatch.left", "100");
    let mut s = f.supervisor(Duration::from_secs(10));
    s.submit(&f.spec, 1).unwrap();
    let r = poll_until(&mut s, Duration::from_secs(5), |r| r.is_err());
    let e = r.unwrap_err().to_string();
    assert!(e.contains("Invalid account"), "{e}");
    assert_eq!(f.calls("sbatch").len(), 1, "not retried");
    assert!(s.submit(&f.spec, 1).is_err(), "later submissions fail too");
}

#[test]
fn an_outage_fails_the_session_only_when_no_worker_is_alive() {
    // Workers running: squeue failing for longer than the grace changes nothing.
    let f = Fake::new();
    f.put("squeue.out", "100_0 R 0 None\n");
    let mut s = f.supervisor(Duration::from_secs(10));
    s.submit(&f.spec, 1).unwrap();
    poll_until(&mut s, Duration::from_secs(5), |r| {
        r.as_ref().is_ok_and(|e| !e.is_empty())
    })
    .unwrap();
    f.put(
        "squeue.fail",
        "squeue: error: Unable to contact slurm controller (connect failure)",
    );
    f.put("squeue.left", "1000");
    let r = poll_until(&mut s, Duration::from_secs(1), |r| r.is_err());
    assert!(r.is_ok(), "a running worker keeps the session going");
    assert!(f.calls("squeue").len() >= 4, "{:?}", f.calls("squeue"));
    // Back: the outage is over, and said so.
    f.put("squeue.left", "0");
    poll_until(&mut s, Duration::from_millis(500), |_| false).unwrap();
    assert!(s.notes().iter().any(|n| n.contains("queries work again")));

    // Nothing running: after the attempts and the grace, the last error ends it.
    let f = Fake::new();
    f.put(
        "squeue.fail",
        "squeue: error: Unable to contact slurm controller (connect failure)",
    );
    f.put("squeue.left", "1000");
    let mut s = f.supervisor(Duration::from_secs(10));
    s.submit(&f.spec, 1).unwrap();
    let e = poll_until(&mut s, Duration::from_secs(10), |r| r.is_err())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Unable to contact slurm controller") && e.contains("gave up after"),
        "{e}"
    );
}

#[test]
fn a_hung_query_delays_nothing_and_cancel_all_kills_it() {
    let f = Fake::new();
    f.put("squeue.hang", "30");
    let mut s = f.supervisor(Duration::from_secs(60));
    s.submit(&f.spec, 2).unwrap();
    // The backend's thread is stuck in squeue now; the engine's calls are not.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!f.calls("squeue").is_empty(), "the query started");
    poll_until(&mut s, Duration::from_millis(300), |_| false).unwrap();
    s.cancel(&["b1-0".into()]).unwrap();
    let t = Instant::now();
    fs::remove_file(f.bin.join("squeue.hang")).unwrap();
    s.cancel_all().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cancel_all took {:?}",
        t.elapsed()
    );
    assert!(
        f.calls("scancel").iter().any(|c| c == "100"),
        "{:?}",
        f.calls("scancel")
    );
}

#[test]
fn a_call_past_its_timeout_is_a_transient_failure() {
    let f = Fake::new();
    f.put("squeue.hang", "5");
    f.put("squeue.out", "100_0 R 0 None\n");
    let mut s = f.supervisor(Duration::from_millis(300));
    s.submit(&f.spec, 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::remove_file(f.bin.join("squeue.hang")).unwrap();
    let ev = poll_until(&mut s, Duration::from_secs(5), |r| {
        r.as_ref().is_ok_and(|e| !e.is_empty())
    })
    .unwrap();
    assert_eq!(ev[0].state, WorkerState::Running);
    let stats = &s.calls()["squeue"];
    assert!(stats.timeouts >= 1, "{stats:?}");
    assert!(s.notes().iter().any(|n| n.contains("timed out")));
}

#[test]
fn workers_cancelled_before_their_submission_are_never_submitted() {
    let f = Fake::new();
    f.put(
        "sbatch.fail",
        "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
    );
    f.put("sbatch.left", "2");
    let mut s = f.supervisor(Duration::from_secs(10));
    let ids = s.submit(&f.spec, 4).unwrap();
    // The engine gives back the two newest while the submission is being retried.
    s.cancel(&ids[2..]).unwrap();
    poll_until(&mut s, Duration::from_secs(3), |_| {
        f.calls("sbatch").len() >= 3
    })
    .unwrap();
    let calls = f.calls("sbatch");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls[2].contains("--array=0-1 "),
        "the batch shrank: {}",
        calls[2]
    );
    assert!(f.calls("scancel").is_empty());
}

#[test]
fn batches_follow_the_sites_array_cap() {
    let f = Fake::new();
    f.put("config", &CONFIG.replace("1001", "3"));
    let mut s = f.supervisor(Duration::from_secs(10));
    let ids = s.submit(&f.spec, 4).unwrap();
    assert_eq!(ids, ["b1-0", "b1-1", "b1-2", "b2-0"]);
    poll_until(&mut s, Duration::from_secs(3), |_| {
        f.calls("sbatch").len() >= 2
    })
    .unwrap();
    let calls = f.calls("sbatch");
    assert!(
        calls[0].contains("--array=0-2 ") && calls[1].contains("--array=0-0 "),
        "{calls:?}"
    );
    let notes = s.notes();
    assert!(
        notes.iter().any(|n| n.contains("MaxArraySize=3")),
        "{notes:?}"
    );
}

#[test]
fn a_cancelled_worker_is_never_reported_again() {
    let f = Fake::new();
    f.put("squeue.out", "100_0 R 0 None\n100_1 R 0 None\n");
    let mut s = f.supervisor(Duration::from_secs(10));
    s.submit(&f.spec, 2).unwrap();
    // Let the backend see both running (events queued, not yet polled), then cancel one.
    std::thread::sleep(Duration::from_millis(300));
    s.cancel(&["b1-1".into()]).unwrap();
    let ev = poll_until(&mut s, Duration::from_millis(500), |_| false).unwrap();
    assert!(ev.iter().any(|e| e.worker == "b1-0"), "{ev:?}");
    assert!(ev.iter().all(|e| e.worker != "b1-1"), "{ev:?}");
}

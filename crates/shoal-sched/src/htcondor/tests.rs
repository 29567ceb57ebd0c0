//! Fault injection for the HTCondor backend's state machine: a hand-written event log and
//! fake condor_* tools that record their calls (the real pool is exercised by
//! tests/test_htcondor.py).

use super::*;
use crate::supervisor::Backend;
use serde_json::json;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

struct Fixture {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    spec: LaunchSpec,
    sched: HtcondorBackend,
}

const FAKES: [(&str, &str); 4] = [
    (
        "condor_submit",
        "case \"$*\" in *-terse*) echo '42.0 - 42.2';; esac",
    ),
    (
        "condor_q",
        "[ \"$1\" = -totals ] && exit 0; cat \"$D/queue.json\" 2>/dev/null; true",
    ),
    (
        "condor_rm",
        "case \"$*\" in *-forcex*|*.*) ;; *) rm -f \"$D/queue.json\";; esac",
    ),
    ("condor_release", "true"),
];

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in FAKES {
            let path = bin.join(name);
            let script = format!(
                "#!/bin/sh\nD={}\necho \"{name} $*\" >> \"$D/calls\"\n{body}\n",
                bin.display()
            );
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let spec = crate::testing::fake_spec(tmp.path(), "sess");
        let mut sched = HtcondorBackend::new(3, &json!({}))
            .unwrap()
            .with_tools(&bin);
        sched.query_every = Duration::ZERO;
        Fixture {
            _tmp: tmp,
            bin,
            spec,
            sched,
        }
    }

    fn log(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spec.session.sub("condor.log"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn queue(&self, json: &str) {
        std::fs::write(self.bin.join("queue.json"), json).unwrap();
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.bin.join("calls")).unwrap_or_default()
    }

    fn poll(&mut self) -> Vec<(String, WorkerState)> {
        self.sched
            .poll()
            .unwrap()
            .into_iter()
            .map(|e| (e.worker, e.state))
            .collect()
    }

    /// Submit the three fake workers and see them start.
    fn started() -> Fixture {
        let mut f = Fixture::new();
        f.sched.preflight(&f.spec).unwrap();
        f.sched.submit(&f.spec, &batch(3)).unwrap();
        f.queue(r#"[{"ClusterId":42,"ProcId":0,"JobStatus":2},{"ClusterId":42,"ProcId":1,"JobStatus":2},{"ClusterId":42,"ProcId":2,"JobStatus":2}]"#);
        for p in 0..3 {
            f.log(&ev(
                1,
                p,
                "Job executing on host: <127.0.0.1:9618>\n\tSlotName: slot1@vm",
            ));
        }
        let got = f.poll();
        assert_eq!(got.len(), 3);
        assert!(
            got.iter().all(|(_, s)| *s == WorkerState::Running),
            "{got:?}"
        );
        f
    }
}

fn batch(n: usize) -> Batch {
    Batch {
        number: 1,
        ids: (0..n).map(|i| format!("b1-{i}")).collect(),
    }
}

fn ev(code: u16, proc: u64, text: &str) -> String {
    format!("{code:03} (042.{proc:03}.000) 2026-11-26 05:23:12 {text}\n...\n")
}

fn lost(reason_part: &str, state: &WorkerState) -> bool {
    matches!(state, WorkerState::Lost(r) if r.contains(reason_part))
}

#[test]
fn exits_become_exited_or_lost() {
    let mut f = Fixture::started();
    f.log(&ev(
        5,
        0,
        "Job terminated.\n\t(1) Normal termination (return value 0)",
    ));
    f.log(&ev(
        5,
        1,
        "Job terminated.\n\t(1) Normal termination (return value 2)",
    ));
    f.log(&ev(
        5,
        2,
        "Job terminated.\n\t(0) Abnormal termination (signal 9)",
    ));
    let got = f.poll();
    assert_eq!(got[0], ("b1-0".into(), WorkerState::Exited));
    assert_eq!(
        got[1],
        (
            "b1-1".into(),
            WorkerState::Lost("worker exited with code 2".into())
        )
    );
    assert_eq!(
        got[2],
        (
            "b1-2".into(),
            WorkerState::Lost("worker killed by signal 9".into())
        )
    );
    assert!(f.sched.job_ids().is_empty());
    // The submit description went to condor_submit with queue 3.
    let sub = std::fs::read_to_string(f.spec.session.sub("condor.sub")).unwrap();
    assert!(
        sub.contains("queue 3") && sub.contains("--worker-id b1-$(Process)"),
        "{sub}"
    );
}

#[test]
fn user_hold_of_a_running_worker_is_reported_and_removed() {
    let mut f = Fixture::started();
    f.log(&ev(4, 1, "Job was evicted.\n\t(0) CPU times"));
    f.log(&ev(
        12,
        1,
        "Job was held.\n\tvia condor_hold (by user shoal)\n\tCode 1 Subcode 0",
    ));
    let got = f.poll();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "b1-1");
    assert!(
        lost(
            "held by HTCondor while running: via condor_hold (by user shoal) (HoldReasonCode 1",
            &got[0].1
        ),
        "{got:?}"
    );
    assert!(f.calls().contains("condor_rm 42.1"), "{}", f.calls());
    // Its later abort event (from shoal's own condor_rm) is not a second loss.
    f.log(&ev(
        9,
        1,
        "Job was aborted.\n\tvia condor_rm (by user shoal)",
    ));
    assert!(f.poll().is_empty());
}

#[test]
fn eviction_waits_one_poll_for_a_hold_then_reports() {
    let mut f = Fixture::started();
    f.log(&ev(4, 2, "Job was evicted.\n\t(0) CPU times"));
    assert!(f.poll().is_empty(), "a hold may follow in the next poll");
    let got = f.poll();
    assert_eq!(got.len(), 1);
    assert!(lost("evicted", &got[0].1), "{got:?}");
    assert!(f.calls().contains("condor_rm 42.2"));
}

#[test]
fn eviction_followed_by_a_hold_reports_the_hold() {
    let mut f = Fixture::started();
    f.log(&ev(4, 2, "Job was evicted.\n\t(0) CPU times"));
    assert!(f.poll().is_empty());
    f.log(&ev(
        12,
        2,
        "Job was held.\n\tError from slot1@vm: disk full\n\tCode 26 Subcode 0",
    ));
    let got = f.poll();
    assert!(lost("disk full (HoldReasonCode 26", &got[0].1), "{got:?}");
}

#[test]
fn transient_holds_are_released_up_to_a_limit() {
    let mut f = Fixture::new();
    f.sched.preflight(&f.spec).unwrap();
    f.sched.submit(&f.spec, &batch(3)).unwrap();
    f.queue(r#"[{"ClusterId":42,"ProcId":0,"JobStatus":1},{"ClusterId":42,"ProcId":1,"JobStatus":1},{"ClusterId":42,"ProcId":2,"JobStatus":1}]"#);
    let hold = ev(
        12,
        0,
        "Job was held.\n\tTransfer input files failure: connection reset\n\tCode 13 Subcode 104",
    );
    for i in 1..=MAX_RELEASES {
        f.log(&hold);
        assert!(f.poll().is_empty());
        assert_eq!(f.calls().matches("condor_release 42.0").count() as u32, i);
        f.log(&ev(
            13,
            0,
            "Job was released.\n\tvia condor_release (by user shoal)",
        ));
        assert!(f.poll().is_empty());
    }
    f.log(&hold);
    let got = f.poll();
    assert!(
        lost(
            "connection reset (HoldReasonCode 13, subcode 104) (released 3 times",
            &got[0].1
        ),
        "{got:?}"
    );
    assert!(f.calls().contains("condor_rm 42.0"));
}

#[test]
fn permanent_hold_before_start_names_the_cause() {
    let mut f = Fixture::started();
    f.log(&ev(12, 0, "Job was held.\n\tError from slot1@vm: Failed to open '/root/s/logs/42.0.out' as standard output: Permission denied (errno 13)\n\tCode 14 Subcode 13"));
    let got = f.poll();
    assert!(
        lost("Permission denied", &got[0].1)
            && lost("hint: jobs run as your HTCondor user", &got[0].1),
        "{got:?}"
    );
}

#[test]
fn removal_by_someone_else_is_a_loss_but_cancel_is_not() {
    let mut f = Fixture::started();
    f.log(&ev(
        9,
        0,
        "Job was aborted.\n\tvia condor_rm (by user admin)",
    ));
    let got = f.poll();
    assert_eq!(got.len(), 1);
    assert!(
        lost(
            "removed from the HTCondor queue via condor_rm (by user admin)",
            &got[0].1
        ),
        "{got:?}"
    );
    f.sched.cancel(&["b1-1".into()]).unwrap();
    assert!(f.calls().contains("condor_rm 42.1"));
    f.log(&ev(
        9,
        1,
        "Job was aborted.\n\tvia condor_rm (by user shoal)",
    ));
    assert!(f.poll().is_empty());
}

#[test]
fn schedd_query_catches_holds_and_vanished_jobs() {
    let mut f = Fixture::started();
    // 42.0 held without a log event; 42.1 gone from the queue; 42.2 still running.
    f.queue(r#"[{"ClusterId":42,"ProcId":0,"JobStatus":5,"HoldReason":"policy said so","HoldReasonCode":3,"HoldReasonSubCode":0},{"ClusterId":42,"ProcId":2,"JobStatus":2}]"#);
    let got = f.poll();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        lost("policy said so (HoldReasonCode 3", &got[0].1),
        "{got:?}"
    );
    let got = f.poll();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "b1-1");
    assert!(lost("left the HTCondor queue", &got[0].1), "{got:?}");
}

#[test]
fn cancel_all_removes_and_waits_until_the_queue_is_empty() {
    let mut f = Fixture::started();
    assert_eq!(f.sched.job_ids(), vec!["42"]);
    f.sched.cancel_all().unwrap();
    let calls = f.calls();
    assert!(calls.contains("condor_rm 42\n"), "{calls}");
    assert!(
        calls
            .lines()
            .last()
            .unwrap()
            .starts_with("condor_q 42 -json"),
        "confirmed with the schedd: {calls}"
    );
    assert!(f.sched.job_ids().is_empty());
    // Nothing left: a second cancel_all does not call anything.
    let n = f.calls().lines().count();
    f.sched.cancel_all().unwrap();
    assert_eq!(f.calls().lines().count(), n);
}

#[test]
fn cancel_all_ends_when_the_log_says_every_job_left() {
    let mut f = Fixture::started();
    let t = Instant::now();
    // What the schedd writes as it removes the jobs shoal asked it to remove.
    for p in 0..3 {
        f.log(&ev(
            9,
            p,
            "Job was aborted.\n\tvia condor_rm (by user shoal)",
        ));
    }
    f.sched.cancel_all().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let calls = f.calls();
    assert!(calls.contains("condor_rm 42\n"), "{calls}");
    assert!(
        !calls.lines().last().unwrap().starts_with("condor_q"),
        "no query needed: {calls}"
    );
}

#[test]
fn preflight_errors_are_clear() {
    let mut f = Fixture::new();
    std::fs::write(
        f.bin.join("condor_q"),
        "#!/bin/sh\necho 'Failed to connect to local queue' >&2; exit 1\n",
    )
    .unwrap();
    let e = f.sched.preflight(&f.spec).unwrap_err().to_string();
    assert!(
        e.contains("no HTCondor schedd reachable: Failed to connect") && e.contains("hint"),
        "{e}"
    );
    let mut f = Fixture::new();
    std::fs::write(
        f.bin.join("condor_submit"),
        "#!/bin/sh\necho 'ERROR: Parse error in expression: Requirements = (x ==)' >&2; exit 1\n",
    )
    .unwrap();
    let e = f.sched.preflight(&f.spec).unwrap_err().to_string();
    assert!(
        e.contains("Parse error in expression") && e.contains("requirements="),
        "{e}"
    );
    let mut f = Fixture::new();
    f.sched = HtcondorBackend::new(3, &json!({}))
        .unwrap()
        .with_tools("/nonexistent");
    let e = f.sched.preflight(&f.spec).unwrap_err().to_string();
    assert!(e.contains("condor_q") && e.contains("not found"), "{e}");
    f.spec.python = "relative/python".into();
    let e = f.sched.preflight(&f.spec).unwrap_err().to_string();
    assert!(e.contains("python_path"), "{e}");
}

#[test]
fn terse_output_and_queue_json() {
    assert_eq!(parse_terse("7.0 - 7.2\n").unwrap().len(), 3);
    assert_eq!(
        parse_terse("7.0\n").unwrap(),
        vec![JobId {
            cluster: 7,
            proc: 0
        }]
    );
    assert!(parse_terse("garbage").is_none());
    assert!(parse_queue("").unwrap().is_empty());
    assert!(parse_queue("not json").is_err());
}

#[test]
fn suspension_is_reported_and_resumed() {
    let mut f = Fixture::started();
    f.log(&ev(
        10,
        1,
        "Job was suspended.\n\tNumber of processes actually suspended: 1",
    ));
    assert_eq!(f.poll(), vec![("b1-1".to_string(), WorkerState::Suspended)]);
    f.log(&ev(11, 1, "Job was unsuspended."));
    assert_eq!(f.poll(), vec![("b1-1".to_string(), WorkerState::Running)]);
}

const NO_MATCH: &str = "Job 42.000 defines the following attributes:\n\n    RequestMemory = 100000 (mb)\n\n\
[0]          13  TARGET.Arch == \"X86_64\"\n[5]           0  TARGET.Memory >= RequestMemory\n\n\
042.000:  Run analysis summary ignoring user priority.  Of 13 machines,\n\
     13 are rejected by your job's requirements\n      0 reject your job because of their own requirements\n\
      0 match and are already running your jobs\n      0 match but are serving other users\n\
      0 are able to run your job\n";

#[test]
fn a_request_no_slot_can_meet_is_unsatisfiable_with_htcondors_analysis() {
    let mut f = Fixture::new();
    std::fs::write(f.bin.join("analysis"), NO_MATCH).unwrap();
    let q = "#!/bin/sh\nD=$(dirname $0)\necho \"condor_q $*\" >> \"$D/calls\"\n\
             case \"$*\" in -totals*) exit 0;; *-better-analyze*) cat \"$D/analysis\"; exit 0;; esac\n\
             cat \"$D/queue.json\" 2>/dev/null; true\n";
    std::fs::write(f.bin.join("condor_q"), q).unwrap();
    // The largest slot, whole: 4 CPUs and 6000 MB.
    let status = "#!/bin/sh\necho \"condor_status $*\" >> \"$(dirname $0)/calls\"\nprintf '1 1536 100000 0 false\\n4 6000 100000 0 false\\n'\n";
    std::fs::write(f.bin.join("condor_status"), status).unwrap();
    std::fs::set_permissions(
        f.bin.join("condor_status"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    f.sched = HtcondorBackend::new(3, &json!({"request_memory": "100G"}))
        .unwrap()
        .with_tools(&f.bin);
    f.sched.query_every = Duration::ZERO;
    f.sched.preflight(&f.spec).unwrap();
    f.sched.submit(&f.spec, &batch(3)).unwrap();
    f.queue(r#"[{"ClusterId":42,"ProcId":0,"JobStatus":1,"LastRejMatchReason":"no match found"},{"ClusterId":42,"ProcId":1,"JobStatus":1},{"ClusterId":42,"ProcId":2,"JobStatus":1}]"#);
    let got = f.poll();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter().all(|(_, s)| matches!(s, WorkerState::Unsatisfiable(r)
            if r.contains("never run") && r.contains("TARGET.Memory >= RequestMemory") && r.contains("request_memory="))),
        "{got:?}"
    );
    let calls = f.calls();
    assert!(calls.contains("condor_q -better-analyze 42.0"), "{calls}");
    assert!(calls.contains("condor_rm 42"), "{calls}");
    assert!(f.poll().is_empty(), "reported once");
}

#[test]
fn a_request_that_fits_a_busy_slot_just_waits() {
    let mut f = Fixture::new();
    std::fs::write(f.bin.join("analysis"), NO_MATCH).unwrap();
    let q = "#!/bin/sh\nD=$(dirname $0)\ncase \"$*\" in -totals*) exit 0;; *-better-analyze*) cat \"$D/analysis\"; exit 0;; esac\n\
             cat \"$D/queue.json\" 2>/dev/null; true\n";
    std::fs::write(f.bin.join("condor_q"), q).unwrap();
    // The partitionable slot is 6000 MB whole, though busy now: a 3 GB request can wait.
    let status = "#!/bin/sh\nprintf '4 6000 100000 0 false\\n1 2000 100 0 true\\n'\n";
    std::fs::write(f.bin.join("condor_status"), status).unwrap();
    std::fs::set_permissions(
        f.bin.join("condor_status"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    f.sched = HtcondorBackend::new(1, &json!({"request_memory": "3G"}))
        .unwrap()
        .with_tools(&f.bin);
    f.sched.query_every = Duration::ZERO;
    f.sched.preflight(&f.spec).unwrap();
    f.sched.submit(&f.spec, &batch(1)).unwrap();
    f.queue(r#"[{"ClusterId":42,"ProcId":0,"JobStatus":1,"LastRejMatchReason":"no match found"}]"#);
    assert!(f.poll().is_empty());
}

#[test]
fn schedd_caps_are_read_ahead() {
    let mut f = Fixture::new();
    let q = "#!/bin/sh\ncase \"$*\" in -totals*) echo 'Total for query: 3 jobs; 0 completed, 0 removed, 3 idle'; exit 0;; esac\ntrue\n";
    std::fs::write(f.bin.join("condor_q"), q).unwrap();
    let ccv = "#!/bin/sh\nprintf '4\\n8\\n'\n";
    std::fs::write(f.bin.join("condor_config_val"), ccv).unwrap();
    std::fs::set_permissions(
        f.bin.join("condor_config_val"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    f.sched = HtcondorBackend::new(16, &json!({}))
        .unwrap()
        .with_tools(&f.bin);
    let notes = f.sched.preflight(&f.spec).unwrap();
    assert_eq!(f.sched.max_batch(), 4);
    assert_eq!(f.sched.capacity(), 5, "MAX_JOBS_PER_OWNER=8 with 3 queued");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("MAX_JOBS_PER_SUBMISSION=4")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("at most 5 workers") && n.contains("MAX_JOBS_PER_OWNER=8")),
        "{notes:?}"
    );
    let e = SchedError::Command {
        command: "condor_submit".into(),
        message: "ERROR: Number of submitted jobs would exceed MAX_JOBS_PER_OWNER".into(),
    };
    assert!(f.sched.transient(&e));
}

#[test]
fn a_gpu_shape_asks_for_its_gpus_and_cpus_in_its_own_description() {
    let base = json!({"request_cpus": 1, "request_memory": "1G"});
    let resources = json!({"request_gpus": 2, "request_cpus": 8});
    let shape = crate::shapes::resolve("htcondor", &base, resources.as_object().unwrap()).unwrap();
    let opts = CondorOptions::from_json(&shape.options).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spec = crate::testing::fake_spec(tmp.path(), "sess-g");
    let log = spec.session.sub("condor.log");
    let desc = submit::description(&opts, &spec, &log, "s1b2", 3);
    for line in [
        "request_cpus = 8",
        "request_memory = 1024",
        "request_gpus = 2",
        "--worker-id s1b2-$(Process)",
        "queue 3",
    ] {
        assert!(desc.contains(line), "{line:?} missing from\n{desc}");
    }
    let base_desc = submit::description(
        &CondorOptions::from_json(&base).unwrap(),
        &spec,
        &log,
        "b2",
        3,
    );
    assert!(!base_desc.contains("request_gpus"), "{base_desc}");
}

#[test]
fn workers_per_job_runs_a_fan_out_and_scales_the_requests() {
    let o = CondorOptions::from_json(
        &json!({"workers_per_job": 3, "request_memory": "1G", "request_gpus": 1}),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spec = crate::testing::fake_spec(tmp.path(), "sess-n");
    let log = spec.session.sub("condor.log");
    let desc = submit::description(&o, &spec, &log, "b2", 4);
    let script = spec.session.sub(submit::FANOUT).display().to_string();
    for line in [
        "executable = /bin/sh".to_string(),
        format!("arguments = \"{script} b2-$(Process)\""),
        "request_cpus = 3".into(),
        "request_memory = 3072".into(),
        "request_gpus = 3".into(),
        "queue 4".into(),
    ] {
        assert!(desc.contains(&line), "{line:?} missing from\n{desc}");
    }
    let text = submit::fanout_script(&o, &spec);
    assert!(text.contains("while [ $k -lt 3 ]; do"), "{text}");
    assert!(text.contains("--worker-id \"$id\" >>"), "{text}");
    assert!(
        text.contains("trap 'kill -TERM $pids 2>/dev/null' TERM"),
        "{text}"
    );
    // run it: three workers (here `echo`s of their id) and the worst status
    let fake = tmp.path().join("fake.sh");
    std::fs::write(
        &fake,
        text.replace(&spec.worker_argv(None).join(" "), "echo"),
    )
    .unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg(&fake)
        .arg("b2-7")
        .output()
        .unwrap();
    assert!(out.status.success());
    for k in 0..3 {
        let path = spec.session.sub("logs").join(format!("b2-7.{k}.out"));
        let got = std::fs::read_to_string(&path).unwrap();
        assert_eq!(got.trim(), format!("--worker-id b2-7.{k}"));
    }
}

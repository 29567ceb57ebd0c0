//! Fault injection with fake SGE client programs (shell scripts in a temp dir): refusals,
//! error states, killed tasks and stuck deletions, which the real cluster cannot produce on
//! demand. The real Grid Engine runs are in tests/test_sge.py.

use super::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

struct Fake {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    state: PathBuf,
    session: SessionDir,
}

const EMPTY: &str =
    "<?xml version='1.0'?>\n<job_info><queue_info></queue_info><job_info></job_info></job_info>\n";

impl Fake {
    /// Every fake logs its arguments to state/calls and answers from files in state/.
    fn new() -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let session = SessionDir::create(tmp.path().join("session")).unwrap();
        let f = Fake {
            bin,
            state,
            session,
            _tmp: tmp,
        };
        let st = f.state.display().to_string();
        f.script(
            "qsub",
            &format!(
                "echo \"qsub $*\" >> {st}/calls\n\
                 if [ -f {st}/qsub.fail ]; then cat {st}/qsub.fail >&2; exit 1; fi\n\
                 case \"$*\" in *'-w v'*) echo 'verification: found suitable queue(s)'; exit 0;; esac\n\
                 n=$(cat {st}/next 2>/dev/null || echo 42); echo $((n+1)) > {st}/next\n\
                 echo \"$n.1-3:1\""
            ),
        );
        f.script(
            "qstat",
            &format!(
                "echo \"qstat $*\" >> {st}/calls\n\
                 case \"$*\" in *-j*) cat {st}/qstat-j.xml; exit 0;; esac\n\
                 if [ -f {st}/deleted ]; then cat {st}/empty.xml; else cat {st}/qstat.xml; fi"
            ),
        );
        f.script(
            "qdel",
            &format!("echo \"qdel $*\" >> {st}/calls\ncase \"$*\" in *-f*) touch {st}/deleted;; esac\n[ -f {st}/stuck ] || touch {st}/deleted"),
        );
        f.script(
            "qacct",
            &format!("echo \"qacct $*\" >> {st}/calls\ncat {st}/qacct.txt 2>/dev/null"),
        );
        f.script(
            "qconf",
            &format!("echo \"qconf $*\" >> {st}/calls\nprintf 'all.q\\nlong.q\\n'"),
        );
        f.put("empty.xml", EMPTY);
        f.put("qstat.xml", EMPTY);
        f
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn put(&self, name: &str, text: &str) {
        std::fs::write(self.state.join(name), text).unwrap();
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.state.join("calls")).unwrap_or_default()
    }

    fn spec(&self) -> LaunchSpec {
        LaunchSpec {
            session: self.session.clone(),
            python: std::env::current_exe().unwrap(),
            env: vec![("SHOAL_WORKER".into(), "1".into())],
            cwd: std::env::temp_dir(),
        }
    }

    fn sched(&self, options: serde_json::Value) -> SgeScheduler {
        let mut opts = options;
        opts["poll_interval"] = json!(0.01);
        SgeScheduler::with_bins(3, &opts, Bins::in_dir(&self.bin)).unwrap()
    }
}

fn listing(running: &[(u64, u64, &str)], pending: &[(u64, &str, &str)]) -> String {
    let mut s = String::from("<?xml version='1.0'?>\n<job_info><queue_info>\n");
    for (j, t, st) in running {
        s += &format!("<job_list state=\"running\"><JB_job_number>{j}</JB_job_number><state>{st}</state><tasks>{t}</tasks></job_list>\n");
    }
    s += "</queue_info><job_info>\n";
    for (j, tasks, st) in pending {
        s += &format!("<job_list state=\"pending\"><JB_job_number>{j}</JB_job_number><state>{st}</state><tasks>{tasks}</tasks></job_list>\n");
    }
    s + "</job_info></job_info>\n"
}

fn poll_now(s: &mut SgeScheduler) -> Vec<WorkerEvent> {
    std::thread::sleep(Duration::from_millis(15));
    s.poll().unwrap()
}

#[test]
fn submit_writes_script_and_one_array() {
    let f = Fake::new();
    let mut s = f.sched(json!({"queue": "all.q", "resources": "h_vmem=1G"}));
    s.preflight(&f.spec()).unwrap();
    let script = std::fs::read_to_string(f.session.sub("sge/worker.sh")).unwrap();
    assert!(script.contains("-m shoal.worker"), "{script}");
    let ids = s.submit(&f.spec(), 3).unwrap();
    assert_eq!(ids, vec!["42.1", "42.2", "42.3"]);
    assert_eq!(s.job_ids(), vec!["42"]);
    let calls = f.calls();
    assert!(calls.contains("qconf -sql"), "{calls}");
    assert!(calls.contains("qsub -w v -terse"), "{calls}");
    let submit = calls.lines().find(|l| l.contains("-t 1-3")).unwrap();
    assert!(
        submit.contains("-q all.q")
            && submit.contains("-l h_vmem=1024M")
            && submit.contains("-tc 3"),
        "{submit}"
    );
    assert!(submit.ends_with("sge/worker.sh"), "{submit}");
}

#[test]
fn states_exit_records_errors_and_kills() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), 3).unwrap();
    f.put(
        "qstat.xml",
        &listing(&[(42, 1, "r")], &[(42, "2-3:1", "qw")]),
    );
    let ev = poll_now(&mut s);
    assert_eq!(
        ev,
        vec![WorkerEvent {
            worker: "42.1".into(),
            state: WorkerState::Running
        }]
    );

    // 42.1 ends normally (exit record), 42.2 goes to Eqw, 42.3 is killed (no record).
    std::fs::write(f.session.sub("sge/exit/42.1"), "0\n").unwrap();
    f.put("qstat.xml", &listing(&[], &[(42, "2", "Eqw")]));
    f.put(
        "qstat-j.xml",
        "<detailed_job_info><djob_info><element><JB_ja_tasks><ulong_sublist><JAT_task_number>2</JAT_task_number>\
         <JAT_message_list><ulong_sublist><QIM_message>11/26/2026 05:24:26 [0:2695]: error: can't chdir to /nope: No such file or directory</QIM_message>\
         </ulong_sublist></JAT_message_list></ulong_sublist></JB_ja_tasks></element></djob_info></detailed_job_info>",
    );
    f.put("qacct.txt", "==============\njobnumber 42\ntaskid 3\nfailed 100 : assumedly after job\nexit_status 137\n");
    let ev = poll_now(&mut s);
    assert_eq!(
        ev[0],
        WorkerEvent {
            worker: "42.1".into(),
            state: WorkerState::Exited
        }
    );
    assert_eq!(ev[1].worker, "42.2");
    match &ev[1].state {
        WorkerState::Lost(r) => assert!(
            r.contains("Eqw") && r.contains("can't chdir to /nope"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(f.calls().contains("qdel 42.2"), "{}", f.calls());
    assert_eq!(ev.len(), 2, "42.3 waits for its accounting record: {ev:?}");
    std::thread::sleep(ACCOUNTING_DELAY);
    let ev = poll_now(&mut s);
    assert_eq!(ev.len(), 1);
    match &ev[0].state {
        WorkerState::Lost(r) => assert!(r.contains("42.3") && r.contains("signal 9"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(poll_now(&mut s).is_empty());
    assert_eq!(s.lost, 2);
}

#[test]
fn failed_exit_code_is_lost() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), 1).unwrap();
    std::fs::write(f.session.sub("sge/exit/42.1"), "1\n").unwrap();
    // Exit records are read on every call, without waiting for the next qstat.
    let ev = s.poll().unwrap();
    assert_eq!(
        ev[0].state,
        WorkerState::Lost("worker exited with code 1".into())
    );
}

#[test]
fn refused_submission_shows_sge_message() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    f.put(
        "qsub.fail",
        "Unable to run job: job rejected: no such project\nExiting.\n",
    );
    let e = s.submit(&f.spec(), 2).unwrap_err().to_string();
    assert!(e.contains("no such project") && e.contains("qsub"), "{e}");
    let mut s = f.sched(json!({}));
    let e = s.preflight(&f.spec()).unwrap_err().to_string();
    assert!(
        e.contains("SGE refuses the worker job")
            && e.contains("no such project")
            && e.contains("hint"),
        "{e}"
    );
}

#[test]
fn preflight_checks_queue_and_programs() {
    let f = Fake::new();
    let e = f
        .sched(json!({"queue": "gpu.q"}))
        .preflight(&f.spec())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"gpu.q\"") && e.contains("all.q, long.q"),
        "{e}"
    );
    assert!(
        !f.calls().contains("qsub"),
        "nothing submitted: {}",
        f.calls()
    );
    // Without qconf, the queue is left to `qsub -w v`.
    std::fs::remove_file(f.bin.join("qconf")).unwrap();
    f.sched(json!({"queue": "gpu.q"}))
        .preflight(&f.spec())
        .unwrap();
    std::fs::remove_file(f.bin.join("qsub")).unwrap();
    let e = f.sched(json!({})).preflight(&f.spec()).unwrap_err();
    assert!(matches!(e, SchedError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("qsub not found"), "{e}");
}

#[test]
fn lost_worker_cap_stops_resubmission() {
    let f = Fake::new();
    let mut s = f.sched(json!({"max_lost_workers": 1}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), 3).unwrap();
    for t in 1..=3 {
        std::fs::write(f.session.sub(&format!("sge/exit/42.{t}")), "2\n").unwrap();
    }
    assert_eq!(s.poll().unwrap().len(), 3);
    let e = s.submit(&f.spec(), 1).unwrap_err().to_string();
    assert!(
        e.contains("max_lost_workers=1") && e.contains("code 2"),
        "{e}"
    );
}

#[test]
fn stop_request_deletes_queued_workers() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), 3).unwrap();
    f.put(
        "qstat.xml",
        &listing(&[(42, 1, "r")], &[(42, "2-3:1", "qw")]),
    );
    poll_now(&mut s);
    std::fs::write(f.session.control("stop"), "").unwrap();
    let ev = s.poll().unwrap();
    let gone: Vec<&str> = ev.iter().map(|e| e.worker.as_str()).collect();
    assert_eq!(gone, vec!["42.2", "42.3"]);
    assert!(ev.iter().all(|e| e.state == WorkerState::Exited));
    assert!(f.calls().contains("qdel 42.2 42.3"), "{}", f.calls());
}

#[test]
fn cancel_all_waits_and_forces_stuck_jobs() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), 3).unwrap();
    f.put("qstat.xml", &listing(&[(42, 1, "dr"), (7, 1, "r")], &[]));
    f.put("stuck", "");
    s.delete_wait = Duration::from_millis(900);
    let t = Instant::now();
    s.cancel_all().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "forced only after waiting"
    );
    let calls = f.calls();
    assert!(
        calls.contains("qdel 42\n") && calls.contains("qdel -f 42\n"),
        "{calls}"
    );
    assert!(
        !calls.contains("qdel 7"),
        "other jobs of the user are left alone: {calls}"
    );
    // Nothing left: a second call (e.g. from Drop) asks nothing.
    let before = f.calls().lines().count();
    s.cancel_all().unwrap();
    assert_eq!(f.calls().lines().count(), before);
}

#[test]
fn cancel_deletes_particular_tasks() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), 3).unwrap();
    s.cancel(&["42.2".into(), "nonsense".into()]).unwrap();
    assert!(f.calls().contains("qdel 42.2\n"), "{}", f.calls());
    // A cancelled worker's late exit record produces no event.
    std::fs::write(f.session.sub("sge/exit/42.2"), "137\n").unwrap();
    assert!(s.poll().unwrap().iter().all(|e| e.worker != "42.2"));
}

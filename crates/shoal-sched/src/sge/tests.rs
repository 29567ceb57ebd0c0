//! Fault injection with fake SGE client programs (shell scripts in a temp dir): refusals,
//! error states, killed tasks and stuck deletions, which the real cluster cannot produce on
//! demand. The real Grid Engine runs are in tests/test_sge.py.

use super::*;
use crate::supervisor::{Backend, Batch};
use crate::{SchedError, WorkerEvent, WorkerState};
use serde_json::json;
use shoal_core::SessionDir;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

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
            connect: None,
        }
    }

    fn sched(&self, options: serde_json::Value) -> SgeBackend {
        let mut opts = options;
        opts["poll_interval"] = json!(0.01);
        backend(3, &opts).unwrap().with_tools(&self.bin)
    }

    fn exit(&self, worker: &str, code: &str) {
        std::fs::write(self.session.sub("exit").join(worker), code).unwrap();
    }
}

fn batch(number: u64, n: usize) -> Batch {
    Batch {
        number,
        ids: (1..=n).map(|i| format!("b{number}-{i}")).collect(),
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

fn poll_now(s: &mut SgeBackend) -> Vec<WorkerEvent> {
    std::thread::sleep(Duration::from_millis(15));
    s.poll().unwrap()
}

#[test]
fn submit_writes_script_and_one_array() {
    let f = Fake::new();
    let mut s = f.sched(json!({"queue": "all.q", "resources": "h_vmem=1G"}));
    s.preflight(&f.spec()).unwrap();
    let script = std::fs::read_to_string(f.session.sub("sge-worker.sh")).unwrap();
    assert!(script.contains("-m shoal.worker"), "{script}");
    assert!(
        script.contains("SHOAL_WORKER_ID=\"$1-$SGE_TASK_ID\"; export SHOAL_WORKER_ID"),
        "{script}"
    );
    // The submit shell's PATH goes along, so tasks find the same programs (exit 127 else).
    assert!(script.contains("PATH="), "{script}");
    s.submit(&f.spec(), &batch(1, 3)).unwrap();
    assert_eq!(s.job_ids(), vec!["42"]);
    let calls = f.calls();
    assert!(calls.contains("qconf -sql"), "{calls}");
    assert!(calls.contains("qsub -w v -terse"), "{calls}");
    let submit = calls.lines().find(|l| l.contains("-t 1-3")).unwrap();
    assert!(
        submit.contains("-q all.q")
            && submit.contains("-l h_vmem=1024M")
            && submit.contains("-tc 3")
            && submit.contains("/logs/b1-$TASK_ID.out"),
        "{submit}"
    );
    assert!(submit.ends_with("sge-worker.sh b1"), "{submit}");
}

#[test]
fn states_exit_records_errors_and_kills() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 3)).unwrap();
    f.put(
        "qstat.xml",
        &listing(&[(42, 1, "r")], &[(42, "2-3:1", "qw")]),
    );
    let ev = poll_now(&mut s);
    assert_eq!(
        ev,
        vec![WorkerEvent {
            worker: "b1-1".into(),
            state: WorkerState::Running
        }]
    );

    // b1-1 ends normally (exit record), b1-2 goes to Eqw, b1-3 is killed (no record).
    f.exit("b1-1", "0\n");
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
            worker: "b1-1".into(),
            state: WorkerState::Exited
        }
    );
    assert_eq!(ev[1].worker, "b1-2");
    match &ev[1].state {
        WorkerState::Lost(r) => assert!(
            r.contains("Eqw") && r.contains("can't chdir to /nope") && r.contains("42.2"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(f.calls().contains("qdel 42.2"), "{}", f.calls());
    assert_eq!(ev.len(), 2, "b1-3 is missing once: not yet gone: {ev:?}");
    let ev = poll_now(&mut s);
    assert_eq!(ev.len(), 1, "{ev:?}");
    match &ev[0].state {
        WorkerState::Lost(r) => assert!(r.contains("42.3") && r.contains("signal 9"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(poll_now(&mut s).is_empty());
    assert_eq!(s.lost(), 2);
}

#[test]
fn suspended_tasks_are_reported_and_resumed() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 1)).unwrap();
    f.put("qstat.xml", &listing(&[(42, 1, "r")], &[]));
    assert_eq!(poll_now(&mut s)[0].state, WorkerState::Running);
    f.put("qstat.xml", &listing(&[(42, 1, "s")], &[]));
    assert_eq!(poll_now(&mut s)[0].state, WorkerState::Suspended);
    f.put("qstat.xml", &listing(&[(42, 1, "r")], &[]));
    assert_eq!(poll_now(&mut s)[0].state, WorkerState::Running);
}

#[test]
fn a_job_no_queue_can_run_is_unsatisfiable() {
    let f = Fake::new();
    f.script(
        "qalter",
        "echo 'Job 42 cannot run in PE \"smp\" because it only offers 0 slots'; echo 'verification: no suitable queues'; exit 1",
    );
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 2)).unwrap();
    f.put("qstat.xml", &listing(&[], &[(42, "1-2:1", "qw")]));
    let start = Instant::now();
    let ev = loop {
        let ev = poll_now(&mut s);
        if !ev.is_empty() || start.elapsed() > Duration::from_secs(15) {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(
        matches!(&ev[0].state, WorkerState::Unsatisfiable(r) if r.contains("only offers 0 slots") && r.contains("qalter -w v 42")),
        "{ev:?}"
    );
    assert!(f.calls().contains("qdel 42\n"), "{}", f.calls());
}

#[test]
fn site_caps_shape_the_pool() {
    let f = Fake::new();
    f.script(
        "qconf",
        &format!(
            "echo \"qconf $*\" >> {st}/calls\ncase \"$*\" in -sconf) printf 'max_aj_tasks 4\\nmax_u_jobs 3\\n';; *) printf 'all.q\\n';; esac",
            st = f.state.display()
        ),
    );
    // One job of the user is queued already: two more array jobs of 4 tasks fit.
    f.put("qstat.xml", &listing(&[(7, 1, "r")], &[]));
    let mut s = backend(16, &json!({})).unwrap().with_tools(&f.bin);
    let notes = s.preflight(&f.spec()).unwrap();
    assert_eq!(s.max_batch(), 4);
    assert_eq!(s.capacity(), 8);
    assert!(
        notes.iter().any(|n| n.contains("max_aj_tasks=4")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("at most 8 workers") && n.contains("max_u_jobs=3")),
        "{notes:?}"
    );
    let e = SchedError::Command {
        command: "qsub".into(),
        message: "Unable to run job: job rejected: only 3 jobs are allowed per user (current job count: 3)".into(),
    };
    assert!(s.transient(&e), "a full per-user cap clears as jobs finish");
    // The session's own script unreadable: its filesystem stalled (it was written first).
    let e = SchedError::Command {
        command: "qsub".into(),
        message: "Unable to read script file because of error: error opening /home/u/.shoal/sessions/x/sge-worker.sh: Transport endpoint is not connected".into(),
    };
    assert!(s.transient(&e), "{e}");
}

#[test]
fn a_worker_that_announced_itself_is_running_without_a_query() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 2)).unwrap();
    std::fs::write(f.session.hello("b1-2+0000000000000001"), "{}").unwrap();
    let before = f.calls().matches("qstat").count();
    assert_eq!(
        s.poll().unwrap(),
        vec![WorkerEvent {
            worker: "b1-2".into(),
            state: WorkerState::Running
        }]
    );
    assert_eq!(
        f.calls().matches("qstat").count(),
        before + 1,
        "only the rate-limited listing"
    );
}

#[test]
fn failed_exit_code_is_lost() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 1)).unwrap();
    f.exit("b1-1", "1\n");
    // Exit records are read on every call, without waiting for the next qstat.
    let ev = s.poll().unwrap();
    assert_eq!(
        ev[0].state,
        WorkerState::Lost("worker exited with code 1 [SGE job 42.1]".into())
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
    let e = s.submit(&f.spec(), &batch(1, 2)).unwrap_err();
    assert!(
        e.to_string().contains("no such project") && e.to_string().contains("qsub"),
        "{e}"
    );
    assert!(!s.transient(&e));
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
    assert!(e.to_string().contains("qsub"), "{e}");
}

#[test]
fn lost_worker_cap_stops_resubmission() {
    let f = Fake::new();
    let mut s = f.sched(json!({"max_lost_workers": 1}));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 3)).unwrap();
    for t in 1..=3 {
        f.exit(&format!("b1-{t}"), "2\n");
    }
    assert_eq!(s.poll().unwrap().len(), 3);
    let e = s.submit(&f.spec(), &batch(2, 1)).unwrap_err().to_string();
    assert!(
        e.contains("max_lost_workers=1") && e.contains("code 2"),
        "{e}"
    );
}

#[test]
fn cancel_all_waits_and_forces_stuck_jobs() {
    let f = Fake::new();
    let mut s = f
        .sched(json!({}))
        .with_cancel_wait(Duration::from_millis(900));
    s.preflight(&f.spec()).unwrap();
    s.submit(&f.spec(), &batch(1, 3)).unwrap();
    f.put("qstat.xml", &listing(&[(42, 1, "dr"), (7, 1, "r")], &[]));
    f.put("stuck", "");
    let t = Instant::now();
    s.cancel_all().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "forced only after waiting"
    );
    let calls = f.calls();
    assert!(
        calls.contains("qdel 42\n") && calls.contains("qdel -f 42.1\n"),
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
    s.submit(&f.spec(), &batch(1, 3)).unwrap();
    s.cancel(&["b1-2".into(), "nonsense".into()]).unwrap();
    assert!(f.calls().contains("qdel 42.2\n"), "{}", f.calls());
    // A cancelled worker's late exit record produces no event.
    f.exit("b1-2", "137\n");
    assert!(s.poll().unwrap().iter().all(|e| e.worker != "b1-2"));
}

#[test]
fn a_gpu_shape_submits_its_own_request_and_script_beside_the_pools() {
    let f = Fake::new();
    let base = json!({"queue": "all.q", "resources": "h_vmem=1G", "gpu_resource": "nvidia"});
    let resources = json!({"gpus": 2, "time": "30m"});
    let shape = crate::shapes::resolve("sge", &base, resources.as_object().unwrap()).unwrap();
    let mut pool = f.sched(base.clone());
    let mut gpu = f.sched(shape.options);
    gpu.for_shape(&crate::shapes::prefix(1));
    pool.preflight(&f.spec()).unwrap();
    gpu.preflight(&f.spec()).unwrap();
    pool.submit(&f.spec(), &batch(1, 2)).unwrap();
    let shaped = Batch {
        number: 1,
        ids: vec!["s1b1-1".into()],
    };
    gpu.submit(&f.spec(), &shaped).unwrap();
    let calls = f.calls();
    let submits: Vec<&str> = calls.lines().filter(|l| l.contains(" -t 1-")).collect();
    assert_eq!(submits.len(), 2, "{calls}");
    assert!(
        submits[0].contains("-l h_vmem=1024M ") && !submits[0].contains("nvidia"),
        "{}",
        submits[0]
    );
    assert!(submits[0].ends_with("sge-worker.sh b1"), "{}", submits[0]);
    assert!(
        submits[1].contains(" -l h_vmem=1024M,h_rt=0:30:00,nvidia=2 -t 1-1 "),
        "{}",
        submits[1]
    );
    assert!(
        submits[1].contains("/logs/s1b1-$TASK_ID.out"),
        "{}",
        submits[1]
    );
    assert!(
        submits[1].ends_with("sge-worker-s1.sh s1b1"),
        "{}",
        submits[1]
    );
    let script = std::fs::read_to_string(f.session.sub("sge-worker-s1.sh")).unwrap();
    assert!(script.contains("SHOAL_WALLTIME=1800;"), "{script}");
}

//! Fault-injection tests with fake Slurm commands (shell scripts that log their arguments
//! and print canned answers). Behaviour against the real controller is in tests/test_slurm.py.

use super::*;
use crate::supervisor::{Backend, Batch};
use crate::{SchedError, WorkerEvent, WorkerState};
use serde_json::json;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

struct Fake {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    spec: LaunchSpec,
}

const CONFIG: &str =
    "AccountingStorageType   = accounting_storage/none\nMaxArraySize            = 1001\n\
                      MaxJobCount             = 50000\nMinJobAge               = 300 sec\n";
const PARTITIONS: &str = "PartitionName=debug Default=YES MaxTime=UNLIMITED State=UP\n\
                          PartitionName=short Default=NO MaxTime=01:00:00 State=UP\n";

impl Fake {
    fn new() -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let tool = |name: &str, body: &str| crate::testing::fake_tool(&bin, name, body);
        tool(
            "sbatch",
            "if [ -f $D/sbatch.fail ]; then cat $D/sbatch.fail >&2; exit 1; fi\n\
             case \"$*\" in *--test-only*) echo 'sbatch: Job 7 to start' >&2; exit 0;; esac\n\
             n=$(cat $D/next 2>/dev/null || echo 100); echo $((n+1)) > $D/next; echo \"$n;shoal\"",
        );
        tool(
            "squeue",
            "if [ -f $D/squeue.fail ]; then cat $D/squeue.fail >&2; exit 1; fi\n\
             case \"$*\" in *'-t all'*) cat $D/squeue.all 2>/dev/null;; *) cat $D/squeue.live 2>/dev/null;; esac; exit 0",
        );
        // Cancelling a whole array empties the listing (elements alone stay listed).
        tool(
            "scancel",
            "case \"$*\" in *_*) ;; *) rm -f $D/squeue.all;; esac; exit 0",
        );
        tool("sacct", "cat $D/sacct.out 2>/dev/null");
        tool(
            "scontrol",
            "case \"$*\" in 'show config') cat $D/config;; 'show partition -o') cat $D/partitions;; esac",
        );
        fs::write(bin.join("config"), CONFIG).unwrap();
        fs::write(bin.join("partitions"), PARTITIONS).unwrap();
        let spec = crate::testing::fake_spec(tmp.path(), "s");
        Fake {
            _tmp: tmp,
            bin,
            spec,
        }
    }

    fn sched(&self, options: serde_json::Value) -> SlurmBackend {
        backend(4, &options).unwrap().with_tools(&self.bin)
    }

    fn put(&self, name: &str, text: &str) {
        fs::write(self.bin.join(name), text).unwrap();
    }

    fn log(&self, tool: &str) -> String {
        fs::read_to_string(self.bin.join(format!("{tool}.log"))).unwrap_or_default()
    }
}

/// Batch `number` of `n` workers, as the supervisor would hand it over.
fn batch(number: u64, n: usize) -> Batch {
    Batch {
        number,
        ids: (0..n).map(|i| format!("b{number}-{i}")).collect(),
    }
}

fn state_of(events: &[WorkerEvent], worker: &str) -> Option<WorkerState> {
    events
        .iter()
        .find(|e| e.worker == worker)
        .map(|e| e.state.clone())
}

#[test]
fn submit_is_one_array_per_batch_capped_by_max_array_size() {
    let f = Fake::new();
    f.put("config", &CONFIG.replace("1001", "2"));
    let mut s = f.sched(json!({"partition": "short", "time": "10m"}));
    let notes = s.preflight(&f.spec).unwrap();
    assert!(
        f.log("sbatch").contains("--test-only"),
        "preflight asks Slurm first"
    );
    assert_eq!(
        s.max_batch(),
        2,
        "the supervisor splits batches by MaxArraySize"
    );
    assert!(
        notes.iter().any(|n| n.contains("MaxArraySize=2")),
        "{notes:?}"
    );
    s.submit(&f.spec, &batch(1, 2)).unwrap();
    s.submit(&f.spec, &batch(2, 1)).unwrap();
    assert_eq!(s.job_ids(), ["100", "101"]);
    let log = f.log("sbatch");
    let calls: Vec<&str> = log.lines().filter(|l| !l.contains("--test-only")).collect();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[0].starts_with("--parsable --array=0-1 --job-name=shoal"),
        "{}",
        calls[0]
    );
    assert!(calls[0].contains("--partition=short") && calls[0].contains("--time=0-00:10:00"));
    assert!(calls[0].contains("/logs/b1-%a.out") && calls[0].ends_with("slurm-worker.sh b1"));
    assert!(calls[1].contains("--array=0-0 "));
    let script = fs::read_to_string(f.spec.session.sub("slurm-worker.sh")).unwrap();
    assert!(
        script.contains("SHOAL_WORKER_ID=\"$1-$SLURM_ARRAY_TASK_ID\"; export SHOAL_WORKER_ID\n"),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "/bin/sh -m shoal.worker {} &\npid=$!\ntrap 'kill -TERM \"$pid\" 2>/dev/null' TERM USR1 USR2\n",
            f.spec.session.root().display()
        )),
        "{script}"
    );
    // time=10m: the worker is told when its job ends, and which option set it.
    assert!(
        script.contains("SHOAL_WALLTIME=600; export SHOAL_WALLTIME\n")
            && script.contains("SHOAL_WALLTIME_OPTION='time=0-00:10:00 (Slurm)'")
            && script.contains("SHOAL_WALLTIME_START=$(date +%s)"),
        "{script}"
    );
}

#[test]
fn throttle_is_the_worker_count() {
    let f = Fake::new();
    let mut s = f.sched(json!({"max_workers": 2}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 5)).unwrap();
    assert!(f.log("sbatch").contains("--array=0-4%2 "));
    assert_eq!(s.capacity(), 2);
}

#[test]
fn refused_submission_shows_slurms_message() {
    let f = Fake::new();
    f.put("sbatch.fail", "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified");
    let mut s = f.sched(json!({"account": "nobody"}));
    let e = s.preflight(&f.spec).unwrap_err().to_string();
    assert!(
        e.contains("Invalid account or account/partition") && e.contains("hint"),
        "{e}"
    );
    let e = s.submit(&f.spec, &batch(1, 1)).unwrap_err();
    assert!(e.to_string().contains("Invalid account"), "{e}");
    assert!(!s.transient(&e), "a bad account is the user's to fix");
    assert!(s.job_ids().is_empty());
}

#[test]
fn preflight_catches_missing_tools_and_bad_partitions() {
    let f = Fake::new();
    fs::remove_file(f.bin.join("sbatch")).unwrap();
    let e = f.sched(json!({})).preflight(&f.spec).unwrap_err();
    assert!(
        matches!(e, SchedError::Missing { .. }) && e.to_string().contains("sbatch"),
        "{e}"
    );

    let f = Fake::new();
    let e = f
        .sched(json!({"partition": "nope"}))
        .preflight(&f.spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"nope\"") && e.contains("debug, short"), "{e}");
    assert!(f.log("sbatch").is_empty(), "nothing submitted");
    let e = f
        .sched(json!({"partition": "short", "time": "2h"}))
        .preflight(&f.spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0-02:00:00") && e.contains("0-01:00:00"), "{e}");
    f.sched(json!({"time": "2h"})).preflight(&f.spec).unwrap();
}

#[test]
fn poll_maps_states_once_per_interval() {
    let f = Fake::new();
    let mut s = f.sched(json!({"poll_interval": 0.1}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 4)).unwrap();
    f.put(
        "squeue.all",
        "100_0  R   0    None\n100_1  F   768  NonZeroExitCode\n100_2  PD  0    Resources\n100_3  TO  15   TimeLimit\n",
    );
    let ev = s.poll().unwrap();
    assert_eq!(state_of(&ev, "b1-0"), Some(WorkerState::Running));
    assert!(
        matches!(state_of(&ev, "b1-1"), Some(WorkerState::Lost(r)) if r.contains("exit code 3") && r.contains("100_1"))
    );
    assert_eq!(state_of(&ev, "b1-2"), None);
    assert!(
        matches!(state_of(&ev, "b1-3"), Some(WorkerState::Lost(r)) if r.contains("time limit"))
    );
    assert!(s.poll().unwrap().is_empty(), "rate-limited");
    assert_eq!(f.log("squeue").lines().count(), 1);
    let q = f.log("squeue");
    assert!(q.contains("-h -r -t all -j 100 -O"), "{q}");
    std::thread::sleep(Duration::from_millis(120));
    f.put("squeue.all", "100_0  S   0    None\n100_2  R   0    None\n");
    let ev = s.poll().unwrap();
    assert_eq!(state_of(&ev, "b1-0"), Some(WorkerState::Suspended));
    assert_eq!(state_of(&ev, "b1-2"), Some(WorkerState::Running));
    std::thread::sleep(Duration::from_millis(120));
    f.put("squeue.all", "100_0  R   0    None\n100_2  CD  0    None\n");
    let ev = s.poll().unwrap();
    assert_eq!(state_of(&ev, "b1-0"), Some(WorkerState::Running), "resumed");
    assert_eq!(state_of(&ev, "b1-2"), Some(WorkerState::Exited));
    assert_eq!(s.runner().stats()["squeue"].calls, 3);
}

#[test]
fn vanished_jobs_are_classified_from_site_records() {
    let f = Fake::new();
    let comp = f.bin.join("jobcomp.log");
    fs::write(
        &comp,
        "JobId=101 JobState=OUT_OF_MEMORY ArrayJobId=100 ArrayTaskId=0 ExitCode=0:9 \n",
    )
    .unwrap();
    f.put(
        "config",
        &format!(
            "{CONFIG}JobCompType = jobcomp/filetxt\nJobCompLoc = {}\n",
            comp.display()
        ),
    );
    let mut s = f.sched(json!({"poll_interval": 0.1}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 2)).unwrap();
    // Purged from the controller: squeue says the ids are invalid.
    f.put(
        "squeue.fail",
        "slurm_load_jobs error: Invalid job id specified",
    );
    assert!(s.poll().unwrap().is_empty(), "one miss is not enough");
    std::thread::sleep(Duration::from_millis(120));
    let ev = s.poll().unwrap();
    assert!(
        matches!(state_of(&ev, "b1-0"), Some(WorkerState::Lost(r)) if r.contains("out of memory"))
    );
    assert!(matches!(state_of(&ev, "b1-1"), Some(WorkerState::Lost(r)) if r.contains("no record")));

    // A controller that does not answer is a failed query (transient), not dead workers.
    let f = Fake::new();
    let mut s = f.sched(json!({"poll_interval": 0.1}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 1)).unwrap();
    f.put(
        "squeue.fail",
        "slurm_load_jobs error: Unable to contact slurm controller",
    );
    let e = s.poll().unwrap_err();
    assert!(s.transient(&e), "{e}");
    fs::remove_file(f.bin.join("squeue.fail")).unwrap();
}

#[test]
fn sacct_is_used_where_the_site_has_accounting() {
    let f = Fake::new();
    f.put(
        "config",
        &CONFIG.replace("accounting_storage/none", "accounting_storage/slurmdbd"),
    );
    f.put("sacct.out", "100_0|COMPLETED|0:0\n");
    let mut s = f.sched(json!({"poll_interval": 0.1}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 1)).unwrap();
    s.poll().unwrap();
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(
        s.poll().unwrap(),
        [WorkerEvent {
            worker: "b1-0".into(),
            state: WorkerState::Exited
        }]
    );
    assert!(f.log("sacct").contains("-j 100_0"));
}

#[test]
fn cancel_addresses_elements_and_cancel_all_whole_arrays() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 3)).unwrap();
    s.submit(&f.spec, &batch(2, 1)).unwrap();
    s.cancel(&["b1-2".into()]).unwrap();
    assert_eq!(f.log("scancel"), "100_2\n");
    // Cancelled elements stay listed (CA) for MinJobAge: they do not hold cancel_all up.
    f.put("squeue.all", "100_0 CA 0 None\n100_1 CA 0 None\n");
    s.cancel_all().unwrap();
    assert_eq!(f.log("scancel"), "100_2\n100 101\n");
    let q = f.log("squeue");
    assert!(
        q.contains("-h -r -t all -j 100,101 -O"),
        "confirmed with squeue: {q}"
    );
    s.cancel_all().unwrap();
    assert_eq!(
        f.log("scancel").lines().count(),
        2,
        "nothing left to cancel"
    );
}

#[test]
fn cancel_all_retries_until_the_queue_is_clear() {
    let f = Fake::new();
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 2)).unwrap();
    // The first confirmation still lists an element; the fake clears it after the retry.
    let bin = f.bin.display().to_string();
    f.put("squeue.all", "100_0 CA 0 None\n100_1 PD 0 None\n");
    fs::write(
        f.bin.join("scancel"),
        format!("#!/bin/sh\necho \"$*\" >> {bin}/scancel.log\ncase \"$*\" in 100_1) echo '100_1 CA 0 None' > {bin}/squeue.all;; esac\n"),
    )
    .unwrap();
    s.cancel_all().unwrap();
    assert_eq!(f.log("scancel"), "100\n100_1\n");
}

#[test]
fn pending_reasons_that_cannot_clear_make_the_request_unsatisfiable() {
    let f = Fake::new();
    let mut s = f.sched(json!({"poll_interval": 0.1}));
    s.preflight(&f.spec).unwrap();
    s.submit(&f.spec, &batch(1, 2)).unwrap();
    f.put(
        "squeue.all",
        "100_0  PD  0  PartitionTimeLimit\n100_1  PD  0  PartitionTimeLimit\n",
    );
    let ev = s.poll().unwrap();
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in &ev {
        assert!(
            matches!(&e.state, WorkerState::Unsatisfiable(r) if r.contains("PartitionTimeLimit") && r.contains("MaxTime")),
            "{e:?}"
        );
    }
    assert!(f.log("scancel").contains("100"), "the jobs are cancelled");
    assert!(s.poll().unwrap().is_empty(), "reported once");
}

#[test]
fn max_submit_jobs_caps_the_pool_with_a_message() {
    let f = Fake::new();
    f.put(
        "config",
        &CONFIG.replace("accounting_storage/none", "accounting_storage/slurmdbd"),
    );
    let body = "case \"$*\" in 'show config') cat $D/config;; 'show partition -o') cat $D/partitions;; \
                *assoc_mgr*) echo 'ClusterName=c Account=a UserName=u(1) MaxSubmitJobs=5(2) MaxJobs='; echo 'QOS=normal(1) MaxSubmitJobsPU=N(0)';; esac";
    fs::write(
        f.bin.join("scontrol"),
        format!(
            "#!/bin/sh\nD={}\necho \"$*\" >> $D/scontrol.log\n{body}\n",
            f.bin.display()
        ),
    )
    .unwrap();
    let mut s = backend(16, &json!({})).unwrap().with_tools(&f.bin);
    let notes = s.preflight(&f.spec).unwrap();
    assert_eq!(s.capacity(), 3);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("at most 3 workers instead of 16")
                && n.contains("MaxSubmitJobs=5 (2 in use)")),
        "{notes:?}"
    );
    assert!(f.log("scontrol").contains("show assoc_mgr users="));
}

#[test]
fn busy_or_capped_controllers_are_transient() {
    let f = Fake::new();
    let s = f.sched(json!({}));
    let e = |m: &str| SchedError::Command {
        command: "sbatch".into(),
        message: m.into(),
    };
    for m in [
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        "sbatch: error: QOSMaxSubmitJobPerUserLimit",
        "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
        "squeue: error: slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
        "no answer within 60 s (timed out)",
        "sbatch: error: Unable to open file /home/u/.shoal/sessions/x/slurm-worker.sh",
    ] {
        assert!(s.transient(&e(m)), "{m}");
    }
    for m in [
        "sbatch: error: invalid partition specified: nope",
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
    ] {
        assert!(!s.transient(&e(m)), "{m}");
    }
}

#[test]
fn a_submission_that_timed_out_but_was_carried_out_is_adopted_not_repeated() {
    let f = Fake::new();
    // The controller took the first sbatch, but its answer timed out.
    crate::testing::fake_tool(
        &f.bin,
        "sbatch",
        "case \"$*\" in *--test-only*) echo 'sbatch: Job 7 to start' >&2; exit 0;; esac\n\
         for a in \"$@\"; do case $a in --output=*) o=${a#--output=};; esac; done\n\
         if [ ! -f $D/made ]; then touch $D/made; echo \"100|$o|\" > $D/squeue.me\n\
           echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2; exit 1; fi\n\
         echo '101;shoal'",
    );
    crate::testing::fake_tool(
        &f.bin,
        "squeue",
        "case \"$*\" in *--me*) cat $D/squeue.me 2>/dev/null;; *'-t all'*) cat $D/squeue.all 2>/dev/null;; *) cat $D/squeue.live 2>/dev/null;; esac; exit 0",
    );
    let mut s = f.sched(json!({}));
    s.preflight(&f.spec).unwrap();
    let e = s.submit(&f.spec, &batch(1, 2)).unwrap_err();
    assert!(s.transient(&e), "a timeout is worth retrying: {e}");
    s.submit(&f.spec, &batch(1, 2)).unwrap();
    assert_eq!(
        s.job_ids(),
        ["100"],
        "the array the timed-out call made is adopted"
    );
    // Users find each worker in squeue by its array element.
    assert_eq!(s.job_of("b1-1").as_deref(), Some("100_1"));
    assert_eq!(s.job_of("b9-0"), None);
    let log = f.log("sbatch");
    let calls: Vec<&str> = log.lines().filter(|l| !l.contains("--test-only")).collect();
    assert_eq!(calls.len(), 1, "submitted once: {calls:?}");
}

/// The job script itself, run by sh: workers_per_job starts N workers `ELEMENT.K` with their
/// own logs and exit records; a SIGTERM to the script reaches every worker, and the script
/// records each worker's own exit status.
#[test]
fn the_job_script_fans_out_and_passes_sigterm_on() {
    let mut f = Fake::new();
    let python = f.bin.join("fake-python");
    // A "worker" that says who it is, then waits for SIGTERM and exits 0 (as shoal's does
    // after giving its work back); worker .1 exits 3 at once.
    fs::write(
        &python,
        "#!/bin/sh\necho \"out of $SHOAL_WORKER_ID walltime=$SHOAL_WALLTIME\"\n\
         case $SHOAL_WORKER_ID in *.1) exit 3;; esac\n\
         trap 'echo term; exit 0' TERM\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
    f.spec.python = python;
    let mut s = f.sched(json!({"workers_per_job": 3, "time": "2m"}));
    s.preflight(&f.spec).unwrap();
    let mut b = batch(1, 0);
    b.ids = (0..3).map(|k| format!("b1-0.{k}")).collect();
    s.submit(&f.spec, &b).unwrap();
    assert!(
        f.log("sbatch").contains("--cpus-per-task=3"),
        "{}",
        f.log("sbatch")
    );
    let script = f.spec.session.sub("slurm-worker.sh");
    let mut job = std::process::Command::new("/bin/sh")
        .arg(&script)
        .arg("b1")
        .env("SLURM_ARRAY_TASK_ID", "0")
        .spawn()
        .unwrap();
    let logs = f.spec.session.sub("logs");
    let started = |k: u32| {
        fs::read_to_string(logs.join(format!("b1-0.{k}.out")))
            .is_ok_and(|t| t.contains(&format!("out of b1-0.{k} walltime=120")))
    };
    let t0 = std::time::Instant::now();
    while !(started(0) && started(2)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "workers did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100)); // the traps are set
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(job.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = job.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the script exits with a worker's failure"
    );
    let exit = f.spec.session.sub("exit");
    let rc = |k: u32| fs::read_to_string(exit.join(format!("b1-0.{k}"))).unwrap();
    assert_eq!((rc(0).trim(), rc(1).trim(), rc(2).trim()), ("0", "3", "0"));
    let out0 = fs::read_to_string(logs.join("b1-0.0.out")).unwrap();
    assert!(out0.contains("term"), "SIGTERM reached the worker: {out0}");
    // The element's workers are tracked on one array element; cancelling one of them
    // leaves the element (its siblings work on), cancelling all cancels it.
    s.cancel(&["b1-0.0".into()]).unwrap();
    assert!(!f.log("scancel").contains("100_0"), "{}", f.log("scancel"));
    s.cancel(&["b1-0.1".into(), "b1-0.2".into()]).unwrap();
    assert!(f.log("scancel").contains("100_0"), "{}", f.log("scancel"));
}

#[test]
fn a_gpu_shape_submits_its_own_request_and_script_beside_the_pools() {
    // One session, the pool's shape and a shape of `resources={"gpus": 1, "cpus": 4,
    // "time": "45m"}`: each array asks for its own resources, and each job script tells its
    // workers their own time limit.
    let f = Fake::new();
    let base = json!({"cpus": 1, "time": "10m", "partition": "short"});
    let resources = json!({"gpus": 1, "cpus": 4, "time": "45m"});
    let shape = crate::shapes::resolve("slurm", &base, resources.as_object().unwrap()).unwrap();
    assert_eq!(shape.label, "cpus=4,gpus=1,time=45m");
    let mut pool = f.sched(base);
    let mut gpu = f.sched(shape.options);
    gpu.for_shape(&crate::shapes::prefix(1));
    pool.preflight(&f.spec).unwrap();
    gpu.preflight(&f.spec).unwrap();
    pool.submit(&f.spec, &batch(1, 2)).unwrap();
    let shaped = Batch {
        number: 1,
        ids: vec!["s1b1-0".into()],
    };
    gpu.submit(&f.spec, &shaped).unwrap();
    let log = f.log("sbatch");
    let calls: Vec<&str> = log.lines().filter(|l| !l.contains("--test-only")).collect();
    let root = f.spec.session.root().display().to_string();
    let cwd = f.spec.cwd.display().to_string();
    assert_eq!(
        calls,
        [
            format!("--parsable --array=0-1 --job-name=shoal --output={root}/logs/b1-%a.out --error={root}/logs/b1-%a.err --chdir={cwd} --export=ALL --no-requeue --ntasks=1 --cpus-per-task=1 --time=0-00:10:00 --partition=short {root}/slurm-worker.sh b1"),
            format!("--parsable --array=0-0 --job-name=shoal --output={root}/logs/s1b1-%a.out --error={root}/logs/s1b1-%a.err --chdir={cwd} --export=ALL --no-requeue --ntasks=1 --cpus-per-task=4 --time=0-00:45:00 --partition=short --gres=gpu:1 {root}/slurm-worker-s1.sh s1b1"),
        ]
    );
    let script = |name: &str| fs::read_to_string(f.spec.session.sub(name)).unwrap();
    assert!(script("slurm-worker.sh").contains("SHOAL_WALLTIME=600;"));
    assert!(script("slurm-worker-s1.sh").contains("SHOAL_WALLTIME=2700;"));
}

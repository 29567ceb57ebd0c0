"""The SGE backend on the real Grid Engine of ci/clusters (`cluster up sge`): results, remote
tracebacks, a worker deleted mid-map, a job in error state, preflight errors, Ctrl-C, and no
job of any session left in the queue afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest
from checkpoint_tasks import Steps, starts, steps_done
from cluster_helpers import map_through_an_outage, wait_for

import shoal

pytestmark = pytest.mark.sge

NAME = "shoaltest"  # every job these tests submit carries this name
SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
# Found once: one test empties PATH and the fixtures still need the real qstat.
QSTAT = shutil.which("qstat", path="/usr/lib/gridengine") or shutil.which("qstat") or "qstat"


@pytest.fixture(autouse=True)
def _sge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SGE_ENV.items():
        monkeypatch.setenv(k, os.environ.get(k, v))
    path = os.environ.get("PATH", "")
    if not path.startswith("/usr/lib/gridengine"):
        monkeypatch.setenv("PATH", "/usr/lib/gridengine:" + path)


def our_jobs() -> dict[str, str]:
    """task id -> state of every listed job named NAME (any session of these tests)."""
    out = subprocess.run(
        [QSTAT, "-xml", "-u", "*"], capture_output=True, text=True, check=True
    ).stdout
    jobs = {}
    for job in ET.fromstring(out).iter("job_list"):
        if job.findtext("JB_name") == NAME:
            jid = f"{job.findtext('JB_job_number')}.{job.findtext('tasks') or '1'}"
            jobs[jid] = job.findtext("state") or ""
    return jobs


@pytest.fixture(autouse=True)
def _nothing_left(_sge_env: None):
    assert our_jobs() == {}, "jobs of an earlier run are still queued"
    yield
    left = our_jobs()
    assert left == {}, f"jobs left behind: {left}"


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.25)
    return x * x


def where(_: int) -> tuple[str, str]:
    """The worker's id and its SGE job."""
    return os.environ["SHOAL_WORKER_ID"], os.environ["JOB_ID"]


def nap(x: int) -> int:
    time.sleep(60)
    return x


def environment(_: int) -> tuple[str, str]:
    return os.environ.get("SHOAL_TEST_VALUE", ""), os.environ.get("NSLOTS", "")


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x


def pool(n: int = 4, **kw):
    kw.setdefault("job_name", NAME)
    kw.setdefault("poll_interval", 0.5)
    return shoal.Pool(n, backend="sge", **kw)


def test_map_imap_apply_on_array_workers(tmp_path):
    with pool(3, queue="all.q", resources="h_vmem=1G", time="10m", keep_work_dir=True) as p:
        assert p.map(square, range(50)) == [x * x for x in range(50)]
        assert sorted(p.imap_unordered(square, range(30), chunksize=2)) == sorted(
            x * x for x in range(30)
        )
        assert list(p.imap(square, range(10))) == [x * x for x in range(10)]
        assert p.apply_async(square, (7,)).get(timeout=120) == 49
        placed = set(p.map(where, range(12)))
        path = p._driver.path
    # Worker ids are bBATCH-TASK of array jobs, and their output went to logs/<worker>.out|err.
    workers = {w for w, _ in placed}
    assert all(re.fullmatch(r"b\d+-\d+", w) for w in workers), workers
    logs = set(os.listdir(os.path.join(path, "logs")))
    for w in workers:
        assert f"{w}.out" in logs and f"{w}.err" in logs
    assert len({job for _, job in placed}) <= 3, "one array per submission"
    shutil.rmtree(path)


def test_executor_and_remote_traceback():
    with shoal.Executor(2, backend="sge", job_name=NAME, poll_interval=0.5) as ex:
        futs = [ex.submit(square, i) for i in range(8)]
        assert [f.result(timeout=120) for f in futs] == [i * i for i in range(8)]
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]
        bad = ex.submit(fail_on_three, 3)
        with pytest.raises(ValueError, match="bad input 3") as info:
            bad.result(timeout=120)
    tb = str(info.value.__cause__)
    assert "fail_on_three" in tb and "raise ValueError" in tb


def test_deleted_worker_mid_map_still_yields_every_result_once():
    n = 60
    with pool(3, max_attempts=5) as p:
        it = p.imap_unordered(slow_square, range(n), chunksize=2)
        got = [next(it)]
        deadline = time.time() + 30
        while not (running := [j for j, st in our_jobs().items() if st == "r"]):
            assert time.time() < deadline, f"no worker running: {our_jobs()}"
            time.sleep(0.2)
        subprocess.run(["qdel", running[0]], check=True, capture_output=True)
        got.extend(it)
        stats = p._driver.stats()
    assert sorted(got) == [x * x for x in range(n)]
    # qdel of a -notify job sends SIGUSR2 first: the worker gives its chunk back and leaves,
    # so nothing is lost (before -notify, the kill cost the chunk an attempt).
    assert stats["workers_lost"] == 0, stats
    assert stats["workers_started"] > 3, stats


def test_env_and_parallel_environment_reach_workers():
    value = "a,b 'c' $HOME"  # commas and quotes: what qsub -v cannot carry
    with pool(2, pe="smp", slots=2, env={"SHOAL_TEST_VALUE": value}) as p:
        assert set(p.map(environment, range(4))) == {(value, "2")}


def test_worker_killed_by_h_rt_is_reported_with_sge_reason():
    with pool(2, time="3s", max_attempts=1) as p:
        with pytest.raises(shoal.WorkerLostError) as info:
            p.map(nap, range(2))
    msg = str(info.value)
    # The worker leaves at its walltime margin instead of being killed by h_rt (signal 9):
    # the task is charged, and fails after max_attempts with the option to raise.
    assert "time limit" in msg and "raise `h_rt`" in msg and "given back" not in msg, msg


def test_job_in_error_state_is_reported_and_deleted():
    start = time.time()
    with pool(2, qsub_args=["-wd", "/nonexistent/shoal-eqw"]) as p:
        with pytest.raises(shoal.SessionError) as info:
            p.map(square, range(4))
    msg = str(info.value)
    assert "Eqw" in msg and "can't chdir to /nonexistent/shoal-eqw" in msg, msg
    assert time.time() - start < 120


def test_transient_error_state_is_recovered(tmp_path):
    wd = tmp_path / "appears-later"
    with pool(2, qsub_args=["-wd", str(wd)], poll_interval=2) as p:
        res = p.map_async(square, range(6))
        deadline = time.time() + 30
        while "Eqw" not in our_jobs().values():
            assert time.time() < deadline, "the first workers never went into Eqw"
            time.sleep(0.1)
        wd.mkdir()  # the next workers the engine starts can run
        assert res.get(timeout=120) == [x * x for x in range(6)]
        assert p._driver.stats()["workers_lost"] >= 1


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"queue": "nope.q"}, 'unknown SGE queue "nope.q"'),
        ({"resources": "h_vmem=lots"}, '"lots"'),
        ({"resources": "nosuchthing=1"}, 'unknown resource "nosuchthing"'),
        ({"pe": "nope", "slots": 2}, 'parallel environment "nope" does not exist'),
        ({"pe": "smp", "slots": 64}, "SGE refuses the worker job"),
        ({"time": "soon"}, '"soon"'),
        ({"colour": "blue"}, "does not apply to the sge backend"),
    ],
)
def test_bad_input_fails_before_anything_runs(options, expect):
    start = time.time()
    with pytest.raises(shoal.ConfigError) as info:
        pool(2, **options)
    assert expect in str(info.value)
    assert time.time() - start < 10


def test_missing_qsub_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(shoal.ConfigError, match="qsub not found"):
        pool(1)


def test_ctrl_c_deletes_the_session_jobs(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time, shoal
            def nap(x):
                time.sleep(60)
            with shoal.Pool(3, backend="sge", job_name={NAME!r}, poll_interval=0.5) as p:
                print("mapping", flush=True)
                p.map(nap, range(6))
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "mapping"
        deadline = time.time() + 60
        while time.time() < deadline and "r" not in our_jobs().values():
            time.sleep(0.3)
        assert "r" in our_jobs().values(), "workers never started"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0


def test_a_30_s_qmaster_outage_mid_map_is_ridden_out():
    """sge_qmaster stopped for 30 s while 3 workers run a 40-s map, one of them killed
    meanwhile: results keep arriving and the map completes."""
    with pool(3) as p:
        r = map_through_an_outage(p, "/var/spool/gridengine/qmaster/qmaster.pid")
    assert r["results"] == list(range(60))
    assert r["during"] >= 5, f"results stalled during the outage: {r['during']}"
    assert r["stats"]["workers_lost"] >= 1, r


@contextlib.contextmanager
def global_config(**values: int):
    """Set global configuration values (max_aj_tasks, max_u_jobs) for the block."""
    original = subprocess.run(
        ["qconf", "-sconf", "global"], capture_output=True, text=True, check=True
    ).stdout
    conf = original
    for k, v in values.items():
        conf = re.sub(rf"^{k}\s+\S+", f"{k} {v}", conf, flags=re.M)

    def load(text: str) -> None:
        with open("/tmp/global", "w") as f:
            f.write(text)
        subprocess.run(["qconf", "-Mconf", "/tmp/global"], capture_output=True, check=True)

    load(conf)
    try:
        yield
    finally:
        load(original)
        os.remove("/tmp/global")


def test_site_caps_shape_a_default_pool(capfd):
    """A default 16-worker pool on a site with max_aj_tasks=4 and max_u_jobs=2 works: arrays
    of at most 4 tasks, at most 8 workers, and the user is told why."""
    with global_config(max_aj_tasks=4, max_u_jobs=2):
        with shoal.Pool(backend="sge", job_name=NAME, poll_interval=0.5) as p:
            assert p.map(slow_square, range(64), chunksize=1) == [x * x for x in range(64)]
            stats = p._driver.stats()
        err = capfd.readouterr().err
    assert 1 <= stats["workers_started"], stats
    assert "max_aj_tasks=4" in err and "at most 8 workers" in err, err[-2000:]


def test_a_job_no_queue_can_run_fails_fast_with_sges_reason():
    """A parallel environment that is detached from every queue after the pool started:
    the jobs can never run, and `qalter -w v` says why."""
    pe = "shoalunsat"
    spec = f"pe_name {pe}\nslots 16\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\n"
    spec += "stop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves FALSE\n"
    spec += "job_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\n"
    spec += "qsort_args NONE\n"
    with open("/tmp/shoalunsat.pe", "w") as f:
        f.write(spec)
    subprocess.run(["qconf", "-Ap", "/tmp/shoalunsat.pe"], capture_output=True, check=True)
    try:
        subprocess.run(
            ["qconf", "-aattr", "queue", "pe_list", pe, "all.q"], check=True, capture_output=True
        )
        p = pool(2, pe=pe, slots=2)
        try:
            subprocess.run(
                ["qconf", "-dattr", "queue", "pe_list", pe, "all.q"],
                check=True,
                capture_output=True,
            )
            start = time.time()
            with pytest.raises(shoal.SessionError) as info:
                p.map(square, range(4))
            assert time.time() - start < 30
        finally:
            p.terminate()
        msg = str(info.value)
        assert "never start" in msg and pe in msg and "qalter -w v" in msg, msg
    finally:
        subprocess.run(["qconf", "-dattr", "queue", "pe_list", pe, "all.q"], capture_output=True)
        subprocess.run(["qconf", "-dp", pe], capture_output=True)
        os.remove("/tmp/shoalunsat.pe")


def test_a_suspension_notice_gives_the_task_back_with_its_checkpoint(tmp_path):
    """SGE's suspend (`qmod -sj`, as a subordinate queue or an admin does it): shoal's jobs
    are submitted with -notify, so SGE sends SIGUSR1 the queue's `notify` time before SIGSTOP.
    The worker gives its task back with a checkpoint and leaves before it would be frozen;
    the task resumes in a new job at no attempt's cost, and no step runs twice."""
    log = str(tmp_path / "ck")
    with pool(1, max_attempts=1) as p:
        fut = p.apply_async(Steps(), (20, 0.5, log))
        assert wait_for(lambda: os.path.exists(log) and len(steps_done(log)) >= 4, 90)
        (job,) = [j for j, st in our_jobs().items() if st == "r"]
        at = len(steps_done(log))
        t0 = time.monotonic()
        subprocess.run(["qmod", "-sj", job], check=True, capture_output=True)
        try:
            assert fut.get(timeout=120) == 20
        finally:
            # the job ended on the notice; if not, let it go
            subprocess.run(["qmod", "-usj", job], capture_output=True)
        wall = time.monotonic() - t0
        stats = p._driver.stats()
    assert steps_done(log) == list(range(20)), "no step ran twice, none was skipped"
    assert len(starts(log)) == 2 and starts(log)[1] >= at, (starts(log), at)
    assert stats["workers_lost"] == 0 and stats["workers_started"] >= 2, stats
    print(f"\nSGE suspension notice at step {starts(log)[1]}: the rest took {wall:.0f} s")


def which_python(_: int) -> str:
    out = subprocess.run(
        ["python", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
    )
    return f"{out.returncode} {out.stdout.strip()}"


def test_tasks_find_the_submit_shells_python(monkeypatch):
    # The driver's shell finds this interpreter as `python`; SGE jobs start with a bare PATH
    # unless the backend forwards it (before: `python` was missing and tasks exited 127).
    bin_dir = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", bin_dir + ":" + os.environ["PATH"])
    want = shutil.which("python")
    with pool(1) as p:
        assert p.map(which_python, [0]) == [f"0 {want}"]


def test_forward_env_in_a_template_reaches_the_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_TEST_MARK", "from the submit shell")
    (tmp_path / "shoal.toml").write_text(
        '[defaults]\nresults_dir = "results"\n\n'
        f'[sge.default]\njob_name = "{NAME}"\npoll_interval = 0.5\n'
        'forward_env = ["PATH", "SHOAL_TEST_MARK"]\n'
    )
    out = subprocess.run(
        [
            "shoal",
            "run",
            "--backend",
            "sge",
            "--name",
            "mark",
            "--",
            "sh",
            "-c",
            "echo $SHOAL_TEST_MARK > {out}/mark",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    marks = glob.glob(str(tmp_path / "results" / "**" / "mark"), recursive=True)
    assert marks, out.stdout
    with open(marks[0]) as f:
        assert f.read().strip() == "from the submit shell"

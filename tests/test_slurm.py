"""The Slurm backend against the real test cluster (ci/clusters/cluster up slurm).

Every test names its jobs uniquely (job_name=...) and the autouse fixture checks that none of
them is left in squeue afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from cluster_helpers import map_through_an_outage, nap2, wait_for

import shoal
from shoal.errors import ConfigError, RemoteTraceback, SchedulerError

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


def squeue(name: str, *extra: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-n", name, "-o", "%i %t %r", *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split(None, 2) for line in out.splitlines() if line.strip()]


@pytest.fixture
def name() -> str:
    """A unique job name for this test; no job of it may remain queued or running."""
    job_name = f"shoal-t-{uuid.uuid4().hex[:8]}"
    yield job_name
    left = wait_for(lambda: not squeue(job_name), 10) or squeue(job_name)
    assert left is True, f"jobs left behind: {left}"


def slurm_env(_: int) -> tuple[str, str]:
    return os.environ["SLURM_ARRAY_JOB_ID"], os.environ["SLURM_ARRAY_TASK_ID"]


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fails(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x


def test_map_imap_apply(name: str) -> None:
    with shoal.Pool(4, backend="slurm", job_name=name, time="10m", memory="500M") as p:
        assert p.map(square, range(200)) == [x * x for x in range(200)]
        assert list(p.imap(square, range(50), chunksize=3)) == [x * x for x in range(50)]
        assert sorted(p.imap_unordered(square, range(20))) == sorted(x * x for x in range(20))
        assert p.apply_async(add, (2, 3)).get(timeout=60) == 5
        assert p.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        where = p.map(slurm_env, range(8), chunksize=1)
        jobs = {j for j, _ in where}
        # Workers are array elements of this session's jobs, never one job per task.
        assert len(where) == 8 and len(jobs) <= 3
        # 281 tasks went through a handful of workers (a few arrays), not a job per task: at
        # most the pool's 4 per call (queued ones are given back when a call's work is done).
        assert p._driver.stats()["workers_started"] <= 6 * 4


def noisy_when_cancelled(x: int) -> int:
    """Leaves a process in its job that writes to the job's stderr when the job is cancelled,
    as slurmstepd itself writes "CANCELLED AT" there."""
    cmd = "trap 'echo NOISE-OF-THE-CANCEL >&2; exit 0' TERM; while :; do sleep 0.02; done"
    subprocess.Popen(["sh", "-c", cmd])
    print(f"stderr of task {x}", file=sys.stderr, flush=True)
    return x


def test_what_a_terminated_pools_jobs_write_is_not_forwarded(name: str, capfd) -> None:
    # `with Pool()` ends with terminate(): its jobs are cancelled, and what they write then is
    # the scheduler's word on it ("slurmstepd: *** JOB 5 ON vm CANCELLED AT ..."), not a
    # task's output: it stays in the logs, and the user's terminal does not get it.
    with shoal.Pool(2, backend="slurm", job_name=name, poll_interval=0.5) as p:
        assert p.map(noisy_when_cancelled, range(2), chunksize=1) == [0, 1]
    err = capfd.readouterr().err
    assert "stderr of task 1" in err  # what the tasks wrote was forwarded
    assert "NOISE-OF-THE-CANCEL" not in err and "CANCELLED AT" not in err, err


@pytest.mark.shared_dir
def test_task_exception_carries_remote_traceback_and_is_not_retried(name: str, tmp_path) -> None:
    log = tmp_path / "runs"

    def record_and_fail(x: int) -> int:
        with open(log, "a") as f:
            f.write(f"{x}\n")
        return fails(x)

    with shoal.Pool(2, backend="slurm", job_name=name) as p:
        with pytest.raises(ValueError, match="bad value 3") as info:
            p.map(record_and_fail, range(6), chunksize=1)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "in fails" in str(info.value.__cause__)
        assert p.apply_async(fails, (1,)).get(timeout=60) == 1
    assert log.read_text().split().count("3") == 1


def slow_marker(args: tuple[int, str]) -> int:
    i, marker_dir = args
    open(os.path.join(marker_dir, f"{i}.{os.environ['SLURM_ARRAY_JOB_ID']}"), "w").close()
    time.sleep(0.3)
    return i


@pytest.mark.shared_dir
def test_scancel_of_a_running_worker_mid_map_loses_nothing(name: str, tmp_path) -> None:
    with shoal.Pool(3, backend="slurm", job_name=name, poll_interval=0.5) as p:
        res = p.map_async(slow_marker, [(i, str(tmp_path)) for i in range(60)], chunksize=2)
        running = wait_for(lambda: [j for j, st, _ in squeue(name) if st == "R"], 30)
        assert running, "no worker started"
        wait_for(lambda: len(os.listdir(tmp_path)) >= 6, 30)
        victim = running[0]
        assert "_" in victim
        # scancel sends SIGTERM: the worker gives its chunk back (docs/checkpoints.md), so
        # nothing is charged and nothing is lost.
        subprocess.run(["scancel", victim], check=True)
        assert res.get(timeout=120) == list(range(60))
        stats = p._driver.stats()
        assert stats["tasks_done"] == 60 and stats["tasks_failed"] == 0
    states = {j: st for j, st, _ in squeue(name, "-t", "all")}
    assert states[victim] == "CA"


def sleep_once(args: tuple[int, str]) -> int:
    """Task 0 hangs the first time it runs (until Slurm kills it), then is quick; the others
    take a second, so both workers are known to run before the work runs low."""
    i, marker = args
    if i == 0 and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(os.environ["SLURM_ARRAY_JOB_ID"] + "_" + os.environ["SLURM_ARRAY_TASK_ID"])
        time.sleep(600)
    elif i != 0:
        time.sleep(1)
    return i


@pytest.mark.shared_dir
def test_worker_over_its_time_limit_is_recovered(name: str, tmp_path) -> None:
    marker = str(tmp_path / "first")
    with shoal.Pool(2, backend="slurm", job_name=name, time="1m", poll_interval=0.5) as p:
        res = p.map_async(sleep_once, [(i, marker) for i in range(4)], chunksize=1)
        assert wait_for(lambda: os.path.exists(marker) and open(marker).read(), 60)
        worker = open(marker).read()

        # Slurm's limits are in minutes: end the job's allowed time now instead of waiting
        # one; slurmctld enforces it at its next periodic check (<= 30 s).
        def end_now() -> subprocess.CompletedProcess:
            cmd = ["scontrol", "update", f"JobId={worker}", "EndTime=now"]
            return subprocess.run(cmd, capture_output=True, text=True)

        # slurmctld may refuse an update while it is busy; try for a few seconds.
        done = wait_for(lambda: end_now().returncode == 0, 10, every=1.0)
        assert done, end_now().stderr
        assert res.get(timeout=90) == [0, 1, 2, 3]
        # Slurm's SIGTERM at the (moved) limit: the task was given back, not lost.
        assert p._driver.stats()["workers_lost"] == 0
    states = {j: (st, r) for j, st, r in squeue(name, "-t", "all")}
    assert states[worker] == ("TO", "TimeLimit")


def job_and_pid(_: int) -> tuple[str, int]:
    time.sleep(0.5)
    job = os.environ["SLURM_ARRAY_JOB_ID"] + "_" + os.environ["SLURM_ARRAY_TASK_ID"]
    return job, os.getpid()


def test_workers_per_job_runs_several_workers_in_one_allocation(name: str) -> None:
    with shoal.Pool(4, backend="slurm", job_name=name, workers_per_job=2) as p:
        where = p.map(job_and_pid, range(16), chunksize=1)
        jobs = {j for j, _ in where}
        pids = {pid for _, pid in where}
        assert len(jobs) <= 2 and len(pids) > len(jobs), where
        cpus = subprocess.run(
            ["squeue", "-h", "-n", name, "-o", "%C"], capture_output=True, text=True
        ).stdout.split()
        assert cpus and all(c == "2" for c in cpus), cpus
        assert p._driver.stats()["workers_started"] % 2 == 0


def test_queued_workers_beyond_the_work_are_given_back(name: str) -> None:
    # 6 CPUs each on a 16-CPU node: 2 workers run, the other 2 wait for resources.
    with shoal.Pool(4, backend="slurm", job_name=name, cpus=6, poll_interval=0.5) as p:
        assert p.map(square, range(4), chunksize=1) == [0, 1, 4, 9]
        pending = wait_for(lambda: not [j for j, st, _ in squeue(name) if st == "PD"], 5)
        assert pending is True, squeue(name)
        stats = p._driver.stats()
        assert stats["workers_pending"] == 0 and stats["workers_lost"] == 0, stats


def test_bad_input_fails_before_anything_is_queued(name: str, monkeypatch) -> None:
    t = time.monotonic()
    with pytest.raises(ConfigError, match=r'no partition "nope"[\s\S]*debug, short'):
        shoal.Pool(2, backend="slurm", job_name=name, partition="nope")
    with pytest.raises(ConfigError, match="longer than partition"):
        shoal.Pool(2, backend="slurm", job_name=name, partition="short", time="2h")
    with pytest.raises(ConfigError, match='"soon"'):
        shoal.Pool(2, backend="slurm", job_name=name, time="soon")
    with pytest.raises(ConfigError, match='"lots"'):
        shoal.Pool(2, backend="slurm", job_name=name, memory="lots")
    with pytest.raises(ConfigError, match='option "nodes" does not apply to the slurm backend'):
        shoal.Pool(2, backend="slurm", job_name=name, nodes=2)
    with pytest.raises(ConfigError, match="did you mean `partition`"):
        shoal.Pool(2, backend="slurm", job_name=name, partiton="debug")
    # Slurm itself refuses: its message reaches the user.
    with pytest.raises(SchedulerError, match="Invalid generic resource"):
        shoal.Pool(2, backend="slurm", job_name=name, gpus=1)
    with pytest.raises(SchedulerError, match="node configuration is not available"):
        shoal.Pool(2, backend="slurm", job_name=name, cpus=64)
    assert time.monotonic() - t < 10
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="sbatch"):
        shoal.Pool(2, backend="slurm", job_name=name)
    monkeypatch.undo()
    assert squeue(name, "-t", "all") == []


def test_executor_on_slurm(name: str) -> None:
    with shoal.Executor(3, backend="slurm", job_name=name) as ex:
        futs = [ex.submit(add, i, 1) for i in range(30)]
        assert [f.result(timeout=60) for f in futs] == list(range(1, 31))
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]
        bad = ex.submit(fails, 3)
        with pytest.raises(ValueError, match="bad value 3"):
            bad.result(timeout=60)


def test_env_and_sbatch_options_reach_the_worker(name: str) -> None:
    def probe(_: int) -> tuple[str, str, str]:
        return (
            os.environ.get("SHOAL_TEST_VALUE", ""),
            os.environ.get("SLURM_JOB_PARTITION", ""),
            os.environ.get("SLURM_CPUS_PER_TASK", ""),
        )

    with shoal.Pool(
        1,
        backend="slurm",
        job_name=name,
        partition="short",
        cpus=2,
        env={"SHOAL_TEST_VALUE": "it's forwarded"},
        sbatch_args=["--nice=10"],
        extra_directives=["--comment=shoal-test"],
    ) as p:
        assert p.map(probe, [0]) == [("it's forwarded", "short", "2")]
        jobs = squeue(name, "-t", "all", "-o", "%i %y %k")
        assert jobs and all(nice == "10" and comment == "shoal-test" for _, nice, comment in jobs)


CTRL_C = textwrap.dedent(
    """
    import sys, time, shoal
    def nap(x):
        time.sleep(60)
        return x
    with shoal.Pool(3, backend="slurm", job_name=sys.argv[1]) as p:
        print("started", flush=True)
        p.map(nap, range(6), chunksize=1)
    """
)


def test_ctrl_c_cancels_every_job(name: str, tmp_path) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script), name], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        assert wait_for(lambda: [j for j, st, _ in squeue(name) if st == "R"], 30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
    assert squeue(name) == []


@pytest.mark.shared_dir
def test_workers_that_cannot_start_fail_the_session_with_slurms_reason(name: str) -> None:
    t = time.monotonic()
    with pytest.raises(shoal.SessionError) as info:
        with shoal.Pool(2, backend="slurm", job_name=name, env={"PYTHONHOME": "/nonexistent"}) as p:
            p.map(square, range(10))
    msg = str(info.value)
    assert "worker exited with code 1 [Slurm job " in msg
    assert "No module named 'encodings'" in msg  # the worker's own stderr
    assert time.monotonic() - t < 60


KILLED_DRIVER = textwrap.dedent(
    """
    import sys, time, shoal
    def nap(x):
        time.sleep(120)
        return x
    with shoal.Pool(2, backend="slurm", job_name=sys.argv[1]) as p:
        print(p.session, flush=True)
        p.map(nap, range(4), chunksize=1)
    """
)


def test_shoal_cancel_of_an_orphaned_session_cancels_its_jobs(name: str, tmp_path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED_DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), name], stdout=subprocess.PIPE, text=True)
    try:
        session = proc.stdout.readline().strip()
        assert wait_for(lambda: [j for j, st, _ in squeue(name) if st == "R"], 30)
        time.sleep(1.0)  # let session.json record the array ids
        proc.kill()  # SIGKILL: no cleanup runs in the driver
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert squeue(name), "the workers outlive a SIGKILLed driver until cancelled"
    sessions = subprocess.run(["shoal", "sessions"], capture_output=True, text=True).stdout
    assert "orphaned" in next(ln for ln in sessions.splitlines() if ln.startswith(session))
    out = subprocess.run(["shoal", "cancel", session], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "scheduler jobs cancelled" in out.stdout and "(0 local" in out.stdout
    assert wait_for(lambda: not squeue(name), 30)


@pytest.mark.admin
def test_a_30_s_controller_outage_mid_map_is_ridden_out(name: str) -> None:
    """slurmctld stopped for 30 s while 3 workers run a 40-s map, and one of them killed
    meanwhile: results keep arriving, its replacement is submitted once the controller is
    back, and the map completes."""
    with shoal.Pool(3, backend="slurm", job_name=name, poll_interval=0.5) as p:
        r = map_through_an_outage(p, "/run/slurm/slurmctld.pid")
    assert r["results"] == list(range(60))
    assert r["during"] >= 5, f"results stalled during the outage: {r['during']}"
    # The killed worker was seen (its exit record) and replaced once sbatch answered again.
    assert r["stats"]["workers_lost"] >= 1 and r["stats"]["workers_started"] >= 4, r


def test_a_request_slurm_can_never_start_fails_fast_with_its_reason(name: str) -> None:
    # The partition's MaxTime is 1 h; raw sbatch_args pass preflight and pend forever with
    # reason PartitionTimeLimit.
    t = time.monotonic()
    with pytest.raises(shoal.SessionError) as info:
        with shoal.Pool(
            2, backend="slurm", job_name=name, partition="short", sbatch_args=["--time=2:00:00"]
        ) as p:
            p.map(square, range(4))
    msg = str(info.value)
    # Slurm names it PartitionTimeLimit, or PartitionConfig before its first scheduling pass.
    assert "Slurm will never start the worker jobs" in msg and "hint" in msg, msg
    assert "PartitionTimeLimit" in msg or "PartitionConfig" in msg, msg
    assert time.monotonic() - t < 20


def not_running_any_more(p: shoal.Pool, started_before: int) -> bool:
    s = p._driver.stats()
    return s["workers_running"] == 0 or s["workers_started"] > started_before


@pytest.mark.admin
def test_a_suspended_worker_is_not_counted_running(name: str) -> None:
    with shoal.Pool(1, backend="slurm", job_name=name, poll_interval=0.5) as p:
        res = p.map_async(nap2, range(6), chunksize=1)
        assert wait_for(lambda: p._driver.stats()["workers_running"] == 1, 30)
        job = next(j for j, st, _ in squeue(name) if st == "R")
        before = p._driver.stats()["workers_started"]
        subprocess.run(["scontrol", "suspend", job], check=True)
        try:
            # No longer counted running: it drops out, or the engine starts a replacement.
            assert wait_for(lambda: not_running_any_more(p, before), 10), squeue(name)
        finally:
            subprocess.run(["scontrol", "resume", job], check=True)
        # Resumed: running again (a replacement may have been started meanwhile).
        assert wait_for(lambda: p._driver.stats()["workers_running"] >= 1, 10), (
            p._driver.stats(),
            squeue(name),
        )
        assert res.get(timeout=60) == list(range(6))


def test_a_template_constraint_reaches_sbatch(name: str, tmp_path) -> None:
    """`constraint` in a Slurm template of shoal.toml is accepted (it was refused) and
    becomes --constraint: this cluster has no feature a100, so Slurm refuses it."""
    (tmp_path / "shoal.toml").write_text(f'[slurm.gpu]\nconstraint = "a100"\njob_name = "{name}"\n')
    out = subprocess.run(
        ["shoal", "run", "--backend", "slurm", "--template", "gpu", "--", "true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "unknown key" not in out.stderr, out.stderr
    assert "Invalid feature specification" in out.stderr, out.stderr

"""Preemption and checkpoints (docs/checkpoints.md): a worker that gets the scheduler's
signal gives its task back without costing an attempt, and a task with a `checkpoint()`
resumes where it was. Local workers get the signal from the task itself here; the Slurm
tests preempt real jobs through the test cluster's preempting partition."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from checkpoint_tasks import NoCheckpoint, Steps, starts, steps_done

import shoal
from helpers import fork_and_terminate

# The local workers over the work dir and over TCP (docs/transport-tcp.md): the same contract.
TRANSPORTS = pytest.mark.parametrize("transport", ["fs", "tcp"])


@TRANSPORTS
def test_a_preempted_task_resumes_from_its_checkpoint_at_no_cost(transport: str, tmp_path) -> None:
    log = str(tmp_path / "log")
    # max_attempts=1: a preemption that cost an attempt would fail the task.
    with shoal.Pool(1, max_attempts=1, transport=transport) as p:
        out = p.starmap(Steps(), [(10, 0.05, log, str(tmp_path / "once"))], chunksize=1)
    assert out == [10]
    assert steps_done(log) == list(range(10)), "every step ran exactly once"
    assert starts(log) == [0, 5], "the second run resumed from the checkpoint"


@TRANSPORTS
def test_a_preempted_task_without_checkpoint_reruns_at_no_cost(transport: str, tmp_path) -> None:
    log = str(tmp_path / "log")
    with shoal.Pool(1, max_attempts=1, transport=transport) as p:
        fut = p.apply_async(NoCheckpoint(), (6, 0.05, log, str(tmp_path / "once")))
        assert fut.get(timeout=60) == 6
        stats = p._driver.stats()
    assert starts(log) == [0, 0]
    assert steps_done(log) == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert stats["workers_lost"] == 0


@TRANSPORTS
def test_executor_submit_checkpoints_too(transport: str, tmp_path) -> None:
    log = str(tmp_path / "log")
    with shoal.Executor(max_workers=1, max_attempts=1, transport=transport) as ex:
        f = ex.submit(Steps(), 8, 0.05, log, str(tmp_path / "once"))
        assert f.result(timeout=60) == 8
    assert starts(log) == [0, 4]
    assert steps_done(log) == list(range(8))


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")
@TRANSPORTS
def test_sigterm_to_an_idle_worker_ends_it_and_work_goes_on(transport: str, tmp_path) -> None:
    with shoal.Pool(1, transport=transport) as p:
        pid = p.apply_async(os.getpid).get(timeout=30)
        time.sleep(0.1)  # it waits for work again, in native code
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while time.monotonic() < sent + 10:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the idle worker did not exit on SIGTERM")
        # At once: its wait looks at signals as they come, not once a second (the scheduler
        # cancelling idle workers' jobs, as `terminate()` does, waited that long for each).
        took = time.monotonic() - sent
        assert took < 0.5, f"the idle worker took {took:.2f} s to exit on SIGTERM"
        assert p.apply_async(os.getpid).get(timeout=30) != pid
        assert uuid.uuid4()  # the pool is still usable


@TRANSPORTS
def test_a_process_a_task_forks_ends_on_sigterm(transport: str) -> None:
    """The worker's preemption handlers are its own: a multiprocessing child a task forks
    ends on SIGTERM (`Pool.terminate()`), instead of inheriting the handler and living on
    (joblib's test_nested_loop hung in `Pool.terminate()` joining such children)."""
    with shoal.Pool(1, transport=transport) as p:
        assert p.apply(fork_and_terminate) == (False, -signal.SIGTERM)


# ---------------------------------------------------------------------- real schedulers


def _wait_for(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def _steps(log: str) -> int:
    return len(steps_done(log)) if os.path.exists(log) else 0


def _squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _job_state(job: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, check=True
    ).stdout
    return out.split("JobState=", 1)[1].split()[0]


@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.shared_dir
def test_slurm_preemption_signal_costs_no_attempt_and_the_task_resumes(tmp_path) -> None:
    """The signal a preemption (or a site's own tooling) sends: SIGTERM to the job's batch
    script and processes (`scancel --signal=TERM --full`, which does not end the job). The
    worker gives its task back with a checkpoint and exits; the task resumes in a new job.
    Slurm's own partition preemption is the next test."""
    log = str(tmp_path / "ck")
    name = f"shoal-p-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with shoal.Pool(1, backend="slurm", job_name=name, time="10m", max_attempts=1) as p:
        fut = p.apply_async(Steps(), (30, 1.0, log))
        assert _wait_for(lambda: _steps(log) >= 8, 120), "the task did not start"
        jobs = _squeue("-n", name, "-t", "R", "-o", "%i")
        assert len(jobs) == 1, jobs
        subprocess.run(["scancel", "--signal=TERM", "--full", jobs[0]], check=True)
        assert fut.get(timeout=240) == 30
        stats = p._driver.stats()
    wall = time.monotonic() - t0
    assert steps_done(log) == list(range(30)), "no step ran twice"
    assert len(starts(log)) == 2 and starts(log)[1] >= 8, starts(log)
    assert stats["workers_lost"] == 0 and stats["workers_started"] >= 2, stats
    print(f"\nSlurm preemption signal: 30 s checkpointing task, 2 jobs, {wall:.0f} s wall")
    assert not (left := _squeue("-n", name)), f"jobs of the session left in the queue: {left}"


@pytest.mark.slurm
@pytest.mark.timeout(400)
@pytest.mark.shared_dir
def test_slurm_partition_preemption_costs_no_attempt_and_the_task_resumes(tmp_path) -> None:
    """Slurm's own preemption, not a signal sent by hand: the test cluster's `urgent` partition
    (PriorityTier=10, PreemptType=preempt/partition_prio, PreemptMode=CANCEL) gets a job that
    needs the CPUs shoal's worker holds on its node. Slurm gives the worker's job its
    partition's GraceTime (30 s) and then SIGTERM (Slurm 22.05 signals a batch script only
    when the grace time ends, not when it starts); the worker gives its task back with a
    checkpoint, the urgent job runs, and the task resumes in a new job: no attempt charged,
    no step run twice."""
    parts = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout
    assert "urgent" in parts.split(), f"the test cluster has no preempting partition: {parts}"
    log = str(tmp_path / "ck")
    name = f"shoal-pp-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with shoal.Pool(1, backend="slurm", job_name=name, time="10m", max_attempts=1) as p:
        # long enough that the grace time (30 s) ends well inside it on a loaded machine
        fut = p.apply_async(Steps(), (90, 1.0, log))
        assert _wait_for(lambda: _steps(log) >= 6, 120), "the task did not start"
        (job,) = _squeue("-n", name, "-t", "R", "-o", "%i")
        (node,) = _squeue("-j", job, "-o", "%N")
        (cpus,) = subprocess.run(
            ["sinfo", "-h", "-n", node, "-o", "%c"], capture_output=True, text=True, check=True
        ).stdout.split()
        # All of the node's CPUs: only preempting shoal's job can start it.
        urgent = subprocess.run(
            ["sbatch", "--parsable", "-p", "urgent", "-w", node, "-c", cpus, "-J", f"{name}-u",
             "-o", "/dev/null", "--wrap", "sleep 3"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        preempted_at = _steps(log)
        assert fut.get(timeout=300) == 90
        stats = p._driver.stats()
        _wait_for(lambda: _job_state(job) != "COMPLETING", 60)
        first_state = _job_state(job)
        urgent_state = _job_state(urgent)
    wall = time.monotonic() - t0
    assert first_state == "PREEMPTED", first_state
    assert urgent_state == "COMPLETED", urgent_state
    assert steps_done(log) == list(range(90)), "no step ran twice, none was skipped"
    assert len(starts(log)) == 2 and starts(log)[1] >= preempted_at, (starts(log), preempted_at)
    assert stats["workers_lost"] == 0 and stats["workers_started"] >= 2, stats
    print(
        f"\nSlurm partition preemption: 90 s checkpointing task, resumed at step "
        f"{starts(log)[1]} in a new job, {wall:.0f} s wall"
    )
    assert not (left := _squeue("-n", name)), f"jobs of the session left in the queue: {left}"

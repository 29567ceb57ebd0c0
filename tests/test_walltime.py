"""Walltime (docs/checkpoints.md): a worker knows when its job ends, stops taking tasks it
cannot finish by then, and gives an interrupted task back; a task that alone outlives the
limit fails after max_attempts, naming the option to raise; a checkpointing task longer
than the limit completes in about its own work.

The local tests give the workers the limit through the same environment the job scripts
set (SHOAL_WALLTIME...); the Slurm and SGE ones run real jobs with `time=` / `h_rt=`."""

from __future__ import annotations

import time
import uuid

import pytest
from checkpoint_tasks import NoCheckpoint, Steps, sleep_for, starts, steps_done

import shoal
from shoal.errors import WorkerLostError

# The local workers over the work dir and over TCP (docs/transport-tcp.md): the same contract.
TRANSPORTS = pytest.mark.parametrize("transport", ["fs", "tcp"])


def limit(seconds: float, option: str) -> dict[str, str]:
    """The environment a job script exports for a job of `seconds` (the worker then stops
    max(3 s, 10 %) before it)."""
    return {"SHOAL_WALLTIME": str(seconds), "SHOAL_WALLTIME_OPTION": option}


@TRANSPORTS
def test_workers_stop_before_tasks_they_cannot_finish_and_are_replaced(transport: str) -> None:
    # A worker may run ~3 s: two or three 1-s tasks each, then it stops and another starts.
    env = limit(6, "time=6 (test)")
    with shoal.Pool(1, env=env, max_attempts=1, transport=transport) as p:
        assert p.map(sleep_for, [1.0] * 6, chunksize=6) == [1.0] * 6
        stats = p._driver.stats()
    assert stats["workers_started"] >= 2
    assert stats["workers_lost"] == 0


@TRANSPORTS
def test_a_task_longer_than_the_walltime_fails_naming_the_option(transport: str, tmp_path) -> None:
    log = str(tmp_path / "log")
    env = limit(6, "time=6 (test)")
    t0 = time.monotonic()
    with shoal.Pool(1, env=env, max_attempts=2, transport=transport) as p:
        with pytest.raises(WorkerLostError) as e:
            p.apply(NoCheckpoint(), (100, 0.1, log))
    assert time.monotonic() - t0 < 30, "not retried in a loop"
    text = str(e.value)
    assert "time limit" in text and "time=6" in text and "raise `time`" in text, text
    assert "2 times" in text, text
    assert starts(log) == [0, 0]


@TRANSPORTS
def test_a_checkpointing_task_outlives_many_walltimes(transport: str, tmp_path) -> None:
    log = str(tmp_path / "log")
    env = limit(6, "time=6 (test)")
    with shoal.Pool(1, env=env, max_attempts=1, transport=transport) as p:
        # 8 s of work; each worker has ~3 s.
        assert p.apply(Steps(), (40, 0.2, log)) == 40
    assert steps_done(log) == list(range(40)), "no step ran twice"
    assert len(starts(log)) >= 3


# ---------------------------------------------------------------------- real schedulers


def _name() -> str:
    return f"shoal-w-{uuid.uuid4().hex[:8]}"


def _figures(log: str, work: float, wall: float, what: str) -> None:
    done = len(steps_done(log))
    jobs = len(starts(log))
    print(f"\n{what}: {jobs} jobs, {done} steps of work ({work:.0f} s), {wall:.0f} s wall")


@pytest.mark.slurm
@pytest.mark.timeout(420)
@pytest.mark.shared_dir
def test_slurm_walltime(tmp_path) -> None:
    """time="1m": a 70-s task without a checkpoint fails after max_attempts naming `time`,
    a 130-s checkpointing task completes in its own work, and short tasks all finish."""
    log_long, log_ck = str(tmp_path / "long"), str(tmp_path / "ck")
    t0 = time.monotonic()
    with shoal.Pool(3, backend="slurm", job_name=_name(), time="1m", max_attempts=2) as p:
        long = p.apply_async(NoCheckpoint(), (70, 1.0, log_long))
        ck = p.apply_async(Steps(), (130, 1.0, log_ck))
        short = p.map_async(sleep_for, [20.0] * 6, chunksize=1)
        with pytest.raises(WorkerLostError) as e:
            long.get(timeout=400)
        assert ck.get(timeout=400) == 130
        assert short.get(timeout=400) == [20.0] * 6
    wall = time.monotonic() - t0
    text = str(e.value)
    assert "time=0-00:01:00 (Slurm)" in text and "raise `time`" in text, text
    assert starts(log_long) == [0, 0]
    assert steps_done(log_ck) == list(range(130))
    _figures(log_ck, 130, wall, "Slurm time=1m, 130 s checkpointing task")


@pytest.mark.sge
@pytest.mark.timeout(300)
def test_sge_h_rt(tmp_path) -> None:
    log_long, log_ck = str(tmp_path / "long"), str(tmp_path / "ck")
    t0 = time.monotonic()
    with shoal.Pool(2, backend="sge", job_name=_name(), h_rt="0:0:30", max_attempts=2) as p:
        long = p.apply_async(NoCheckpoint(), (40, 1.0, log_long))
        ck = p.apply_async(Steps(), (60, 1.0, log_ck))
        with pytest.raises(WorkerLostError) as e:
            long.get(timeout=280)
        assert ck.get(timeout=280) == 60
    wall = time.monotonic() - t0
    text = str(e.value)
    assert "h_rt=0:00:30 (SGE)" in text and "raise `h_rt`" in text, text
    assert steps_done(log_ck) == list(range(60))
    _figures(log_ck, 60, wall, "SGE h_rt=30s, 60 s checkpointing task")

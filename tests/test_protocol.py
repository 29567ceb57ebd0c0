"""The chunk protocol's promises (docs/protocol.md), checked end to end on the local backend
with real worker processes: every result delivered exactly once, no future left unresolved,
every failure explained — at the crash points and faults the contract names."""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from protocol_tasks import (
    LoadsBadly,
    count_run,
    die_after_first_result,
    identity,
    kill_worker_always,
    kill_worker_once,
    record_publishes,
    runs_of,
    square,
)

import shoal

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_or_kill(directory: str, marker: str, x: object) -> object:
    if x == "kill":
        return kill_worker_once(directory, x, marker)
    if x == "kill-always":
        return kill_worker_always()
    return count_run(directory, x, 0.3)


# ------------------------------------------------------------- 1. calls that cannot be loaded


def test_unloadable_call_fails_only_that_call_and_the_worker_goes_on() -> None:
    with shoal.Pool(1) as pool:
        before = pool.apply(os.getpid)
        rs = [
            pool.apply_async(square, (3,)),
            pool.apply_async(identity, (LoadsBadly(),)),
            pool.apply_async(square, (4,)),
        ]
        assert rs[0].get(timeout=30) == 9
        with pytest.raises(shoal.TaskError, match="cannot be loaded here") as err:
            rs[1].get(timeout=30)
        assert "identity" in str(err.value)
        assert rs[2].get(timeout=30) == 16
        assert pool.apply(os.getpid) == before, "the worker kept running"


def test_unloadable_submit_fails_only_its_future() -> None:
    with shoal.Executor(1) as ex:
        futs = [ex.submit(square, 2), ex.submit(identity, LoadsBadly()), ex.submit(square, 5)]
        assert futs[0].result(timeout=30) == 4
        assert isinstance(futs[1].exception(timeout=30), shoal.TaskError)
        assert futs[2].result(timeout=30) == 25


# ------------------------------------------------------------- 2. session ids


def test_session_ids_carry_64_random_bits() -> None:
    with shoal.Pool(1) as a, shoal.Pool(1) as b:
        ids = [a.session, b.session]
    for sid in ids:
        random_part = sid.rsplit("-", 1)[1]
        assert len(random_part) >= 16 and int(random_part, 16) >= 0, sid
    assert ids[0] != ids[1]


# ------------------------------------------------------------- 5. a full work dir


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI is root)")
def test_full_work_dir_fails_the_session_with_that_reason(tmp_path) -> None:
    wd = tmp_path / "small"
    wd.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(wd)], check=True)
    try:
        with pytest.raises(shoal.ShoalError) as err:
            with shoal.Pool(2, work_dir=str(wd)) as pool:
                assert pool.map(square, range(4)) == [0, 1, 4, 9]
                # Someone else fills the filesystem (a quota, another job): 64 KiB are left.
                free = os.statvfs(wd).f_bavail * os.statvfs(wd).f_frsize
                with open(wd / "filler", "wb") as f:
                    f.write(b"\0" * max(0, free - 65536))
                # Results bigger than what is left: the workers cannot publish them.
                pool.map(os.urandom, [400_000] * 4, chunksize=1)
        text = str(err.value)
        assert "No space left" in text or "full" in text, text
        assert str(wd) in text, text
        assert "in a row ended" not in text, text
    finally:
        subprocess.run(["umount", "-l", str(wd)], check=False)


# ------------------------------------------------------------- 6. clocks


def _skew_heartbeats(path: str, offset: float, stop: threading.Event) -> None:
    while not stop.is_set():
        now = time.time()
        for p in glob.glob(os.path.join(path, "workers", "*")):
            try:
                os.utime(p, (now + offset, now + offset))
            except OSError:
                pass
        time.sleep(0.02)


def test_worker_clock_ten_minutes_behind_kills_no_healthy_worker() -> None:
    stop = threading.Event()
    with shoal.Pool(2, heartbeat_timeout=2.0) as pool:
        path = pool._driver.path
        skew = threading.Thread(target=_skew_heartbeats, args=(path, -600.0, stop))
        skew.start()
        try:
            assert pool.map(time.sleep, [0.8] * 8, chunksize=1) == [None] * 8
            assert pool._driver.stats()["workers_lost"] == 0
        finally:
            stop.set()
            skew.join()


# ------------------------------------------------------------- 7. vanished files


def test_vanished_chunk_files_are_requeued_or_failed_never_a_hang(tmp_path) -> None:
    with shoal.Pool(1) as pool:
        path = pool._driver.path
        res = pool.map_async(time.sleep, [0.4] * 6, chunksize=1)
        time.sleep(0.6)
        # a tmp reaper removes every file that carries a chunk (not the records)
        for sub in ("pending", "claimed", "ran", "inbox", "chunks", "tickets"):
            for p in glob.glob(os.path.join(path, sub, "**"), recursive=True):
                if os.path.isfile(p):
                    os.unlink(p)
        try:
            assert res.get(timeout=40) == [None] * 6
        except shoal.ShoalError as err:
            assert "vanished" in str(err), err


# ------------------------------------------------------------- 9, 12. lost workers


def test_worker_dying_after_its_result_does_not_rerun_the_chunk(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    marker = str(tmp_path / "died")
    f = functools.partial(count_run, str(runs))
    with shoal.Pool(1, initializer=die_after_first_result, initargs=(marker,)) as pool:
        assert pool.map(f, range(4), chunksize=4) == list(range(4))
        assert pool.map(f, range(4, 8), chunksize=4) == list(range(4, 8))
    assert os.path.exists(marker)
    assert runs_of(str(runs)) == {str(i): 1 for i in range(8)}


def test_a_slow_task_that_ends_its_chunk_is_published_once_with_the_end(tmp_path) -> None:
    """A slow task's result is published at once, unless it ends the chunk: then it goes in
    the attempt's last part (one write per chunk, not two, on a network filesystem ~7 ms
    between two chunks). Earlier slow tasks of a chunk are still published one by one."""
    log = tmp_path / "parts"
    runs = tmp_path / "runs"
    runs.mkdir()
    f = functools.partial(count_run, str(runs), seconds=0.3)
    with shoal.Pool(1, initializer=record_publishes, initargs=(str(log),)) as pool:
        assert pool.map(f, range(3), chunksize=1) == list(range(3))
        assert pool.map(f, range(2), chunksize=2) == list(range(2))
    parts = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    counts = [(count, last) for _, count, last in parts]
    # Three chunks of one task, then one of two: the first published alone, the second last.
    assert counts == [(1, 1), (1, 1), (1, 1), (1, 0), (1, 1)], parts


def test_lost_worker_loses_only_the_task_it_was_running(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    f = functools.partial(_run_or_kill, str(runs), str(tmp_path / "killed"))
    with shoal.Pool(1) as pool:
        out = pool.map(f, [0, 1, 2, "kill", 4], chunksize=5)
    assert out == [0, 1, 2, "kill", 4]
    counts = runs_of(str(runs))
    assert {k: counts[k] for k in "0124"} == {"0": 1, "1": 1, "2": 1, "4": 1}, counts


def test_task_that_always_kills_its_worker_fails_alone_and_is_named(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    f = functools.partial(_run_or_kill, str(runs), str(tmp_path / "unused"))
    with shoal.Pool(1, max_attempts=2) as pool:
        it = pool.imap(f, [0, 1, "kill-always", 3], chunksize=4)
        assert next(it) == 0
        assert next(it) == 1
        with pytest.raises(shoal.WorkerLostError) as err:
            next(it)
        assert next(it) == 3
    assert "task 2" in str(err.value), err.value
    counts = runs_of(str(runs))
    assert counts == {"0": 1, "1": 1, "3": 1}, counts


# ------------------------------------------------------------- 10. callbacks


def test_a_raising_callback_does_not_starve_the_rest(caplog) -> None:
    def callback(value: int) -> None:
        if value == 9:
            raise RuntimeError("this callback broke")

    caplog.set_level(logging.ERROR)
    with shoal.Pool(2) as pool:
        rs = [pool.apply_async(square, (i,), callback=callback) for i in range(6)]
        assert [r.get(timeout=30) for r in rs] == [0, 1, 4, 9, 16, 25]
        assert pool.map(square, range(3)) == [0, 1, 4]
    assert "this callback broke" in caplog.text


def test_terminate_from_a_callback_ends_the_session(sessions_dir) -> None:
    pool = shoal.Pool(2)
    done = threading.Event()
    errors: list[BaseException] = []

    def callback(_: object) -> None:
        try:
            pool.terminate()
        except BaseException as exc:
            errors.append(exc)
        done.set()

    pool.apply_async(square, (2,), callback=callback)
    assert done.wait(30)
    assert not errors, errors
    deadline = time.monotonic() + 20
    meta_path = os.path.join(sessions_dir, pool.session, "session.json")
    while os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f)["state"] != "running":
                break
        assert time.monotonic() < deadline, "the session never ended"
        time.sleep(0.05)


# ------------------------------------------------------------- 11. orphans


def test_a_worker_started_after_its_driver_died_exits_by_itself(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import shoal, sys, time
        pool = shoal.Pool(1)
        print(pool._driver.path, flush=True)
        time.sleep(60)
        """
    )
    env = dict(os.environ, PYTHONPATH=HERE)
    driver = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    path = driver.stdout.readline().strip()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    late = subprocess.Popen(
        [sys.executable, "-m", "shoal.worker", path, "--worker-id", "late"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        late.wait(timeout=20)
    except subprocess.TimeoutExpired:
        late.kill()
        pytest.fail("a worker whose driver is gone kept waiting for work")


# ------------------------------------------------------------- signals (issue 14)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_the_session_and_its_workers(sig, sessions_dir) -> None:
    script = textwrap.dedent(
        """
        import shoal, time
        pool = shoal.Pool(2)
        print(pool.session, pool._driver.path, flush=True)
        pool.map(time.sleep, [30] * 4)
        """
    )
    env = dict(os.environ, PYTHONPATH=HERE)
    driver = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    session, path = driver.stdout.readline().split()
    from procs import live_worker_pids

    deadline = time.monotonic() + 30
    while len(live_worker_pids(path)) < 2:
        assert time.monotonic() < deadline, "workers never started"
        time.sleep(0.05)
    workers = live_worker_pids(path)
    t = time.monotonic()
    driver.send_signal(sig)
    driver.wait(timeout=10)
    assert time.monotonic() - t < 5, "the session did not end within 5 s"
    assert driver.returncode == -sig, driver.returncode
    # Nothing failed, so the work dir is gone; the session's record is in the history.
    assert not os.path.exists(path)
    shown = subprocess.run(["shoal", "show", session, "--json"], capture_output=True, text=True)
    meta = json.loads(shown.stdout)
    assert meta["state"] == "interrupted", meta
    assert signal.Signals(sig).name in meta["message"], meta
    deadline = time.monotonic() + 5
    while any(
        os.path.exists(f"/proc/{p}")
        and open(f"/proc/{p}/stat").read().split(")")[1].split()[0] != "Z"
        for p in workers
    ):
        assert time.monotonic() < deadline, "workers outlived their driver"
        time.sleep(0.05)


def test_a_lazily_loaded_chunk_left_early_closes_cleanly() -> None:
    # A chunk given back mid-way (preemption, walltime) drops its call generator; the
    # generator caught the GeneratorExit with its load guard and yielded again
    # ("RuntimeError: generator ignored GeneratorExit" on the worker's stderr).
    from shoal.worker import _LazyCalls

    calls = iter(_LazyCalls([("a", pickle.dumps(1)), ("b", pickle.dumps(2))]))
    assert next(calls) == 1
    calls.close()


def test_shoal_inside_forked_pool_workers_does_not_stop_pool_terminate() -> None:
    # joblib's test_nested_loop[multiprocessing-local] hung ~1 run in 4: each fork-pool worker
    # ran a shoal session, which left shoal's Python SIGTERM handler installed after it ended.
    # Pool.terminate() SIGTERMs the workers; a signal that lands on another thread of a worker
    # whose main thread waits in C for its next task never runs that handler, so the worker
    # lived on and terminate() joined it forever. A process without sessions has SIG_DFL.
    script = textwrap.dedent(
        """
        import multiprocessing, signal, shoal
        def square(x): return x * x
        def nested(_):
            with shoal.Pool(1) as pool:
                pool.map(square, range(2))
            return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ctx = multiprocessing.get_context("fork")
        for _ in range(12):
            pool = ctx.Pool(2)
            assert pool.map(nested, range(2)) == [True, True]
            pool.terminate()
        print("done")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done", out.stdout


def test_a_forked_multiprocessing_pool_after_shoal_terminates_cleanly() -> None:
    # Its workers inherit the driver's SIGTERM handler and session list across fork; when the
    # pool terminates them with SIGTERM they must just die, not try to shut down a copy of our
    # engine (its thread does not exist in the child: a panic, or a join that never returns).
    script = textwrap.dedent(
        """
        import json, multiprocessing, os, shoal
        def square(x): return x * x
        with shoal.Pool(1) as pool:
            pool.map(square, range(3))
            with multiprocessing.get_context("fork").Pool(2) as mp:
                mp.map(square, range(4))
            with open(os.path.join(pool._driver.path, "session.json")) as f:
                print(json.load(f)["state"], pool.map(square, range(3)))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "running [0, 1, 4]", out.stdout
    assert "Traceback" not in out.stderr and "panicked" not in out.stderr, out.stderr

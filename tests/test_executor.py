"""shoal.Executor on the local backend: a real concurrent.futures.Executor."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

import pytest

import shoal
from helpers import (
    fail_on,
    make_box,
    returns_exits_when_pickled,
    returns_unpicklable,
    sleep_return,
    square,
    write_after,
)


def test_submit_as_completed_and_wait():
    with shoal.Executor(max_workers=2) as ex:
        futs = [ex.submit(square, i) for i in range(100)]
        assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == sorted(
            i * i for i in range(100)
        )
        done, not_done = cf.wait(futs, timeout=10)
        assert len(done) == 100 and not not_done
        assert isinstance(ex, cf.Executor) and all(isinstance(f, cf.Future) for f in futs)


def test_submit_kwargs_and_exception():
    with shoal.Executor(max_workers=2) as ex:
        assert ex.submit(pow, 2, exp=10).result(10) == 1024
        fut = ex.submit(fail_on, 3)
        with pytest.raises(ValueError, match="bad value 3"):
            fut.result(10)
        assert isinstance(fut.exception(), ValueError)
        # The standard library's own class, as ProcessPoolExecutor attaches it.
        assert type(fut.exception().__cause__) is _RemoteTraceback


def test_map_in_order_with_chunksize_and_many_iterables():
    with shoal.Executor(max_workers=2) as ex:
        assert list(ex.map(square, range(20))) == [i * i for i in range(20)]
        assert list(ex.map(pow, [2, 3], [3, 2], chunksize=1)) == [8, 9]
        with pytest.raises(ValueError):
            list(ex.map(square, range(3), chunksize=0))


def test_map_timeout():
    with shoal.Executor(max_workers=1) as ex:
        it = ex.map(sleep_return, [0.0, 10.0], timeout=5, chunksize=1)
        assert next(it) == 0.0
        with pytest.raises(cf.TimeoutError):
            next(it)


def test_map_raises_at_failing_item():
    with shoal.Executor(max_workers=2) as ex:
        it = ex.map(fail_on, range(6))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad value 3"):
            next(it)


def test_shutdown_semantics():
    ex = shoal.Executor(max_workers=1)
    slow = ex.submit(sleep_return, 0.5)
    deadline = time.monotonic() + 20
    while not slow.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slow.running()
    assert not slow.cancel()  # like the standard library: a running call cannot be cancelled
    queued = [ex.submit(sleep_return, 0.2) for _ in range(4)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert slow.result(0) == 0.5
    # As ProcessPoolExecutor's call queue does, a call per worker and one more are kept.
    assert [f.cancelled() for f in queued] == [False, False, True, True]
    assert [f.result(0) for f in queued[:2]] == [0.2, 0.2]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_invalid_max_workers():
    with pytest.raises(ValueError, match="max_workers"):
        shoal.Executor(max_workers=0)


def test_exception_in_with_block_stops_workers(sessions_dir):
    with pytest.raises(RuntimeError, match="driver failed"):
        with shoal.Executor(max_workers=2) as ex:
            futs = [ex.submit(sleep_return, 30) for _ in range(2)]
            time.sleep(0.3)
            session = ex.session
            raise RuntimeError("driver failed")
    assert all(f.cancelled() or f.done() for f in futs)
    from procs import live_worker_pids

    assert live_worker_pids(os.path.join(sessions_dir, session)) == []


def _run_script(tmp_path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )


def test_pending_work_is_finished_at_interpreter_exit(tmp_path):
    out = tmp_path / "out"
    res = _run_script(
        tmp_path,
        f"""
        import shoal
        from helpers import write_after
        ex = shoal.Executor(2)
        ex.submit(write_after, {str(out)!r}, 0.5)
        """,
    )
    assert res.returncode == 0 and res.stderr == ""
    assert out.read_text() == "done"


def test_submit_after_interpreter_shutdown_raises(tmp_path):
    res = _run_script(
        tmp_path,
        """
        import atexit
        @atexit.register
        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError as e:
                print("refused:", e)
        import shoal
        ex = shoal.Executor(1)
        ex.submit(id, 42).result()
        """,
    )
    assert res.returncode == 0, res.stderr
    assert "refused: cannot schedule new futures after interpreter shutdown" in res.stdout


def test_garbage_collected_executor_shuts_down(tmp_path, sessions_dir):
    import gc

    out = tmp_path / "out"
    ex = shoal.Executor(1)
    session = os.path.join(sessions_dir, ex.session)
    fut = ex.submit(write_after, str(out), 0.3)
    del ex
    gc.collect()
    assert fut.result(30) == str(out)  # what it was given still runs
    deadline = time.monotonic() + 30
    config = os.path.join(session, "config.json")
    while os.path.exists(config) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Ended as finished: only its logs are kept (for `shoal logs`), its workers are gone.
    assert sorted(os.listdir(session)) == ["calls", "index", "journal", "logs", "session.json"]


def test_failing_initializer_breaks_the_executor():
    def bad_init():
        raise ValueError("error in initializer")

    ex = shoal.Executor(2, initializer=bad_init)
    fut = ex.submit(square, 2)
    with pytest.raises(cf.BrokenExecutor, match="error in initializer") as info:
        fut.result(60)
    assert isinstance(info.value, BrokenProcessPool) and isinstance(info.value, shoal.SessionError)
    assert ex._broken
    with pytest.raises(cf.BrokenExecutor):
        ex.submit(square, 3)
    ex.shutdown()


def test_unpicklable_argument_fails_its_future():
    import threading

    with shoal.Executor(1) as ex:
        fut = ex.submit(square, threading.Lock())  # does not raise here
        with pytest.raises(TypeError, match=r"argument 0 of 'square' \(a lock\)") as info:
            fut.result(10)
        assert isinstance(info.value, shoal.PicklingError)
        assert ex.submit(square, 3).result(10) == 9


def test_unpicklable_result_carries_the_original_exception():
    with shoal.Executor(1) as ex:
        fut = ex.submit(returns_unpicklable)
        with pytest.raises(TypeError, match="refuses to be pickled") as info:
            fut.result(30)
        assert type(info.value.__cause__) is _RemoteTraceback


def test_system_exit_while_pickling_a_result_keeps_worker_and_runs_once(tmp_path):
    counter = tmp_path / "runs"
    with shoal.Executor(1) as ex:
        fut = ex.submit(returns_exits_when_pickled, str(counter))
        with pytest.raises(SystemExit):
            fut.result(30)
        worker = ex.submit(os.getpid).result(30)
    runs = counter.read_text().split()
    assert runs == [str(worker)]  # one run, and that worker went on


def test_map_does_not_keep_the_last_result_alive():
    import gc
    import weakref

    with shoal.Executor(2) as ex:
        for obj in ex.map(make_box, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


def test_cancel_futures_right_after_submitting_keeps_what_workers_take():
    ex = shoal.Executor(2)
    futs = [ex.submit(sleep_return, 0.05) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    kept = [f for f in futs if not f.cancelled()]
    # At least a call per worker and one more, as ProcessPoolExecutor's call queue keeps.
    assert len(kept) >= 3 and len(futs) - len(kept) > 20
    assert all(f.done() and f.exception() is None for f in kept)

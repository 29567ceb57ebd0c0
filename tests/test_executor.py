"""shoal.Executor on the local backend: a real concurrent.futures.Executor."""

from __future__ import annotations

import concurrent.futures as cf
import time
from concurrent.futures.process import _RemoteTraceback

import pytest

import shoal
from helpers import fail_on, sleep_return, square


def test_submit_as_completed_and_wait():
    with shoal.Executor(max_workers=2) as ex:
        futs = [ex.submit(square, i) for i in range(100)]
        assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == sorted(
            i * i for i in range(100)
        )
        done, not_done = cf.wait(futs, timeout=10)
        assert len(done) == 100 and not not_done
        assert isinstance(ex, cf.Executor)


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
    import os

    with pytest.raises(RuntimeError, match="driver failed"):
        with shoal.Executor(max_workers=2) as ex:
            futs = [ex.submit(sleep_return, 30) for _ in range(2)]
            time.sleep(0.3)
            session = ex.session
            raise RuntimeError("driver failed")
    assert all(f.cancelled() or f.done() for f in futs)
    from procs import live_worker_pids

    assert live_worker_pids(os.path.join(sessions_dir, session)) == []

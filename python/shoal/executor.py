"""``shoal.Executor``: a concurrent.futures.Executor on any shoal backend.

Its futures are plain ``concurrent.futures.Future`` objects, so ``as_completed`` and ``wait``
work unchanged. Leaving a ``with`` block by an exception (Ctrl-C included) cancels what has not
run and stops every worker at once instead of waiting for the queue to drain.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from shoal._batch import Batcher
from shoal._driver import Driver, split_options

__all__ = ["Executor"]

T = TypeVar("T")


class _FutureJob:
    """Routes task results of a chunk to individual futures."""

    def __init__(self, futures: list[cf.Future]) -> None:
        self.futures = futures

    def _started(self, start: int, count: int) -> None:
        for fut in self.futures[start : start + count]:
            if not fut.done() and not fut.running():
                fut.set_running_or_notify_cancel()

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        for k, value in enumerate(values):
            fut = self.futures[start + k]
            if fut.done():
                continue
            if not fut.running() and not fut.set_running_or_notify_cancel():
                continue
            if k in errors:
                fut.set_exception(errors[k])
            else:
                fut.set_result(value)

    def _abort(self, exc: BaseException) -> None:
        n = len(self.futures)
        self._deliver_many(0, [None] * n, dict.fromkeys(range(n), exc))


class Executor(cf.Executor):
    """Run calls asynchronously on workers of a shoal backend.

    ``max_workers`` is the number of workers (default: CPUs for the local backend). Other
    keywords as for :class:`shoal.Pool`; backend options pass through as keywords.
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        *,
        backend: str = "local",
        initializer: Optional[Callable[..., object]] = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: Optional[int] = None,
        progress: bool = False,
        python_path: Optional[str] = None,
        work_dir: Optional[str] = None,
        keep_work_dir: bool = False,
        **backend_options: Any,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._driver = Driver(
            backend=backend,
            workers=max_workers,
            python_path=python_path,
            work_dir=work_dir,
            progress=progress,
            initializer=initializer,
            initargs=initargs,
            maxtasksperchild=max_tasks_per_child,
            keep_work_dir=keep_work_dir,
            **split_options(backend_options),
        )
        self._max_workers = self._driver.workers
        self._batcher = Batcher(self._driver)
        self._lock = threading.Lock()
        self._pending: set[cf.Future] = set()
        self._shutdown = False
        self._failed = False

    @property
    def session(self) -> str:
        """The session id, for ``shoal sessions`` / ``shoal logs``."""
        return self._driver.id

    def _track(self, fut: cf.Future) -> None:
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: cf.Future) -> None:
        with self._lock:
            self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._failed = True

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        broken = self._driver.broken
        if broken is not None:
            raise cf.BrokenExecutor(f"the executor's session failed: {broken}")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        with self._lock:
            self._check_open()
        blob = self._driver.pickle_call(fn, args, kwargs)
        fut: cf.Future[T] = cf.Future()
        self._track(fut)
        self._batcher.add(_FutureJob([fut]), 0, blob)
        return fut

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = None,
        buffersize: Optional[int] = None,
    ) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``; calls travel in chunks (default: sized
        to give each worker about four), and ``timeout`` counts from this call."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
        items = list(zip(*iterables))
        if chunksize is None:
            chunksize = self._driver.default_chunksize(len(items))
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        driver = self._driver
        futures: list[cf.Future] = [cf.Future() for _ in items]
        if items:
            job = _FutureJob(list(futures))
            for f in futures:
                self._track(f)
            driver.map_chunks(fn, items, chunksize, True, job)

        def results() -> Iterator[T]:
            try:
                futures.reverse()
                while futures:
                    fut = futures.pop()
                    if end is None:
                        yield fut.result()
                    else:
                        yield fut.result(end - time.monotonic())
            finally:
                for fut in futures:
                    fut.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        self._batcher.close()
        if cancel_futures:
            for fut in pending:
                fut.cancel()
            self._driver.withdraw_where(
                lambda job, start, count: (
                    isinstance(job, _FutureJob)
                    and all(f.cancelled() for f in job.futures[start : start + count])
                )
            )
        if wait:
            self._wait_and_close()
        else:
            threading.Thread(
                target=self._wait_and_close, name="shoal-executor-shutdown", daemon=True
            ).start()

    def _wait_and_close(self) -> None:
        while True:
            with self._lock:
                pending = [f for f in self._pending if not f.cancelled()]
            if not pending or self._driver.broken is not None:
                break
            cf.wait(pending, timeout=0.5)
        self._driver.close(graceful=True, failed=self._failed)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Optional[bool]:
        if exc_type is None:
            self.shutdown(wait=True)
            return None
        # An exception or Ctrl-C in the driver: stop everything now, keep the work dir.
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()
        self._batcher.close()
        self._driver.close(graceful=False, failed=True)
        return None

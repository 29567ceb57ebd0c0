"""``shoal.Executor``: a concurrent.futures.Executor on any shoal backend.

Its futures are ``concurrent.futures.Future`` objects (whose ``result()`` Ctrl-C can always
end, see ``_waiting``), so ``as_completed`` and ``wait`` work unchanged, and it behaves as
``ProcessPoolExecutor`` does where a program can tell: work pending at interpreter exit is
finished, a dropped executor shuts down, a broken session gives ``BrokenProcessPool``, a
worker's exception re-raises with the remote traceback as ``__cause__``. Leaving a ``with``
block by an exception (Ctrl-C included) cancels what has not run and stops every worker at
once instead of waiting for the queue to drain.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as _CFRemoteTraceback
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from shoal._batch import Batcher
from shoal._driver import Driver, split_options
from shoal._pickling import worker_start
from shoal._waiting import Future
from shoal.errors import ResultPicklingError, SessionError, TaskLoadError, WorkerLostError

__all__ = ["BrokenExecutor", "Executor"]

T = TypeVar("T")
_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_exiting = False


class BrokenExecutor(SessionError, BrokenProcessPool):
    """The executor's session failed (its initializer failed, it was cancelled, workers could
    not start): a ``SessionError`` that is also the standard library's ``BrokenProcessPool``."""


class _LostWorker(WorkerLostError, BrokenProcessPool):
    """A ``WorkerLostError`` that ``except BrokenProcessPool`` catches too, as a worker that
    dies does in a ProcessPoolExecutor (shoal retries the task first, and only it fails)."""


class _UnloadableCall(TaskLoadError, BrokenProcessPool):
    """A ``TaskLoadError`` that ``except BrokenProcessPool`` catches too, as a task that
    cannot be unpickled in a worker does in a ProcessPoolExecutor (here only that call fails;
    the executor and its other calls go on)."""


def _as_executor_error(exc: BaseException) -> BaseException:
    if isinstance(exc, ResultPicklingError) and exc.original is not None:
        # The pickler's own exception, as ProcessPoolExecutor reports it.
        original = exc.original
        original.__cause__ = exc.__cause__
        return original
    if type(exc) is WorkerLostError:
        lost = _LostWorker(*exc.args)
        lost.__cause__ = exc.__cause__
        return lost
    if type(exc) is TaskLoadError:
        unloadable = _UnloadableCall(*exc.args)
        unloadable.__cause__ = exc.__cause__
        return unloadable
    return exc


class _FutureJob:
    """Routes task results of a chunk to individual futures; a future is let go once it is
    resolved, so nothing here keeps a result alive."""

    _remote_traceback = _CFRemoteTraceback

    def __init__(self, futures: list[cf.Future[Any]]) -> None:
        self.futures: list[Optional[cf.Future[Any]]] = list(futures)

    def _started(self, start: int, count: int) -> None:
        for fut in self.futures[start : start + count]:
            if fut is not None and not fut.done() and not fut.running():
                fut.set_running_or_notify_cancel()

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        for k, value in enumerate(values):
            fut = self.futures[start + k]
            self.futures[start + k] = None
            if fut is None or fut.done():
                continue
            if not fut.running() and not fut.set_running_or_notify_cancel():
                continue
            if k in errors:
                fut.set_exception(_as_executor_error(errors[k]))
            else:
                fut.set_result(value)

    def _abort(self, exc: BaseException) -> None:
        broken = BrokenExecutor(f"the executor's session failed: {exc}")
        broken.__cause__ = exc
        n = len(self.futures)
        self._deliver_many(0, [None] * n, dict.fromkeys(range(n), broken))


class _Pending:
    """The executor's unresolved futures, in submission order. Futures call back into this,
    not into the executor, so that dropping the executor shuts it down."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.futures: dict[cf.Future[Any], None] = {}

    def add(self, fut: cf.Future[Any]) -> None:
        with self.lock:
            self.futures[fut] = None
        fut.add_done_callback(self.done)

    def done(self, fut: cf.Future[Any]) -> None:
        with self.lock:
            self.futures.pop(fut, None)

    def snapshot(self) -> list[cf.Future[Any]]:
        with self.lock:
            return list(self.futures)


def _drain_and_close(driver: Driver, pending: _Pending) -> None:
    """Wait for every future that was not cancelled, then stop the workers gracefully."""
    while True:
        waiting = [f for f in pending.snapshot() if not f.cancelled()]
        if not waiting or driver.broken is not None:
            break
        cf.wait(waiting, timeout=0.5)
    driver.close(graceful=True)


class Executor(cf.Executor):
    """Run calls asynchronously on workers of a shoal backend.

    The arguments of ``ProcessPoolExecutor`` (``mp_context`` is accepted and ignored: shoal
    workers are always fresh interpreters); ``max_workers`` is the number of workers (default:
    CPUs for the local backend). Other keywords as for :class:`shoal.Pool`; backend options
    pass through as keywords.
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Any = None,
        initializer: Optional[Callable[..., object]] = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: Optional[int] = None,
        backend: str = "local",
        progress: bool = False,
        python_path: Optional[str] = None,
        work_dir: Optional[str] = None,
        keep_work_dir: bool = False,
        **backend_options: Any,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        initializer, initargs = worker_start(initializer, initargs, local=backend == "local")
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
        self._pending = _Pending()
        self._shutdown = False
        # A dropped executor finishes what it was given, then stops its workers.
        weakref.finalize(self, _finalize, self._driver, self._batcher, self._pending)
        _executors.add(self)

    @property
    def session(self) -> str:
        """The session id, for ``shoal sessions`` / ``shoal logs``."""
        return self._driver.id

    @property
    def _broken(self) -> Any:
        # ProcessPoolExecutor's attribute: false, or why the executor cannot take work.
        broken = self._driver.broken
        return False if broken is None else str(broken)

    def _check_open(self) -> None:
        broken = self._driver.broken
        if broken is not None:
            raise BrokenExecutor(f"the executor's session failed: {broken}")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        return self._submit(fn, args, kwargs, 0)

    def with_resources(self, **resources: Any) -> Resources:
        """A view of this executor whose ``submit`` and ``map`` run on workers with these
        per-call resources (``ex.with_resources(cpus=4).submit(f, x)``, docs/resources.md).
        The resources are checked now, before anything is submitted. A view rather than a
        keyword of ``submit``, whose keywords are all the user's function's."""
        with self._lock:
            self._check_open()
        return Resources(self, self._driver.shape(resources))

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], shape: int
    ) -> cf.Future[T]:
        with self._lock:
            self._check_open()
        fut: cf.Future[T] = Future()
        self._pending.add(fut)
        try:
            blob = self._driver.pickle_call(fn, args, kwargs)
        except Exception as exc:  # as in ProcessPoolExecutor, the future carries the error
            fut.set_running_or_notify_cancel()
            fut.set_exception(exc)
            return fut
        self._batcher.add(_FutureJob([fut]), 0, blob, shape)
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
        return self._map(fn, iterables, timeout, chunksize, 0)

    def _map(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        timeout: Optional[float],
        chunksize: Optional[int],
        shape: int,
    ) -> Iterator[T]:
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
        items = list(zip(*iterables))
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        driver = self._driver
        futures: list[cf.Future[Any]] = [Future() for _ in items]
        if items:
            job = _FutureJob(futures)
            for f in futures:
                self._pending.add(f)
            # Pickled and sent chunk by chunk: no second copy of the input is made.
            driver.map_chunks(fn, items, chunksize, True, job, shape)
        return _results(futures, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        self._batcher.close()
        if cancel_futures:
            self._cancel_queued()
        if wait:
            _drain_and_close(self._driver, self._pending)
        else:
            threading.Thread(
                target=_drain_and_close,
                args=(self._driver, self._pending),
                name="shoal-executor-shutdown",
                daemon=True,
            ).start()

    def _cancel_queued(self) -> None:
        """Cancel what no worker could have started yet. As in ProcessPoolExecutor, whose
        call queue holds a call per worker and one more, the oldest of those are kept:
        warm workers are about to run them."""
        waiting = [f for f in self._pending.snapshot() if not f.running() and not f.done()]
        for fut in waiting[self._max_workers + 1 :]:
            fut.cancel()
        self._driver.withdraw_where(
            lambda job, start, count: (
                isinstance(job, _FutureJob)
                and all(f is None or f.cancelled() for f in job.futures[start : start + count])
            )
        )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Optional[bool]:
        if exc_type is None:
            self.shutdown(wait=True)
            return None
        # An exception or Ctrl-C in the driver: stop everything now; the session ended as
        # interrupted (failed, and kept, only if a task failed).
        with self._lock:
            self._shutdown = True
        for fut in self._pending.snapshot():
            fut.cancel()
        self._batcher.close()
        self._driver.close(graceful=False, interrupted=True)
        return None


class Resources:
    """An executor's ``submit`` and ``map`` for workers of one shape (``with_resources``)."""

    def __init__(self, executor: Executor, shape: int) -> None:
        self._executor = executor
        self._shape = shape

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> cf.Future[T]:
        return self._executor._submit(fn, args, kwargs, self._shape)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = None,
    ) -> Iterator[T]:
        return self._executor._map(fn, iterables, timeout, chunksize, self._shape)


def _results(futures: list[cf.Future[Any]], end: Optional[float]) -> Iterator[Any]:
    """Yield results in order; a yielded result is held by no one here (nor its future)."""
    try:
        futures.reverse()
        while futures:
            if end is None:
                yield futures.pop().result()
            else:
                yield futures.pop().result(end - time.monotonic())
    finally:
        for fut in futures:
            fut.cancel()


def _finalize(driver: Driver, batcher: Batcher, pending: _Pending) -> None:
    if driver._closed:
        return
    try:
        batcher.close()
    except Exception:
        pass
    threading.Thread(
        target=_drain_and_close, args=(driver, pending), name="shoal-executor-gc", daemon=True
    ).start()


def _python_exit() -> None:
    """At interpreter exit, as ProcessPoolExecutor does: refuse new work and finish what every
    live executor was given (before atexit handlers stop what is left). Unless the program
    ends on Ctrl-C: then the atexit handler ends every session as interrupted at once, as
    Ctrl-C ends a ProcessPoolExecutor's local workers (its process group gets the SIGINT),
    where waiting would keep a cluster's jobs running to the end of their tasks."""
    global _exiting
    _exiting = True
    if _ends_on_ctrl_c():
        return
    for ex in list(_executors):
        if not ex._driver._closed:
            ex.shutdown(wait=True)


def _ends_on_ctrl_c() -> bool:
    # The interpreter sets sys.last_value as it prints the exception that ends a script; an
    # interactive session keeps it from any earlier prompt, so only a script counts.
    interactive = sys.flags.interactive or hasattr(sys, "ps1")
    return not interactive and isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)


# Runs when the main thread ends, before atexit handlers (ProcessPoolExecutor uses it too).
getattr(threading, "_register_atexit", __import__("atexit").register)(_python_exit)

"""``shoal.Pool``: the multiprocessing.Pool API on any shoal backend.

Semantics follow the standard library (states, errors, chunking rule, AsyncResult), with
three differences that only remove failure modes: a task's exception fails that task alone
(not its whole chunk), a task that kills its worker is retried and then reported instead of
hanging the pool, and the tasks' function may be a lambda or defined in ``__main__``.
"""

from __future__ import annotations

import collections
import multiprocessing
import threading
import warnings
import weakref
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Optional, TypeVar, cast

from shoal._batch import Batcher
from shoal._driver import Driver, split_options
from shoal._pickling import worker_start
from shoal._waiting import deadline, remaining, wait_event
from shoal.errors import ResultPicklingError

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "IMapIterator",
    "MapResult",
    "Pool",
    "UnpicklableResultError",
]

T = TypeVar("T")
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
TimeoutError = multiprocessing.TimeoutError


class UnpicklableResultError(ResultPicklingError, MaybeEncodingError):
    """A task's result could not be pickled: multiprocessing's MaybeEncodingError (``exc`` and
    ``value`` are reprs) that is also a ``shoal.PicklingError`` carrying ``original``."""


def _pool_errors(errors: dict[int, BaseException]) -> dict[int, BaseException]:
    """A result that could not travel is reported as multiprocessing reports it."""
    for k, exc in errors.items():
        if type(exc) is ResultPicklingError:
            err = UnpicklableResultError(exc.original, None)
            err.exc, err.value, err.value_type = exc.exc, exc.value, exc.value_type
            err.args, err.__cause__ = exc.args, exc.__cause__
            errors[k] = err
    return errors


class ApplyResult(Generic[T]):
    """The result of ``apply_async``: ready/successful/wait/get as in multiprocessing."""

    def __init__(
        self,
        pool: Pool,
        callback: Optional[Callable[[Any], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
    ) -> None:
        self._pool = pool
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        pool._register(self)

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        wait_event(self._event, timeout)

    def get(self, timeout: Optional[float] = None) -> T:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return cast(T, self._value)
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._success, self._value = ok, value
        try:
            if ok and self._callback is not None:
                self._callback(value)
            elif not ok and self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._event.set()
            self._pool._unregister(self)

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        if errors:
            self._set(False, _pool_errors(errors)[min(errors)])
        else:
            self._set(True, values[0])

    def _abort(self, exc: BaseException) -> None:
        self._set(False, exc)

    def _started(self, start: int, count: int) -> None:
        pass


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[Any]]):
    """The result of ``map_async``/``starmap_async``; ready at the first error, as in
    multiprocessing."""

    def __init__(self, pool: Pool, length: int, callback: Any, error_callback: Any) -> None:
        super().__init__(pool, callback, error_callback)
        self._values: list[Any] = [None] * length
        self._remaining = length
        if length == 0:
            self._set(True, [])

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        if errors:
            self._set(False, _pool_errors(errors)[min(errors)])
            return
        with self._lock:
            self._values[start : start + len(values)] = values
            self._remaining -= len(values)
            finished = self._remaining == 0
        if finished:
            self._set(True, self._values)


class _IMapResults(Generic[T]):
    """The results of an ``imap`` as they arrive (what its chunks deliver to), in order."""

    def __init__(self, pool: Pool) -> None:
        self.abandoned = False
        self._pool = pool
        self._cond = threading.Condition()
        self._items: dict[int, tuple[bool, Any]] = {}
        self._index = 0
        self._length: Optional[int] = None
        pool._register(self)

    def next(self, timeout: Optional[float] = None) -> T:
        end = deadline(timeout)
        with self._cond:
            while True:
                item = self._pop()
                if item is not None:
                    break
                if self._length is not None and self._index >= self._length:
                    self._pool._unregister(self)
                    raise StopIteration
                left = remaining(end)
                if left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
        ok, value = item
        if ok:
            return cast(T, value)
        raise value

    def _pop(self) -> Optional[tuple[bool, Any]]:
        item = self._items.pop(self._index, None)
        if item is not None:
            self._index += 1
        return item

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        _pool_errors(errors)
        with self._cond:
            for k, value in enumerate(values):
                self._put(start + k, (False, errors[k]) if k in errors else (True, value))
            self._cond.notify_all()
            self._maybe_done()

    def _put(self, index: int, item: tuple[bool, Any]) -> None:
        self._items[index] = item

    def _abort(self, exc: BaseException) -> None:
        with self._cond:
            limit = self._length if self._length is not None else self._index + len(self._items) + 1
            for i in range(self._index, limit):
                self._items.setdefault(i, (False, exc))
            if self._length is None:
                self._length = limit
            self._cond.notify_all()
            self._maybe_done()

    def _started(self, start: int, count: int) -> None:
        pass

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()
            self._maybe_done()

    def _delivered(self) -> int:
        return self._index + len(self._items)

    def finished(self) -> bool:
        return self._length is not None and self._delivered() >= self._length

    def _maybe_done(self) -> None:
        if self.finished():
            self._pool._unregister(self)


class _IMapUnorderedResults(_IMapResults[T]):
    """The results of an ``imap_unordered``, in completion order."""

    def __init__(self, pool: Pool) -> None:
        self._queue: collections.deque[tuple[bool, Any]] = collections.deque()
        self._count = 0
        super().__init__(pool)

    def _pop(self) -> Optional[tuple[bool, Any]]:
        if self._queue:
            self._index += 1
            return self._queue.popleft()
        return None

    def _put(self, index: int, item: tuple[bool, Any]) -> None:
        self._queue.append(item)
        self._count += 1

    def _abort(self, exc: BaseException) -> None:
        with self._cond:
            missing = (self._length or self._count + 1) - self._count
            for _ in range(max(1, missing)):
                self._queue.append((False, exc))
                self._count += 1
            if self._length is None:
                self._length = self._count
            self._cond.notify_all()
            self._maybe_done()

    def _delivered(self) -> int:
        return self._count


class IMapIterator(Generic[T]):
    """What ``imap`` returns: its results in order; ``next(timeout)`` raises
    multiprocessing.TimeoutError. Dropping it before the end (a ``break`` out of the loop)
    withdraws the work no worker has started and stops reading the input."""

    def __init__(self, pool: Pool, results: _IMapResults[T]) -> None:
        self._results = results
        weakref.finalize(self, pool._abandon, results).atexit = False

    def __iter__(self) -> Iterator[T]:
        return self

    def next(self, timeout: Optional[float] = None) -> T:
        return self._results.next(timeout)

    __next__ = next


class IMapUnorderedIterator(IMapIterator[T]):
    """What ``imap_unordered`` returns: its results in completion order."""


class Pool:
    """A pool of workers on a shoal backend, with the whole multiprocessing.Pool API.

    ``processes`` is the number of workers (default: CPUs for the local backend).
    Beyond multiprocessing's arguments: ``backend`` ("local", "slurm", "htcondor", "sge"),
    ``progress`` (a progress bar with rate and ETA), ``python_path`` (the workers'
    interpreter), ``work_dir`` (where session dirs go; must be shared with cluster nodes),
    ``keep_work_dir``, and the backend's own options as keyword arguments.

    Every map, imap and apply also takes ``resources={...}``: the backend's per-call
    resources (Slurm ``cpus``/``memory``/``gpus``..., docs/resources.md) for its tasks only;
    they run on workers of that shape, started while such work waits.
    """

    def __init__(
        self,
        processes: Optional[int] = None,
        initializer: Optional[Callable[..., object]] = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: Optional[int] = None,
        context: Any = None,
        *,
        backend: str = "local",
        progress: bool = False,
        python_path: Optional[str] = None,
        work_dir: Optional[str] = None,
        keep_work_dir: bool = False,
        **backend_options: Any,
    ) -> None:
        self._state = "INIT"
        if processes is not None:
            if not isinstance(processes, int) or isinstance(processes, bool):
                raise TypeError(f"processes must be an int, not {type(processes).__name__}")
            if processes < 1:
                raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        initializer, initargs = worker_start(initializer, initargs, local=backend == "local")
        self._cache_cond = threading.Condition()
        self._cache: set[int] = set()
        self._interrupted = False  # the user abandoned work (a break out of imap)
        self._driver = Driver(
            backend=backend,
            workers=processes,
            python_path=python_path,
            work_dir=work_dir,
            progress=progress,
            initializer=initializer,
            initargs=initargs,
            maxtasksperchild=maxtasksperchild,
            keep_work_dir=keep_work_dir,
            **split_options(backend_options),
        )
        self._processes = self._driver.workers
        self._batcher = Batcher(self._driver)
        self._state = RUN

    # -------------------------------------------------------------- bookkeeping

    def _register(self, job: object) -> None:
        with self._cache_cond:
            self._cache.add(id(job))

    def _unregister(self, job: object) -> None:
        with self._cache_cond:
            self._cache.discard(id(job))
            self._cache_cond.notify_all()

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    @property
    def session(self) -> str:
        """The session id, for ``shoal sessions`` / ``shoal logs``."""
        return self._driver.id

    def __repr__(self) -> str:
        return (
            f"<shoal.Pool state={self._state} backend={self._driver.backend} "
            f"workers={self._processes} session={self._driver.id}>"
        )

    # -------------------------------------------------------------- apply

    def apply(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Optional[dict[str, Any]] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> T:
        return self.apply_async(func, args, kwds, resources=resources).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Optional[dict[str, Any]] = None,
        callback: Optional[Callable[[T], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> ApplyResult[T]:
        self._check_running()
        shape = self._driver.shape(resources)
        result: ApplyResult[T] = ApplyResult(self, callback, error_callback)
        try:
            blob = self._driver.pickle_call(func, tuple(args), dict(kwds or {}))
        except Exception as exc:  # as in multiprocessing, the result carries the error
            result._set(False, exc)
            return result
        self._batcher.add(result, 0, blob, shape)
        return result

    # -------------------------------------------------------------- map

    def map(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: Optional[int] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> list[T]:
        return self._map_async(func, iterable, False, chunksize, resources=resources).get()

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: Optional[int] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> list[T]:
        return self._map_async(func, iterable, True, chunksize, resources=resources).get()

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: Optional[int] = None,
        callback: Optional[Callable[[list[T]], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> MapResult:
        return self._map_async(
            func, iterable, False, chunksize, callback, error_callback, resources
        )

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: Optional[int] = None,
        callback: Optional[Callable[[list[T]], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> MapResult:
        return self._map_async(func, iterable, True, chunksize, callback, error_callback, resources)

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        star: bool,
        chunksize: Optional[int],
        callback: Any = None,
        error_callback: Any = None,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> MapResult:
        self._check_running()
        shape = self._driver.shape(resources)
        # Lists, tuples and ranges are sliced as they are (a range chunk pickles as a range).
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if chunksize is not None:
            _check_chunksize(chunksize)
        result = MapResult(self, len(items), callback, error_callback)
        if items:
            try:
                # Pickled and sent chunk by chunk: no second copy of the input is made.
                self._driver.map_chunks(func, items, chunksize, star, result, shape)
            except Exception as exc:  # as in multiprocessing, the result carries the error
                result._set(False, exc)
        return result

    def imap(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: Optional[int] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> IMapIterator[T]:
        results: _IMapResults[T] = _IMapResults(self)
        it = self._imap(results, func, iterable, chunksize, False, resources)
        return IMapIterator(self, it)

    def imap_unordered(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: Optional[int] = None,
        *,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> IMapIterator[T]:
        results: _IMapResults[T] = _IMapUnorderedResults(self)
        it = self._imap(results, func, iterable, chunksize, False, resources)
        return IMapUnorderedIterator(self, it)

    def _imap(
        self,
        it: _IMapResults[T],
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: Optional[int],
        star: bool,
        resources: Optional[Mapping[str, Any]] = None,
    ) -> _IMapResults[T]:
        try:
            self._check_running()
            shape = self._driver.shape(resources)
            if chunksize is not None:
                _check_chunksize(chunksize)
            fn_ref = self._driver.put_function(func)
        except BaseException:
            self._unregister(it)
            raise
        # Without a chunksize chunks grow 1, 2, 4 ... so the first results come at once, up to
        # multiprocessing's map size for an input of known length (64 otherwise).
        limit = (
            self._driver.default_chunksize(len(iterable))  # type: ignore[arg-type]
            if hasattr(iterable, "__len__")
            else 64
        )
        feeder = threading.Thread(
            target=self._feed,
            args=(it, func, fn_ref, iterable, chunksize, limit, star, shape),
            name="shoal-imap-feeder",
            daemon=True,
        )
        feeder.start()
        return it

    def _feed(
        self,
        it: _IMapResults[Any],
        func: Callable[..., Any],
        fn_ref: int,
        iterable: Iterable[Any],
        chunksize: Optional[int],
        limit: int,
        star: bool,
        shape: int = 0,
    ) -> None:
        """Consume the iterable into chunks; without a chunksize, grow chunks 1, 2, 4 ... up to
        `limit` so the first results come fast and long inputs still make few files. If the iterable
        raises, its exception is the last result: at the position where it raised, or, with an
        explicit chunksize, at the start of the chunk being filled (whose items are dropped),
        as multiprocessing does."""
        source = iter(iterable)
        index = 0
        size = chunksize or 1
        while not it.abandoned:
            items: list[Any] = []
            try:
                for item in source:
                    items.append(item)
                    if len(items) >= size:
                        break
            except BaseException as exc:  # the user's iterable raised: report it in place
                if chunksize is None:
                    index = self._send(it, func, fn_ref, items, index, star, shape)
                it._deliver_many(index, [None], {0: exc})
                index += 1
                break
            if not items:
                break
            index = self._send(it, func, fn_ref, items, index, star, shape)
            if chunksize is None:
                size = min(size * 2, limit)
        it._set_length(index)
        # Every chunk that needs the function was sent: its blob goes when they are done.
        self._driver.release_function(fn_ref)

    def _send(
        self,
        it: _IMapResults[Any],
        func: Callable[..., Any],
        fn_ref: int,
        items: list[Any],
        index: int,
        star: bool,
        shape: int = 0,
    ) -> int:
        """Submit one chunk of an imap (a pickling error becomes its tasks' results);
        returns the index after it."""
        if items:
            try:
                # Backpressure: a long generator is consumed as the workers keep up.
                self._driver.wait_room()
                payload = self._driver.map_payload(func, fn_ref, items, index, star)
                self._driver.submit_payload(payload, [(it, index, len(items))], fn_ref, shape)
            except BaseException as exc:
                it._deliver_many(index, [None] * len(items), dict.fromkeys(range(len(items)), exc))
        return index + len(items)

    def _abandon(self, results: _IMapResults[Any]) -> None:
        """The user dropped an imap iterator before its end: take back its unstarted chunks."""
        if results.finished():
            return
        results.abandoned = True
        self._interrupted = True
        self._unregister(results)
        if not self._driver._closed:
            self._driver.withdraw_where(lambda job, _start, _count: job is results)

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._state == RUN:
            self._state = CLOSE
            self._batcher.flush()

    def terminate(self) -> None:
        self._terminate(interrupted=False)

    def _terminate(self, interrupted: bool) -> None:
        if self._state == "INIT":
            return
        self._state = TERMINATE
        self._batcher.close()
        self._driver.close(graceful=False, interrupted=interrupted or self._interrupted)

    def join(self) -> None:
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        with self._cache_cond:
            while self._cache and self._driver.broken is None:
                self._cache_cond.wait(0.1)
        self._batcher.close()
        self._driver.close(graceful=True, interrupted=self._interrupted)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # An exception here (Ctrl-C included) that is no task's ends the session as
        # interrupted: not a failure, nothing kept.
        self._terminate(interrupted=exc_type is not None)

    def __del__(self) -> None:
        if getattr(self, "_state", None) == RUN:
            warnings.warn(
                # The standard library's wording, which its own tests look for.
                f"unclosed running multiprocessing pool {self!r}",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            try:
                self._terminate(interrupted=False)
            except Exception:
                pass

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")


def _check_chunksize(chunksize: int) -> None:
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")

"""The worker process: ``python -m shoal.worker SESSION_DIR [--worker-id ID]``, or with
``--connect HOST:PORT --fingerprint FP`` (and the token in ``SHOAL_TOKEN``) for a TCP session,
whose worker reads nothing from SESSION_DIR (it only names the session).

It claims assignments through the Rust protocol, runs their tasks, and publishes results in
parts with per-task stdout/stderr offsets and tracebacks. A task's exception (even SystemExit)
fails that task only, and so does a call that cannot be unpickled here; the worker goes on.
Results of slow tasks are published as the chunk goes, so a worker lost mid-chunk loses only
the task it was running (docs/protocol.md).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import pickle
import sys
import time
import traceback
from collections import OrderedDict

from shoal import _imports, _native
from shoal._pickling import dump_results as _dump
from shoal._pickling import error_record as _error_record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~8 ms a worker)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

# Payload kinds, shared with shoal._driver: MAP chunks name one function (a blob) and carry
# its arguments; CALLS chunks carry (name, pickled (function, args, kwargs)) per call.
MAP = "map"
# Tasks this slow get an exact offset check after each of them, so output written below
# sys.stdout (C libraries, subprocesses) is attributed to the right task; tasks faster than
# this on average run in a tight loop without per-task checks.
SLOW_TASK = 1e-4
PROBE = 8
# A finished task that took this long is published at once (a lost worker then loses only
# the task it runs); faster ones are published together at most this often.
PUBLISH_SLOW = 0.25
PUBLISH_EVERY = 1.0
# Unpickled blobs (mapped functions) kept for later chunks: a new closure per map must not
# pile up in the worker.
BLOB_CACHE = 4
EXIT_NO_SPACE = 74


class _LoadFailed(Exception):
    """A call of a CALLS chunk could not be unpickled on this worker."""


def _offset(fd: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return 0


def _load_error_record(name: str, exc: BaseException) -> tuple[Optional[bytes], str, str, str]:
    """A TaskLoadError naming the call and why it could not be loaded here."""
    from shoal.errors import TaskLoadError

    reason = f"{type(exc).__name__}: {exc}"
    err = TaskLoadError(
        f"the call {name} could not be unpickled on the worker (host {os.uname().nodename}): "
        f"{reason}\nhint: the worker's Python must be able to import what the call refers "
        "to (the same packages and versions as the driver's)"
    )
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return pickle.dumps(err), tb, "shoal.errors.TaskLoadError", str(err)


class _Tracked:
    """Stands in for sys.stdout/sys.stderr: after each write it records which task wrote and
    where its output now ends, so per-task log ranges cost nothing for silent tasks."""

    def __init__(self, stream: Any, runner: _Runner) -> None:
        self._stream = stream
        self._runner = runner

    def write(self, text: str) -> int:
        n = int(self._stream.write(text))
        self._runner.mark()
        return n

    def writelines(self, lines: Any) -> None:
        self._stream.writelines(lines)
        self._runner.mark()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _call(item: tuple[Callable[..., Any], tuple, dict]) -> Any:
    f, args, kwargs = item
    return f(*args, **kwargs)


def _star(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    return lambda args: fn(*args)


class _Part:
    """The results of the tasks since the last publish."""

    def __init__(self, start: int, out: int, err: int) -> None:
        self.start = start
        self.out, self.err = out, err
        self.values: list[Any] = []
        self.errors: dict[int, Any] = {}
        self.failed: list[tuple[int, str]] = []
        self.marks: list[tuple[int, int, int]] = []


class _Runner:
    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.blobs: OrderedDict[int, Any] = OrderedDict()
        self.part = _Part(0, 0, 0)
        self._stdout, self._stderr = sys.stdout, sys.stderr
        sys.stdout = _Tracked(sys.stdout, self)
        sys.stderr = _Tracked(sys.stderr, self)

    def blob(self, blob_id: int) -> Any:
        if blob_id in self.blobs:
            self.blobs.move_to_end(blob_id)
            return self.blobs[blob_id]
        value = pickle.loads(self.worker.read_blob(blob_id))
        self.blobs[blob_id] = value
        while len(self.blobs) > BLOB_CACHE:
            self.blobs.popitem(last=False)
        return value

    def offsets(self) -> tuple[int, int]:
        for stream in (self._stdout, self._stderr):
            try:
                stream.flush()
            except Exception:
                pass
        return _offset(1), _offset(2)

    def mark(self) -> None:
        """Record that the running task's output ends here (for now)."""
        self.part.marks.append((len(self.part.values), *self.offsets()))

    # ------------------------------------------------------------ one assignment

    def run_chunk(
        self,
        chunk: int,
        attempt: int,
        first: int,
        ntasks: int,
        start: int,
        careful: bool,
        payload: bytes,
    ) -> None:
        self.chunk, self.attempt, self.first, self.ntasks = chunk, attempt, first, ntasks
        self.careful = careful
        self.started = time.perf_counter()
        self.last_publish = time.monotonic()
        self.part = _Part(start, *self.offsets())
        try:
            kind, ref, star, items = pickle.loads(payload)
            fn = self.blob(ref) if kind == MAP else None
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            msg = f"the chunk could not be loaded on the worker: {type(exc).__name__}: {exc}\n{tb}"
            self._publish(count=ntasks - start, payload=b"", last=True, chunk_error=msg)
            return
        todo = items[start:]
        call: Callable[[Any], Any]
        if kind == MAP:
            assert fn is not None
            call = _star(fn) if star else fn
        else:
            call = _call
            todo = _LazyCalls(todo)
        self._run(call, todo)
        self._publish(count=len(self.part.values), payload=None, last=True)

    def _run(self, call: Callable[[Any], Any], todo: Any) -> None:
        """Run the tasks: checked one by one (timing each) while they are slow, in a tight
        loop once the first PROBE tasks show they are tiny (unless careful)."""
        clock = time.perf_counter
        items = iter(todo)
        probing = not self.careful
        t_probe = clock()
        n = 0
        for item in items:
            index = self.part.start + len(self.part.values)
            self.worker.running(self.chunk, self.attempt, index)
            t0 = clock()
            try:
                value = call(item)
            except _LoadFailed as exc:
                self._failed_with(_load_error_record(*exc.args))
                continue
            except BaseException as exc:  # a task's SystemExit fails only that task
                self._failed(exc)
                self._after_slow_task(clock() - t0)
                continue
            self.part.values.append(value)
            took = clock() - t0
            if took > SLOW_TASK:
                self.mark()
            self._after_slow_task(took)
            n += 1
            if probing and n >= PROBE:
                if (clock() - t_probe) / n < SLOW_TASK:
                    break
                probing = False  # slow tasks: stay in the checked loop
        # Tiny tasks: run in C, in slices of about a quarter second each, publishing what is
        # done at most once a second (a lost worker loses little). On an exception the
        # results so far are kept and `items` resumes after the failing task.
        per_task = max((clock() - t_probe) / max(n, 1), 1e-7)
        size = max(PROBE, min(1_000_000, int(PUBLISH_SLOW / per_task)))
        while True:
            values = self.part.values
            before = len(values)
            try:
                values.extend(map(call, itertools.islice(items, size)))
            except _LoadFailed as exc:
                self._failed_with(_load_error_record(*exc.args))
                continue
            except BaseException as exc:
                self._failed(exc)
                continue
            if len(values) - before < size:
                return  # the slice ran short: the chunk is done
            if time.monotonic() - self.last_publish >= PUBLISH_EVERY:
                self._publish(count=len(values), payload=None, last=False)

    def _after_slow_task(self, took: float) -> None:
        now = time.monotonic()
        if self.careful or took >= PUBLISH_SLOW or now - self.last_publish >= PUBLISH_EVERY:
            self._publish(count=len(self.part.values), payload=None, last=False)

    def _failed(self, exc: BaseException) -> None:
        self._failed_with(_error_record(exc))

    def _failed_with(self, rec: tuple[Optional[bytes], str, str, str]) -> None:
        i = len(self.part.values)
        self.part.values.append(None)
        self.part.errors[i] = rec
        self.part.failed.append((i, rec[1]))
        self.mark()

    def _publish(
        self,
        *,
        count: int,
        payload: Optional[bytes],
        last: bool,
        chunk_error: Optional[str] = None,
    ) -> None:
        part = self.part
        if count == 0 and not last:
            return
        if payload is None:
            if part.values and (not part.marks or part.marks[-1][0] < len(part.values) - 1):
                part.marks.append((len(part.values) - 1, *self.offsets()))
            payload = _dump(part.values, part.errors, part.failed)
        try:
            self.worker.publish(
                self.chunk,
                self.attempt,
                self.first,
                self.ntasks,
                part.start,
                count,
                last,
                payload,
                part.out,
                part.err,
                part.marks,
                part.failed,
                chunk_error,
                time.perf_counter() - self.started,
            )
        except Exception as exc:
            if "No space left" in str(exc) or "full" in str(exc):
                os.write(2, f"shoal worker: cannot publish results: {exc}\n".encode())
                os._exit(EXIT_NO_SPACE)
            raise
        self.last_publish = time.monotonic()
        self.part = _Part(part.start + count, *self.offsets())


class _LazyCalls:
    """The calls of a CALLS chunk, unpickled one by one as they run: a call that cannot be
    loaded here fails alone (as _LoadFailed), the others still run."""

    def __init__(self, items: list[tuple[str, bytes]]) -> None:
        self._items = items

    def __iter__(self) -> Any:
        for name, blob in self._items:
            try:
                yield pickle.loads(blob)
            except BaseException as exc:
                yield _Unloadable(name, exc)


class _Unloadable:
    def __init__(self, name: str, exc: BaseException) -> None:
        self.name, self.exc = name, exc

    def __iter__(self) -> Any:
        # _call unpacks (f, args, kwargs): unpacking this raises the load failure instead.
        raise _LoadFailed(self.name, self.exc)


def _setup(config: dict[str, Any]) -> None:
    for path in reversed(config.get("sys_path") or []):
        if path not in sys.path:
            sys.path.insert(0, path)
    init = config.get("initializer")
    if init is not None:
        fn, args = pickle.loads(base64.b64decode(init))
        fn(*args)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flags: dict[str, Optional[str]] = {
        "--worker-id": None,
        "--connect": None,
        "--fingerprint": None,
    }
    for flag in flags:
        if flag in args:
            i = args.index(flag)
            flags[flag] = args[i + 1] if i + 1 < len(args) else None
            del args[i : i + 2]
    if len(args) != 1:
        print(
            "usage: python -m shoal.worker SESSION_DIR [--worker-id ID] "
            "[--connect HOST:PORT --fingerprint FP]  (a TCP session's token: $SHOAL_TOKEN)",
            file=sys.stderr,
        )
        return 2
    try:
        worker = _native.Worker(
            args[0], flags["--worker-id"], flags["--connect"], flags["--fingerprint"]
        )
    except Exception as exc:
        print(f"shoal worker: cannot join session {args[0]}: {exc}", file=sys.stderr)
        return 3
    config = json.loads(worker.config) or {}
    # A task's own Parallel(backend="shoal"/"slurm"/...) finds shoal's joblib backends.
    _imports.joblib_backends_on_import()
    runner = _Runner(worker)
    try:
        _setup(config)
    except BaseException:
        print("shoal worker: the pool's initializer failed:", file=sys.stderr)
        traceback.print_exc()
        return 4
    max_tasks = config.get("maxtasksperchild")
    done = 0
    reason = "maxtasksperchild"
    while True:
        item = worker.claim(None)
        if isinstance(item, str):
            reason = item
            break
        chunk, attempt, first, ntasks, start, careful, payload = item
        runner.run_chunk(chunk, attempt, first, ntasks, start, careful, payload)
        done += ntasks - start
        if max_tasks and done >= max_tasks:
            break
    sys.stdout.flush()
    sys.stderr.flush()
    worker.close(reason)
    return 0


if __name__ == "__main__":
    # Run the module's own importable copy, not this `__main__` one: an initializer that
    # patches `shoal.worker` then patches the code that runs.
    from shoal.worker import main as _main

    sys.exit(_main())

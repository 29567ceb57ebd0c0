"""The worker process: ``python -m shoal.worker SESSION_DIR [--worker-id ID]``.

It claims chunks through the Rust protocol, runs their tasks, and publishes results with
per-task stdout/stderr offsets and tracebacks. A task's exception (even SystemExit) fails
that task only; the worker keeps going.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import sys
import time
import traceback

from shoal import _imports, _native
from shoal._pickling import dump_results as _dump_results
from shoal._pickling import error_record as _error_record

TYPE_CHECKING = False  # dropin: typing.TYPE_CHECKING without importing typing (~8 ms a worker)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

# Payload kinds, shared with shoal._driver: MAP chunks name one function (a blob) and carry
# its arguments; CALLS chunks carry separately pickled (function, args, kwargs) calls.
MAP = "map"


def _offset(fd: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return 0


class _Tracked:
    """Stands in for sys.stdout/sys.stderr: after each write it records which task wrote and
    where its output now ends, so per-task log ranges cost nothing for tasks that print nothing."""

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


# Tasks this slow get an exact offset check after each of them, so output written below
# sys.stdout (C libraries, subprocesses) is attributed to the right task; tasks faster than
# this on average run without per-task checks.
SLOW_TASK = 1e-4
PROBE = 8


def _call(item: tuple[Callable[..., Any], tuple, dict]) -> Any:
    f, args, kwargs = item
    return f(*args, **kwargs)


def _star(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    return lambda args: fn(*args)


class _Runner:
    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.blobs: dict[int, Any] = {}
        # The task running now is the one whose result is not yet in `values`.
        self.values: list[Any] = []
        self.marks: list[tuple[int, int, int]] = []
        self._stdout, self._stderr = sys.stdout, sys.stderr
        sys.stdout = _Tracked(sys.stdout, self)
        sys.stderr = _Tracked(sys.stderr, self)

    def blob(self, blob_id: int) -> Any:
        if blob_id not in self.blobs:
            self.blobs[blob_id] = pickle.loads(self.worker.read_blob(blob_id))
        return self.blobs[blob_id]

    def offsets(self) -> tuple[int, int]:
        for stream in (self._stdout, self._stderr):
            try:
                stream.flush()
            except Exception:
                pass
        return _offset(1), _offset(2)

    def mark(self) -> None:
        """Record that the running task's output ends here (for now)."""
        self.marks.append((len(self.values), *self.offsets()))

    def run_chunk(self, chunk: int, first: int, ntasks: int, payload: bytes) -> None:
        started = time.perf_counter()
        out0, err0 = self.offsets()
        self.values, self.marks = [], []
        try:
            kind, ref, star, items = pickle.loads(payload)
            fn = self.blob(ref) if kind == MAP else None
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            msg = f"the chunk could not be loaded on the worker: {type(exc).__name__}: {exc}\n{tb}"
            self.worker.complete(
                chunk,
                first,
                ntasks,
                b"",
                [out0],
                [err0],
                [],
                [],
                msg,
                time.perf_counter() - started,
            )
            return
        errors: dict[int, Any] = {}
        failed: list[tuple[int, str]] = []
        calls = items if kind == MAP else (pickle.loads(b) for b in items)
        self._run(kind, fn, star, calls, errors, failed)
        values = self.values
        if not self.marks or self.marks[-1][0] < len(values) - 1:
            self.marks.append((len(values) - 1, *self.offsets()))
        payload_out = self._dump(values, errors, failed)
        self.worker.complete(
            chunk,
            first,
            ntasks,
            payload_out,
            [out0],
            [err0],
            self.marks,
            failed,
            None,
            time.perf_counter() - started,
        )

    def _run(
        self,
        kind: str,
        fn: Any,
        star: bool,
        calls: Any,
        errors: dict[int, Any],
        failed: list[tuple[int, str]],
    ) -> None:
        """Run the chunk's tasks: checked one by one (timing each) while they are slow, in a
        tight loop once the first PROBE tasks show they are tiny."""
        call: Callable[[Any], Any]
        if kind != MAP:
            call = _call
        elif star:
            call = _star(fn)
        else:
            call = fn
        values = self.values
        append = values.append
        clock = time.perf_counter
        items = iter(calls)
        probing = True
        t_probe = clock()
        for item in items:
            t0 = clock()
            try:
                append(call(item))
            except BaseException as exc:  # a task's SystemExit fails only that task
                self._failed(exc, errors, failed)
                continue
            if clock() - t0 > SLOW_TASK:
                self.marks.append((len(values) - 1, *self.offsets()))
            if probing and len(values) >= PROBE:
                if (clock() - t_probe) / len(values) < SLOW_TASK:
                    break
                probing = False  # slow tasks: stay in the checked loop
        while True:
            # list.extend(map(...)) runs the tiny tasks in C; on an exception the results so
            # far are kept and `items` resumes after the failing task.
            try:
                values.extend(map(call, items))
                return
            except BaseException as exc:
                self._failed(exc, errors, failed)

    def _failed(
        self, exc: BaseException, errors: dict[int, Any], failed: list[tuple[int, str]]
    ) -> None:
        i = len(self.values)
        rec = _error_record(exc)
        self.values.append(None)
        errors[i] = rec
        failed.append((i, rec[1]))
        self.marks.append((i, *self.offsets()))

    # dropin: pickling results (and failing just the tasks whose result cannot travel, with
    # the pickler's own exception) lives in shoal._pickling.
    _dump = staticmethod(_dump_results)


def _setup(config: dict[str, Any], runner: _Runner) -> None:
    for path in reversed(config.get("sys_path") or []):
        if path not in sys.path:
            sys.path.insert(0, path)
    init = config.get("initializer")
    if init is not None:
        fn, args = pickle.loads(base64.b64decode(init))
        fn(*args)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    worker_id = None
    if "--worker-id" in args:
        i = args.index("--worker-id")
        worker_id = args[i + 1]
        del args[i : i + 2]
    if len(args) != 1:
        print("usage: python -m shoal.worker SESSION_DIR [--worker-id ID]", file=sys.stderr)
        return 2
    try:
        worker = _native.Worker(args[0], worker_id)
    except Exception as exc:
        print(f"shoal worker: cannot join session {args[0]}: {exc}", file=sys.stderr)
        return 3
    config = json.loads(worker.config) or {}
    # dropin: a task's own Parallel(backend="shoal"/"slurm"/...) finds shoal's joblib backends.
    _imports.joblib_backends_on_import()
    runner = _Runner(worker)
    try:
        _setup(config, runner)
    except BaseException:
        print("shoal worker: the pool's initializer failed:", file=sys.stderr)
        traceback.print_exc()
        return 4
    max_tasks = config.get("maxtasksperchild")
    done = 0
    while True:
        item = worker.claim(None)
        if isinstance(item, str):
            break
        chunk, first, ntasks, payload = item
        runner.run_chunk(chunk, first, ntasks, payload)
        done += ntasks
        if max_tasks and done >= max_tasks:
            break
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

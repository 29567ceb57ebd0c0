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
from typing import Any, Callable, Optional

import cloudpickle

from shoal import _native

# Payload kinds, shared with shoal._driver.
MAP = "map"
CALLS = "calls"


def _offset(fd: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return 0


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _error_record(exc: BaseException) -> tuple[Optional[bytes], str, str, str]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: Optional[bytes] = cloudpickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = None
    return blob, tb, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)


class _Runner:
    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.blobs: dict[int, Any] = {}

    def blob(self, blob_id: int) -> Any:
        if blob_id not in self.blobs:
            self.blobs[blob_id] = pickle.loads(self.worker.read_blob(blob_id))
        return self.blobs[blob_id]

    def calls(self, payload: bytes) -> list[tuple[Callable[..., Any], tuple, dict]]:
        kind, ref, star, items = pickle.loads(payload)
        if kind == MAP:
            fn = self.blob(ref)
            if star:
                return [(fn, tuple(args), {}) for args in items]
            return [(fn, (x,), {}) for x in items]
        return [pickle.loads(b) for b in items]

    def run_chunk(self, chunk: int, first: int, ntasks: int, payload: bytes) -> None:
        started = time.perf_counter()
        _flush()
        out = [_offset(1)]
        err = [_offset(2)]
        try:
            calls = self.calls(payload)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            msg = f"the chunk could not be loaded on the worker: {type(exc).__name__}: {exc}\n{tb}"
            self.worker.complete(
                chunk,
                first,
                ntasks,
                b"",
                out * (ntasks + 1),
                err * (ntasks + 1),
                [],
                msg,
                time.perf_counter() - started,
            )
            return
        results: list[tuple[bool, Any]] = []
        failed: list[tuple[int, str]] = []
        for i, (fn, args, kwargs) in enumerate(calls):
            try:
                results.append((True, fn(*args, **kwargs)))
            except BaseException as exc:
                rec = _error_record(exc)
                results.append((False, rec))
                failed.append((i, rec[1]))
            _flush()
            out.append(_offset(1))
            err.append(_offset(2))
        payload_out = self._dump(results, failed)
        self.worker.complete(
            chunk, first, ntasks, payload_out, out, err, failed, None, time.perf_counter() - started
        )

    @staticmethod
    def _dump(results: list[tuple[bool, Any]], failed: list[tuple[int, str]]) -> bytes:
        try:
            return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        try:
            return cloudpickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        # Find the results that cannot travel and fail just those tasks, saying why.
        fixed: list[tuple[bool, Any]] = []
        for i, (ok, value) in enumerate(results):
            try:
                cloudpickle.dumps(value)
                fixed.append((ok, value))
            except Exception as exc:
                what = "result" if ok else "exception"
                err = TypeError(
                    f"the {what} of this task ({type(value).__name__}) cannot be pickled: {exc}"
                )
                rec = _error_record(err)
                fixed.append((False, rec))
                failed.append((i, rec[1]))
        return cloudpickle.dumps(fixed, protocol=pickle.HIGHEST_PROTOCOL)


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
    _flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

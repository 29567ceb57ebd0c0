"""The driver side shared by Pool, Executor and the joblib backend.

It pickles work into chunks, hands them to the Rust engine (``_native.Session``), and turns
the engine's events back into per-task results or exceptions on a collector thread. Jobs
(a map, an apply, a future) only implement ``_deliver_many``, ``_started`` and ``_abort``.
"""

from __future__ import annotations

import atexit
import base64
import json
import math
import os
import pickle
import subprocess
import sys
import threading
import weakref
from typing import Any, Callable, Iterable, Optional, Protocol

import cloudpickle

from shoal import _backends, _native
from shoal.errors import (
    ConfigError,
    PicklingError,
    RemoteTraceback,
    SessionError,
    TaskError,
    WorkerLostError,
)

MAP = "map"
CALLS = "calls"
STDERR_TAIL = 2000
# Options every backend understands; the rest go to the backend as its own options.
GENERIC_OPTIONS = ("idle_timeout", "heartbeat_timeout", "max_attempts", "env", "metadata")
_checked_pythons: dict[str, None] = {}
_live: weakref.WeakSet[Driver] = weakref.WeakSet()


class Job(Protocol):
    """What receives task results: a map, an apply, a future, a joblib batch."""

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        """Results of tasks start..start+len(values); `errors` maps offsets to exceptions."""

    def _started(self, start: int, count: int) -> None: ...

    def _abort(self, exc: BaseException) -> None: ...


# A chunk's tasks map onto jobs as segments: (job, index of the first task in the job, count).
Segment = tuple[Job, int, int]


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _dumps(obj: Any) -> bytes:
    # The C pickler is several times faster on plain data. Anything defined in __main__
    # (or a lambda, a closure) must travel by value, which only cloudpickle does.
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if b"__main__" in data:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def _diagnose(fn: Any, items: Iterable[Any], first_index: int, exc: Exception) -> PicklingError:
    """Say which of the function or arguments cannot be pickled."""
    try:
        _dumps(fn)
    except Exception as e:
        return PicklingError(
            f"cannot pickle the function {_name(fn)!r}: {e}\n"
            "hint: tasks run in other processes; pass a module-level function, a lambda, or a "
            "closure over picklable values"
        )
    for i, item in enumerate(items):
        try:
            _dumps(item)
        except Exception as e:
            return PicklingError(
                f"cannot pickle argument {first_index + i} of {_name(fn)!r} "
                f"(a {type(item).__name__}): {e}\n"
                "hint: open files, locks, sockets and generators cannot be sent to workers; "
                "pass what is needed to re-create them instead"
            )
    return PicklingError(f"cannot pickle the work for {_name(fn)!r}: {exc}")


def split_options(options: dict[str, Any]) -> dict[str, Any]:
    """Separate generic session options from the backend's own (passed as backend_options)."""
    out: dict[str, Any] = {k: options.pop(k) for k in GENERIC_OPTIONS if k in options}
    out["backend_options"] = options
    return out


def check_python(python: str) -> str:
    """Fail early, with the reason, if `python` cannot run shoal workers."""
    path = os.path.abspath(os.path.expanduser(python))
    if path in _checked_pythons:
        return path
    if not os.path.exists(path):
        raise ConfigError(
            f"python_path {python!r} does not exist\n"
            "hint: pass the interpreter (e.g. /opt/env/bin/python) that has shoal installed"
        )
    if os.path.realpath(path) != os.path.realpath(sys.executable):
        probe = [path, "-c", "import shoal._native, cloudpickle"]
        try:
            res = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        except OSError as e:
            raise ConfigError(f"python_path {python!r} cannot be run: {e}") from None
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise ConfigError(
                f"python_path {python!r} cannot import shoal: {' '.join(tail)}\n"
                f"hint: run `{path} -m pip install shoal` (same version as the driver)"
            )
    _checked_pythons[path] = None
    return path


class Driver:
    """One session: a work dir, a backend, an engine thread and a collector thread."""

    def __init__(
        self,
        *,
        backend: str = "local",
        workers: Optional[int] = None,
        python_path: Optional[str] = None,
        work_dir: Optional[str] = None,
        progress: bool = False,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: Optional[int] = None,
        backend_options: Optional[dict[str, Any]] = None,
        env: Optional[dict[str, str]] = None,
        keep_work_dir: bool = False,
        heartbeat_timeout: Optional[float] = 120.0,
        idle_timeout: Optional[float] = -1.0,
        max_attempts: int = 3,
        metadata: Optional[dict[str, Any]] = None,
        cwd: Optional[str] = None,
    ) -> None:
        defaults = _backends.defaults(backend)
        if workers is None:
            # Local: one worker per CPU. Clusters: an upper bound that the engine scales down
            # to the work at hand (queued workers beyond it are given back).
            workers = defaults["workers"]
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"invalid number of workers {workers!r}: must be an int >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if work_dir is not None:
            work_dir = os.path.abspath(os.path.expanduser(str(work_dir)))
        python = check_python(python_path or sys.executable)
        self.workers = workers
        self.backend = backend
        self.maxtasksperchild = maxtasksperchild
        self.keep_work_dir = keep_work_dir
        self._lock = threading.Lock()
        self._routes: dict[int, list[Segment]] = {}
        self._task_failed = False
        self._broken: Optional[BaseException] = None
        self._closed = False
        py_config: dict[str, Any] = {
            "sys_path": [p for p in sys.path if p and os.path.isdir(p)],
            "maxtasksperchild": maxtasksperchild,
        }
        if initializer is not None:
            # Inline in config.json: workers may start before any blob could be written.
            try:
                init = _dumps((initializer, tuple(initargs)))
            except Exception as e:
                raise _diagnose(initializer, tuple(initargs), 0, e) from None
            py_config["initializer"] = base64.b64encode(init).decode("ascii")
        if idle_timeout is not None and idle_timeout < 0:
            # Local workers are cheap to keep; cluster allocations go back when work runs out.
            idle_timeout = defaults["idle_timeout"]
        worker_env = dict(env or {})
        worker_env.setdefault("SHOAL_WORKER", "1")
        config = {
            "idle_timeout": idle_timeout,
            "heartbeat_interval": 5.0,
            "driver_timeout": defaults["driver_timeout"],
            "python": py_config,
        }
        self._native = _native.Session(
            backend=backend,
            workers=workers,
            python=python,
            cwd=os.path.abspath(os.path.expanduser(cwd)) if cwd else os.getcwd(),
            env=list(worker_env.items()),
            worker_config=json.dumps(config),
            backend_options=json.dumps(backend_options or {}),
            work_dir=work_dir,
            progress=progress,
            heartbeat_timeout=heartbeat_timeout,
            max_attempts=max_attempts,
            metadata=json.dumps(metadata) if metadata is not None else "null",
        )
        self.id: str = self._native.id
        self.path: str = str(self._native.path)
        self._collector = threading.Thread(
            target=self._collect, name=f"shoal-collect-{self.id}", daemon=True
        )
        self._collector.start()
        _live.add(self)

    # ------------------------------------------------------------------ submitting

    def default_chunksize(self, n: int) -> int:
        """multiprocessing's rule (about four chunks per worker), capped by maxtasksperchild."""
        if n == 0:
            return 1
        size = max(1, math.ceil(n / (self.workers * 4)))
        if self.maxtasksperchild:
            size = min(size, self.maxtasksperchild)
        return size

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise SessionError(f"session {self.id} cannot take more work: {self._broken}")

    def put_function(self, fn: Callable[..., Any]) -> int:
        """Store a mapped function once; chunks refer to it by id."""
        try:
            data = _dumps(fn)
        except Exception as e:
            raise _diagnose(fn, (), 0, e) from None
        return int(self._native.put_blob(data))

    def map_payload(
        self, fn: Callable[..., Any], fn_ref: int, items: list[Any], start: int, star: bool
    ) -> bytes:
        """Pickle one chunk of a map; a PicklingError names the argument that failed."""
        try:
            return _dumps((MAP, fn_ref, star, items))
        except Exception as e:
            raise _diagnose(fn, items, start, e) from None

    def submit_payload(self, payload: bytes, segments: list[Segment]) -> int:
        """Publish one chunk; its task results go to `segments` in order."""
        self._check_usable()
        ntasks = sum(seg[2] for seg in segments)
        with self._lock:
            chunk, _first = self._native.submit(payload, ntasks)
            self._routes[chunk] = segments
        return int(chunk)

    def pickle_call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> bytes:
        try:
            return _dumps((fn, args, kwargs))
        except Exception as e:
            raise _diagnose(fn, (*args, *kwargs.values()), 0, e) from None

    def submit_calls(self, calls: list[tuple[Job, int, bytes]]) -> list[int]:
        """Send pre-pickled calls, spread over enough chunks to keep every worker busy."""
        self._check_usable()
        per = max(1, math.ceil(len(calls) / (self.workers * 2)))
        if self.maxtasksperchild:
            per = min(per, self.maxtasksperchild)
        chunks = []
        for lo in range(0, len(calls), per):
            part = calls[lo : lo + per]
            payload = _dumps((CALLS, None, False, [c[2] for c in part]))
            chunks.append(self.submit_payload(payload, [(c[0], c[1], 1) for c in part]))
        return chunks

    def withdraw_where(self, unwanted: Callable[[Job, int, int], bool]) -> int:
        """Take back unclaimed chunks all of whose tasks are `unwanted` (e.g. cancelled
        futures); their tasks will never run. Returns the number of chunks withdrawn."""
        with self._lock:
            chunks = [
                c
                for c, routes in self._routes.items()
                if routes and all(unwanted(*seg) for seg in routes)
            ]
            n = 0
            for c in chunks:
                if self._native.withdraw([c]):
                    del self._routes[c]
                    n += 1
            return n

    # ------------------------------------------------------------------ collecting

    def _collect(self) -> None:
        while True:
            try:
                events = self._native.events(0.1)
            except Exception:
                return  # the session ended
            for ev in events:
                try:
                    self._handle(ev)
                except Exception:  # a bug here must not kill collection silently
                    import traceback

                    print(f"shoal: internal error handling a {ev[0]} event:", file=sys.stderr)
                    traceback.print_exc()
            if self._closed and not events:
                return

    def _handle(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "result":
            self._on_result(*ev[1:])
        elif kind == "lost":
            _, chunk, first, _ntasks, worker, reason, tail = ev
            with self._lock:
                segments = self._routes.pop(chunk, None) or []
            self._task_failed = True
            number = first
            for job, start, count in segments:
                errors: dict[int, BaseException] = {}
                for k in range(count):
                    msg = (
                        f"task {start + k} (session task {number + k}) was lost: {reason} "
                        f"[worker {worker}, session {self.id}]"
                    )
                    if tail.strip():
                        msg += f"\nworker stderr (tail):\n{tail.rstrip()}"
                    errors[k] = WorkerLostError(msg)
                job._deliver_many(start, [None] * count, errors)
                number += count
        elif kind == "fatal":
            self._fail_all(SessionError(ev[1]))
        elif kind == "started":
            with self._lock:
                segments = self._routes.get(ev[1], [])
            for job, start, count in segments:
                job._started(start, count)

    def _on_result(
        self,
        chunk: int,
        first: int,
        ntasks: int,
        worker: str,
        payload: bytes,
        err_ranges: dict[int, tuple[int, int]],
        chunk_error: Optional[str],
    ) -> None:
        with self._lock:
            segments = self._routes.pop(chunk, None)
        if segments is None:
            return
        failure: Optional[BaseException] = None
        if not payload:  # the chunk could not run at all
            failure = TaskError(chunk_error or "the chunk could not run on its worker")
        else:
            try:
                values, raw_errors = pickle.loads(payload)
            except Exception as exc:
                failure = TaskError(
                    f"the results of tasks {first}..{first + ntasks - 1} could not be unpickled "
                    f"in the driver: {type(exc).__name__}: {exc}"
                )
        if failure is not None:
            self._task_failed = True
            for job, start, count in segments:
                job._deliver_many(start, [None] * count, dict.fromkeys(range(count), failure))
            return
        if raw_errors:
            self._task_failed = True
        offset = 0
        for job, start, count in segments:
            errors = {
                i - offset: self._rebuild(
                    raw_errors[i], start + i - offset, first + i, worker, err_ranges.get(i)
                )
                for i in raw_errors
                if offset <= i < offset + count
            }
            part = values if count == len(values) else values[offset : offset + count]
            job._deliver_many(start, part, errors)
            offset += count

    def _rebuild(
        self, rec: Any, index: int, task_no: int, worker: str, err_range: Optional[tuple[int, int]]
    ) -> BaseException:
        blob, tb_text, type_name, text = rec
        exc: Optional[BaseException] = None
        if blob is not None:
            try:
                exc = pickle.loads(blob)
            except Exception:
                exc = None
        if not isinstance(exc, BaseException):
            exc = TaskError(f"{type_name}: {text}")
        tail = ""
        if err_range is not None:
            try:
                raw = self._native.read_log(worker, err_range[0], err_range[1], STDERR_TAIL)
                tail = raw.decode("utf-8", "replace").rstrip()
            except Exception:
                tail = ""
        where = (
            f"task {index} failed on worker {worker} (session {self.id}, task {task_no}; "
            f"`shoal logs {self.id} {task_no}`)"
        )
        detail = f"\n{where}"
        if tail:
            detail += f"\nstderr (tail):\n{tail}"
        exc.__cause__ = RemoteTraceback(f'\n"""\n{tb_text}"""{detail}')
        if hasattr(exc, "add_note"):
            try:
                exc.add_note(where + (f"\nstderr (tail):\n{tail}" if tail else ""))
            except Exception:
                pass
        return exc

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = exc
            routes = list(self._routes.values())
            self._routes.clear()
        for segments in routes:
            for job, _start, _count in segments:
                job._abort(exc)

    # ------------------------------------------------------------------ ending

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._routes)

    @property
    def broken(self) -> Optional[BaseException]:
        return self._broken

    def stats(self) -> dict[str, int]:
        return dict(self._native.stats())

    def close(self, *, graceful: bool, failed: bool = False, grace: float = 10.0) -> Optional[str]:
        """Stop workers and record the outcome. Returns the kept work dir, if any."""
        if self._closed:
            return None
        self._native.shutdown(grace if graceful else None)
        self._closed = True
        self._collector.join(timeout=5)
        failed = failed or self._task_failed or self._broken is not None
        if self._routes:
            self._fail_all(SessionError(f"session {self.id} was shut down before this task ran"))
            failed = True
        state = "failed" if failed else "finished"
        message = str(self._broken) if self._broken is not None else None
        kept = self._native.finish(state, message, self.keep_work_dir)
        _live.discard(self)
        if kept is not None and failed:
            print(
                f"shoal: session {self.id} {'failed' if failed else 'ended'}; work dir kept at "
                f"{kept} (see `shoal logs {self.id}`)",
                file=sys.stderr,
            )
        return None if kept is None else str(kept)


@atexit.register
def _shutdown_all() -> None:
    for d in list(_live):
        try:
            d.close(graceful=False, failed=True)
        except Exception:
            pass

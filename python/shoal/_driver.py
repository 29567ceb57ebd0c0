"""The driver side shared by Pool, Executor and the joblib backend.

It pickles work into chunks, hands them to the Rust engine (``_native.Session``), and turns
the engine's events back into per-task results or exceptions on a collector thread. Jobs
(a map, an apply, a future) only implement ``_deliver_many``, ``_started`` and ``_abort``.
A chunk's results may arrive in parts (docs/protocol.md); each task is delivered once.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol, Sequence

from shoal import _backends, _calls, _native, _output, _progress
from shoal._pickling import _name, send_own_modules_by_value
from shoal._pickling import diagnose as _diagnose
from shoal._pickling import dumps as _dumps
from shoal.errors import (
    ConfigError,
    RemoteTraceback,
    SchedulerError,
    SessionError,
    TaskError,
    WorkerLostError,
)

MAP = "map"
CALLS = "calls"
STDERR_TAIL = 2000
# Options every backend understands; the rest go to the backend as its own options.
GENERIC_OPTIONS = (
    "idle_timeout", "heartbeat_timeout", "max_attempts", "env", "metadata", "forward_output",
    "transport", "listen",
)  # fmt: skip
_checked_pythons: dict[str, None] = {}
_live: weakref.WeakSet[Driver] = weakref.WeakSet()
_log = logging.getLogger("shoal")


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
# A pickled call of a CALLS chunk: (the function's name, for errors; the pickle).
Call = tuple[str, bytes]


class _Route:
    """Where a chunk's task results go, and how many are still to come."""

    __slots__ = ("remaining", "segments")

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.remaining = sum(seg[2] for seg in segments)

    def pieces(self, frm: int, count: int) -> list[tuple[Job, int, int, int]]:
        """(job, index in the job, offset in the range, n) for chunk tasks frm..frm+count."""
        out = []
        base = 0
        for job, start, n in self.segments:
            lo, hi = max(frm, base), min(frm + count, base + n)
            if lo < hi:
                out.append((job, start + lo - base, lo - frm, hi - lo))
            base += n
        return out


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
                f"hint: install this shoal ({_native.__version__}) into it: `{path} -m pip "
                "install shoal-*.whl` with the wheel built by `scripts/pythons` or `maturin "
                f"build --release` in a shoal checkout, or `{path} -m pip install "
                "/path/to/shoal-checkout` (needs Rust)"
            )
    _checked_pythons[path] = None
    return path


def heartbeat_interval(timeout: Optional[float]) -> float:
    """Workers beat several times per heartbeat timeout, at most every 5 s."""
    if timeout is None:
        return 5.0
    return max(0.05, min(5.0, timeout / 6))


# SIGTERM (a driver job hitting its time limit) and SIGHUP (a dropped ssh session) end every
# session the way Ctrl-C does, unless the program handles them itself.
_ENDING_SIGNALS = ("SIGTERM", "SIGHUP")
_handlers_pid: Optional[int] = None


def _install_signal_handlers() -> None:
    global _handlers_pid
    if _handlers_pid == os.getpid() or threading.current_thread() is not threading.main_thread():
        return
    _handlers_pid = os.getpid()
    for name in _ENDING_SIGNALS:
        sig = getattr(signal, name, None)
        try:
            if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_ending_signal)
        except (OSError, ValueError):
            pass


def _release_signal_handlers() -> None:
    """Give the process back the default SIGTERM/SIGHUP once it holds no session. A Python
    handler runs only when the main thread gets back to the interpreter: a process whose main
    thread then waits in C (a multiprocessing pool worker waiting for its next task, when the
    signal lands on another thread) would survive `Pool.terminate()` and hang its parent."""
    global _handlers_pid
    if _handlers_pid is None or threading.current_thread() is not threading.main_thread():
        return
    _handlers_pid = None
    for name in _ENDING_SIGNALS:
        sig = getattr(signal, name, None)
        try:
            if sig is not None and signal.getsignal(sig) is _on_ending_signal:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def _after_fork_in_child() -> None:
    """A forked child (multiprocessing's fork start method, a user's os.fork) owns none of
    the parent's sessions: forget them, and give it back the default signal handlers."""
    _live.clear()
    _release_signal_handlers()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _on_ending_signal(signum: int, _frame: Any) -> None:
    name = signal.Signals(signum).name
    if _handlers_pid != os.getpid():
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for d in list(_live):
        try:
            d.close(graceful=False, ending=("interrupted", f"the driver received {name}"))
        except Exception:
            pass
    # Then die of the signal, as the process would have without shoal.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


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
        forward_output: bool = True,
        transport: str = "auto",
        listen: Optional[str] = None,
    ) -> None:
        defaults = _backends.defaults(backend)
        for text in _backends.bare_sizes(backend, backend_options or {}):
            warnings.warn(text, UserWarning, stacklevel=3)  # the caller's Pool(...) line
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
        self._routes: dict[int, _Route] = {}
        self._task_failed = False
        self._broken: Optional[BaseException] = None
        self._closing = False
        self._closed = False
        # Set once the session is being torn down: late events are dropped, not delivered.
        self._dropping = False
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
        # In a notebook the engine's stderr bar would print raw lines: show a live display.
        notebook = progress and _progress.in_notebook()
        worker_env = dict(env or {})
        worker_env.setdefault("SHOAL_WORKER", "1")
        config = {
            "idle_timeout": idle_timeout,
            "heartbeat_interval": heartbeat_interval(heartbeat_timeout),
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
            progress=progress and not notebook,
            heartbeat_timeout=heartbeat_timeout,
            max_attempts=max_attempts,
            metadata=json.dumps(metadata) if metadata is not None else "null",
            transport=transport,
            listen=listen or "",
        )
        self.id: str = self._native.id
        self.path: str = str(self._native.path)
        with open(os.path.join(self.path, "session.json")) as f:
            self.transport: str = json.load(f).get("transport", "fs")
        self._by_value = self.transport == "tcp"
        if self._by_value:
            send_own_modules_by_value()  # the nodes have none of the driver's files
        self.calls = _calls.Calls(self.path)  # tasks named as the user sees them
        self._display = (
            _progress.NotebookProgress(self.id, backend, self.stats) if notebook else None
        )
        if _progress.in_notebook():
            _progress.stop_on_interrupt(lambda: _live)
        # Tasks' print()s reach this process's stdout/stderr (a cluster's logs are on a
        # shared filesystem, looked at less often).
        self.output = (
            _output.Forwarder(self.path, shared=backend != "local") if forward_output else None
        )
        self._collector = threading.Thread(
            target=self._collect, name=f"shoal-collect-{self.id}", daemon=True
        )
        self._collector.start()
        _live.add(self)
        _install_signal_handlers()

    # ------------------------------------------------------------------ submitting

    def default_chunksize(self, n: int) -> int:
        """multiprocessing's rule (about four chunks per worker), capped by maxtasksperchild."""
        if n == 0:
            return 1
        size = max(1, math.ceil(n / (self.workers * 4)))
        if self.maxtasksperchild:
            size = min(size, self.maxtasksperchild)
        return size

    def chunk_bounds(self, n: int, chunksize: Optional[int]) -> Iterator[tuple[int, int]]:
        """(start, stop) of each chunk of a map of `n` items. A `chunksize` cuts equal chunks.
        Without one, chunks shrink as the map goes (guided self-scheduling): each holds
        1/(2 x workers) of the items left, from about twice `default_chunksize` down to a
        sixteenth of it. Long early chunks keep per-chunk costs low; short last ones let the
        map end evenly, where equal chunks of multiprocessing's size left some workers
        running a whole chunk while the rest idled (1 s tasks on 24 workers: a tail of up to
        11 s; with a floor of a quarter, chunks of 3 tasks, still 2.1 s of idle CPU each).
        About twice as many chunks as multiprocessing's rule."""
        if chunksize is not None:
            for lo in range(0, n, chunksize):
                yield lo, min(n, lo + chunksize)
            return
        floor = max(1, math.ceil(self.default_chunksize(n) / 16))
        lo = 0
        while lo < n:
            size = max(floor, math.ceil((n - lo) / (2 * max(self.workers, 1))))
            if self.maxtasksperchild:
                size = min(size, self.maxtasksperchild)
            hi = min(n, lo + size)
            yield lo, hi
            lo = hi

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise SessionError(f"session {self.id} cannot take more work: {self._broken}")

    def put_function(self, fn: Callable[..., Any]) -> int:
        """Store a mapped function once; chunks refer to it by id. Release it with
        `release_function` once every chunk that needs it was submitted."""
        self._check_usable()
        try:
            data = _dumps(fn, self._by_value)
        except Exception as e:
            raise _diagnose(fn, (), 0, e) from None
        return int(self._native.put_blob(data))

    def release_function(self, fn_ref: int) -> None:
        try:
            self._native.release_blob(fn_ref)
        except Exception:
            pass  # the session ended: its work dir goes anyway

    def map_payload(
        self, fn: Callable[..., Any], fn_ref: int, items: Sequence[Any], start: int, star: bool
    ) -> bytes:
        """Pickle one chunk of a map; a PicklingError names the argument that failed."""
        try:
            return _dumps((MAP, fn_ref, star, items), self._by_value)
        except Exception as e:
            raise _diagnose(fn, items, start, e) from None

    def shape(self, resources: Optional[Mapping[str, Any]]) -> int:
        """The worker shape for a call's ``resources`` (docs/resources.md): checked against
        the backend's registry entry before anything is submitted; 0 for none."""
        if not resources:
            return 0
        if not isinstance(resources, Mapping):
            raise TypeError(
                f"resources must be a mapping of resource names to values, not "
                f"{type(resources).__name__}"
            )
        shape, _label = self._native.add_shape(json.dumps(dict(resources)))
        return int(shape)

    def submit_payload(
        self,
        payload: bytes,
        segments: list[Segment],
        blob: Optional[int] = None,
        shape: int = 0,
    ) -> int:
        """Publish one chunk (for workers of `shape`); its task results go to `segments` in
        order."""
        self._check_usable()
        ntasks = sum(seg[2] for seg in segments)
        # Under the lock: the route exists before the collector can see any event of it.
        with self._lock:
            chunk, first = self._native.submit(payload, ntasks, [blob] if blob else [], shape)
            self._routes[chunk] = _Route(segments)
            self.calls.record(first, segments)
            return int(chunk)

    def wait_room(self) -> None:
        """Block a feeder thread while the session has its window of outstanding chunks, so
        a long generator is consumed as workers keep up (files and memory stay bounded)."""
        self._native.wait_room()

    def map_chunks(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        chunksize: Optional[int],
        star: bool,
        job: Job,
        shape: int = 0,
    ) -> None:
        """Pickle and send a whole map chunk by chunk (no second copy of the input is made;
        chunks as `chunk_bounds` cuts them), then release the function. A PicklingError
        names the argument; chunks already sent run to completion."""
        fn_ref = self.put_function(fn)
        try:
            for lo, hi in self.chunk_bounds(len(items), chunksize):
                part = items[lo:hi]
                payload = self.map_payload(fn, fn_ref, part, lo, star)
                self.submit_payload(payload, [(job, lo, len(part))], fn_ref, shape)
                del payload
        finally:
            self.release_function(fn_ref)

    def pickle_call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Call:
        try:
            return _name(fn), _dumps((fn, args, kwargs), self._by_value)
        except Exception as e:
            raise _diagnose(fn, (*args, *kwargs.values()), 0, e) from None

    def submit_calls(self, calls: list[tuple[Job, int, Call]], shape: int = 0) -> list[int]:
        """Send pre-pickled calls, spread over enough chunks to keep every worker busy."""
        self._check_usable()
        # About four chunks per worker, as for map: a claimed chunk makes all its calls
        # running (no longer cancellable), so chunks stay small enough for cancel_futures.
        per = max(1, math.ceil(len(calls) / (self.workers * 4)))
        if self.maxtasksperchild:
            per = min(per, self.maxtasksperchild)
        chunks = []
        for lo in range(0, len(calls), per):
            part = calls[lo : lo + per]
            payload = _dumps((CALLS, None, False, [c[2] for c in part]), self._by_value)
            segments: list[Segment] = [(c[0], c[1], 1) for c in part]
            chunks.append(self.submit_payload(payload, segments, None, shape))
        return chunks

    def withdraw_where(self, unwanted: Callable[[Job, int, int], bool]) -> int:
        """Take back unclaimed chunks all of whose tasks are `unwanted` (e.g. cancelled
        futures); their tasks will never run. Returns the number of chunks withdrawn now
        (one sitting in a worker's inbox may follow shortly, or run after all)."""
        with self._lock:
            chunks = [
                c
                for c, route in self._routes.items()
                if route.segments and all(unwanted(*seg) for seg in route.segments)
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
            if self.output is not None and events:
                self.output.pump(catch_up=True)  # tasks' output before their results
            for ev in events:
                try:
                    self._handle(ev)
                except Exception:  # a bug here must not kill collection silently
                    _log.exception("shoal: internal error handling a %s event", ev[0])
            if self._closed and not events:
                return

    def _deliver(
        self, job: Job, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        """Hand results to a job; a raising callback is reported, and delivery goes on."""
        try:
            job._deliver_many(start, values, errors)
        except Exception:
            _log.exception("exception calling callback for %r", job)

    def _take(self, chunk: int, count: int) -> Optional[_Route]:
        """The chunk's route, counting `count` tasks resolved (dropped once all are)."""
        with self._lock:
            if self._dropping:
                return None
            route = self._routes.get(chunk)
            if route is None:
                return None
            route.remaining -= count
            if route.remaining <= 0:
                del self._routes[chunk]
            return route

    def _handle(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "result":
            self._on_result(*ev[1:])
        elif kind == "failed":
            self._on_failed(*ev[1:])
        elif kind == "fatal":
            self._fail_all(SessionError(ev[1]))
        elif kind == "started":
            with self._lock:
                route = self._routes.get(ev[1])
            for job, start, count in route.segments if route else []:
                job._started(start, count)
        elif kind == "withdrawn":
            with self._lock:
                self._routes.pop(ev[1], None)

    def _on_failed(
        self,
        chunk: int,
        first: int,
        frm: int,
        count: int,
        kind: str,
        message: str,
        worker: str,
        tail: str,
    ) -> None:
        route = self._take(chunk, count)
        if route is None:
            return
        self._task_failed = True
        self.calls.flush()  # so that `shoal logs` finds the tasks these errors name
        for job, index, _off, n in route.pieces(frm, count):
            errors: dict[int, BaseException] = {}
            for k in range(n):
                task = self._label(job, index + k)
                where = f"[session {self.id}" + (f", worker {worker}]" if worker else "]")
                if kind == "lost":
                    text = f"task {task} was lost: {message} {where}"
                    if tail.strip():
                        text += f"\nworker stderr (tail):\n{tail.rstrip()}"
                    errors[k] = WorkerLostError(text)
                elif kind == "unstartable":
                    # Its shape's workers can never start (docs/resources.md); it never ran.
                    errors[k] = SchedulerError(f"task {task} did not run: {message} {where}")
                else:
                    errors[k] = TaskError(f"task {task} failed: {message} {where}")
            self._deliver(job, index, [None] * n, errors)

    def _on_result(
        self,
        chunk: int,
        first: int,
        frm: int,
        count: int,
        skip: int,
        worker: str,
        payload: _native.Payload,
        err_ranges: dict[int, tuple[int, int]],
        chunk_error: Optional[str],
    ) -> None:
        route = self._take(chunk, count)
        if route is None:
            return
        failure: Optional[BaseException] = None
        values: list[Any] = []
        raw_errors: dict[int, Any] = {}
        if not payload:  # the part could not run at all
            failure = TaskError(chunk_error or "the chunk could not run on its worker")
        else:
            try:
                with payload.view() as data:  # the engine's buffer, uncopied
                    values, raw_errors = pickle.loads(data)
            except BaseException as exc:  # even SystemExit from a __reduce__
                pieces = route.pieces(frm, count)
                head, tail = pieces[0], pieces[-1]
                span = f"{self._label(head[0], head[1])}.."
                span += self._label(tail[0], tail[1] + tail[3] - 1)
                failure = TaskError(
                    f"the results of tasks {span} could not be unpickled in the driver: "
                    f"{type(exc).__name__}: {exc}"
                )
        if failure is not None:
            self._task_failed = True
            for job, index, _off, n in route.pieces(frm, count):
                self._deliver(job, index, [None] * n, dict.fromkeys(range(n), failure))
            return
        if raw_errors:
            self._task_failed = True
            self.calls.flush()  # so that `shoal logs` finds the tasks these errors name
        for job, index, off, n in route.pieces(frm, count):
            lo = skip + off
            part = values[lo : lo + n]
            # Each front end attaches the standard library's own traceback class.
            tb_cls = getattr(job, "_remote_traceback", RemoteTraceback)
            errors = {
                i - lo: self._rebuild(
                    raw_errors[i],
                    self._label(job, index + i - lo),
                    worker,
                    err_ranges.get(i),
                    tb_cls,
                )
                for i in raw_errors
                if lo <= i < lo + n
            }
            if len(part) < n:
                # Fewer values than tasks: never leave a task unresolved; say so loudly.
                self._task_failed = True
                short = TaskError(
                    f"worker {worker} returned {len(values)} results for a part of "
                    f"{skip + count} tasks (session {self.id}); the missing tasks fail"
                )
                for k in range(len(part), n):
                    errors[k] = short
                part = part + [None] * (n - len(part))
            self._deliver(job, index, part, errors)

    def _label(self, job: Job, index: int) -> str:
        return _calls.label(self.calls.number(job), index)

    def _rebuild(
        self,
        rec: Any,
        task: str,
        worker: str,
        err_range: Optional[tuple[int, int]],
        tb_cls: type = RemoteTraceback,
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
            f"task {task} failed on worker {worker} (session {self.id}; "
            f"`shoal logs {self.id} {task}`)"
        )
        detail = f"\n{where}"
        if tail:
            detail += f"\nstderr (tail):\n{tail}"
        exc.__cause__ = tb_cls(f'\n"""\n{tb_text}"""{detail}')
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
        for route in routes:
            for job, _start, _count in route.segments:
                try:
                    job._abort(exc)
                except Exception:
                    _log.exception("exception calling callback for %r", job)

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

    def close(
        self,
        *,
        graceful: bool,
        failed: bool = False,
        interrupted: bool = False,
        grace: float = 10.0,
        ending: Optional[tuple[str, str]] = None,
    ) -> Optional[str]:
        """Stop workers and record the outcome. Returns the kept work dir, if any. Safe to
        call from a callback (the collector thread) and from several threads at once.
        `interrupted`: the user ended the session early (Ctrl-C, an exception in the driver).
        `ending`: (state, reason) to record instead (e.g. a signal)."""
        with self._lock:
            if self._closing:
                return None
            self._closing = True
        if self.output is not None and not graceful:
            self.output.freeze()  # what the cancelled jobs write now is no task's output
        self._native.shutdown(grace if graceful else None)
        # The engine has stopped: the collector drains what is left and ends.
        self._closed = True
        if threading.current_thread() is not self._collector:
            self._collector.join(timeout=5)
        with self._lock:
            self._dropping = True
        broken = self._broken
        if self._routes:  # work abandoned (terminate, a break out of imap, exit)
            self._fail_all(SessionError(f"session {self.id} was shut down before this task ran"))
            interrupted = True
        state = _outcome(self, broken, failed, interrupted)
        message = str(broken) if broken is not None else None
        if ending is not None:
            # The reason is always recorded; a failure stays a failure (its logs are kept).
            reason = ending[1] if message is None else f"{ending[1]}; {message}"
            state, message = (state if state == "failed" else ending[0]), reason
        if self._display is not None:
            self._display.close(state)
        self.calls.flush()
        if self.output is not None:
            self.output.drain()  # the workers have stopped: what they wrote is complete
        kept = self._native.finish(state, message, self.keep_work_dir)
        _live.discard(self)
        if not _live:
            _release_signal_handlers()
        if kept is not None and state == "failed":
            print(
                f"shoal: session {self.id} {state}; work dir kept at {kept} "
                f"(see `shoal logs {self.id}`)",
                file=sys.stderr,
            )
        return None if kept is None else str(kept)


def _outcome(
    driver: Driver, broken: Optional[BaseException], failed: bool, interrupted: bool
) -> str:
    """How a session ended. Only a failure (a task failed, the session broke) keeps the work
    dir; `shoal cancel`, Ctrl-C and work the user abandoned are not failures."""
    if failed or driver._task_failed:
        return "failed"
    if broken is not None:
        cancelled = os.path.exists(os.path.join(driver.path, "control", "cancel"))
        return "cancelled" if cancelled else "failed"
    return "interrupted" if interrupted else "finished"


@atexit.register
def _shutdown_all() -> None:
    for d in list(_live):
        try:
            d.close(graceful=False, interrupted=True)
        except Exception:
            pass

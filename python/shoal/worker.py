"""The worker process: ``python -m shoal.worker SESSION_DIR [--worker-id ID]``, or with
``--connect HOST:PORT --fingerprint FP`` (and the token in ``SHOAL_TOKEN``) for a TCP session,
whose worker reads nothing from SESSION_DIR (it only names the session).

It claims assignments through the Rust protocol, runs their tasks, and publishes results in
parts with per-task stdout/stderr offsets and tracebacks. A task's exception (even SystemExit)
fails that task only, and so does a call that cannot be unpickled here; the worker goes on.
Results of slow tasks are published as the chunk goes, so a worker lost mid-chunk loses only
the task it was running (docs/protocol.md).

A worker whose job has a time limit (the job script exports it) stops before a task it could
not finish in time, and one that is preempted (SIGTERM) or reaches the limit gives the rest
of its attempt back, asking the running task for a checkpoint first (docs/checkpoints.md).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import pickle
import signal
import sys
import time
import traceback
from collections import OrderedDict

from shoal import _imports, _native
from shoal._pickling import dump_results as _dump
from shoal._pickling import dumps as _dumps
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
# The scheduler's "you are being taken off this node" signal: Slurm preemption (and the
# walltime's first signal), HTCondor vacate, SGE -notify's SIGUSR1 before a suspension and
# SIGUSR2 before a kill (Python's default for either would end the worker with no word).
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")
# A task is started only if the longest task seen so far, times this, ends before the
# job's time limit less the margin.
WALLTIME_SLACK = 1.25


def _default_signals() -> None:
    """The default dispositions of the worker's signals, in a process a task forked."""
    for name in (*PREEMPT_SIGNALS, "SIGALRM"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)  # the worker's pipe is not the child's to write to
    except ValueError:  # forked from a thread other than the main one
        pass


def _margin(limit: float) -> float:
    """Seconds before its job's end a worker stops (time to checkpoint and publish)."""
    return max(3.0, min(60.0, 0.1 * limit))


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
        # The running task as (callable, args, kwargs), for its checkpoint; None between
        # tasks. `in_chunk`: an attempt is claimed and not yet published to its end.
        self.current: Optional[tuple[Any, tuple, dict]] = None
        # How to find a task's (callable, args, kwargs) from its item, per chunk kind.
        self.target: Callable[[Any], tuple[Any, tuple, dict]] = lambda _: (None, (), {})
        self.in_chunk = False
        # A signal that came between tasks: (kind, reason), acted on at the next boundary.
        self.leaving: Optional[tuple[str, str]] = None
        self.resume_fn: Optional[Callable[[], Any]] = None
        self.releasing = False
        # The worker takes another chunk after this one (not at its maxtasksperchild).
        self.more = True
        self._pid = os.getpid()  # the worker's own (arm() sets it again)
        self.longest = 0.0
        walltime = worker.walltime
        self.deadline: Optional[float] = None
        self.limit_option = ""
        if walltime is not None:
            end, self.limit_option = walltime
            self.deadline = end - _margin(max(end - time.time(), 0.0))

    # ------------------------------------------------------------ time and signals

    def arm(self) -> None:
        """Catch the scheduler's preemption signals, and wake at this job's deadline."""
        self._pid = os.getpid()
        for name in PREEMPT_SIGNALS:
            signal.signal(getattr(signal, name), self._on_signal)
        if self.deadline is not None:
            signal.signal(signal.SIGALRM, self._on_signal)
            signal.setitimer(signal.ITIMER_REAL, max(self.deadline - time.time(), 0.01))
        # An idle worker waits in native code, which looks at signals once a second: the
        # wake-up pipe makes it look at once (the scheduler cancelling an idle worker's job,
        # as `terminate()` does, then ends it in milliseconds).
        wake_on = getattr(self.worker, "wake_on", None)
        if wake_on is not None:
            r, w = os.pipe()
            os.set_blocking(w, False)
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            wake_on(r)  # takes r over
        # A process a task forks (a multiprocessing pool) must not inherit these handlers:
        # its SIGTERM would give the worker's task back instead of ending it, and
        # `Pool.terminate()` would wait on it forever (joblib's test_nested_loop hung so).
        os.register_at_fork(after_in_child=_default_signals)

    def _walltime_reason(self) -> str:
        name = self.limit_option.split("=", 1)[0].strip() or "time"
        return (
            f"it ran into its worker job's time limit ({self.limit_option}); raise `{name}`, "
            "or let the task checkpoint (docs/checkpoints.md)"
        )

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._pid:
            # A child forked around the at-fork hook (os.fork from C): behave as a default.
            _default_signals()
            os.kill(os.getpid(), signum)
            return
        if self.releasing:
            return  # the job's processes may all get the signal, and the script passes it on
        if signum == signal.SIGALRM:
            kind, reason = "walltime", self._walltime_reason()
        else:
            kind = "preempted"
            reason = f"its worker was preempted ({signal.Signals(signum).name})"
        if self.in_chunk and self.current is not None:
            self.releasing = True
            self._release_now(kind, reason)  # does not return
        if self.leaving is None:
            self.leaving = (kind, reason)  # acted on at the next task boundary or claim

    def out_of_time(self) -> Optional[str]:
        """Why the next task should not start here (its job would end first), if so."""
        if self.deadline is None or self.longest <= 0:
            return None
        left = self.deadline - time.time()
        if left >= self.longest * WALLTIME_SLACK:
            return None
        return (
            f"{max(left, 0):.0f} s left before its job's time limit ({self.limit_option}) "
            f"and tasks here take up to {self.longest:.0f} s"
        )

    def _checkpoint(self) -> Optional[bytes]:
        """The running task's checkpoint (`checkpoint(*args, **kwargs) -> callable | None`
        on its callable), pickled; None when it has none or it failed."""
        if self.current is None:
            return None
        target, args, kwargs = self.current
        method = getattr(target, "checkpoint", None)
        if not callable(method):
            return None
        try:
            resume = method(*args, **kwargs)
            return None if resume is None else _dumps(resume)
        except BaseException:
            print("shoal worker: the task's checkpoint() failed:", file=sys.stderr)
            traceback.print_exc()
            return None

    def _release_now(self, kind: str, reason: str) -> None:
        """Give the rest of the attempt back from inside a running task, and exit."""
        checkpoint = self._checkpoint()
        self._publish(
            count=len(self.part.values),
            payload=None,
            last=False,
            release=(kind, reason),
            checkpoint=checkpoint,
        )
        what = "with a checkpoint" if checkpoint is not None else "without a checkpoint"
        print(f"shoal worker: {reason}: task given back {what}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _release_between(self) -> bool:
        """At a task boundary: give the rest back if a signal came or time is short."""
        why = self.out_of_time()
        if self.leaving is None and why is None:
            return False
        if self.leaving is not None:
            kind, reason = self.leaving
            # Time up between tasks after running some: nothing was cut, no attempt is due.
            # Time up before any task ran here: the job is shorter than the margin, and the
            # task is charged, so it fails after max_attempts naming the option to raise.
            if kind != "preempted" and not (kind == "walltime" and self.longest <= 0):
                kind = "yield"
        else:
            kind, reason = "yield", f"its worker stopped: {why}"
            self.leaving = (kind, reason)
        self._publish(count=len(self.part.values), payload=None, last=False, release=(kind, reason))
        return True

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
        resume: bool,
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
            self._ending()
            self._publish(count=ntasks - start, payload=b"", last=True, chunk_error=msg)
            return
        todo = items[start:]
        call: Callable[[Any], Any]
        if kind == MAP:
            assert fn is not None
            call = _star(fn) if star else fn
            self.target = lambda item: (fn, tuple(item) if star else (item,), {})
        else:
            call = _call
            todo = _LazyCalls(todo)
            self.target = lambda item: item if isinstance(item, tuple) else (None, (), {})
        self.resume_fn = None
        if resume:
            try:
                self.resume_fn = pickle.loads(self.worker.read_checkpoint(chunk, start))
            except BaseException:
                print("shoal worker: the task's checkpoint cannot be loaded:", file=sys.stderr)
                traceback.print_exc()
        self.in_chunk = True
        try:
            if self._run(call, todo):
                return  # given back (preempted, out of time): not the attempt's end
            self._ending()
            self._publish(count=len(self.part.values), payload=None, last=True)
        finally:
            self.in_chunk = False

    def stopping(self) -> Optional[str]:
        """Why this worker takes no further chunk (a signal came, or its job's time is too
        short for another task), if so."""
        return self.leaving[1] if self.leaving else self.out_of_time()

    def _ending(self) -> None:
        """The attempt's last part is next: a worker that stays looks for its next chunk
        while the part is written."""
        if self.more and self.stopping() is None:
            self.worker.claim_ahead()

    def _run(self, call: Callable[[Any], Any], todo: Any) -> bool:
        """Run the tasks: checked one by one (timing each) while they are slow, in a tight
        loop once the first PROBE tasks show they are tiny (unless careful or resuming).
        True if the attempt was given back before its end."""
        clock = time.perf_counter
        items = iter(todo)
        probing = not self.careful and self.resume_fn is None
        t_probe = clock()
        n = 0
        for item in items:
            if self._release_between():
                return True
            index = self.part.start + len(self.part.values)
            self.worker.running(self.chunk, self.attempt, index)
            t0 = clock()
            resume, self.resume_fn = self.resume_fn, None
            try:
                if resume is not None:
                    self.current = (resume, (), {})
                    value = resume()
                else:
                    self.current = self.target(item)
                    value = call(item)
            except _LoadFailed as exc:
                self.current = None
                self._failed_with(_load_error_record(*exc.args))
                continue
            except BaseException as exc:  # a task's SystemExit fails only that task
                self.current = None
                self._failed(exc)
                self._after_slow_task(clock() - t0)
                continue
            self.current = None
            self.part.values.append(value)
            took = clock() - t0
            self.longest = max(self.longest, took)
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
            if self._release_between():
                return True
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
                return False  # the slice ran short: the chunk is done
            if time.monotonic() - self.last_publish >= PUBLISH_EVERY:
                self._publish(count=len(values), payload=None, last=False)

    def _after_slow_task(self, took: float) -> None:
        if self.part.start + len(self.part.values) >= self.ntasks:
            # The chunk's last task: its value goes in the attempt's last part, written next
            # (two writes there cost a chunk of one slow task a second round of publishing,
            # ~7 ms on a network filesystem).
            return
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
        release: Optional[tuple[str, str]] = None,
        checkpoint: Optional[bytes] = None,
    ) -> None:
        part = self.part
        if count == 0 and not last and release is None:
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
                release,
                checkpoint,
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
            # Only the load is guarded: a GeneratorExit thrown at the yield (the chunk was
            # left early, e.g. given back on preemption) must end the generator.
            try:
                call = pickle.loads(blob)
            except BaseException as exc:
                call = _Unloadable(name, exc)
            yield call


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
    runner.arm()
    max_tasks = config.get("maxtasksperchild")
    done = 0
    reason = "maxtasksperchild"
    while True:
        why = runner.stopping()
        if why is not None:
            # Tickets still in the inbox go back to the queue at no cost when the job ends.
            print(f"shoal worker: stopping: {why}", file=sys.stderr)
            break
        item = worker.claim(None, lambda: runner.leaving is not None)
        if isinstance(item, str):
            reason = item
            break
        chunk, attempt, first, ntasks, start, careful, resume, payload = item
        done += ntasks - start
        runner.more = not (max_tasks and done >= max_tasks)
        runner.run_chunk(chunk, attempt, first, ntasks, start, careful, resume, payload)
        if not runner.more:
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

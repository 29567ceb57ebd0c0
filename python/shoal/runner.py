"""The run driver ``python -m shoal.runner RUN_ID [--db PATH]`` and its task function.

``shoal run`` registers a run, its tasks and a launch in the registry, then starts this driver
(in the foreground, where ``shoal`` shows its lines under a progress line and copies them to
the run's driver log, or detached, writing to that log). The driver runs the pending tasks on
a ``shoal.Pool`` of the run's backend and records each outcome as it arrives. ``run_task`` (on
a worker) runs one task's command as a subprocess and, before returning, atomically writes a
completion marker into the task's output dir, so a driver that died can be replaced without
running finished tasks again: ``shoal resume`` harvests those markers first.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from typing import Any, Optional

from shoal import _backends, _native

MARKER = ".shoal-task.json"
STARTED = ".shoal-task.started"
STDOUT = "stdout.txt"
STDERR = "stderr.txt"
# Where a run's options keep its per-task resource templates (shoal_runs::resources::KEY).
TASK_RESOURCES = "task_resources"
FLUSH_EVERY = 0.25
# Cluster backends default to this many workers (one job each) when the template says nothing.
DEFAULT_CLUSTER_WORKERS = 16

Outcome = tuple[
    int,
    int,
    str,
    Optional[int],
    Optional[float],
    Optional[float],
    Optional[float],
    Optional[str],
    Optional[str],
    Optional[str],
    Optional[int],
]


def _say(text: str) -> None:
    """One line for whoever watches the driver: ``shoal run``'s terminal or the driver log.
    Never fatal: a watcher that went away must not stop the run."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _host() -> str:
    # The same short name the Rust side compares pids against.
    return socket.gethostname().split(".")[0]


def _write_atomic(path: str, data: dict[str, Any]) -> None:
    # Readers see the whole marker or none; no fsync: it guards against killed processes,
    # not machine crashes, and would cost more than a no-op task.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read_marker(out_dir: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_libc: Any = None


def _die_with_worker() -> None:
    """In the command's process: die when the worker dies (killed with its driver), so a
    command never outlives the task that ran it and never finishes unrecorded."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _set_aside(out_dir: str, attempt: int) -> None:
    """Keep an earlier attempt's output under .attempt-N/ instead of overwriting it."""
    old = _read_marker(out_dir)
    if old is None or old.get("attempt") == attempt:
        return
    keep = os.path.join(out_dir, f".attempt-{old.get('attempt', 0)}")
    os.makedirs(keep, exist_ok=True)
    for name in (STDOUT, STDERR, MARKER):
        src = os.path.join(out_dir, name)
        if os.path.exists(src):
            os.replace(src, os.path.join(keep, name))


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one task's command; return (and write as the completion marker) its outcome.

    The command runs in the run's working directory with stdout/stderr captured to
    ``OUT/stdout.txt`` and ``OUT/stderr.txt``; SHOAL_RUN_ID, SHOAL_TASK, SHOAL_TASK_OUT and
    SHOAL_ATTEMPT are set. A command killed by signal N reports exit code 128 + N.
    """
    global _libc
    out_dir = spec["out_dir"]
    attempt = int(spec["attempt"])
    os.makedirs(out_dir, exist_ok=True)
    _set_aside(out_dir, attempt)
    host, pid = _host(), os.getpid()
    started = time.time()
    _write_atomic(
        os.path.join(out_dir, STARTED),
        {"attempt": attempt, "host": host, "pid": pid, "started": started},
    )
    env = dict(os.environ)
    env.pop("SHOAL_WORKER", None)
    env.update(spec.get("env") or {})
    env.update(
        SHOAL_RUN_ID=str(spec["run_id"]),
        SHOAL_TASK=str(spec["idx"]),
        SHOAL_TASK_OUT=out_dir,
        SHOAL_ATTEMPT=str(attempt),
    )
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    t0 = time.monotonic()
    error = None
    with (
        open(os.path.join(out_dir, STDOUT), "wb") as fo,
        open(os.path.join(out_dir, STDERR), "wb") as fe,
    ):
        try:
            proc = subprocess.Popen(
                spec["argv"],
                cwd=spec["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                env=env,
                preexec_fn=_die_with_worker if _libc else None,
            )
            code = proc.wait()
        except OSError as e:
            error = f"cannot run {spec['argv'][0]!r}: {e}"
            fe.write(f"shoal: {error}\n".encode())
            code = 127
    if code < 0:
        code = 128 - code
    record = {
        "idx": spec["idx"],
        "attempt": attempt,
        "launch": spec.get("launch"),
        "exit_code": code,
        "duration": time.monotonic() - t0,
        "started": started,
        "ended": time.time(),
        "host": host,
        "pid": pid,
        "error": error,
    }
    _write_atomic(os.path.join(out_dir, MARKER), record)
    return record


def _outcome(rec: dict[str, Any], session: Optional[str]) -> Outcome:
    code = rec.get("exit_code")
    return (
        int(rec["idx"]),
        int(rec["attempt"]),
        "done" if code == 0 else "failed",
        code,
        rec.get("duration"),
        rec.get("started"),
        rec.get("ended"),
        rec.get("host"),
        str(rec["pid"]) if rec.get("pid") is not None else None,
        session,
        rec.get("launch"),
    )


class _Cancelled(BaseException):
    """SIGTERM from `shoal cancel`."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Cancelled


def harvest(reg: Any, run_id: int, tasks: list[dict[str, Any]]) -> set[int]:
    """Record tasks whose completion marker (of their current attempt) exists but whose
    outcome never reached the registry; returns their indices."""
    found = []
    for t in tasks:
        rec = _read_marker(t["out_dir"])
        if rec is not None and rec.get("attempt") == t["attempt"] and rec.get("idx") == t["idx"]:
            found.append(_outcome(rec, t.get("session")))
    if found:
        reg.record(run_id, found)
    return {o[0] for o in found}


class _Recorder:
    """Batches outcomes into few registry transactions and tracks started tasks."""

    def __init__(self, reg: Any, run_id: int, todo: list[dict[str, Any]]) -> None:
        self.reg = reg
        self.run_id = run_id
        self.todo = {t["idx"]: t for t in todo}
        self.unstarted = set(self.todo)
        self.finished: set[int] = set()
        self.failed = 0
        self.batch: list[Outcome] = []
        self.last = time.monotonic()
        self.session: Optional[str] = None

    def add(self, rec: dict[str, Any]) -> None:
        o = _outcome(rec, self.session)
        self.batch.append(o)
        self.finished.add(o[0])
        self.unstarted.discard(o[0])
        if o[2] == "failed":
            self.failed += 1
            _say(f"task {o[0]} failed with exit code {o[3]}: shoal logs {self.run_id} {o[0]}")

    def tick(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < FLUSH_EVERY:
            return
        self.last = time.monotonic()
        if self.batch:
            self.reg.record(self.run_id, self.batch)
            self.batch = []
        started = [
            i
            for i in self.unstarted
            if os.path.exists(os.path.join(self.todo[i]["out_dir"], STARTED))
        ]
        if started:
            self.reg.mark_running(self.run_id, started)
            self.unstarted.difference_update(started)


def _pool_args(run: dict[str, Any], ntasks: int) -> tuple[int, dict[str, Any]]:
    options = dict(run.get("options") or {})
    # Per-task resources (`shoal run -R`): each task's come filled in with its row.
    options.pop(TASK_RESOURCES, None)
    workers = options.pop("workers", None)
    if workers is None:
        local = run["backend"] == "local"
        cap = (os.cpu_count() or 1) if local else DEFAULT_CLUSTER_WORKERS
        workers = max(1, min(cap, ntasks))
    return int(workers), options


def _session_path(pool: Any) -> str:
    """The pool's session dir (where its workers' logs are)."""
    native = getattr(getattr(pool, "_driver", None), "_native", None)
    path = getattr(native, "path", None)
    if path is not None:
        return str(path)
    return os.path.join(str(_native.default_work_dir()), pool.session)


def _preflight_failed(run_id: int, error: str, launch: dict[str, Any]) -> str:
    """What to tell the user when the pool could not start: nothing ran, and how to retry."""
    origin = launch.get("options_from") or "the run's options"
    return (
        f"error: {error}\n"
        f"run {run_id} failed before any task ran (no task was started). Its options came from "
        f"{origin}.\nhint: fix the cause, then `shoal resume {run_id}`: it re-reads the "
        f"template from shoal.toml; or give options there, e.g. "
        f"`shoal resume {run_id} --opt KEY=VALUE`"
    )


def _outcomes(pool: Any, task_fn: Any, specs: list[dict[str, Any]]) -> Any:
    """Each task's record as it arrives, an exception that names no task, or None every
    FLUSH_EVERY seconds without news. Tasks asking for the same resources travel in one
    ``imap_unordered`` (one worker shape, docs/resources.md); several run side by side."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        groups.setdefault(json.dumps(spec["resources"], sort_keys=True), []).append(spec)
    its = [
        pool.imap_unordered(task_fn, group, chunksize=1, resources=group[0]["resources"] or None)
        for group in groups.values()
    ]
    wait = FLUSH_EVERY / len(its)
    while its:
        for it in list(its):
            try:
                yield it.next(timeout=wait)
            except StopIteration:
                its.remove(it)
            except multiprocessing.TimeoutError:
                yield None
            except Exception as e:
                yield e


def drive(reg: Any, run_id: int) -> int:
    run = reg.run(run_id)
    launches = reg.launches(run_id)
    launch = launches[-1] if launches else {}
    reg.start_driver(run_id, os.getpid(), _host())
    open_tasks = reg.tasks(run_id, ["pending", "running"])
    harvested = harvest(reg, run_id, open_tasks)
    if harvested:
        _say(f"recorded {len(harvested)} tasks that had finished unrecorded")
    reg.set_states(run_id, ["running"], "pending")
    todo = reg.tasks(run_id, ["pending"])
    if not todo:
        status = reg.settle(run_id)
        _say(f"run {run_id} {status}")
        return 0 if status == "done" else 1
    workers, options = _pool_args(run, len(todo))
    env = {d["env"]: d["path"] for d in run.get("datasets") or [] if "env" in d}
    specs = [
        {
            "resources": t.get("resources") or {},
            "run_id": run_id,
            "idx": t["idx"],
            "attempt": t["attempt"],
            "launch": run.get("launch"),
            "argv": t["argv"],
            "out_dir": t["out_dir"],
            "cwd": run["cwd"],
            "env": env,
        }
        for t in todo
    ]
    os.makedirs(run["run_dir"], exist_ok=True)
    rec = _Recorder(reg, run_id, todo)
    signal.signal(signal.SIGTERM, _on_sigterm)
    errors: list[str] = []
    outcome = "finished"
    import shoal

    # Under `python -m` this module is __main__: take run_task from the importable module so
    # workers unpickle it by reference.
    from shoal.runner import run_task as task_fn

    t0 = time.monotonic()
    # `shoal run` warned about sizes given as bare numbers before launching: not again here.
    for text in _backends.bare_sizes(run["backend"], options):
        warnings.filterwarnings("ignore", message=re.escape(text))
    try:
        with shoal.Pool(
            workers,
            backend=run["backend"],
            keep_work_dir=True,
            metadata={"run": run_id, "name": run["name"]},
            **options,
        ) as pool:
            rec.session = pool.session
            reg.set_session(run_id, pool.session, _session_path(pool))
            _say(
                f"run {run_id}: {len(todo)} tasks on {workers} {run['backend']} workers "
                f"(session {pool.session})"
            )
            for item in _outcomes(pool, task_fn, specs):
                if isinstance(item, dict):
                    rec.add(item)
                elif item is not None:  # a lost worker or a broken session: no index known
                    if not errors:
                        _say(f"error: {item}")
                    errors.append(f"{type(item).__name__}: {item}")
                rec.tick()
    except KeyboardInterrupt:
        outcome = "interrupted"
    except _Cancelled:
        outcome = "cancelled"
    except Exception as e:  # the pool could not start (bad option, backend unavailable)
        outcome = "error"
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rec.tick(force=True)
    # Tasks that finished while the pool was stopping have markers but no recorded outcome.
    left = [t for t in todo if t["idx"] not in rec.finished]
    harvest(reg, run_id, left)
    elapsed = time.monotonic() - t0
    if outcome == "interrupted":
        reg.set_states(run_id, ["running"], "pending")
        reg.set_status(run_id, "interrupted", "interrupted (Ctrl-C)")
        _say(f"run {run_id} interrupted; `shoal resume {run_id}` finishes it")
        return 130
    if outcome == "error":
        reg.set_states(run_id, ["running"], "pending")
        reg.set_status(run_id, "failed", f"failed before any task ran: {errors[-1]}")
        _say(_preflight_failed(run_id, errors[-1], launch))
        return 2
    if outcome == "cancelled":
        reg.set_states(run_id, ["pending", "running"], "cancelled")
        reg.set_status(run_id, "cancelled", "cancelled by `shoal cancel`")
        _say(f"run {run_id} cancelled")
        return 143
    # Whatever is still open was lost (its worker died too often) or never ran.
    lost = reg.tasks(run_id, ["pending", "running"])
    if lost:
        reg.record(
            run_id,
            [
                (t["idx"], t["attempt"], "failed", None, None, None, None, None, None, None, None)
                for t in lost
            ],
        )
    status = reg.settle(run_id)
    if errors:
        reg.set_status(run_id, status, errors[0])
    counts = reg.run(run_id)["counts"]
    _say(
        f"run {run_id} {status}: {counts['done']} done, {counts['failed']} failed "
        f"in {elapsed:.1f}s · results in {run['run_dir']}"
    )
    return 0 if status == "done" else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.runner", description=__doc__)
    parser.add_argument("run_id", type=int)
    parser.add_argument("--db", help="registry path (default $SHOAL_HOME/runs.db)")
    args = parser.parse_args(argv)
    reg = _native.Registry(args.db)
    return drive(reg, args.run_id)


if __name__ == "__main__":
    sys.exit(main())

"""Tasks for the walltime and preemption tests: a long task made of steps that can checkpoint
(the protocol of docs/checkpoints.md), one that cannot, and a way for a task to be
"preempted" by sending its own worker the scheduler's signal once."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from shoal.worker import PREEMPT_SIGNALS


def _log(log: str, text: str) -> None:
    with open(log, "a") as f:
        f.write(f"{text}\n")


def _once(marker: str) -> bool:
    """True the first time it is called with this marker path (any process)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@contextmanager
def _signals_held() -> Iterator[None]:
    """The worker checkpoints a task from its signal handler, between any two statements; a
    step counted but not yet logged would be missing from the log (seen once in CI)."""
    held = {signal.SIGALRM, *(getattr(signal, name) for name in PREEMPT_SIGNALS)}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Steps:
    """`Steps()(n, dt, log)` sleeps `n` steps of `dt` seconds and returns `n`, writing each
    finished step to `log` (the work actually done). On a preemption or walltime signal the
    worker calls `checkpoint` with the same arguments: it returns the rest of the work."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, n: int, dt: float, log: str, preempt: Optional[str] = None) -> int:
        return self.resume(0, n, dt, log, preempt)

    def resume(self, start: int, n: int, dt: float, log: str, preempt: Optional[str]) -> int:
        self.done = start
        _log(log, f"start {start} pid {os.getpid()}")
        for i in range(start, n):
            if preempt is not None and i == n // 2 and _once(preempt):
                os.kill(os.getpid(), signal.SIGTERM)  # what the scheduler does
            time.sleep(dt)
            with _signals_held():
                self.done = i + 1
                _log(log, f"step {i}")
        return n

    def checkpoint(self, n: int, dt: float, log: str, preempt: Optional[str] = None) -> Any:
        return Rest(self, n, dt, log, preempt)


class Rest:
    """What a checkpoint returns: the rest of the work, run with no arguments, and itself
    checkpointable (asked again, with no arguments, if it is interrupted in turn)."""

    def __init__(self, steps: Steps, *args: Any) -> None:
        self.steps, self.args = steps, args

    def __call__(self) -> int:
        return self.steps.resume(self.steps.done, *self.args)

    def checkpoint(self) -> Rest:
        return Rest(self.steps, *self.args)


class NoCheckpoint(Steps):
    """The same work without a checkpoint: it restarts from step 0."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        return None


def steps_done(log: str) -> list[int]:
    with open(log) as f:
        return [int(line.split()[1]) for line in f if line.startswith("step ")]


def starts(log: str) -> list[int]:
    with open(log) as f:
        return [int(line.split()[1]) for line in f if line.startswith("start ")]


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def call(f: Callable[..., Any], *args: Any) -> Any:
    return f(*args)

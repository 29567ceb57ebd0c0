"""Task functions and worker-side hooks for the protocol tests (tests/test_protocol.py). They
live in an importable module so they are pickled by reference, as users' functions are."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def identity(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def explode_on_worker(message: str) -> str:
    """Unpickling helper: fine in the driver, raises where the worker loads the call."""
    if os.environ.get("SHOAL_WORKER"):
        raise RuntimeError(message)
    return message


class LoadsBadly:
    """Pickles fine in the driver; cannot be unpickled on a worker (like a class missing from
    the worker's environment, or a version mismatch)."""

    def __reduce__(self) -> Any:
        return (explode_on_worker, ("this call cannot be loaded here",))


def count_run(directory: str, x: Any, seconds: float = 0.0) -> Any:
    """Record one execution of task `x` (a file per run) and return it."""
    if seconds:
        time.sleep(seconds)
    with open(os.path.join(directory, f"{x}.{os.getpid()}.{time.monotonic_ns()}"), "w"):
        pass
    return x


def runs_of(directory: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in os.listdir(directory):
        key = name.split(".", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def kill_worker_once(directory: str, x: Any, marker: str) -> Any:
    """Run like count_run, but the first call kills its worker (SIGKILL) while running."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return count_run(directory, x)


def kill_worker_always(_: Any = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_after_first_result(marker: str) -> None:
    """Pool initializer: the worker exits right after publishing its first chunk's result,
    before it could do anything else (as if killed between two protocol steps)."""
    from shoal import worker

    original = worker._Runner.run_chunk

    def run_chunk(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
            os._exit(1)
        return out

    worker._Runner.run_chunk = run_chunk  # type: ignore[method-assign]


def record_publishes(log: str) -> None:
    """Pool initializer: each part the worker publishes is logged as `chunk count last`."""
    from shoal import worker

    original = worker._Runner._publish

    def publish(self: Any, **kwargs: Any) -> Any:
        out = original(self, **kwargs)
        with open(log, "a") as f:
            f.write(f"{self.chunk} {kwargs['count']} {int(kwargs['last'])}\n")
        return out

    worker._Runner._publish = publish  # type: ignore[method-assign]

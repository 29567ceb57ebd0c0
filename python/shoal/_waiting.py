"""Waits in the caller's thread that a signal can always end.

CPython runs a signal handler only in the main thread, and only once that thread is back in
the interpreter. A process-directed signal (Ctrl-C, `kill -INT`) may be delivered to any
thread that does not block it, and shoal's process has several (the engine, the collector,
TCP links). When another thread takes SIGINT, a main thread blocked in an untimed
`Event.wait()` or `Future.result()` never wakes to raise KeyboardInterrupt, and the driver
hangs with its jobs still queued. So every wait made for a caller is cut into short slices."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Optional, TypeVar

# How late a KeyboardInterrupt may come when the signal lands on another thread; a slice
# costs one futex wake-up.
SLICE = 0.2

T = TypeVar("T")


def remaining(deadline: Optional[float]) -> float:
    """The next slice to wait: SLICE, or less when `deadline` (monotonic) is nearer."""
    if deadline is None:
        return SLICE
    return min(SLICE, deadline - time.monotonic())


def deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _until(
    done: Callable[[], bool], wait: Callable[[float], Any], timeout: Optional[float]
) -> bool:
    """Wait with `wait(seconds)` until `done()`, in slices; False if `timeout` ran out."""
    end = deadline(timeout)
    while not done():
        left = remaining(end)
        if left <= 0:
            return False
        wait(left)
    return True


def wait_event(event: threading.Event, timeout: Optional[float] = None) -> bool:
    """`event.wait(timeout)`, in slices."""
    return _until(event.is_set, event.wait, timeout)


def _until_done(fut: cf.Future[Any], timeout: Optional[float]) -> None:
    _until(fut.done, lambda left: cf.wait((fut,), left), timeout)


class Future(cf.Future[T]):
    """A `concurrent.futures.Future` whose `result()` and `exception()` wait in slices.
    (`concurrent.futures.wait` and `as_completed` still wait in one call: they are the
    standard library's own.)"""

    def result(self, timeout: Optional[float] = None) -> T:
        _until_done(self, timeout)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        _until_done(self, timeout)
        return super().exception(0)

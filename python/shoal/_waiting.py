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
from typing import Any, Optional, TypeVar

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


def wait_event(event: threading.Event, timeout: Optional[float] = None) -> bool:
    """`event.wait(timeout)`, in slices."""
    end = deadline(timeout)
    while not event.is_set():
        left = remaining(end)
        if left <= 0:
            return False
        event.wait(left)
    return True


def _until_done(fut: cf.Future[Any], timeout: Optional[float]) -> None:
    end = deadline(timeout)
    while not fut.done():
        left = remaining(end)
        if left <= 0:
            return
        cf.wait((fut,), left)


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

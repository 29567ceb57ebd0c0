"""Batching of single calls (``apply_async``, ``Executor.submit``) into chunks.

Calls arriving within a couple of milliseconds of each other travel together, so a loop of
10,000 submits makes a handful of chunk files, not 10,000; a lone call still leaves at once.
While the session has its window of chunks outstanding, calls wait here and the next chunks
grow: the work dir holds a bounded number of files however many calls are submitted. Calls
of different worker shapes (``resources=``) travel in different chunks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from shoal._driver import Call, Driver, Job

DELAY = 0.002


class Batcher:
    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._cond = threading.Condition()
        self._buf: list[tuple[Job, int, Call, int]] = []
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="shoal-batcher", daemon=True)
        self._thread.start()

    def add(self, job: Job, index: int, blob: Call, shape: int = 0) -> None:
        with self._cond:
            if self._closed:
                raise ValueError("Pool not running")
            self._buf.append((job, index, blob, shape))
            if len(self._buf) == 1:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buf and not self._closed:
                    self._cond.wait()
                if not self._buf and self._closed:
                    return
            time.sleep(DELAY)
            self._send()

    def _send(self) -> None:
        with self._cond:
            batch, self._buf = self._buf, []
            self._busy = bool(batch)
        try:
            if batch:
                # Backpressure: while the session has its window of chunks out, calls pile
                # up here (in memory the caller already spent) and travel in bigger chunks.
                self._driver.wait_room()
                for shape in sorted({c[3] for c in batch}):
                    calls = [(c[0], c[1], c[2]) for c in batch if c[3] == shape]
                    self._driver.submit_calls(calls, shape)
        except BaseException as exc:
            for job, _index, _blob, _shape in batch:
                job._abort(exc)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def flush(self) -> None:
        """Send everything buffered now (before close/join/shutdown)."""
        self._send()
        with self._cond:
            while self._busy:
                self._cond.wait(0.05)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pending(self) -> list[Any]:
        with self._cond:
            return list(self._buf)

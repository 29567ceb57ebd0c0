"""One number for one task: the user's calls (a ``map``, an ``apply_async``, a ``submit``, a
joblib batch) are numbered 1, 2, ... in the order they reach the session, and a task is named
by its position in its call — ``5`` for the first call's task 5, ``3:5`` for the third's —
in error messages, ``shoal logs SESSION 3:5``, ``shoal show`` and ``shoal top``.

The engine numbers tasks across the whole session; the ``calls`` file in the session dir maps
those ranges onto calls, one line ``SESSION_FIRST COUNT CALL CALL_FIRST [NCALLS]`` per run of
tasks — a map's consecutive chunks make one line, and so do consecutive one-task calls (a
loop of ``submit``: NCALLS calls CALL, CALL+1, ... of one task each) — for the ``shoal``
command to read (``shoal_core::calls``).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

FILE = "calls"
# A run of tasks still growing (a map being sent chunk by chunk) is written at the latest
# this long after it started, so that `shoal logs` of a live session finds it.
FLUSH_EVERY = 1.0


def label(call: int, index: int) -> str:
    """How the user sees task `index` of call `call`."""
    return str(index) if call == 1 else f"{call}:{index}"


class Calls:
    def __init__(self, session_path: str) -> None:
        self._path = os.path.join(session_path, FILE)
        self._lock = threading.Lock()
        self._next = 1
        # [session first, count, call, call first, calls]
        self._run: Optional[list[int]] = None
        self._since = 0.0

    def number(self, job: Any) -> int:
        """The call number of `job`, given on first sight."""
        with self._lock:
            return self._number(job)

    def _number(self, job: Any) -> int:
        n = getattr(job, "_shoal_call", None)
        if n is None:
            n = self._next
            self._next += 1
            job._shoal_call = n
        return int(n)

    def record(self, first: int, segments: list[tuple[Any, int, int]]) -> None:
        """A chunk of session tasks first.. holds `segments` (job, index in job, count)."""
        with self._lock:
            for job, start, count in segments:
                call = self._number(job)
                run = self._run
                if run is not None and run[0] + run[1] == first:
                    more_of_one = run[4] == 1 and run[2] == call and run[3] + run[1] == start
                    next_single = (
                        count == 1 and start == 0 and run[3] == 0 and run[1] == run[4]
                    ) and call == run[2] + run[4]
                    if more_of_one or next_single:
                        run[1] += count
                        run[4] += 1 if next_single else 0
                        first += count
                        continue
                self._write()
                self._run, self._since = [first, count, call, start, 1], time.monotonic()
                first += count
            if time.monotonic() - self._since >= FLUSH_EVERY:
                self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        line = " ".join(map(str, run if run[4] > 1 else run[:4])) + "\n"
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # the session dir is gone (it ended): nobody will ask

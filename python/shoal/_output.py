"""Task output where people look: what workers write to stdout/stderr reaches the driver's own
``sys.stdout``/``sys.stderr`` (a terminal, a notebook cell), as with multiprocessing and loky.

Workers write to files in the session's log store (``logs/ID.out|.err``: the worker writes
them on a shared work dir; the TCP transport appends what arrives over the wire to the same
files), which ``shoal logs`` reads too. A thread of the driver tails them (every
``LOCAL_EVERY`` s, or ``SHARED_EVERY`` s on a cluster's shared filesystem, where each look is
a round trip); before results are handed out, forwarding catches up, so a task's output comes
before its result as with multiprocessing. Each look reads at most ``SLICE`` bytes per file,
so a task that prints 10 MB costs the driver ``SLICE`` bytes of memory at a time and never
slows the workers (they write to their own files, never to a pipe the driver must drain).
"""

from __future__ import annotations

import codecs
import os
import sys
import threading
import time
from typing import Any, Optional

# Bytes read per log file per pump: bounds the driver's memory whatever a task prints.
SLICE = 256 * 1024
# How often the logs are looked at (listed for new workers, read): a worker log on a
# cluster's shared filesystem costs a round trip per look, and a listing is the dearest
# call there (the driver's loop stays under 10 a second in all: docs/protocol.md).
LIST_EVERY = 2.0
LOCAL_EVERY = 0.05
SHARED_EVERY = 1.0
STREAMS = (("out", "stdout"), ("err", "stderr"))


class _Tail:
    """One log file: where forwarding got to, and a partial last line held back."""

    __slots__ = ("decoder", "fd", "offset", "path", "pending", "stream")

    def __init__(self, path: str, stream: str) -> None:
        self.path, self.stream = path, stream
        self.fd: Optional[int] = None
        self.offset = 0
        self.pending = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")


class Forwarder:
    """Copies new worker output from the session's log store to the driver's streams, whole
    lines at a time (lines of different workers do not interleave mid-line)."""

    def __init__(self, session_path: str, *, shared: bool) -> None:
        self._dir = os.path.join(session_path, "logs")
        self._every = SHARED_EVERY if shared else LOCAL_EVERY
        self._list_every = LIST_EVERY if shared else 0.0  # a local listing is cheap
        self._tails: dict[str, _Tail] = {}
        self._listed = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._frozen = False
        self._thread = threading.Thread(target=self._loop, name="shoal-output", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.pump()

    def pump(self, *, catch_up: bool = False) -> None:
        """Forward what is new: one slice per file, or with `catch_up` everything written
        so far (slice by slice: results about to be handed out come after their output, as
        with multiprocessing, and a task printing without end cannot hold them back)."""
        with self._lock:
            if self._frozen:
                return
            now = time.monotonic()
            if now - self._listed >= self._list_every:
                self._listed = now
                self._discover()
            for tail in self._tails.values():
                self._forward(tail)  # opens the file if need be
                if not catch_up or tail.fd is None:
                    continue
                try:
                    end = os.fstat(tail.fd).st_size
                except OSError:
                    continue
                while tail.offset < end and self._forward(tail):
                    pass

    def freeze(self) -> None:
        """Forward everything written so far and stop: what workers write from now on (the
        session is terminating them) stays in the logs. A cancelled job's stderr gets the
        scheduler's word on the cancel ("slurmstepd: *** JOB 5 ON n1 CANCELLED AT ..."), which
        is no task's output and would reach the user's terminal after every `with Pool()`."""
        self._halt()
        with self._lock:
            self._catch_up()
            self._frozen = True

    def drain(self) -> None:
        """Stop tailing and forward everything left, partial last lines included (the
        session ends; its workers have stopped). After `freeze`, only the partial lines."""
        self._halt()
        with self._lock:
            if not self._frozen:
                self._catch_up()
            for tail in self._tails.values():
                rest = tail.pending + tail.decoder.decode(b"", final=True)
                tail.pending = ""
                if rest:
                    self._write(tail.stream, rest)
                if tail.fd is not None:
                    os.close(tail.fd)
                    tail.fd = None

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _catch_up(self) -> None:
        self._discover()
        for tail in self._tails.values():
            while self._forward(tail):
                pass

    def _discover(self) -> None:
        try:
            names = os.listdir(self._dir)
        except OSError:
            return
        for name in sorted(names):
            stem, _, ext = name.rpartition(".")
            for suffix, stream in STREAMS:
                if ext == suffix and stem and name not in self._tails:
                    self._tails[name] = _Tail(os.path.join(self._dir, name), stream)

    def _forward(self, tail: _Tail) -> int:
        """Forward one slice of `tail`; returns how many bytes were read."""
        if tail.fd is None:
            try:
                tail.fd = os.open(tail.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return 0
        try:
            data = os.pread(tail.fd, SLICE, tail.offset)
        except OSError:
            return 0
        if not data:
            return 0
        tail.offset += len(data)
        text = tail.pending + tail.decoder.decode(data)
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) >= SLICE:
            cut = len(text)  # one enormous line: forward it in slices rather than hold it
        tail.pending = text[cut:]
        if cut:
            self._write(tail.stream, text[:cut])
        return len(data)

    @staticmethod
    def _write(stream: str, text: str) -> None:
        target: Any = getattr(sys, stream, None)
        if target is None:
            return
        try:
            target.write(text)
            target.flush()
        except Exception:
            pass  # a closed or broken driver stream must not break result collection

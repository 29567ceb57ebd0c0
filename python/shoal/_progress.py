"""Progress that suits a Jupyter notebook: one display updated in place (an HTML progress bar
with rate, ETA, workers and failures; plain text for other frontends), fed from the engine's
counters. Outside a notebook the engine draws its own bar on stderr instead.
"""

from __future__ import annotations

import contextvars
import html
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Optional

# How often the display is redrawn, and how far back the rate looks.
EVERY = 0.5
WINDOW = 20.0


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (not a terminal IPython, not a script)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


_watching = False


def stop_on_interrupt(live: Callable[[], Iterable[Any]]) -> None:
    """In a notebook, a cell the user interrupts (Kernel → Interrupt) stops the workers of
    every session that still had work: a pool kept across cells is not left computing. Its
    later use raises `SessionError` saying so. Sessions used in a `with` block have stopped
    already, on the way out of it."""
    global _watching
    if _watching:
        return
    import IPython

    from shoal.errors import SessionError

    def after_cell(result: Any) -> None:
        if not isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt):
            return
        for driver in list(live()):
            if driver.outstanding:
                driver._fail_all(
                    SessionError(f"session {driver.id} was stopped by a keyboard interrupt")
                )
                driver.close(graceful=False, failed=True)

    IPython.get_ipython().events.register("post_run_cell", after_cell)
    _watching = True


def _dur(secs: float) -> str:
    s = round(max(secs, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _rate(per_sec: float) -> str:
    if per_sec >= 1:
        return f"{per_sec:.1f}/s"
    if per_sec * 60 >= 1:
        return f"{per_sec * 60:.1f}/min"
    return f"{per_sec * 3600:.1f}/h"


class NotebookProgress:
    """A live display of a session's progress in the cell that opened it."""

    def __init__(self, session: str, backend: str, stats: Callable[[], dict[str, int]]) -> None:
        from IPython.display import display

        self._session, self._backend, self._stats = session, backend, stats
        self._start = time.monotonic()
        self._seen: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()
        self._last: dict[str, int] = {}
        self._handle: Any = display(self._bundle(self._last, None), raw=True, display_id=True)
        # Updates from the thread belong to this cell: it runs in a copy of the cell's context.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._loop,), name=f"shoal-progress-{session}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(EVERY):
            self._draw(None)

    def _draw(self, ended: Optional[str]) -> None:
        try:
            self._last = dict(self._stats())
        except Exception:
            pass  # the session ended under us: show what was last known
        try:
            self._handle.update(self._bundle(self._last, ended), raw=True)
        except Exception:
            pass

    def close(self, state: str) -> None:
        """Stop updating; the display keeps the final counts and how the session ended."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._draw(state)

    def _bundle(self, s: dict[str, int], ended: Optional[str]) -> dict[str, str]:
        now = time.monotonic()
        total, done = s.get("tasks_total", 0), s.get("tasks_done", 0)
        failed, workers = s.get("tasks_failed", 0), s.get("workers_running", 0)
        queued = s.get("workers_pending", 0)
        self._seen.append((now, done))
        while len(self._seen) > 2 and self._seen[0][0] < now - WINDOW:
            self._seen.popleft()
        t0, d0 = self._seen[0]
        elapsed = now - self._start
        rate = (done - d0) / (now - t0) if now - t0 > 1e-3 else 0.0
        if ended is not None:
            rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{done:,}/{total:,} tasks" if total else "no tasks yet"]
        if rate > 0:
            parts.append(_rate(rate))
        if ended is None and rate > 0 and total > done:
            parts.append(f"ETA {_dur((total - done) / rate)}")
        if ended is None:
            parts.append(f"{workers} workers" + (f" ({queued} queued)" if queued else ""))
        if failed:
            parts.append(f"{failed:,} failed")
        parts.append(f"{ended} after {_dur(elapsed)}" if ended else f"elapsed {_dur(elapsed)}")
        text = " · ".join(parts)
        pct = 100.0 * done / total if total else 0.0
        colour = {"finished": "#4c9f70", "failed": "#d1495b"}.get(ended or "", "#3d7dd8")
        where = f"shoal session {self._session} · {self._backend}"
        bar = (
            f'<div style="width:32em;height:0.9em;background:#e6e6e6;border-radius:3px">'
            f'<div style="width:{pct:.1f}%;height:100%;background:{colour};border-radius:3px">'
            "</div></div>"
        )
        markup = (
            f'<div class="shoal-progress" style="font-family:monospace;font-size:0.9em">'
            f"{bar}<div>{html.escape(text)}</div>"
            f'<div style="color:#888">{html.escape(where)}</div></div>'
        )
        return {"text/plain": f"{where}: {text}", "text/html": markup}

"""The shoal exception hierarchy. Every error shoal raises derives from ShoalError.

Errors about bad options are also ValueErrors (as the standard library's are), and pickling
errors are also pickle.PicklingErrors, so existing `except` clauses keep working.
"""

from __future__ import annotations

import pickle

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~8 ms per worker)

if TYPE_CHECKING:
    from typing import Any

    class RemoteTraceback(Exception):  # multiprocessing.pool's (typeshed does not list it)
        tb: str

        def __init__(self, tb: str) -> None: ...


__all__ = [
    "ConfigError",
    "PicklingError",
    "RemoteTraceback",
    "ResultPicklingError",
    "SchedulerError",
    "SessionError",
    "ShoalError",
    "TaskError",
    "TaskLoadError",
    "WorkerLostError",
]


class ShoalError(Exception):
    """Base class of every error raised by shoal."""


class ConfigError(ShoalError, ValueError):
    """An option, interpreter or work dir cannot be used; nothing was started."""


class PicklingError(ShoalError, pickle.PicklingError):
    """A function, argument or result cannot be pickled; the message names which."""


class ResultPicklingError(PicklingError):
    """A task's result could not be pickled on its worker. ``original`` is the exception the
    pickler raised; ``exc`` and ``value`` are the reprs ``multiprocessing``'s
    MaybeEncodingError carries. ``Pool`` raises it as a MaybeEncodingError too, as
    multiprocessing does; ``Executor`` and joblib raise ``original`` itself."""

    def __init__(self, exc: Any, value: Any) -> None:
        try:
            text = repr(value)
        except Exception:
            text = f"<{type(value).__name__} object>"
        self.exc, self.value = repr(exc), text[:200]
        super().__init__(self.exc, self.value)
        self.original = exc if isinstance(exc, BaseException) else None
        self.value_type = type(value).__name__

    def __str__(self) -> str:
        orig = self.original
        why = f"{type(orig).__name__}: {orig}" if orig is not None else self.exc
        return f"the result of this task (a {self.value_type}) cannot be pickled: {why}"


class SchedulerError(ShoalError):
    """The scheduler refused a request or could not be queried; its message is quoted."""


class SessionError(ShoalError):
    """The session cannot continue (cancelled, workers cannot start, submission refused)."""


class WorkerLostError(ShoalError):
    """A task's worker died (killed, out of memory, node lost) more often than allowed."""


class TaskError(ShoalError):
    """A task failed with an exception that could not be re-created in the driver."""


class TaskLoadError(TaskError):
    """A call could not be unpickled on its worker (a class missing there, a version
    mismatch, a ``__reduce__`` that raises there): that call fails, the others go on."""


def __getattr__(name: str) -> Any:
    # A task's traceback, attached as ``__cause__`` of the exception re-raised in the driver,
    # is the standard library's own class (Pool: this one; Executor: concurrent.futures's).
    # Imported on first use: workers import this module, and multiprocessing.pool costs
    # every worker ~15 ms of start-up.
    if name == "RemoteTraceback":
        from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]

        return RemoteTraceback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

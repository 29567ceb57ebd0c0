"""The shoal exception hierarchy. Every error shoal raises derives from ShoalError.

Errors about bad options are also ValueErrors (as the standard library's are), and pickling
errors are also pickle.PicklingErrors, so existing `except` clauses keep working.
"""

from __future__ import annotations

import pickle
from multiprocessing.pool import MaybeEncodingError

# A task's traceback, attached as ``__cause__`` of the exception re-raised in the driver, is the
# standard library's own class (Pool: this one; Executor: concurrent.futures.process's).
from multiprocessing.pool import RemoteTraceback as RemoteTraceback
from typing import Any

__all__ = [
    "ConfigError",
    "PicklingError",
    "RemoteTraceback",
    "ResultPicklingError",
    "SchedulerError",
    "SessionError",
    "ShoalError",
    "TaskError",
    "WorkerLostError",
]


class ShoalError(Exception):
    """Base class of every error raised by shoal."""


class ConfigError(ShoalError, ValueError):
    """An option, interpreter or work dir cannot be used; nothing was started."""


class PicklingError(ShoalError, pickle.PicklingError):
    """A function, argument or result cannot be pickled; the message names which."""


class ResultPicklingError(PicklingError, MaybeEncodingError):
    """A task's result could not be pickled on its worker. ``original`` is the exception the
    pickler raised; ``Pool`` raises this (a ``multiprocessing.pool.MaybeEncodingError``, as
    multiprocessing does), ``Executor`` and joblib raise ``original`` itself."""

    def __init__(self, exc: Any, value: Any) -> None:
        try:
            text = repr(value)
        except Exception:
            text = f"<{type(value).__name__} object>"
        MaybeEncodingError.__init__(self, exc, text[:200])
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

"""The shoal exception hierarchy. Every error shoal raises derives from ShoalError.

Errors about bad options are also ValueErrors (as the standard library's are), and pickling
errors are also pickle.PicklingErrors, so existing `except` clauses keep working.
"""

from __future__ import annotations

import pickle
from multiprocessing.pool import RemoteTraceback as _MPRemoteTraceback

__all__ = [
    "ConfigError",
    "PicklingError",
    "RemoteTraceback",
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


class SchedulerError(ShoalError):
    """The scheduler refused a request or could not be queried; its message is quoted."""


class SessionError(ShoalError):
    """The session cannot continue (cancelled, workers cannot start, submission refused)."""


class WorkerLostError(ShoalError):
    """A task's worker died (killed, out of memory, node lost) more often than allowed."""


class TaskError(ShoalError):
    """A task failed with an exception that could not be re-created in the driver."""


class RemoteTraceback(_MPRemoteTraceback):
    """The traceback of a task, attached as ``__cause__`` of the re-raised exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb

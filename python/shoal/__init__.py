"""shoal: multiprocessing.Pool, concurrent.futures and joblib on local processes, Slurm,
HTCondor and SGE — one engine, the same results everywhere.

    import shoal
    with shoal.Pool() as pool:
        print(pool.map(abs, range(-5, 5)))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal._native import __version__
from shoal.errors import (
    ConfigError,
    PicklingError,
    RemoteTraceback,
    SchedulerError,
    SessionError,
    ShoalError,
    TaskError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from shoal.executor import Executor
    from shoal.pool import Pool

__all__ = [
    "ConfigError",
    "Executor",
    "PicklingError",
    "Pool",
    "RemoteTraceback",
    "SchedulerError",
    "SessionError",
    "ShoalError",
    "TaskError",
    "WorkerLostError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Workers import `shoal` too: keep their start-up free of the driver-side modules.
    if name == "Pool":
        from shoal.pool import Pool

        return Pool
    if name == "Executor":
        from shoal.executor import Executor

        return Executor
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")

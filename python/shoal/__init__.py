"""shoal: multiprocessing.Pool, concurrent.futures and joblib on local processes, Slurm,
HTCondor and SGE — one engine, the same results everywhere.

    import shoal
    with shoal.Pool() as pool:
        print(pool.map(abs, range(-5, 5)))
"""

from __future__ import annotations

from shoal._native import __version__
from shoal.errors import (
    ConfigError,
    PicklingError,
    SchedulerError,
    SessionError,
    ShoalError,
    TaskError,
    TaskLoadError,
    WorkerLostError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~8 ms per worker)

if TYPE_CHECKING:
    from typing import Any

    from shoal.errors import RemoteTraceback
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
    "TaskLoadError",
    "WorkerLostError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Workers import `shoal` too: keep their start-up free of the driver-side modules (and of
    # multiprocessing.pool, where RemoteTraceback lives).
    if name == "Pool":
        from shoal.pool import Pool

        return Pool
    if name == "Executor":
        from shoal.executor import Executor

        return Executor
    if name == "RemoteTraceback":
        from shoal.errors import RemoteTraceback

        return RemoteTraceback
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")

"""Upstream tests that shoal does not run, each with the reason. Two reasons count: the test
asserts on the standard library's private internals, or shoal differs on purpose (README,
"Differences from multiprocessing"). A third kind, PENDING, names work another part of shoal
has not landed yet; the runner prints those, and each entry goes when that lands.

Entries are ``Class.test``, or ``test`` (any class whose name ends with Class), for the
unittest suites, and pytest node ids for joblib.
"""

from __future__ import annotations

import sys

PRIVATE = "asserts on the standard library's private internals"

PICKLES_MORE = (
    "shoal sends results with cloudpickle, so the lambda this test returns arrives as a working "
    "function (tests/test_pool.py checks MaybeEncodingError with a result nothing can pickle)"
)
MP_QUEUE = (
    "passes a multiprocessing.Queue to the workers, which only multiprocessing's own children "
    "can inherit (shoal workers are separate interpreters, possibly on other hosts); "
    "tests/test_executor.py checks BrokenExecutor from a failing initializer"
)
UNDECODABLE = (
    "a result that cannot be unpickled in the driver fails only its task (shoal.TaskError) and "
    "the executor goes on, where ProcessPoolExecutor breaks the whole pool (BrokenProcessPool)"
)

POOL: dict[str, str] = {
    "test_unpickleable_result": PICKLES_MORE,
    "test_make_pool": f"{PRIVATE} (len(Pool._pool), its list of Process objects)",
    "test_pool_worker_lifetime": f"{PRIVATE} (Pool._pool pids, Pool._repopulate_pool)",
}

FUTURES: dict[str, str] = {
    "FailingInitializerTest.test_initializer": MP_QUEUE,
    "test_error_during_result_unpickle_in_result_handler": UNDECODABLE,
    "test_exit_during_result_unpickle_in_result_handler": UNDECODABLE,
    "test_killed_child": f"{PRIVATE} (terminates a process from executor._processes)",
    "test_saturation": f"{PRIVATE} (len(executor._processes))",
    "test_idle_process_reuse_one": f"{PRIVATE} (len(executor._processes))",
    "test_idle_process_reuse_multiple": f"{PRIVATE} (len(executor._processes))",
    "test_max_tasks_per_child": f"{PRIVATE} (executor._processes)",
    "test_max_tasks_per_child_defaults_to_spawn_context": f"{PRIVATE} (executor._mp_context)",
    "test_python_finalization_error": f"{PRIVATE} (fails the 2nd thread the executor starts)",
    "test_processes_terminate": f"{PRIVATE} (executor._processes)",
    "test_context_manager_shutdown": f"{PRIVATE} (executor._processes)",
    "test_del_shutdown": f"{PRIVATE} (executor._executor_manager_thread, _processes)",
    "test_shutdown_no_wait": f"{PRIVATE} (executor._executor_manager_thread, _processes)",
    "test_shutdown_deadlock_pickle": f"{PRIVATE} (executor._executor_manager_thread)",
}

LOKY_DEFAULT = (
    "asserts that prefer='processes' picks LokyBackend, which holds only while loky is joblib's "
    "default: with shoal the default, joblib's rule keeps shoal, itself a process backend"
)

if sys.version_info < (3, 13):
    # 3.12 runs 3.13's suite (see README.md), which tests a fix to the standard library's own
    # concurrent.futures.Future that shoal's futures are (gh-132063): not shoal's to change.
    FUTURES["test_swallows_falsey_exceptions"] = (
        "tests a fix in Python 3.13's own concurrent.futures.Future, not in 3.12's"
    )

JOBLIB: dict[str, str] = {
    "test_parallel.py::test_backend_hinting_and_constraints[parallel_config]": LOKY_DEFAULT,
    "test_parallel.py::test_backend_hinting_and_constraints[parallel_backend]": LOKY_DEFAULT,
}

"""Make the standard library's process pools be shoal's, for the upstream test suites.

``install()`` replaces ``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor``
(the names the suites construct and compare with) by thin subclasses of ``shoal.Pool`` and
``shoal.Executor`` that carry the standard library's class names, so a suite's own subprocess
scripts (``from concurrent.futures import ProcessPoolExecutor``) get shoal too.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Where scripts/conformance unpacked a `test` suite this interpreter does not ship.
OVERLAY = "SHOAL_CONFORMANCE_OVERLAY"
PREAMBLE = f"import sys; sys.path.insert(0, {HERE!r}); import dropin; dropin.install()\n"


def use_overlay() -> None:
    """Let ``test.<suite>`` resolve to the unpacked suite, here and in workers."""
    overlay = os.environ.get(OVERLAY)
    if not overlay:
        return
    import test
    from test import support

    if overlay not in test.__path__:
        test.__path__.append(overlay)
    # A newer Python's suite (3.13's on 3.12) uses test.support helpers 3.12 lacks or takes
    # fewer arguments of: the thread sanitizer and the free-threaded build do not exist there.
    if not hasattr(support, "Py_GIL_DISABLED"):
        support.Py_GIL_DISABLED = False  # type: ignore[attr-defined]
    if not hasattr(support, "requires_gil_enabled"):
        support.requires_gil_enabled = lambda reason="": lambda f: f  # type: ignore[attr-defined]
    check, skip = support.check_sanitizer, support.skip_if_sanitizer
    if "thread" not in check.__code__.co_varnames:

        def check_sanitizer(*, thread: bool = False, **kw: Any) -> bool:
            return bool(kw and any(kw.values()) and check(**kw))

        def skip_if_sanitizer(reason: Any = None, *, thread: bool = False, **kw: Any) -> Any:
            return skip(reason, **kw) if kw and any(kw.values()) else lambda f: f

        support.check_sanitizer = check_sanitizer
        support.skip_if_sanitizer = skip_if_sanitizer


def _worker_setup(user: Any) -> None:
    use_overlay()
    if user is not None:
        initializer, initargs = pickle.loads(user)
        initializer(*initargs)


def _with_setup(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Workers find the unpacked suite before they unpickle anything from it (the user's
    initializer travels pickled inside ours)."""
    if not os.environ.get(OVERLAY):
        return kwargs
    from shoal._pickling import dumps

    kwargs = dict(kwargs)
    init, args = kwargs.pop("initializer", None), tuple(kwargs.pop("initargs", ()))
    if init is not None and not callable(init):
        raise TypeError("initializer must be a callable")
    kwargs["initializer"] = _worker_setup
    kwargs["initargs"] = (dumps((init, args)) if init is not None else None,)
    return kwargs


def install() -> None:
    import concurrent.futures
    import multiprocessing

    import shoal

    class Pool(shoal.Pool):
        def __init__(
            self,
            processes: Any = None,
            initializer: Any = None,
            initargs: Any = (),
            maxtasksperchild: Any = None,
            context: Any = None,
            **kwargs: Any,
        ) -> None:
            kw = _with_setup(dict(initializer=initializer, initargs=initargs, **kwargs))
            super().__init__(processes, maxtasksperchild=maxtasksperchild, context=context, **kw)

    class ProcessPoolExecutor(shoal.Executor):
        def __init__(self, max_workers: Any = None, mp_context: Any = None, **kwargs: Any) -> None:
            super().__init__(max_workers, mp_context, **_with_setup(kwargs))

    Pool.__module__ = ProcessPoolExecutor.__module__ = __name__
    multiprocessing.Pool = Pool  # type: ignore[assignment]
    concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc]
    use_overlay()
    _prefix_subprocess_scripts()


def _prefix_subprocess_scripts() -> None:
    """The suites start Python scripts (``-c CODE``) that construct a pool: give them the
    same replacement."""
    from test.support import script_helper

    if getattr(script_helper, "_shoal_dropin", False):
        return
    # assert_python_ok/_failure run their scripts through this one function.
    original = script_helper.run_python_until_end

    def run_python_until_end(*args: Any, **kw: Any) -> Any:
        args_ = list(args)
        if "-c" in args_:
            i = args_.index("-c") + 1
            args_[i] = PREAMBLE + args_[i]
        return original(*args_, **kw)

    script_helper.run_python_until_end = run_python_until_end
    script_helper._shoal_dropin = True  # type: ignore[attr-defined]


if __name__ == "__main__":  # pragma: no cover - a manual check
    install()
    print(sys.modules["multiprocessing"].Pool)

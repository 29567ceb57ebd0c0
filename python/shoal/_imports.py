"""Run a callback when a module is first imported, without importing it before anyone asks.
Workers use it to register shoal's joblib backends, and to adopt the driver's multiprocessing
authkey, only in tasks that import joblib or multiprocessing (each costs a worker's start
several milliseconds)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

_callbacks: dict[str, list[Callable[[Any], None]]] = {}


class _Finder:
    """A meta path finder that finds nothing itself: it lets the import system find a hooked
    top-level module, then runs its callbacks once the module has been executed."""

    busy = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if self.busy or fullname not in _callbacks:
            return None
        import importlib.util

        self.busy = True  # the search below must not come back here
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        loader = getattr(spec, "loader", None)
        if spec is None or not hasattr(loader, "exec_module"):
            return spec
        callbacks = _callbacks.pop(fullname)
        exec_module = loader.exec_module  # type: ignore[union-attr]

        def exec_and_call(module: Any) -> None:
            exec_module(module)
            for callback in callbacks:
                _call(callback, module)

        loader.exec_module = exec_and_call  # type: ignore[union-attr]
        return spec


_finder = _Finder()


def _call(callback: Callable[[Any], None], module: Any) -> None:
    try:
        callback(module)
    except Exception as exc:  # the import itself goes on
        print(f"shoal: setting up {module.__name__} failed: {exc}", file=sys.stderr)


def when_imported(name: str, callback: Callable[[Any], None]) -> None:
    """Call `callback(module)` once the top-level module `name` is imported (now, if it is)."""
    if name in sys.modules:
        _call(callback, sys.modules[name])
        return
    _callbacks.setdefault(name, []).append(callback)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


_joblib_pending = False


def _register_joblib(_joblib: Any) -> None:
    global _joblib_pending
    module = sys.modules.get("shoal.joblib")
    if module is not None and not hasattr(module, "register"):
        # shoal.joblib itself is importing joblib: it registers once it is complete.
        _joblib_pending = True
        return
    from shoal.joblib import register

    register()


def joblib_registration_pending() -> bool:
    return _joblib_pending


def joblib_backends_on_import() -> None:
    """A task's own ``Parallel(backend="shoal")`` (or "slurm", ...) finds shoal's backends."""
    when_imported("joblib", _register_joblib)

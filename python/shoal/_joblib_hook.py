"""Register shoal's joblib backends in a process the moment it imports joblib, without importing
joblib before anyone asks for it. Workers install this, so that a task calling
``Parallel(backend="shoal")`` (or "slurm", ...) finds shoal's backends as the driver does."""

from __future__ import annotations

import sys
from typing import Any, Optional


class _Finder:
    """A meta path finder that finds nothing itself: it lets the import system find `joblib`,
    then registers shoal's backends once the package has been executed."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if fullname != "joblib":
            return None
        import importlib.util

        sys.meta_path.remove(self)  # once is enough, and find_spec below must not recurse
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def _register() -> None:
    try:
        from shoal.joblib import register

        register()
    except Exception as exc:  # joblib too old or broken: the task's own import goes on
        print(f"shoal: cannot register the joblib backends: {exc}", file=sys.stderr)


def install() -> None:
    if "joblib" in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())

"""pytest plugin for joblib's own test_parallel.py: shoal's backend (``"shoal"``, on the local
engine) registered and made joblib's default before joblib's tests are imported, as joblib's
own CI does for its backends with JOBLIB_DEFAULT_PARALLEL_BACKEND."""

from __future__ import annotations

import os


def pytest_configure(config: object) -> None:
    os.environ.setdefault("SHOAL_BACKEND", "local")
    from shoal.joblib import register

    register(("shoal",), make_default=True)

"""The upstream test cases shoal runs, as unittest suites. The generated Pool test classes
live here (not in ``__main__``) so that workers import them by name, as CPython's own test
module's classes are: their methods are sent to workers as tasks."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import unittest

import dropin

dropin.install()
import test._test_multiprocessing as tm  # noqa: E402  (after install: it binds Pool)


class ShoalMixin(tm.ProcessesMixin):
    Pool = staticmethod(sys.modules["multiprocessing"].Pool)


POOL_CLASSES = []
for _base in (tm._TestPool, tm._TestPoolWorkerErrors, tm._TestPoolWorkerLifetime):
    _name = "WithShoal" + _base.__name__[1:]
    _cls = type(_name, (_base, ShoalMixin, unittest.TestCase), {"__module__": __name__})
    _cls.__qualname__ = _name
    globals()[_name] = _cls
    POOL_CLASSES.append(_cls)


def pool_suite(loader: unittest.TestLoader) -> unittest.TestSuite:
    suite = unittest.TestSuite()
    for cls in POOL_CLASSES:
        suite.addTests(loader.loadTestsFromTestCase(cls))
    suite.addTest(tm.TestInitializers("test_pool_initializer"))
    return suite


def futures_suite(loader: unittest.TestLoader) -> unittest.TestSuite:
    try:
        pkg = importlib.import_module("test.test_concurrent_futures")
    except ImportError:
        raise SystemExit(
            f"{sys.executable} ships no test.test_concurrent_futures\n"
            "hint: run scripts/conformance, which unpacks it from Debian's Python test suite"
        ) from None
    if hasattr(pkg, "__path__"):  # 3.12+: a package of test modules
        names = [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
        modules = [importlib.import_module(n) for n in names if n.rsplit(".", 1)[1][:5] == "test_"]
    else:
        modules = [pkg]
    suite = unittest.TestSuite()
    for module in modules:
        for name in sorted(vars(module)):
            obj = getattr(module, name)
            if (
                isinstance(obj, type)
                and issubclass(obj, unittest.TestCase)
                and name.startswith("ProcessPoolSpawn")
            ):
                suite.addTests(loader.loadTestsFromTestCase(obj))
    return suite

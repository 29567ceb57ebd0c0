"""Run the standard library's own Pool and concurrent.futures tests, and joblib's own
test_parallel.py, against shoal; print per-suite counts and fail on any failure that is not
in allowlist.py.

    python tests/conformance/run.py [pool] [futures] [joblib] [--all] [-k SUBSTRING] [-v]

``pool``: CPython's ``_TestPool``, ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime`` and
``TestInitializers.test_pool_initializer`` (test._test_multiprocessing) with
``multiprocessing.Pool`` replaced by ``shoal.Pool``. ``futures``: every ProcessPoolExecutor test
class of test.test_concurrent_futures (the spawn variant: shoal workers are fresh interpreters,
so the fork and forkserver variants would run the same tests twice more) with
``ProcessPoolExecutor`` replaced by ``shoal.Executor``. ``joblib``: joblib.test.test_parallel
with shoal's backend registered as joblib's default. ``--all`` also runs allow-listed tests.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import subprocess
import sys
import time
import unittest
from typing import Any, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import allowlist  # noqa: E402
import dropin  # noqa: E402

dropin.install()
import suites  # noqa: E402

# A test that takes longer than this is stuck: dump every thread's stack and stop.
TEST_TIMEOUT = float(os.environ.get("SHOAL_CONFORMANCE_TIMEOUT", "300"))


def _tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _tests(t)
        else:
            yield t


def _allowed(test: unittest.TestCase, allowed: dict[str, str]) -> str | None:
    """The reason `test` is allow-listed: by method name, or by "Class.method" where the
    test's class name ends with Class (the suites prefix the executor kind)."""
    name, cls = test._testMethodName, type(test).__name__
    for key, reason in allowed.items():
        owner, _, method = key.rpartition(".")
        if method == name and cls.endswith(owner):
            return reason
    return None


class Result(unittest.TextTestResult):
    def startTest(self, test: unittest.TestCase) -> None:
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        self._t0 = time.monotonic()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)


def run_unittest(name: str, suite: unittest.TestSuite, allowed: dict[str, str], args: Any) -> int:
    selected = unittest.TestSuite()
    excluded = []
    for t in _tests(suite):
        if args.k and args.k not in t.id():
            continue
        reason = _allowed(t, allowed)
        if reason and not args.all:
            excluded.append((t.id(), reason))
            continue
        selected.addTest(t)
    print(
        f"\n== {name}: {selected.countTestCases()} tests, {len(excluded)} allow-listed", flush=True
    )
    for tid, reason in excluded:
        if args.verbose or reason.startswith("PENDING"):
            print(f"   allow-listed {tid}: {reason}")
    runner = unittest.TextTestRunner(
        stream=sys.stdout, verbosity=2 if args.verbose else 1, resultclass=Result
    )
    t0 = time.monotonic()
    result = runner.run(selected)
    bad = [t for t, _ in result.failures + result.errors + result.unexpectedSuccesses]
    unexpected = [t for t in bad if not _allowed(t, allowed)]
    passed = result.testsRun - len(bad) - len(result.skipped) - len(result.expectedFailures)
    print(
        f"{name}: {passed} passed, {len(unexpected)} failed, {len(bad) - len(unexpected)} "
        f"allow-listed failed, {len(result.skipped)} skipped, {len(excluded)} not run "
        f"(allow-list) in {time.monotonic() - t0:.0f} s"
    )
    for t in unexpected:
        print(f"   FAILED {t.id()}")
    return len(unexpected)


def run_joblib(args: Any) -> int:
    """joblib's tests are pytest tests: run them in a child pytest with our plugin."""
    import joblib.test.test_parallel as tp

    cmd = [
        sys.executable,
        "-m",
        "pytest",
        tp.__file__,
        "-p",
        "joblib_default",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        os.path.dirname(tp.__file__),
        "-o",
        f"timeout={int(TEST_TIMEOUT)}",
    ]
    if args.k:
        cmd += ["-k", args.k]
    if not args.all:
        for node in allowlist.JOBLIB:
            cmd += ["--deselect", node]
    path = [HERE, os.path.join(HERE, "site"), os.environ.get("PYTHONPATH", "")]
    # joblib's tests run every registered backend name, shoal's cluster names included: on
    # this machine's engine they all run locally (with a scheduler on PATH they would submit
    # real jobs, as the user running the suite).
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        SHOAL_JOBLIB_ENGINE="local",
    )
    print(
        f"\n== joblib: {tp.__file__} with shoal as the default backend, "
        f"{len(allowlist.JOBLIB)} allow-listed",
        flush=True,
    )
    return subprocess.call(cmd, env=env, cwd=HERE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("suites", nargs="*", default=["pool", "futures", "joblib"])
    ap.add_argument("--all", action="store_true", help="run allow-listed tests too")
    ap.add_argument("-k", help="only tests whose id contains this")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    loader = unittest.TestLoader()
    failed = 0
    for name in args.suites:
        if name == "pool":
            failed += run_unittest("pool", suites.pool_suite(loader), allowlist.POOL, args)
        elif name == "futures":
            failed += run_unittest("futures", suites.futures_suite(loader), allowlist.FUTURES, args)
        elif name == "joblib":
            failed += run_joblib(args)
        else:
            ap.error(f"unknown suite {name!r}: pool, futures or joblib")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The protocol's scale limits (docs/protocol.md, "Bounded files and memory"), measured:

(1) files in the work dir at any moment, per 1,000 tasks, for map over 1,000,000 items,
    imap_unordered over a 200,000-item generator and 100,000 Executor.submit calls
    (target: at most 1 file per 1,000 tasks);
(2) worker memory over 40 successive maps, each with a new closure over 10 MiB
    (target: every worker under 100 MiB RSS);
(3) driver memory: Pool.map over a 200 MiB input, peak RSS above the baseline
    (target: at most 1.3 x the input).

``bench.py`` measures the interpreter it runs under; ``--json`` prints one JSON line (what the
``run`` script uses to put two builds side by side).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import shoal

WORKERS = 2
MIB = 1 << 20


def count_files(root: str) -> int:
    n = 0
    for _dirpath, _dirs, files in os.walk(root):
        n += len(files)
    return n


class FileSampler:
    """Counts the files under a session dir every few milliseconds; keeps the maximum."""

    def __init__(self, root: str) -> None:
        self.root, self.most, self._stop = root, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, count_files(self.root))
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.most


def noop(x: Any) -> Any:
    return x


def files_per_1000(name: str, ntasks: int, work: Callable[[Any], None], make: Callable) -> dict:
    with make() as pool:
        sampler = FileSampler(pool._driver.path)
        t = time.perf_counter()
        work(pool)
        took = time.perf_counter() - t
        most = sampler.stop()
    return {
        "case": name,
        "tasks": ntasks,
        "max_files": most,
        "per_1000": most / (ntasks / 1000),
        "seconds": took,
    }


def bench_files() -> list[dict]:
    pool = lambda: shoal.Pool(WORKERS)  # noqa: E731
    cases = [
        files_per_1000("map 1,000,000", 1_000_000, lambda p: p.map(noop, range(1_000_000)), pool),
        files_per_1000(
            "imap_unordered 200,000 (generator)",
            200_000,
            lambda p: sum(1 for _ in p.imap_unordered(noop, (i for i in range(200_000)))),
            pool,
        ),
    ]

    def submits(ex: shoal.Executor) -> None:
        futs = [ex.submit(noop, i) for i in range(100_000)]
        cf.wait(futs)

    cases.append(
        files_per_1000("Executor.submit 100,000", 100_000, submits, lambda: shoal.Executor(WORKERS))
    )
    return cases


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def worker_pids(path: str) -> list[int]:
    pids = []
    wd = os.path.join(path, "workers")
    for name in os.listdir(wd) if os.path.isdir(wd) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(wd, name)) as f:
                    pids.append(int(json.load(f)["pid"]))
            except (OSError, ValueError, KeyError):
                pass
    return pids


def bench_worker_memory() -> dict:
    most = 0
    with shoal.Pool(WORKERS) as pool:
        for i in range(40):
            big = os.urandom(10 * MIB)

            def task(x: int, big: bytes = big, i: int = i) -> int:
                return len(big) + x + i

            pool.map(task, range(WORKERS * 4))
            for pid in worker_pids(pool._driver.path):
                most = max(most, rss_of(pid))
    return {"max_worker_rss_mib": most / MIB}


DRIVER_PROBE = r"""
import os, shoal
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
def size(b): return len(b)
with shoal.Pool(2) as pool:
    pool.map(size, [b"x"] * 8)
    base = status("VmRSS")  # what the driver holds now, before the input exists
    data = [os.urandom(1 << 20) for _ in range(200)]
    assert sum(pool.map(size, data)) == 200 << 20
    peak = status("VmHWM")  # the most it ever held
print((peak - base) / (200 << 20))
"""


def bench_driver_memory() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", DRIVER_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    return {"driver_peak_over_input": float(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    res = {
        "shoal": shoal.__version__,
        "files": bench_files(),
        **bench_worker_memory(),
        **bench_driver_memory(),
    }
    if args.json:
        print(json.dumps(res))
        return
    report([("this build", res)])


def report(builds: list[tuple[str, dict]]) -> None:
    names = [n for n, _ in builds]
    print("\n(1) files in the work dir at once, per 1,000 tasks (target <= 1)")
    print(f"  {'case':<40}" + "".join(f"{n:>22}" for n in names))
    for i, case in enumerate(builds[0][1]["files"]):
        cells = [
            f"{b['files'][i]['per_1000']:.3f} ({b['files'][i]['max_files']} files)"
            for _, b in builds
        ]
        print(f"  {case['case']:<40}" + "".join(f"{c:>22}" for c in cells))
    print("\n(2) largest worker RSS over 40 maps with a new 10 MiB closure each (target < 100 MiB)")
    print("  " + "".join(f"{n}: {b['max_worker_rss_mib']:.0f} MiB   " for n, b in builds))
    print("\n(3) driver peak RSS above baseline, Pool.map over 200 MiB (target <= 1.3x the input)")
    print("  " + "".join(f"{n}: {b['driver_peak_over_input']:.2f}x   " for n, b in builds))
    this = builds[-1][1]
    ok = (
        all(c["per_1000"] <= 1 for c in this["files"])
        and this["max_worker_rss_mib"] < 100
        and this["driver_peak_over_input"] <= 1.3
    )
    print(f"\ntargets for {builds[-1][0]}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()

"""shoal local backend vs multiprocessing.Pool(2) and joblib/loky, measured in one run.

(a) 100,000 no-op tasks through map: throughput on warm pools (pool start-up is reported
    separately, since every library pays it once per pool, not per map).
(b) 1,000 tasks of 10 ms on 2 workers: wall time against the ideal 5.0 s.
Timings are medians of --repeat runs; ratios are shoal's time over the baseline's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import joblib

import shoal

sys.path.insert(0, os.path.dirname(__file__))
from tasks import noop, sleep10ms

WORKERS = 2


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_startup(repeat: int) -> dict[str, float]:
    def shoal_start():
        with shoal.Pool(WORKERS) as p:
            p.map(noop, range(WORKERS))

    def mp_start():
        with multiprocessing.Pool(WORKERS) as p:
            p.map(noop, range(WORKERS))

    def loky_start():
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor(max_workers=WORKERS, kill_workers=True).shutdown(wait=True)
        joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(noop)(i) for i in range(WORKERS))

    return {
        "shoal": timed(shoal_start, repeat),
        "multiprocessing": timed(mp_start, repeat),
        "joblib/loky": timed(loky_start, repeat),
    }


def bench_map(n: int, fn, repeat: int) -> dict[str, float]:
    out = {}
    items = range(n)
    with shoal.Pool(WORKERS) as p:
        p.map(noop, range(WORKERS * 4))
        out["shoal"] = timed(lambda: p.map(fn, items), repeat)
    with multiprocessing.Pool(WORKERS) as p:
        p.map(noop, range(WORKERS * 4))
        out["multiprocessing"] = timed(lambda: p.map(fn, items), repeat)
    par = joblib.Parallel(n_jobs=WORKERS, backend="loky")
    par(joblib.delayed(noop)(i) for i in range(WORKERS * 4))
    out["joblib/loky"] = timed(lambda: par(joblib.delayed(fn)(i) for i in items), repeat)
    return out


def table(title: str, res: dict[str, float], unit_n: int, ideal: float | None = None) -> None:
    print(f"\n{title}")
    print(f"  {'library':<18}{'time':>10}{'tasks/s':>14}{'shoal ÷ this':>15}")
    for name, t in res.items():
        ratio = res["shoal"] / t
        print(f"  {name:<18}{t:>9.3f}s{unit_n / t:>14,.0f}{ratio:>14.2f}x")
    if ideal is not None:
        over = (res["shoal"] / ideal - 1) * 100
        print(f"  ideal {ideal:.2f} s; shoal is {over:+.1f}% from ideal (target: within 5%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(
        f"shoal {shoal.__version__} · python {sys.version.split()[0]} · joblib "
        f"{joblib.__version__} · {os.cpu_count()} CPUs · {WORKERS} workers · median of "
        f"{args.repeat}"
    )
    start = bench_startup(args.repeat)
    table("pool start-up (create, run 2 no-ops, shut down)", start, WORKERS)
    a = bench_map(100_000, noop, args.repeat)
    table("(a) 100,000 no-op tasks via map (warm pool)", a, 100_000)
    ok_a = a["shoal"] <= a["multiprocessing"]
    b = bench_map(1_000, sleep10ms, args.repeat)
    table("(b) 1,000 tasks of 10 ms on 2 workers", b, 1_000, ideal=5.0)
    ok_b = b["shoal"] <= 5.0 * 1.05
    print(
        f"\ntargets: (a) throughput >= multiprocessing: {'met' if ok_a else 'NOT met'}; "
        f"(b) within 5% of 5.0 s: {'met' if ok_b else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

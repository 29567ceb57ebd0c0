"""shoal's local backend against what it replaces, measured side by side in one run.

cold  `with Pool(2) as p: p.map(noop, range(100))` in a running program (cold.py, a small
      script of its own): shoal (workers forked by its template process), shoal with spawned
      workers (SHOAL_LOCAL_TEMPLATE=0, what the template replaces), multiprocessing with fork,
      and with forkserver (Python 3.14's default; its server is started once per program, as
      shoal's template), with where shoal's time goes and what each program's first pool
      cost.
(a)   100,000 no-op tasks through map on warm pools: throughput.
(c)   1,000,000 no-op tasks through map on warm pools: time.
(b)   1,000 tasks of 10 ms on 2 workers: wall time against the ideal 5.0 s.
stop  `break` out of an imap of 0.2 s tasks, then leave the `with` block: time until the
      workers are gone.
Runs of the libraries are interleaved, so a busy machine slows them alike; times are medians
of --repeat runs; ratios are shoal's time over the baseline's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import joblib

import shoal

sys.path.insert(0, os.path.dirname(__file__))
from tasks import noop, sleep10ms, sleep200ms

WORKERS = 2


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_cold(repeat: int) -> dict[str, Any]:
    # In a program of its own: see cold.py.
    out = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "cold.py"), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def cold_report(cold: dict[str, Any]) -> dict[str, float]:
    """Print the cold table, shoal's phases and the first pools; return the pool times."""
    res = {k: v for k, v in cold.items() if isinstance(v, float)}
    table("cold: with Pool(2) as p: p.map(noop, range(100))", res, 100)
    for name in ("shoal", "shoal, spawned workers"):
        print(f"  where {name}'s time goes (medians):")
        for phase, t in cold[f"{name} phases"].items():
            print(f"    {phase:<40}{t * 1e3:>7.1f}ms")
    print("  a program's first pool (starts the template, the forkserver):")
    for name, t in cold["first pool of the program"].items():
        print(f"    {name:<40}{t * 1e3:>7.1f}ms")
    return res


def bench_map(n: int, fn: Callable[[int], int], repeat: int, loky: bool = True) -> dict[str, float]:
    items = range(n)
    with shoal.Pool(WORKERS) as p, multiprocessing.Pool(WORKERS) as q:
        p.map(noop, range(WORKERS * 4))
        q.map(noop, range(WORKERS * 4))
        fns: dict[str, Callable[[], object]] = {
            "shoal": lambda: p.map(fn, items),
            "multiprocessing": lambda: q.map(fn, items),
        }
        if loky:
            par = joblib.Parallel(n_jobs=WORKERS, backend="loky")
            par(joblib.delayed(noop)(i) for i in range(WORKERS * 4))
            fns["joblib/loky"] = lambda: par(joblib.delayed(fn)(i) for i in items)
        return interleaved(fns, repeat)


def bench_stop(repeat: int) -> dict[str, float]:
    """From a `break` out of imap to the end of the `with` block (workers gone)."""

    def shoal_stop() -> float:
        with shoal.Pool(WORKERS) as p:
            for _ in p.imap(sleep200ms, range(100)):
                break
            t = time.perf_counter()
        return time.perf_counter() - t

    def mp_stop() -> float:
        with multiprocessing.Pool(WORKERS) as p:
            for _ in p.imap(sleep200ms, range(100)):
                break
            t = time.perf_counter()
        return time.perf_counter() - t

    out: dict[str, list[float]] = {"shoal": [], "multiprocessing": []}
    for _ in range(repeat):
        out["shoal"].append(shoal_stop())
        out["multiprocessing"].append(mp_stop())
    return {k: statistics.median(v) for k, v in out.items()}


def table(title: str, res: dict[str, float], unit_n: int, ideal: Optional[float] = None) -> None:
    print(f"\n{title}")
    print(f"  {'library':<18}{'time':>11}{'tasks/s':>14}{'shoal ÷ this':>15}")
    for name, t in res.items():
        ratio = res["shoal"] / t
        print(f"  {name:<18}{t * 1e3:>9.1f}ms{unit_n / t:>14,.0f}{ratio:>14.2f}x")
    if ideal is not None:
        over = (res["shoal"] / ideal - 1) * 100
        print(f"  ideal {ideal:.2f} s; shoal is {over:+.1f}% from ideal (target: within 5%)")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(
        f"shoal {shoal.__version__} · python {sys.version.split()[0]} · joblib "
        f"{joblib.__version__} · {os.cpu_count()} CPUs · {WORKERS} workers · median of "
        f"{args.repeat} (cold: {args.repeat * 3}) · load {os.getloadavg()[0]:.1f}"
    )
    cold = cold_report(bench_cold(args.repeat * 3))
    a = bench_map(100_000, noop, args.repeat)
    table("(a) 100,000 no-op tasks via map (warm pool)", a, 100_000)
    c = bench_map(1_000_000, noop, args.repeat, loky=False)
    table("(c) 1,000,000 no-op tasks via map (warm pool)", c, 1_000_000)
    b = bench_map(1_000, sleep10ms, max(1, args.repeat // 2))
    table("(b) 1,000 tasks of 10 ms on 2 workers", b, 1_000, ideal=5.0)
    stop = bench_stop(args.repeat)
    print("\nstop: break out of imap, leave the with block (until the workers are gone)")
    for name, t in stop.items():
        print(f"  {name:<18}{t * 1e3:>9.1f}ms")
    print("\ntargets:")
    fork, server = cold["shoal"] / cold["mp fork"], cold["shoal"] / cold["mp forkserver"]
    print(f"  cold <= 1.5x mp fork:       {verdict(fork <= 1.5)} ({fork:.2f}x)")
    print(f"  cold <= mp forkserver:      {verdict(server <= 1.0)} ({server:.2f}x)")
    print(f"  (a) throughput >= mp:       {verdict(a['shoal'] <= a['multiprocessing'])}")
    print(f"  (c) time <= mp:             {verdict(c['shoal'] <= c['multiprocessing'])}")
    print(f"  (b) within 5% of 5.0 s:     {verdict(b['shoal'] <= 5.0 * 1.05)}")
    print(f"  stop within 0.5 s:          {verdict(stop['shoal'] <= 0.5)}")


if __name__ == "__main__":
    main()

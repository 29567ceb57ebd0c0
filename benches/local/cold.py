"""The cold-pool comparison, in a program of its own: a small __main__, as a user's script has,
so that multiprocessing's forkserver workers (which re-import __main__) are not charged for
the benchmark's own imports. Prints one JSON object: per library the median seconds of a
whole pool, and for shoal the medians of its phases."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from tasks import noop

import shoal

WORKERS = 2
# The local backend's switch back to spawning every worker (crates/shoal-sched/src/local/
# template.rs): today's workers without the template, for the comparison.
NO_TEMPLATE = "SHOAL_LOCAL_TEMPLATE"


def shoal_pool(phases: list[float], template: bool = True) -> None:
    """One pool's life, with the end of each phase appended to `phases`."""
    if not template:
        os.environ[NO_TEMPLATE] = "0"
    try:
        t = time.perf_counter()
        p = shoal.Pool(WORKERS)
        phases.append(time.perf_counter() - t)
        with p:
            p.map(noop, range(100))
            phases.append(time.perf_counter() - t)
        phases.append(time.perf_counter() - t)
    finally:
        os.environ.pop(NO_TEMPLATE, None)


def mp_pool(method: str) -> None:
    with multiprocessing.get_context(method).Pool(WORKERS) as p:
        p.map(noop, range(100))


PHASES = (
    "Pool(2): work dir, config, engine",
    "map: workers start, claim, run",
    "leaving with: shutdown, join, finish",
)

if __name__ == "__main__":
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    marks: dict[str, list[list[float]]] = {"shoal": [], "shoal, spawned workers": []}
    fns = {
        "shoal": lambda: shoal_pool(marks["shoal"][-1]),
        "shoal, spawned workers": lambda: shoal_pool(marks["shoal, spawned workers"][-1], False),
        "mp fork": lambda: mp_pool("fork"),
        "mp forkserver": lambda: mp_pool("forkserver"),
    }
    first: dict[str, float] = {}
    for name, fn in fns.items():  # start the forkserver and the template once, as a program would
        if name in marks:
            marks[name].append([])
        t = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):  # interleaved: a busy machine slows them alike
        for name, fn in fns.items():
            if name in marks:
                marks[name].append([])
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    out: dict[str, object] = {name: statistics.median(ts) for name, ts in times.items()}
    for name, runs in marks.items():
        runs = runs[1:]  # not the warm-up
        # Each phase's own length: the difference of consecutive marks.
        lengths = [[b - a for a, b in zip([0.0, *r], r)] for r in runs]
        out[f"{name} phases"] = {
            phase: statistics.median(run[i] for run in lengths) for i, phase in enumerate(PHASES)
        }
    out["first pool of the program"] = first
    print(json.dumps(out))

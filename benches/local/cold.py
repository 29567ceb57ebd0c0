"""The cold-pool comparison, in a program of its own: a small __main__, as a user's script has,
so that multiprocessing's forkserver workers (which re-import __main__) are not charged for
the benchmark's own imports. Prints one JSON object of median seconds per library."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from tasks import noop
from template import Template

import shoal

WORKERS = 2


def shoal_pool(**kw: object) -> None:
    with shoal.Pool(WORKERS, **kw) as p:
        p.map(noop, range(100))


def mp_pool(method: str) -> None:
    with multiprocessing.get_context(method).Pool(WORKERS) as p:
        p.map(noop, range(100))


if __name__ == "__main__":
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    template = Template()
    fns = {
        "shoal": shoal_pool,
        "shoal+template": lambda: shoal_pool(python_path=template.python),
        "mp fork": lambda: mp_pool("fork"),
        "mp forkserver": lambda: mp_pool("forkserver"),
    }
    for fn in fns.values():  # start the forkserver and the template once, as a program would
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):  # interleaved: a busy machine slows them alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(json.dumps({name: statistics.median(ts) for name, ts in times.items()}))

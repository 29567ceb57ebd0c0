"""A driver for the fault tests on slurm-multinode (tests/test_multinode_faults.py), run on its
login machine as the submitting user through the public API only.

It maps `task` over range(N) with `imap_unordered` and prints one JSON line per event on
stdout, as it happens: `session`, each `result` (x, host, pid, start and end times), each
`error` (a task or the session failed), `mapped` once the map is over. With --wait-end it then
keeps the session open until a line arrives on stdin (so late results from a cut-off node reach
a live driver), and ends with `executions` (every run of a task, recorded on the shared volume)
and `final` (the engine's counters).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any

import shoal


def task(args: tuple[int, float, str]) -> tuple[int, str, int, float, float]:
    x, seconds, ran_dir = args
    t0 = time.time()
    host, pid = socket.gethostname(), os.getpid()
    # one file per execution (names are unique): who ran what, and when it started
    with open(os.path.join(ran_dir, f"{x}.{host}.{pid}.{t0:.3f}"), "w"):
        pass
    time.sleep(seconds)
    return x, host, pid, t0, time.time()


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=3, help="CPUs per worker (spreads them over nodes)")
    ap.add_argument("--job-name", required=True)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--heartbeat-timeout", type=float, default=15.0)
    ap.add_argument("--wait-end", action="store_true")
    a = ap.parse_args()
    ran_dir = tempfile.mkdtemp(prefix="ran-", dir=os.environ["SHOAL_MN_WORK"])
    items = [(x, a.seconds, ran_dir) for x in range(a.tasks)]
    pool = shoal.Pool(
        a.workers,
        backend="slurm",
        job_name=a.job_name,
        cpus=a.cpus,
        time="10m",
        work_dir=a.work_dir,
        heartbeat_timeout=a.heartbeat_timeout,
    )
    with pool as p:
        emit("session", id=p.session, path=p._driver.path)
        it = p.imap_unordered(task, items, chunksize=1)
        while True:
            try:
                x, host, pid, t0, t1 = next(it)
            except StopIteration:
                break
            except Exception as e:
                emit("error", type=type(e).__name__, message=str(e))
                if isinstance(e, shoal.SessionError):
                    break
                continue
            emit("result", x=x, host=host, pid=pid, t0=t0, t1=t1)
        emit("mapped", stats=p._driver.stats())
        if a.wait_end:
            sys.stdin.readline()
        runs = []
        for name in os.listdir(ran_dir):
            x, host, pid, t0 = name.split(".", 3)
            runs.append([int(x), host, int(pid), float(t0)])
        emit("executions", runs=runs)
        emit("final", stats=p._driver.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())

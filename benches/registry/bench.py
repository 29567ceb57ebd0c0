"""`shoal runs` over 1,000 finished runs, read from a compute node of slurm-multinode.

The registry is filled on the login machine, on GlusterFS (so kept as records, runs.d), by
the calls a driver makes (crates/shoal-runs/examples/fill_registry.rs). A compute node then
lists it: with no cache yet (its first `shoal runs`), with its cache (every later one), and
after 10 runs changed on the login machine. The baseline, measured in the same run on the same
node, is the same registry as one SQLite database (WAL) on that node's local disk.

Run as root on the host: benches/registry/run [--runs N] [--tasks N].
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "ci", "clusters", "cluster")
FILL = os.path.join(ROOT, "target", "release", "examples", "fill_registry")


def on(node: str | None, *cmd: str) -> str:
    where = ["--node", node] if node else []
    out = subprocess.run(
        [CLUSTER, "exec", "slurm-multinode", *where, "--user", "shoal", "--", *cmd],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def measure(home: str, repeat: int) -> list[float]:
    """Inside a node: wall time of `shoal runs` with SHOAL_HOME=home, `repeat` times."""
    env = {**os.environ, "SHOAL_HOME": home}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(["shoal", "runs"], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def timed_on(node: str, home: str, repeat: int) -> list[float]:
    out = on(node, sys.executable, os.path.abspath(__file__), "--measure", home, str(repeat))
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--node", default="n2")
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure[0], int(a.measure[1]))))
        return
    shared = on(None, "sh", "-c", 'mktemp -d "$SHOAL_MN_WORK/regbench-XXXXXX"')
    local = on(a.node, "mktemp", "-d", "/tmp/regbench-XXXXXX")
    try:
        t0 = time.perf_counter()
        on(None, FILL, f"{shared}/runs.db", str(a.runs), str(a.tasks))
        fill_shared = time.perf_counter() - t0
        t0 = time.perf_counter()
        on(a.node, FILL, f"{local}/runs.db", str(a.runs), str(a.tasks))
        fill_local = time.perf_counter() - t0
        files = on(None, "sh", "-c", f"find {shared}/runs.d -type f | wc -l")
        # The node's cache of this store is new: its first listing reads every run's base.
        cold = timed_on(a.node, shared, 1)
        # Within the settle window every run directory is listed again (median of 5).
        warm = timed_on(a.node, shared, 5)
        base = timed_on(a.node, local, 5)
        # Ten runs change on the login machine; the node reads only those.
        ids = " ".join(str(i) for i in range(1, 11))
        on(None, "sh", "-c", f"export SHOAL_HOME={shared}; for i in {ids}; do shoal tag $i x; done")
        time.sleep(2.5)  # past the settle window, so unchanged dirs are not listed again
        changed = timed_on(a.node, shared, 1)
        settled = timed_on(a.node, shared, 3)
    finally:
        on(None, "rm", "-rf", shared)
        on(a.node, "rm", "-rf", local)
    b = statistics.median(base)
    print(f"{a.runs} runs x {a.tasks} tasks; records on GlusterFS: {files} files")
    print(f"fill (driver calls): records on GlusterFS {fill_shared:.1f} s, "
          f"SQLite on local disk {fill_local:.1f} s")  # fmt: skip
    print(f"{'shoal runs on ' + a.node:44} {'seconds':>8} {'vs local SQLite':>16}")
    rows = [
        ("local SQLite (WAL), baseline", b),
        ("records, first listing on the node", cold[0]),
        ("records, cached, within 2 s of the first", statistics.median(warm)),
        ("records, 10 runs changed elsewhere", changed[0]),
        ("records, cached, settled (median of 3)", statistics.median(settled)),
    ]
    for name, t in rows:
        print(f"{name:44} {t:8.3f} {t / b:15.1f}x")


if __name__ == "__main__":
    main()

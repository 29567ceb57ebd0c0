"""Multi-node benchmark, side by side in one run on slurm-multinode (started by
``benches/multinode/run`` on the login machine): no-op tasks with shoal vs a raw array job,
1 s tasks vs the ideal makespan, and the time to the first result. Prints a table of ratios."""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import subprocess
import tempfile
import time

import shoal

NODES, CPUS = 3, 8


def noop(x: int) -> int:
    return x


def nap(x: int) -> int:
    time.sleep(1.0)
    return x


def my_jobs() -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def quiet_queue(timeout: float = 120) -> None:
    """Start each measurement on an empty queue (a pool's cancelled jobs take a moment)."""
    end = time.monotonic() + timeout
    while my_jobs() and time.monotonic() < end:
        time.sleep(0.2)


def raw_array(n: int, work: str) -> float:
    """sbatch --array of a no-op job: submit to the last element gone from squeue."""
    t = time.perf_counter()
    out = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{n - 1}", "-o", os.path.join(work, "raw-%A_%a.out"),
         "--wrap", "true"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = out.stdout.strip().split(";")[0]
    while subprocess.run(
        ["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True
    ).stdout.split():
        time.sleep(0.2)
    return time.perf_counter() - t


def shoal_noop(n: int, work: str) -> tuple[float, float]:
    """Pool creation to every result (16 workers), and to the first result."""
    t = time.perf_counter()
    first = None
    seen = 0
    with shoal.Pool(16, backend="slurm", work_dir=work) as pool:
        for _ in pool.imap_unordered(noop, range(n)):
            if first is None:
                first = time.perf_counter() - t
            seen += 1
        total = time.perf_counter() - t
    assert seen == n and first is not None
    return total, first


def shoal_naps(n: int, work: str, chunksize: int | None) -> float:
    """Pool creation to the map's results, one worker per CPU of the cluster."""
    t = time.perf_counter()
    with shoal.Pool(NODES * CPUS, backend="slurm", work_dir=work) as pool:
        out = pool.map(nap, range(n), chunksize=chunksize)
        total = time.perf_counter() - t
    assert out == list(range(n)), "wrong results"
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="240 tasks of 1 s instead of 1,000")
    args = ap.parse_args()
    naps = 240 if args.quick else 1000
    work = tempfile.mkdtemp(prefix="bench-multinode-", dir=os.environ["SHOAL_MN_WORK"])
    try:
        quiet_queue()
        raw = raw_array(1000, work)
        quiet_queue()
        noop_total, first = shoal_noop(1000, work)
        quiet_queue()
        naps_default = shoal_naps(naps, work, None)
        quiet_queue()
        naps_one = shoal_naps(naps, work, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ideal = naps * 1.0 / (NODES * CPUS)
    print(
        f"\nMulti-node benchmark ({time.strftime('%Y-%m-%d %H:%M')}, slurm-multinode: "
        f"{NODES} nodes x {CPUS} CPUs on GlusterFS, {os.cpu_count()} real cores)"
    )
    print(f"{'':48}{'tasks':>7}{'seconds':>10}  {'ratio':>7}  target")
    rows = [
        ("raw sbatch --array=0-999 (no-op job)", 1000, raw, "", ""),
        ("shoal, 16 workers (no-op)", 1000, noop_total, f"{noop_total / raw:.3f}", "<= 0.1 x raw"),
        ("shoal: time to the first result", 1, first, "", "<= 2 s"),
        (f"ideal: {naps} x 1 s / {NODES * CPUS} CPUs", naps, ideal, "1.000", ""),
        ("shoal Pool.map, 24 workers (default chunks)", naps, naps_default,
         f"{naps_default / ideal:.3f}", "<= 1.05 x ideal"),
        ("shoal Pool.map, 24 workers (chunksize=1)", naps, naps_one,
         f"{naps_one / ideal:.3f}", "<= 1.05 x ideal"),
    ]  # fmt: skip
    for name, tasks, secs, ratio, target in rows:
        print(f"{name:48}{tasks:>7}{secs:>10.2f}  {ratio:>7}  {target}")


if __name__ == "__main__":
    main()

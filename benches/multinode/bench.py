"""Multi-node benchmark, side by side in one run on slurm-multinode (started by
``benches/multinode/run`` on the login machine): no-op tasks with shoal vs a raw array job,
1 s tasks vs the ideal makespan (and vs the ideal plus the start of 24 bare Python processes on
the same cluster, the floor of any Python worker pool), and the time to the first result.
Prints a table of ratios."""

from __future__ import annotations

import argparse
import getpass
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import shoal

NODES, CPUS = 3, 8


def noop(x: int) -> int:
    return x


def nap(x: int) -> tuple[int, int, float, float]:
    t0 = time.time()
    time.sleep(1.0)
    return x, os.getpid(), t0, time.time()


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


def python_starts(work: str) -> list[float]:
    """A raw array of one job per CPU that starts the interpreter and imports what a worker
    imports: when each was ready, from submission, in order. No pool of Python workers can
    start its workers sooner here."""
    n = NODES * CPUS
    t = time.time()
    subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{n - 1}", "-o", "/dev/null", "--wrap",
         f"{sys.executable} -c 'import shoal.worker, cloudpickle' && "
         f"date +%s.%N > {work}/ready-$SLURM_ARRAY_TASK_ID.tmp && "
         f"mv {work}/ready-$SLURM_ARRAY_TASK_ID.tmp {work}/ready-$SLURM_ARRAY_TASK_ID"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    names = [os.path.join(work, f"ready-{i}") for i in range(n)]
    while not all(os.path.exists(p) for p in names):
        time.sleep(0.05)
    return sorted(float(open(p).read()) - t for p in names)


def floor_makespan(naps: int, ready: list[float]) -> tuple[float, int]:
    """The best makespan of `naps` tasks of 1 s on workers ready at `ready`: the workers that
    run the most tasks (ceil(naps / workers)) are the earliest ones, and the last of them
    decides. Returns the makespan and which worker (1-based) decides it."""
    w = len(ready)
    rounds = math.ceil(naps / w)
    k = naps - (rounds - 1) * w
    return ready[k - 1] + rounds, k


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


class Naps:
    """One run of the 1 s tasks: its makespan and where the time beyond the ideal went."""

    def __init__(self, n: int, work: str, chunksize: int | None) -> None:
        """Pool creation to the map's results, one worker per CPU of the cluster."""
        t = time.time()
        with shoal.Pool(NODES * CPUS, backend="slurm", work_dir=work) as pool:
            out = pool.map(nap, range(n), chunksize=chunksize)
            self.total = time.time() - t
        assert [r[0] for r in out] == list(range(n)), "wrong results"
        starts: dict[int, float] = {}
        for _, pid, t0, _ in out:
            starts[pid] = min(t0, starts.get(pid, t0))
        first = sorted(starts.values())
        # until the first task starts; until every worker has started one; after the last
        # task ends (results home, map returns); and the gaps between them (idle workers)
        self.startup = first[0] - t
        self.ramp = first[-1] - first[0] if len(first) == NODES * CPUS else float("nan")
        self.workers = len(first)
        end = max(r[3] for r in out)
        self.collect = t + self.total - end
        busy = sum(r[3] - r[2] for r in out)
        self.idle = (end - first[0]) - busy / (NODES * CPUS)

    def breakdown(self) -> str:
        return (
            f"first task after {self.startup:.1f} s, all {self.workers} workers busy after "
            f"+{self.ramp:.1f} s, idle CPU-time / 24 {self.idle:.1f} s (ramp-up and tail "
            f"included), last result home +{self.collect:.2f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="240 tasks of 1 s instead of 1,000")
    args = ap.parse_args()
    naps = 240 if args.quick else 1000
    work = tempfile.mkdtemp(prefix="bench-multinode-", dir=os.environ["SHOAL_MN_WORK"])
    try:
        quiet_queue()
        ready = python_starts(work)
        quiet_queue()
        raw = raw_array(1000, work)
        quiet_queue()
        noop_total, first = shoal_noop(1000, work)
        quiet_queue()
        naps_default = Naps(naps, work, None)
        quiet_queue()
        naps_one = Naps(naps, work, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ideal = naps * 1.0 / (NODES * CPUS)
    floor, kth = floor_makespan(naps, ready)
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
        ("floor: whole rounds after Python's own start", naps, floor,
         f"{floor / ideal:.3f}", "(see below)"),
        ("shoal Pool.map, 24 workers (default chunks)", naps, naps_default.total,
         f"{naps_default.total / ideal:.3f}", "<= 1.05 x ideal"),
        ("shoal Pool.map, 24 workers (chunksize=1)", naps, naps_one.total,
         f"{naps_one.total / ideal:.3f}", "<= 1.05 x ideal"),
    ]  # fmt: skip
    for name, tasks, secs, ratio, target in rows:
        print(f"{name:48}{tasks:>7}{secs:>10.2f}  {ratio:>7}  {target}")
    print(
        f"\nThe floor: a raw sbatch --array of {NODES * CPUS} jobs that only import shoal.worker "
        f"and cloudpickle has its {kth}th ready {ready[kth - 1]:.2f} s after submission (Slurm\n"
        f"allocates once a second, then {NODES * CPUS} interpreters start on {os.cpu_count()} "
        f"real cores); the first {kth} workers run {math.ceil(naps / (NODES * CPUS))} tasks "
        f"each: no pool of Python workers ends sooner here."
    )
    print("\nWhere the 1 s tasks' time beyond the ideal goes (from the tasks' own clocks):")
    print(f"  default chunks: {naps_default.breakdown()}")
    print(f"  chunksize=1:    {naps_one.breakdown()}")


if __name__ == "__main__":
    main()

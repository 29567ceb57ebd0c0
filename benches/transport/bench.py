"""Transport benchmark: transport="tcp" vs transport="fs", side by side in one run on the same
Slurm cluster; prints a table with ratios. Started by ``benches/transport/run``.

- 1,000 no-op tasks on 16 workers, pool creation to pool closed, the median of 5 pools each
  alternating, each started on an empty queue (target: tcp <= fs);
- 100,000 no-op tasks on 16 warm workers (target <= 5 s), with the driver's CPU per task
  (target <= 20 us; dask-jobqueue's measured in the same run as the baseline);
- 2 GiB of numpy arrays as arguments, the same back as results, through 4 workers
  (target >= 300 MB/s).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tasks import noop  # noqa: E402

import shoal  # noqa: E402

TRANSPORTS = ("fs", "tcp")
ARRAY_MIB = 16
ARRAYS = 2048 // ARRAY_MIB  # 2 GiB in all


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


BACKEND = "slurm"


def pool(transport: str, workers: int, work: str) -> shoal.Pool:
    if BACKEND == "local":
        return shoal.Pool(workers, transport=transport, work_dir=work)
    return shoal.Pool(
        workers,
        backend=BACKEND,
        transport=transport,
        work_dir=work,
        job_name="bench-transport",
        poll_interval=0.5,
    )


def quiet_queue(timeout: float = 120) -> None:
    """Wait until the last pool's jobs have left the queue. The test cluster has exactly 16
    CPUs, so a pool started earlier would wait for those jobs and be charged for the previous
    pool's tear-down in Slurm (which made whichever transport ran second look slower)."""
    if BACKEND != "slurm":
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(
            ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i"],
            capture_output=True,
            text=True,
            check=True,
        )
        if not out.stdout.split():
            return
        time.sleep(0.1)


def cold_1k(transport: str, work: str) -> float:
    """Pool creation to pool closed, 1,000 no-op tasks, 16 workers, from an empty queue."""
    quiet_queue()
    t = time.perf_counter()
    with pool(transport, 16, work) as p:
        assert p.map(noop, range(1000)) == list(range(1000))
    return time.perf_counter() - t


def warm_100k(transport: str, work: str) -> tuple[float, float]:
    """100,000 no-op tasks on 16 workers already running: seconds and driver CPU per task."""
    with pool(transport, 16, work) as p:
        p.map(noop, range(2000), chunksize=1)  # start all 16
        t, c = time.perf_counter(), cpu()
        out = p.map(noop, range(100_000))
        seconds, used = time.perf_counter() - t, cpu() - c
    assert out == list(range(100_000))
    return seconds, used / 100_000 * 1e6


def numpy_2gib(transport: str, work: str) -> float:
    """MB/s of arguments (and as many bytes of results) through 4 warm workers."""
    import numpy as np

    a = np.ones(ARRAY_MIB << 20, dtype=np.uint8)
    with pool(transport, 4, work) as p:
        p.map(noop, range(8), chunksize=1)
        t = time.perf_counter()
        n = 0
        for r in p.imap_unordered(noop, (a for _ in range(ARRAYS)), chunksize=1):
            assert r.nbytes == a.nbytes
            n += 1
        seconds = time.perf_counter() - t
    assert n == ARRAYS
    return ARRAYS * a.nbytes / seconds / 1e6


def dask(venvs: str, work: str, n: int) -> dict:
    python = os.path.join(venvs, "dask-jobqueue", "bin", "python")
    if not os.path.exists(python):
        return {"ok": False, "error": f"{python} missing"}
    res = subprocess.run(
        [python, os.path.join(HERE, "dask_cpu.py"), str(n), work],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=1800,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"ok": False, "error": (res.stderr or res.stdout)[-600:]}
    out: dict = json.loads(lines[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--venvs", default="/tmp/shoal-bench-venvs")
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--dask-tasks", type=int, default=10_000)
    ap.add_argument("--cold-runs", type=int, default=5, help="cold pools per transport (median)")
    ap.add_argument(
        "--backend", default="slurm", choices=("slurm", "local"), help="local: no cluster needed"
    )
    args = ap.parse_args()
    global BACKEND
    BACKEND = args.backend
    work = tempfile.mkdtemp(prefix="shoal-bench-transport-", dir="/tmp")
    r: dict[str, dict[str, float]] = {t: {} for t in TRANSPORTS}
    try:
        # A cold start is mostly the scheduler starting 16 jobs, which varies by a second
        # from one pool to the next here: the median of runs alternating between transports.
        colds: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
        for rep in range(args.cold_runs):
            for t in TRANSPORTS:
                colds[t].append(cold_1k(t, work))
                print(
                    f"... {t}: 1,000 tasks ({rep + 1}/{args.cold_runs}): {colds[t][-1]:.2f} s",
                    file=sys.stderr,
                )
        for t in TRANSPORTS:
            r[t]["cold"] = statistics.median(colds[t])
        for t in TRANSPORTS:
            print(f"... {t}: 100,000 tasks", file=sys.stderr, flush=True)
            r[t]["100k"], r[t]["cpu"] = warm_100k(t, work)
        for t in TRANSPORTS:
            print(f"... {t}: 2 GiB of numpy", file=sys.stderr, flush=True)
            r[t]["mbs"] = numpy_2gib(t, work)
        skip = args.skip_dask or BACKEND != "slurm"
        d = {} if skip else dask(args.venvs, work, args.dask_tasks)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fs, tcp = r["fs"], r["tcp"]
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"\nTransport benchmark ({when}, {os.cpu_count()} cores, {BACKEND} backend)")
    print(f"{'':44}{'fs':>12}{'tcp':>12}  {'tcp/fs':>8}  target")
    rows = [
        ("1,000 no-op tasks, 16 workers, cold (s, median)", fs["cold"], tcp["cold"], "tcp <= fs"),
        ("100,000 no-op tasks, 16 warm workers (s)", fs["100k"], tcp["100k"], "<= 5 s"),
        ("driver CPU per task at 100,000 (us)", fs["cpu"], tcp["cpu"], "<= 20 us"),
        ("2 GiB numpy through 4 workers (MB/s)", fs["mbs"], tcp["mbs"], ">= 300 MB/s"),
    ]
    for name, a, b, target in rows:
        print(f"{name:44}{a:12.2f}{b:12.2f}  {b / a:8.2f}  {target}")
    if d.get("ok"):
        per = d["cpu"] / d["tasks"] * 1e6
        print(
            f"\ndask-jobqueue, {d['tasks']:,} no-op tasks on 16 Slurm workers: "
            f"{d['seconds']:.2f} s, "
            f"driver CPU {per:.0f} us per task; shoal tcp uses {tcp['cpu'] / per:.3f}x of that "
            f"({per / tcp['cpu']:.0f}x less)"
        )
    elif d:
        print(f"\ndask-jobqueue: not measured: {d.get('error')}")


if __name__ == "__main__":
    main()

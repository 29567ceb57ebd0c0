"""Per-task overhead of `shoal run` over a 1,000-combination sweep of a no-op command.

Local: `shoal run -p i=0..999 -- true` (registry, per-task stdout/stderr files, completion
markers) against GNU parallel running the same 1,000 `true` commands with as many jobs.
Slurm (--slurm): the same sweep on the slurm backend against one raw `sbatch --array=0-999`
of `true`, timed from submission until every element has left the queue.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def shoal_cmd() -> list[str]:
    return [sys.executable, "-m", "shoal.cli"]


def bench_local(n: int, workers: int, work: str, env: dict) -> list[tuple[str, float]]:
    shoal = timed(
        [*shoal_cmd(), "run", "--name", "bench", "--workers", str(workers),
         "--param", f"i=0..{n - 1}", "--results-dir", os.path.join(work, "results"), "--", "true"],
        cwd=work, env=env,
    )  # fmt: skip
    par = timed(
        ["parallel", "-j", str(workers), "true", ":::", *map(str, range(n))], cwd=work, env=env
    )
    return [(f"GNU parallel -j{workers}", par), (f"shoal run (local, {workers} workers)", shoal)]


def _slurm_wait(job: str) -> None:
    while True:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True
        )
        if not out.stdout.strip():
            return
        time.sleep(0.5)


def bench_slurm(n: int, workers: int, work: str, env: dict) -> list[tuple[str, float]]:
    t0 = time.perf_counter()
    out = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{n - 1}", "--output=/dev/null", "--time=5",
         "--wrap=true"],
        check=True, capture_output=True, text=True, cwd=work,
    )  # fmt: skip
    _slurm_wait(out.stdout.strip().split(";")[0])
    raw = time.perf_counter() - t0
    shoal = timed(
        [*shoal_cmd(), "run", "--name", "bench-slurm", "--backend", "slurm",
         "--workers", str(workers), "--param", f"i=0..{n - 1}",
         "--results-dir", os.path.join(work, "results"), "--", "true"],
        cwd=work, env=env,
    )  # fmt: skip
    return [
        (f"sbatch --array=0-{n - 1} (raw)", raw),
        (f"shoal run (slurm, {workers} workers)", shoal),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--slurm", action="store_true", help="also compare on Slurm")
    ap.add_argument("--slurm-workers", type=int, default=16)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="shoal-bench-runs-", dir=os.environ.get("BENCH_DIR"))
    env = {**os.environ, "SHOAL_HOME": os.path.join(work, "home")}
    rows: list[tuple[str, list[tuple[str, float]]]] = []
    try:
        rows.append(("local", bench_local(args.tasks, args.workers, work, env)))
        if args.slurm:
            if shutil.which("sbatch") is None:
                sys.exit("--slurm needs Slurm's sbatch on PATH (run on a cluster's login node)")
            rows.append(("slurm", bench_slurm(args.tasks, args.slurm_workers, work, env)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = args.tasks
    print(f"\n{n} tasks of `true`; overhead per task = wall time / {n}")
    print(f"{'case':<42} {'wall s':>8} {'ms/task':>9} {'vs baseline':>12}")
    for _, cases in rows:
        base = cases[0][1]
        for name, secs in cases:
            print(f"{name:<42} {secs:>8.2f} {1000 * secs / n:>9.2f} {secs / base:>11.2f}x")


if __name__ == "__main__":
    main()

"""Slurm benchmark: no-op tasks end to end with shoal, a raw array job, and peer tools, in
one run on the same cluster; prints a table with ratios. Started by ``benches/slurm/run``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from noop_task import noop  # noqa: E402

import shoal  # noqa: E402

PEERS = ("pypoolparty", "submitit", "dask-jobqueue")
PEER_TIMEOUT = 1800


def squeue_ids(job: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True
    )
    return out.stdout.split()


def raw_array(n: int, work: str) -> float:
    """sbatch --array of a no-op job: submit to the last element gone from squeue."""
    t = time.perf_counter()
    job = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--array=0-{n - 1}",
                "-o",
                os.path.join(work, "raw-%A_%a.out"),
                "--wrap",
                "true",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    while squeue_ids(job):
        time.sleep(0.2)
    return time.perf_counter() - t


def shoal_map(n: int, work: str, counter: str) -> tuple[float, int]:
    """Pool creation to pool closed, 16 workers; also counts squeue calls of the session."""
    open(counter, "w").close()
    t = time.perf_counter()
    with shoal.Pool(16, backend="slurm", work_dir=work) as pool:
        out = pool.map(noop, range(n))
    seconds = time.perf_counter() - t
    assert out == list(range(n)), "wrong results"
    with open(counter) as f:
        return seconds, len(f.read().split())


def query_costs(arrays: list[str], repeat: int = 20) -> dict[str, float]:
    """Milliseconds per call of the state queries one could use, with the jobs retained now."""
    ids = ",".join(arrays)
    candidates = {
        "squeue -h -r -t all -j IDS -O (shoal's)": [
            "squeue",
            "-h",
            "-r",
            "-t",
            "all",
            "-j",
            ids,
            "-O",
            "JobArrayID:40,StateCompact:8,exit_code:12,Reason:200",
        ],
        "squeue -h -r -t all -j IDS -o '%i %t %r'": [
            "squeue",
            "-h",
            "-r",
            "-t",
            "all",
            "-j",
            ids,
            "-o",
            "%i %t %r",
        ],
        "squeue -h -r -j IDS -o '%i %t %r'": ["squeue", "-h", "-r", "-j", ids, "-o", "%i %t %r"],
        "squeue -h -r -t all -o '%i %t %r' (all jobs)": [
            "squeue",
            "-h",
            "-r",
            "-t",
            "all",
            "-o",
            "%i %t %r",
        ],
        "scontrol show job (all jobs)": ["scontrol", "show", "job"],
        "squeue --json (all jobs)": ["squeue", "--json"],
    }
    costs = {}
    for name, argv in candidates.items():
        reps = repeat if "json" not in name and "scontrol" not in name else 3
        t = time.perf_counter()
        for _ in range(reps):
            subprocess.run(argv, capture_output=True)
        costs[name] = (time.perf_counter() - t) / reps * 1000
    return costs


def peer(tool: str, n: int, work: str, venvs: str) -> dict:
    python = os.path.join(venvs, tool, "bin", "python")
    env = dict(os.environ, PYTHONPATH=HERE)
    try:
        res = subprocess.run(
            [python, os.path.join(HERE, "peers.py"), tool, str(n), os.path.join(work, tool)],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=PEER_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return {
            "tool": tool,
            "tasks": n,
            "seconds": float("nan"),
            "ok": False,
            "error": f"no result after {PEER_TIMEOUT} s",
        }
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {
            "tool": tool,
            "tasks": n,
            "seconds": float("nan"),
            "ok": False,
            "error": (res.stderr or res.stdout)[-800:],
        }
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--quick", action="store_true", help="peers run 100 tasks (raw array and shoal 1,000)"
    )
    ap.add_argument(
        "--venvs", default=os.environ.get("SHOAL_BENCH_VENVS", "/tmp/shoal-bench-venvs")
    )
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--counter", required=True, help="file the squeue shim appends to")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="shoal-bench-slurm-", dir="/tmp")
    n, peer_n = 1000, 100 if args.quick else 1000
    rows: list[tuple[str, int, float, str]] = []
    try:
        t, q = shoal_map(n, os.path.join(work, "shoal"), args.counter)
        rows.append(("shoal Pool.map (16 workers)", n, t, f"{q} squeue calls"))
        t100k, q100k = shoal_map(100_000, os.path.join(work, "shoal"), args.counter)
        rows.append(("shoal Pool.map (16 workers)", 100_000, t100k, f"{q100k} squeue calls"))
        raw = raw_array(n, work)
        rows.append(("raw sbatch --array (no-op job)", n, raw, "submit to all finished"))
        # The last shoal session's arrays: what its poll asks about.
        arrays = subprocess.run(
            ["squeue", "-h", "-t", "all", "-n", "shoal", "-o", "%F"], capture_output=True, text=True
        ).stdout.split()
        arrays = sorted(set(arrays), key=int)[-1:]
        retained = len(
            subprocess.run(
                ["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True
            ).stdout.split()
        )
        costs = query_costs(arrays)
        peer_rows = []
        if not args.skip_peers:
            for tool in PEERS:
                print(f"... running {tool} ({peer_n} tasks)", file=sys.stderr, flush=True)
                peer_rows.append(
                    peer(tool, peer_n if tool != "dask-jobqueue" else n, work, args.venvs)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nSlurm benchmark ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores, no-op tasks)"
    )
    print(f"{'':40}{'tasks':>8}{'seconds':>10}  {'shoal is':<16}  note")
    shoal_1k = rows[0][2]
    for name, tasks, secs, note in rows:
        ratio = "" if (name, tasks) == (rows[0][0], n) else f"{secs / shoal_1k:.1f}x faster"
        if tasks == 100_000:
            ratio = "target <= 10 s"
        print(f"{name:40}{tasks:>8}{secs:>10.2f}  {ratio:<16}  {note}")
    for r in peer_rows:
        secs, tasks = r["seconds"], r["tasks"]
        per_1k = secs * n / tasks
        note = "" if r["ok"] else f"FAILED: {r.get('error', 'wrong results')}"
        if tasks != n:
            note = f"(x{n // tasks} extrapolated: {per_1k:.0f} s per 1,000) " + note
        faster = f"{per_1k / shoal_1k:.1f}x faster"
        print(f"{r['tool']:40}{tasks:>8}{secs:>10.2f}  {faster:<16}  {note}")
    print(f"\nshoal / raw array = {shoal_1k / raw:.3f}  (target <= 0.1)")
    print(f"\nState queries, ms per call with {retained} jobs retained by slurmctld:")
    for name, ms in costs.items():
        print(f"  {name:52}{ms:8.1f} ms")


if __name__ == "__main__":
    main()

"""1,000 no-op tasks on the real Grid Engine, three ways, in one run: shoal's SGE backend, a raw
`qsub -t 1-N` array of `true` (submit to all finished), and pypoolparty's sun_grid_engine
Pool.map. Prints times, rates, ratios, and what each SGE client call costs here.

Run through benches/sge/run (it prepares the peer venv and the client environment)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from noop_task import noop  # noqa: E402

import shoal  # noqa: E402

USER = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.perf_counter() - t, res


def listed(job: str) -> tuple[float, bool]:
    """One `qstat -xml -u USER`: its cost, and whether `job` is still listed."""
    took, res = timed(["qstat", "-xml", "-u", USER])
    numbers = {j.findtext("JB_job_number") for j in ET.fromstring(res.stdout).iter("job_list")}
    return took, job in numbers


def run_shoal(n: int, workers: int) -> dict:
    t0 = time.perf_counter()
    with shoal.Pool(workers, backend="sge", job_name="shoalbench") as p:
        t1 = time.perf_counter()
        results = p.map(noop, range(n))
        t2 = time.perf_counter()
        stats = p._driver.stats()
    t3 = time.perf_counter()
    assert results == list(range(n)), "shoal returned wrong results"
    return {
        "seconds": t2 - t0,
        "start": t1 - t0,
        "close": t3 - t2,
        "workers": stats["workers_started"],
    }


def run_raw(n: int, tmp: str) -> dict:
    script = os.path.join(tmp, "noop.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrue\n")
    t0 = time.perf_counter()
    took_qsub, res = timed(
        [
            "qsub",
            "-terse",
            "-t",
            f"1-{n}",
            "-N",
            "rawbench",
            "-S",
            "/bin/sh",
            "-o",
            "/dev/null",
            "-e",
            "/dev/null",
            "-wd",
            tmp,
            script,
        ]
    )
    res.check_returncode()
    job = res.stdout.strip().split(".")[0]
    qstat_costs = []
    while True:
        took, still = listed(job)
        qstat_costs.append(took)
        if not still:
            break
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    took_qacct = None
    for _ in range(20):  # the accounting file is flushed ~1 s after the last task
        took_qacct, acct = timed(["qacct", "-j", job])
        if acct.stdout.count("taskid") >= n:
            break
        time.sleep(0.5)
    return {
        "seconds": seconds,
        "job": job,
        "qsub_ms": took_qsub * 1000,
        "qstat_ms": statistics.median(qstat_costs) * 1000,
        "qacct_ms": (took_qacct or 0) * 1000,
    }


def run_pypoolparty(n: int, python: str, tmp: str) -> dict:
    out = subprocess.run(
        [python, os.path.join(HERE, "ppp_map.py"), str(n), "1.0", tmp],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    if out.returncode != 0:
        raise SystemExit(f"pypoolparty failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def idle_costs() -> dict:
    """Client calls on a quiet queue, median of 10."""
    costs = {}
    for name, cmd in {
        "qstat -xml -u USER": ["qstat", "-xml", "-u", USER],
        "qconf -sql": ["qconf", "-sql"],
    }.items():
        costs[name] = statistics.median(timed(cmd)[0] for _ in range(10)) * 1000
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="peers run 100 tasks (shoal still 1,000)")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--ppp-python", required=True, help="interpreter of the pypoolparty venv")
    args = ap.parse_args()
    n = args.tasks
    peer_n = min(100, n) if args.quick else n

    with tempfile.TemporaryDirectory(prefix="shoal-bench-sge-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        print(f"# {n} no-op tasks; peers run {peer_n}; {args.workers} shoal workers", flush=True)
        costs = idle_costs()
        print("shoal ...", end=" ", flush=True)
        sh = run_shoal(n, args.workers)
        print(f"{sh['seconds']:.1f} s", flush=True)
        print(f"raw qsub -t 1-{peer_n} ...", end=" ", flush=True)
        raw = run_raw(peer_n, tmp)
        print(f"{raw['seconds']:.1f} s", flush=True)
        print("pypoolparty ...", end=" ", flush=True)
        ppp = run_pypoolparty(peer_n, args.ppp_python, tmp)
        print(f"{ppp['seconds']:.1f} s", flush=True)

    scale = n / peer_n  # peers' time for n tasks, extrapolated linearly in --quick mode
    raw_n, ppp_n = raw["seconds"] * scale, ppp["seconds"] * scale
    est = " (est.)" if scale != 1 else ""
    rows = [
        ("shoal (sge backend)", n, sh["seconds"], 1.0),
        (f"raw qsub array{est}", peer_n, raw["seconds"], raw_n / sh["seconds"]),
        (f"pypoolparty sge{est}", peer_n, ppp["seconds"], ppp_n / sh["seconds"]),
    ]
    print()
    print(f"{'':24} {'tasks':>6} {'seconds':>9} {'tasks/s':>9} {'shoal faster':>13}")
    for name, tasks, secs, ratio in rows:
        print(f"{name:24} {tasks:>6} {secs:>9.1f} {tasks / secs:>9.1f} {ratio:>12.1f}x")
    print()
    ok_raw = sh["seconds"] <= 0.1 * raw_n
    ok_ppp = ppp_n >= 20 * sh["seconds"]
    print(
        f"shoal / raw array   = {sh['seconds'] / raw_n:.3f}  (target <= 0.1: "
        f"{'met' if ok_raw else 'MISSED'})"
    )
    print(
        f"pypoolparty / shoal = {ppp_n / sh['seconds']:.1f}  (target >= 20: "
        f"{'met' if ok_ppp else 'MISSED'})"
    )
    print(
        f"shoal: pool start {sh['start']:.2f} s, map done at {sh['seconds']:.2f} s, close "
        f"{sh['close']:.2f} s more (workers exit, jobs leave qstat); {sh['workers']} workers "
        f"started; with close shoal / raw = {(sh['seconds'] + sh['close']) / raw_n:.3f}"
    )
    print(
        "SGE client call costs here (ms): "
        + ", ".join(f"{k} {v:.0f}" for k, v in costs.items())
        + f", qstat -xml -u USER with the array queued {raw['qstat_ms']:.0f}"
        + f", qsub -t 1-{peer_n} {raw['qsub_ms']:.0f}"
        + f", qacct -j (array of {peer_n}) {raw['qacct_ms']:.0f}"
    )


if __name__ == "__main__":
    main()

"""Load on the shared filesystem, measured on slurm-multinode (started by ``benches/fsload/run``
as root on the host): metadata operations per idle worker per second and per second of the
driver's loop (strace of each process, only calls on the session's work dir), the same window
as GlusterFS's server-side profile sees it, and the latency for an idle worker to pick up a
new task. Prints them next to the targets of issue 12.

Two roles: without --session it orchestrates (host, root); with --session it is the driver on
the login machine, talking JSON lines over stdin/stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLUSTER = str(REPO / "ci" / "clusters" / "cluster")
STATS = ("statx", "newfstatat", "stat", "lstat", "access", "readlink")
WRITES = ("rename", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat")
TRACED = ",".join(("openat", "getdents64", *STATS, *WRITES))


# ------------------------------------------------------------------ the driver (login machine)


def started_at(_: Any = None) -> float:
    return time.time()


def gather(args: tuple[str, int]) -> int:
    """Wait until `n` tasks are running at once: every worker holds one (so all have started
    and the engine sees them running), then return this worker's pid."""
    d, n = args
    with open(os.path.join(d, str(os.getpid())), "w"):
        pass
    end = time.monotonic() + 300
    while len(os.listdir(d)) < n and time.monotonic() < end:
        time.sleep(0.2)
    return os.getpid()


def session_role(workers: int, cpus: int) -> None:
    import shoal

    def say(**kw: Any) -> None:
        print(json.dumps(kw), flush=True)

    work = tempfile.mkdtemp(prefix="fsload-", dir=os.environ["SHOAL_MN_WORK"])
    with shoal.Pool(
        workers, backend="slurm", cpus=cpus, work_dir=work, idle_timeout=3600, time="30m"
    ) as pool:
        path = pool._driver.path
        barrier = tempfile.mkdtemp(prefix="gather-", dir=work)
        pids = sorted(set(pool.map(gather, [(barrier, workers)] * workers, chunksize=1)))
        say(event="ready", driver=os.getpid(), workers=pids, path=path)
        for line in sys.stdin:
            cmd = line.split()
            if cmd[0] == "pickup":
                lat = []
                for _ in range(int(cmd[1])):
                    time.sleep(random.uniform(0.5, 2.5))  # idle in between
                    t = time.time()
                    lat.append(pool.apply_async(started_at).get(timeout=120) - t)
                say(event="pickup", latencies=lat)
            elif cmd[0] == "wave":
                t = time.time()
                pool.map(started_at, range(int(cmd[1])), chunksize=1)
                say(event="wave", seconds=time.time() - t)
            elif cmd[0] == "end":
                break
    say(event="closed")


# ------------------------------------------------------------------ the orchestrator (host)


def gluster(*args: str) -> str:
    cmd = [CLUSTER, "exec", "slurm-multinode", "--node", "fs", "--", "gluster", "--mode=script"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=True).stdout


def profile_counts(text: str) -> dict[str, int]:
    """FOP -> calls from the cumulative section of `gluster volume profile VOL info`."""
    counts: dict[str, int] = collections.Counter()
    cumulative = text.split("Interval")[0]
    row = r"^\s*[\d.]+" + r"\s+[\d.]+ \w?s" * 3 + r"\s+(\d+)\s+(\w+)\s*$"
    for m in re.finditer(row, cumulative, re.M):
        counts[m.group(2)] += int(m.group(1))
    return counts


def classify(trace: str, path: str) -> dict[str, int]:
    """Counts of listings (opendir), stats, opens and writes on `path` in one strace output."""
    c: dict[str, int] = collections.Counter()
    for line in trace.splitlines():
        if path not in line:
            continue
        # "<... openat resumed>" lines continue a call counted where it started
        m = re.match(r"^(?:\d+\s+)?(\w+)\(", line)
        if not m:
            continue
        call = m.group(1)
        if call == "openat":
            c["listings" if "O_DIRECTORY" in line else "opens"] += 1
            if "O_DIRECTORY" in line and (d := re.search(re.escape(path) + r"/?([^\"<>]*)", line)):
                # which dir: inbox/KEY and other per-worker dirs under one name
                c[
                    "dir " + re.sub(r"/[^/]+$", "/*", d.group(1))
                    if "/" in d.group(1)
                    else "dir " + (d.group(1) or ".")
                ] += 1
        elif call == "getdents64":
            c["getdents64"] += 1
        elif call in STATS:
            c["stats"] += 1
        elif call in WRITES:
            c["writes"] += 1
            if call.startswith("rename"):
                c["renames"] += 1
                c["failed renames"] += " = -1 E" in line
    return c


def trace(pids: list[int], seconds: float, out: str, during: Any = None) -> list[str]:
    """strace `pids` for `seconds`, or while `during()` runs."""
    procs = []
    for p in pids:
        argv = ["strace", "-f", "-qq", "-y", "-e", f"trace={TRACED}", "-o", f"{out}.{p}"]
        argv += ["-p", str(p)]
        procs.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
    time.sleep(1.0 if during else seconds)  # strace attached
    if during:
        during()
    for pr in procs:
        pr.send_signal(2)
    for pr in procs:
        pr.wait(30)
    return [Path(f"{out}.{p}").read_text(errors="replace") for p in pids]


def orchestrate(args: argparse.Namespace) -> None:
    cmd = [CLUSTER, "exec", "slurm-multinode", "--user", args.user, "--"]
    cmd += ["python", __file__, "--session", "--workers", str(args.workers)]
    cmd += ["--cpus", str(args.cpus)]
    drv = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert drv.stdin is not None and drv.stdout is not None

    def recv() -> dict[str, Any]:
        line = drv.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise SystemExit(f"the driver on the login machine ended (exit {drv.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    tmp = tempfile.mkdtemp(prefix="shoal-fsload-")
    try:
        ready = recv()
        workers, path = ready["workers"], ready["path"]
        time.sleep(args.settle)  # past the first map: workers idle, the driver waiting
        try:
            gluster("volume", "profile", "shared", "start")
        except subprocess.CalledProcessError:
            pass  # already started
        # the server's view first, without strace slowing the processes down
        gluster("volume", "profile", "shared", "info", "clear")
        t = time.monotonic()
        time.sleep(args.window)
        server = profile_counts(gluster("volume", "profile", "shared", "info"))
        server_window = time.monotonic() - t
        gluster("volume", "profile", "shared", "stop")
        t = time.monotonic()
        texts = trace([ready["driver"], *workers], args.window, os.path.join(tmp, "trace"))
        window = time.monotonic() - t
        wave_tasks = len(workers) * args.wave

        def wave() -> None:
            drv.stdin.write(f"wave {wave_tasks}\n")  # type: ignore[union-attr]
            drv.stdin.flush()  # type: ignore[union-attr]
            recv()

        wave_texts = trace(workers, 0, os.path.join(tmp, "wave"), during=wave)
        drv.stdin.write(f"pickup {args.pickups}\n")
        drv.stdin.flush()
        lat = recv()["latencies"]
        drv.stdin.write("end\n")
        drv.stdin.flush()
        recv()
        drv.wait(60)
    finally:
        if drv.poll() is None:
            drv.kill()
        subprocess.run(["rm", "-rf", tmp])
    driver_c, worker_cs = classify(texts[0], path), [classify(x, path) for x in texts[1:]]
    nw = len(worker_cs)

    def per_worker(key: str) -> float:
        return sum(c[key] for c in worker_cs) / nw / window

    print(
        f"\nShared-filesystem load ({time.strftime('%Y-%m-%d %H:%M')}, slurm-multinode on "
        f"GlusterFS, {nw} idle workers on 3 nodes)"
    )
    print(f"strace of each process for {window:.0f} s, calls on the session's work dir:")
    print(f"{'':44}{'per second':>12}  target")
    rows = [
        ("idle worker: directory listings (opendir)", per_worker("listings"), "<= 1"),
        ("idle worker: getdents64 calls", per_worker("getdents64"), ""),
        ("idle worker: stats (statx/newfstatat/...)", per_worker("stats"), ""),
        ("idle worker: opens", per_worker("opens"), ""),
        ("idle worker: renames/unlinks/mkdirs", per_worker("writes"), ""),
        ("driver loop: directory listings", driver_c["listings"] / window, "<= 10"),
        ("driver loop: getdents64 calls", driver_c["getdents64"] / window, ""),
        ("driver loop: stats", driver_c["stats"] / window, ""),
        ("driver loop: opens", driver_c["opens"] / window, ""),
    ]
    for name, value, target in rows:
        print(f"{name:44}{value:>12.1f}  {target}")
    dirs = sorted(
        ((k[4:], v) for k, v in driver_c.items() if k.startswith("dir ")), key=lambda kv: -kv[1]
    )
    print("  ... by directory: " + ", ".join(f"{k} {v / window:.1f}" for k, v in dirs[:8]))
    total = sum(server.values())
    busiest = sorted(server.items(), key=lambda kv: -kv[1])[:6]
    top = ", ".join(f"{k} {v / server_window:.0f}" for k, v in busiest)
    print(f"\nGlusterFS server profile, same idle state, {server_window:.0f} s without strace:")
    print(f"{'FOPs/s (driver + workers)':44}{total / server_window:>12.1f}  ({top})")
    print(f"{'  ... divided by the idle workers':44}{total / server_window / nw:>12.1f}")
    waves = [classify(x, path) for x in wave_texts]
    renames = sum(c["renames"] for c in waves)
    failed = sum(c["failed renames"] for c in waves)
    print(f"\nA wave of {wave_tasks} one-task chunks for {nw} workers (claim herd):")
    herd = [
        ("worker renames per chunk (claim, part, beats)", renames / wave_tasks, ""),
        ("failed renames per chunk (lost races)", failed / wave_tasks, "~0, not O(W)"),
    ]
    for name, value, target in herd:
        print(f"{name:44}{value:>12.2f}  {target}")
    p50 = statistics.median(lat)
    print(f"\n{'idle worker picks up a new task, p50':44}{p50:>11.3f}s  <= 1 s")
    p90 = sorted(lat)[int(0.9 * (len(lat) - 1))]
    print(f"{'  ... p90 / max':44}{p90:>11.3f}s  {max(lat):.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--session", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=3, help="CPUs per worker (2 workers per node)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of idle tracing")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--pickups", type=int, default=15)
    ap.add_argument("--wave", type=int, default=20, help="chunks per worker in the claim wave")
    ap.add_argument("--user", default=os.environ.get("SHOAL_USER", "shoal"))
    args = ap.parse_args()
    if args.session:
        session_role(args.workers, args.cpus)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()

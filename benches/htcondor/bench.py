"""One contender of benches/htcondor/run, timed end to end.

Usage: `bench.py raw|pilot|shoal|joblib-htcondor N [WORKERS]` (and `bench.py slice I K N OUT`,
what each pilot job runs).

Runs as the job user (HTCondor never runs root's jobs) and prints `TIME <seconds> <note>`.
The task is the builtin `abs` (a no-op that pickles by reference for every contender).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

# TRANSPORT=tcp (benches/htcondor/run): shoal's workers connect back over TCP, and every
# contender's jobs run as on a pool without a shared filesystem (file transfer on).
TRANSPORT = os.environ.get("SHOAL_BENCH_TRANSPORT", "fs")
TRANSFER = "YES\nwhen_to_transfer_output = ON_EXIT" if TRANSPORT == "tcp" else "NO"


def submit_and_wait(name: str, description: str) -> float:
    """condor_submit `description` (its event log is NAME/events.log) and wait until every
    job has terminated; returns the seconds from submit to the last termination."""
    with open(f"{name}/{name}.sub", "w") as f:
        f.write(f"log = {name}/events.log\nshould_transfer_files = {TRANSFER}\n")
        f.write("request_memory = 64\n")
        f.write(description)
    start = time.monotonic()
    subprocess.run(
        ["condor_submit", "-terse", f"{name}/{name}.sub"], check=True, capture_output=True
    )
    subprocess.run(
        ["condor_wait", "-wait", "1800", f"{name}/events.log"], check=True, capture_output=True
    )
    return time.monotonic() - start


def raw(n: int) -> str:
    """One condor_submit of `queue N` /bin/true jobs, until the last one has terminated."""
    os.makedirs("raw", exist_ok=True)
    took = submit_and_wait(
        "raw", f"executable = /bin/true\noutput = /dev/null\nerror = /dev/null\nqueue {n}\n"
    )
    with open("raw/events.log") as f:
        done = len(re.findall(r"^005 ", f.read(), re.M))
    assert done == n, f"{done} of {n} jobs terminated"
    return f"{took:.2f} {n} jobs"


def pilot(n: int, workers: int) -> str:
    """A hand-written pilot: `queue WORKERS` jobs, each running its slice of the N tasks in one
    interpreter and writing the results to a file; submit to every result read back."""
    os.makedirs("pilot/out", exist_ok=True)
    me = os.path.abspath(__file__)
    start = time.monotonic()
    submit_and_wait(
        "pilot",
        f"executable = {sys.executable}\n"
        f"arguments = {me} slice $(Process) {workers} {n} {os.path.abspath('pilot/out')}\n"
        f"output = pilot/$(Process).out\nerror = pilot/$(Process).err\nqueue {workers}\n",
    )
    out: list[int] = []
    for i in range(workers):
        with open(f"pilot/out/{i}") as f:
            out.extend(int(v) for v in f.read().split())
    took = time.monotonic() - start
    assert sorted(out) == list(range(1, n + 1)), "pilot results are wrong"
    return f"{took:.2f} {workers} jobs"


def run_slice(i: int, k: int, n: int, out: str) -> None:
    """One pilot job: tasks i, i+k, i+2k, ... of abs over range(-n, 0), in this interpreter."""
    values = [abs(x) for x in range(-n, 0)[i::k]]
    with open(os.path.join(out, f".{i}"), "w") as f:
        f.write(" ".join(map(str, values)))
    os.rename(os.path.join(out, f".{i}"), os.path.join(out, str(i)))


def shoal_run(n: int, workers: int) -> str:
    import shoal

    start = time.monotonic()
    with shoal.Pool(workers, backend="htcondor", transport=TRANSPORT) as pool:
        out = pool.map(abs, range(-n, 0))
        stats = pool._driver.stats()
    took = time.monotonic() - start
    assert out == list(range(n, 0, -1))
    return f"{took:.2f} {stats['workers_started']} workers"


def joblib_htcondor(n: int, workers: int) -> str:
    from joblib import Parallel, delayed, parallel_config
    from joblib_htcondor import register_htcondor

    register_htcondor()
    os.makedirs("jht/shared", exist_ok=True)
    start = time.monotonic()
    with parallel_config(
        backend="htcondor",
        n_jobs=workers,
        request_cpus=1,
        request_memory="512MB",  # its default (8GB) fits no slot of the test pool
        request_disk="100MB",
        python_path=sys.executable,
        initial_dir=os.getcwd(),
        shared_data_dir=os.path.abspath("jht/shared"),
        poll_interval=1,
    ):
        out = Parallel()(delayed(abs)(i) for i in range(-n, 0))
    took = time.monotonic() - start
    assert out == list(range(n, 0, -1))
    return f"{took:.2f} {n} jobs"


def main() -> None:
    if sys.argv[1] == "slice":
        run_slice(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    which, n = sys.argv[1], int(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    if which == "raw":
        res = raw(n)
    elif which == "pilot":
        res = pilot(n, workers)
    elif which == "shoal":
        res = shoal_run(n, workers)
    elif which == "joblib-htcondor":
        res = joblib_htcondor(n, workers)
    else:
        raise SystemExit(f"unknown contender {which!r}")
    print(f"TIME {res}", flush=True)


if __name__ == "__main__":
    main()

"""A driver for the fault tests on the namespace clusters (tests/test_multinode_faults.py on
slurm-multinode, tests/test_isolated_htcondor.py on isolated), run on their login machine as the
submitting user through the public API only.

It maps `task` over range(N) with `imap_unordered` and prints one JSON line per event on
stdout, as it happens: `session`, each `result` (x, host, pid, the scheduler's job, start and
end times, whether the driver's files were visible), each `error` (a task or the session
failed), `mapped` once the map is over. With --wait-end it then keeps the session open until a
line arrives on stdin (so late results from a cut-off node reach a live driver), and ends with
`executions` (every run of a task, recorded on the shared volume; none without one) and `final`
(the engine's counters).
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

Result = tuple[int, str, int, str, float, float, bool]


def condor_job() -> str:
    """CLUSTER.PROC of the HTCondor job running this process, from its job ad; on Slurm the
    array element ARRAYID_TASKID (what scancel takes: `scancel RAWID` of an element exits 0
    and cancels nothing, unless it is the array's own id, which cancels every element); ""
    elsewhere."""
    ad = os.environ.get("_CONDOR_JOB_AD")
    if not ad:
        if "SLURM_ARRAY_JOB_ID" in os.environ:
            return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        return os.environ.get("SLURM_JOB_ID", "")
    attrs = dict(ln.split(" = ", 1) for ln in open(ad).read().splitlines() if " = " in ln)
    return f"{attrs['ClusterId']}.{attrs['ProcId']}"


def task(args: tuple[int, float, str, str]) -> Result:
    x, seconds, ran_dir, driver_dir = args
    t0 = time.time()
    host, pid = socket.gethostname(), os.getpid()
    if ran_dir:
        # one file per execution (names are unique): who ran what, and when it started
        with open(os.path.join(ran_dir, f"{x}.{host}.{pid}.{t0:.3f}"), "w"):
            pass
    time.sleep(seconds)
    return x, host, pid, condor_job(), t0, time.time(), os.path.exists(driver_dir)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="slurm", choices=("slurm", "htcondor"))
    ap.add_argument("--transport", default=None, help="the Pool's transport= (default: its own)")
    ap.add_argument("--python-path", default=None)
    ap.add_argument(
        "--no-record", action="store_true", help="no execution record (nothing is shared)"
    )
    ap.add_argument("--tasks", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=3, help="CPUs per worker (spreads them over nodes)")
    ap.add_argument("--job-name", default="shoal-mn", help="Slurm job name")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--heartbeat-timeout", type=float, default=15.0)
    ap.add_argument("--wait-end", action="store_true")
    a = ap.parse_args()
    ran_dir = ""
    if not a.no_record:
        ran_dir = tempfile.mkdtemp(prefix="ran-", dir=os.environ["SHOAL_MN_WORK"])
    opts: dict[str, Any] = {"heartbeat_timeout": a.heartbeat_timeout, "work_dir": a.work_dir}
    if a.backend == "slurm":
        opts.update(job_name=a.job_name, cpus=a.cpus, time="10m")
    else:
        opts.update(request_cpus=a.cpus)
    if a.transport:
        opts["transport"] = a.transport
    if a.python_path:
        opts["python_path"] = a.python_path
    with shoal.Pool(a.workers, backend=a.backend, **opts) as p:
        path = p._driver.path
        emit(
            "session",
            id=p.session,
            path=path,
            driver_pid=os.getpid(),
            transport=p._driver.transport,
        )
        items = [(x, a.seconds, ran_dir, path) for x in range(a.tasks)]
        it = p.imap_unordered(task, items, chunksize=1)
        while True:
            try:
                x, host, pid, job, t0, t1, saw_driver = next(it)
            except StopIteration:
                break
            except Exception as e:
                emit("error", type=type(e).__name__, message=str(e))
                if isinstance(e, shoal.SessionError):
                    break
                continue
            emit("result", x=x, host=host, pid=pid, job=job, t0=t0, t1=t1, saw_driver=saw_driver)
        emit("mapped", stats=p._driver.stats())
        if a.wait_end:
            sys.stdin.readline()
        runs = []
        for name in os.listdir(ran_dir) if ran_dir else []:
            x, host, pid, t0 = name.split(".", 3)
            runs.append([int(x), host, int(pid), float(t0)])
        emit("executions", runs=runs)
        emit("final", stats=p._driver.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One peer tool mapping N no-op tasks on Slurm, timed from pool/cluster creation to all
results in hand. Runs inside that tool's own venv: ``python peers.py TOOL N WORKDIR``.
Prints one JSON line: {"tool", "tasks", "seconds", "ok"}."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from noop_task import noop


def pypoolparty_map(n: int, work: str) -> list[int]:
    import pypoolparty

    pool = pypoolparty.slurm.array.Pool(
        python_path=sys.executable, polling_interval=1.0, work_dir=os.path.join(work, "ppp")
    )
    return pool.map(noop, list(range(n)))


def submitit_map(n: int, work: str) -> list[int]:
    import submitit

    ex = submitit.AutoExecutor(folder=os.path.join(work, "submitit"), cluster="slurm")
    ex.update_parameters(slurm_partition="debug", timeout_min=30)
    jobs = ex.map_array(noop, list(range(n)))
    return [j.result() for j in jobs]


def dask_cluster(work: str) -> Any:
    """dask-jobqueue's SLURMCluster of 16 one-core workers (also benches/transport's)."""
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(
        cores=1,
        processes=1,
        memory="1GB",
        queue="debug",
        walltime="00:30:00",
        log_directory=os.path.join(work, "dask"),
        python=sys.executable,
    )
    cluster.scale(jobs=16)
    return cluster


def dask_map(n: int, work: str) -> list[int]:
    from dask.distributed import Client

    cluster = dask_cluster(work)
    client = Client(cluster)
    try:
        return client.gather(client.map(noop, range(n)))
    finally:
        client.close()
        cluster.close()


TOOLS = {"pypoolparty": pypoolparty_map, "submitit": submitit_map, "dask-jobqueue": dask_map}


def main() -> None:
    tool, n, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(work, exist_ok=True)
    t = time.perf_counter()
    out = TOOLS[tool](n, work)
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {"tool": tool, "tasks": n, "seconds": seconds, "ok": list(out) == list(range(n))}
        )
    )


if __name__ == "__main__":
    main()

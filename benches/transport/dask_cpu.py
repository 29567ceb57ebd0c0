"""dask-jobqueue's driver CPU per no-op task on 16 Slurm workers (run with its own venv by
benches/transport/bench.py); prints one JSON line."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "slurm"))

from peers import dask_cluster  # the same cluster as benches/slurm's


def noop(x: int) -> int:
    return x


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    from dask.distributed import Client

    n, work = int(sys.argv[1]), sys.argv[2]
    cluster = dask_cluster(work)
    client = Client(cluster)
    try:
        client.wait_for_workers(16, timeout=300)
        t, c = time.perf_counter(), cpu()
        out = client.gather(client.map(noop, range(n)))
        seconds, used = time.perf_counter() - t, cpu() - c
    finally:
        client.close()
        cluster.close()
    ok = list(out) == list(range(n))
    print(json.dumps({"tasks": n, "seconds": seconds, "cpu": used, "ok": ok}))


if __name__ == "__main__":
    main()

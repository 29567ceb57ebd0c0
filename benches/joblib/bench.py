"""One measurement of benches/joblib/run: joblib Parallel over N small calls on one backend.

    python bench.py MODE N      MODE: loky | shoal-local | shoal-htcondor | joblib-htcondor

Prints one JSON line: {"mode", "n", "seconds", "ok"} or {"mode", "skipped": reason}. The
clock covers everything a user waits for: backend start, scheduler jobs, results, cleanup.
"""

from __future__ import annotations

import json
import os
import sys
import time


def small(i: int) -> int:
    return i * i


def run(mode: str, n: int) -> dict:
    from joblib import Parallel, delayed, parallel_config

    config: dict = {"n_jobs": -1}
    if mode == "loky":
        config["backend"] = "loky"
    elif mode == "shoal-local":
        from shoal.joblib import register

        register()
        config["backend"] = "local"
    elif mode == "shoal-htcondor":
        from shoal.joblib import register_htcondor

        register_htcondor()
        # joblib-htcondor's README options and the same poll interval as the baseline.
        config.update(backend="htcondor", request_cpus=1, request_memory="1Gb", poll_interval=1)
    elif mode == "joblib-htcondor":
        from joblib_htcondor import register_htcondor

        register_htcondor()
        config.update(
            backend="htcondor", request_cpus=1, request_memory="1Gb", poll_interval=1,
            shared_data_dir=os.path.join(os.getcwd(), "jht-shared"),
        )  # fmt: skip
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    expected = [small(i) for i in range(n)]
    t0 = time.perf_counter()
    try:
        with parallel_config(**config):
            out = Parallel()(delayed(small)(i) for i in range(n))
    except Exception as exc:
        if "not available" in str(exc):
            return {"mode": mode, "skipped": str(exc).splitlines()[0]}
        raise
    seconds = time.perf_counter() - t0
    return {"mode": mode, "n": n, "seconds": seconds, "ok": out == expected}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]))), flush=True)

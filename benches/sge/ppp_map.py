"""Run pypoolparty's sun_grid_engine Pool.map over N no-op tasks and print the seconds taken
(run with the peer venv's interpreter; argv: N POLLING_INTERVAL WORK_DIR)."""

import json
import sys
import time

import pypoolparty
from noop_task import noop

n, interval, work_dir = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
pool = pypoolparty.sun_grid_engine.Pool(
    polling_interval=interval, work_dir=work_dir, python_path=sys.executable
)
start = time.perf_counter()
results = pool.map(noop, list(range(n)))
elapsed = time.perf_counter() - start
assert results == list(range(n)), "pypoolparty returned wrong results"
print(json.dumps({"seconds": elapsed}))

"""What the real-scheduler tests share: waiting for a condition, the workers a session has
started, a daemon stopped for a while, and a task slow enough to span an outage."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator


def wait_for(cond: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    return cond()


def worker_pids(session_dir: str) -> dict[str, int]:
    """worker id -> pid of the workers that have started."""
    out = {}
    for info in glob.glob(os.path.join(session_dir, "workers", "*.json")):
        with open(info) as f:
            w = json.load(f)
        out[w["worker"]] = w["pid"]
    return out


@contextlib.contextmanager
def stopped(pidfile: str, seconds: float) -> Iterator[None]:
    """SIGSTOP the daemon of `pidfile` (a hung controller) for the block and then `seconds`
    more; it is resumed whatever happens."""
    with open(pidfile) as f:
        pid = int(f.read().strip())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def nap2(x: int) -> int:
    time.sleep(2)
    return x


def map_through_an_outage(pool: Any, pidfile: str, seconds: float = 30) -> dict[str, Any]:
    """A 40-s map (60 two-second tasks) on a pool of 3 workers, with the scheduler daemon of
    `pidfile` stopped for `seconds` once all three run, and one worker killed meanwhile.
    Returns the results, how many arrived during the outage, and the session's stats."""
    arrivals: list[float] = []
    it = pool.imap_unordered(nap2, range(60), chunksize=1)
    got = [next(it)]

    def read() -> None:
        for v in it:
            got.append(v)
            arrivals.append(time.monotonic())

    reader = threading.Thread(target=read)
    reader.start()
    assert wait_for(lambda: len(worker_pids(pool._driver.path)) == 3, 60), "3 workers never ran"
    with stopped(pidfile, seconds):
        t_stop = time.monotonic()
        os.kill(sorted(worker_pids(pool._driver.path).values())[0], signal.SIGKILL)
    t_cont = time.monotonic()
    reader.join(timeout=180)
    assert not reader.is_alive(), "the map did not complete"
    return {
        "results": sorted(got),
        "during": len([t for t in arrivals if t_stop < t < t_cont]),
        "stats": pool._driver.stats(),
    }

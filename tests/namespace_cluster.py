"""What the tests on the namespace clusters share (slurm-multinode, isolated: `ci/clusters/cluster
up NAME`): running `cluster exec|fault|up`, and tests/multinode_driver.py on the login machine
with its JSON events collected on a thread. The tests run on the host as root (they kill nodes
and cut links); the driver runs on the login machine as the submitting user."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
CLUSTER = str(REPO / "ci" / "clusters" / "cluster")
DRIVER = str(REPO / "tests" / "multinode_driver.py")
USER = os.environ.get("SHOAL_USER", "shoal")


def cluster(*args: str, timeout: float = 180) -> str:
    res = subprocess.run(
        [CLUSTER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert res.returncode == 0, f"cluster {' '.join(args)} failed:\n{res.stdout}{res.stderr}"
    return res.stdout


def on_login(name: str, *cmd: str, user: str = USER) -> str:
    """CMD on the login machine of cluster `name`, as `user`; its stdout."""
    return cluster("exec", name, "--user", user, "--", *cmd)


class Driver:
    """tests/multinode_driver.py on the login machine of cluster `name`; its JSON events arrive
    on a thread."""

    def __init__(self, name: str, *args: str) -> None:
        cmd = [CLUSTER, "exec", name, "--user", USER, "--", sys.executable, DRIVER, *args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
        )
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "stdout", "line": line.rstrip()}
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["event"] == kind]

    def wait(self, what: str, pred: Callable[[Driver], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not pred(self)):
                    time.sleep(0.5)  # let the readers drain
                    raise AssertionError(f"driver: no {what} within {timeout} s\n{self.report()}")
                self._cond.wait(min(left, 1.0))

    def started(self, timeout: float = 60) -> Driver:
        self.wait("session", lambda d: bool(d.of("session")), timeout)
        return self

    def results_from(self, host: str) -> list[dict[str, Any]]:
        return [r for r in self.of("result") if r["host"] == host]

    def end(self, timeout: float = 120) -> dict[str, Any]:
        """Let the driver close its pool; returns the engine's final counters."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("end\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(10)
        final = self.of("final")
        assert self.proc.returncode == 0 and final, f"driver failed\n{self.report()}"
        return final[-1]["stats"]  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def report(self) -> str:
        counts = collections.Counter(e["event"] for e in self.events)
        errors = [e["message"][:800] for e in self.of("error")][:3]
        return f"events: {dict(counts)}\nerrors: {errors}\nstderr tail:\n{self.stderr[-3000:]}"


def mid_map_on(d: Driver, node: str, results: int = 10, timeout: float = 120) -> None:
    """Wait until the map is under way with a worker of `node` in the middle of tasks."""
    d.wait(
        f"{results} results, some from {node}",
        lambda d: len(d.of("result")) >= results and bool(d.results_from(node)),
        timeout,
    )


def assert_exactly_once(d: Driver, n: int, stats: dict[str, Any]) -> None:
    got = collections.Counter(r["x"] for r in d.of("result"))
    twice = sorted(x for x, c in got.items() if c > 1)
    missing = sorted(set(range(n)) - set(got))
    assert not twice and not missing, f"delivered twice: {twice}, never: {missing}\n{d.report()}"
    assert not d.of("error"), d.report()
    assert stats["tasks_done"] == n and stats["tasks_failed"] == 0, f"{stats}"


def slurm_queued(name: str, job_name: str) -> list[str]:
    """`JOBID STATE NODES` of the jobs called `job_name` in cluster `name`'s Slurm queue."""
    out = on_login(name, "squeue", "-h", "-r", "-n", job_name, "-o", "%i %t %N")
    return [ln for ln in out.splitlines() if ln.strip()]


def slurm_job_name(name: str, prefix: str) -> Iterator[str]:
    """A unique job name (a fixture's body); afterwards the cluster is healed and no job of
    it may be left in the queue."""
    job_name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    yield job_name
    cluster("up", name)
    deadline = time.monotonic() + 120
    while (left := slurm_queued(name, job_name)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"jobs left in the queue: {left}"


def kill_a_worker_mid_map(name: str, d: Driver, node: str, n: int) -> None:
    """SIGKILL the worker of `node` that delivered the latest result, mid-map: every result
    still arrives exactly once, the loss is counted, and nothing comes from the dead one."""
    mid_map_on(d, node, results=6, timeout=180)
    victim = d.results_from(node)[-1]["pid"]
    cluster("exec", name, "--node", node, "--", "kill", "-KILL", str(victim))
    killed_at = time.time()
    d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
    stats = d.end()
    assert_exactly_once(d, n, stats)
    assert stats["workers_lost"] >= 1, f"no worker counted lost: {stats}\n{d.report()}"
    late = [r for r in d.of("result") if r["pid"] == victim and r["t1"] > killed_at]
    assert late == [], f"results from the killed worker after its death: {late}"

"""Faults on the multi-node Slurm cluster on GlusterFS (ci/clusters/cluster up slurm-multinode).

Each test runs tests/multinode_driver.py on the cluster's login machine as the submitting user
(a shoal.Pool on Slurm, 6 workers of 3 CPUs: two per node), injects one fault mid-map with
`ci/clusters/cluster fault slurm-multinode ...`, undoes it, and checks that every result was
delivered exactly once (or that the failure names its cause), and that no job is left in the
queue. The tests run on the host as root (they cut links and stop servers); the cluster is
healed (`cluster up`) after each one.
"""

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
from typing import Any, Callable, Optional

import pytest

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
CLUSTER = str(REPO / "ci" / "clusters" / "cluster")
DRIVER = str(REPO / "tests" / "multinode_driver.py")
USER = os.environ.get("SHOAL_USER", "shoal")
OUTAGE = 60.0  # seconds a link stays cut / the file server stays stopped


def cluster(*args: str, timeout: float = 180) -> str:
    res = subprocess.run(
        [CLUSTER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert res.returncode == 0, f"cluster {' '.join(args)} failed:\n{res.stdout}{res.stderr}"
    return res.stdout


def fault(*args: str) -> None:
    cluster("fault", "slurm-multinode", *args)


def on_login(*cmd: str) -> str:
    return cluster("exec", "slurm-multinode", "--user", USER, "--", *cmd)


def queued(name: str) -> list[str]:
    out = on_login("squeue", "-h", "-r", "-n", name, "-o", "%i %t %N")
    return [ln for ln in out.splitlines() if ln.strip()]


class Driver:
    """tests/multinode_driver.py on the login machine; its JSON events arrive on a thread."""

    def __init__(self, job_name: str, *args: str) -> None:
        cmd = [CLUSTER, "exec", "slurm-multinode", "--user", USER, "--"]
        cmd += [sys.executable, DRIVER, "--job-name", job_name, *args]
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


@pytest.fixture
def job_name() -> str:
    """A unique job name; after the test the cluster is healed and no job of it may remain."""
    name = f"mnf-{uuid.uuid4().hex[:8]}"
    yield name
    cluster("up", "slurm-multinode")
    deadline = time.monotonic() + 90
    while (left := queued(name)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"jobs left in the queue: {left}"


def start(job_name: str, *args: str) -> Driver:
    d = Driver(job_name, *args)
    d.wait("session", lambda d: bool(d.of("session")), 60)
    return d


def mid_map_on(d: Driver, node: str, results: int = 10) -> None:
    """Wait until the map is under way with a worker of `node` in the middle of tasks."""
    d.wait(
        f"{results} results, some from {node}",
        lambda d: len(d.of("result")) >= results and bool(d.results_from(node)),
        120,
    )


def assert_exactly_once(d: Driver, n: int, stats: dict[str, Any]) -> None:
    got = collections.Counter(r["x"] for r in d.of("result"))
    twice = sorted(x for x, c in got.items() if c > 1)
    missing = sorted(set(range(n)) - set(got))
    assert not twice and not missing, f"delivered twice: {twice}, never: {missing}\n{d.report()}"
    assert not d.of("error"), d.report()
    assert stats["tasks_done"] == n and stats["tasks_failed"] == 0, stats


def test_node_killed_mid_map_loses_nothing(job_name: str) -> None:
    n = 96
    d = start(job_name, "--tasks", str(n), "--seconds", "1", "--heartbeat-timeout", "15")
    try:
        mid_map_on(d, "n2")
        fault("node-kill", "n2")
        killed_at = time.time()
        d.wait("the end of the map", lambda d: bool(d.of("mapped")), 180)
        stats = d.end()
    finally:
        d.kill()
        fault("node-start", "n2")
    assert_exactly_once(d, n, stats)
    assert stats["workers_lost"] >= 1, stats
    late = [r for r in d.results_from("n2") if r["t1"] > killed_at]
    assert late == [], f"results from the killed node after its death: {late}"


def test_partitioned_node_is_fenced_and_its_late_results_are_not_delivered(job_name: str) -> None:
    n = 150
    d = start(
        job_name, "--tasks", str(n), "--seconds", "1", "--heartbeat-timeout", "15", "--wait-end"
    )
    cut = False
    try:
        mid_map_on(d, "n2", results=12)
        old_n2 = {r["pid"] for r in d.results_from("n2")}
        fault("link-down", "n2")
        cut, down_at = True, time.time()
        time.sleep(OUTAGE)
        fault("link-up", "n2")
        cut, up_at = False, time.time()
        d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
        # Keep the session open while the cut-off node's blocked writes land.
        time.sleep(15)
        stats = d.end()
    finally:
        if cut:
            fault("link-up", "n2")
        d.kill()
    assert_exactly_once(d, n, stats)
    assert stats["workers_lost"] >= 1, stats
    # Its chunks were requeued elsewhere: what n2 was running at the cut (and had not delivered)
    # was delivered by another worker.
    runs = d.of("executions")[-1]["runs"]
    before = {r["x"] for r in d.of("result") if r["t"] < down_at}
    held = {x for x, host, pid, t0 in runs if host == "n2" and pid in old_n2 and t0 < down_at}
    held -= before
    by = {r["x"]: (r["host"], r["pid"]) for r in d.of("result")}
    assert held, f"n2 was running nothing at the cut\n{d.report()}"
    late = sorted(x for x in held if by[x][0] == "n2" and by[x][1] in old_n2)
    assert late == [], f"delivered from the cut-off node instead of being requeued: {late}"
    # Fencing: once back, the old workers of n2 start nothing new.
    claimed_after = [
        (x, pid, round(t0 - up_at, 1))
        for x, host, pid, t0 in runs
        if host == "n2" and pid in old_n2 and t0 > up_at + 5
    ]
    assert claimed_after == [], f"n2's given-up workers went on claiming work: {claimed_after}"


def test_file_server_stall_declares_no_healthy_worker_lost(job_name: str) -> None:
    n = 150
    d = start(job_name, "--tasks", str(n), "--seconds", "1", "--heartbeat-timeout", "30")
    stopped = False
    try:
        mid_map_on(d, "n2", results=12)
        fault("fs-stop")
        stopped = True
        time.sleep(OUTAGE)
        fault("fs-cont")
        stopped = False
        d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
        stats = d.end()
    finally:
        if stopped:
            fault("fs-cont")
        d.kill()
    assert_exactly_once(d, n, stats)
    assert stats["workers_lost"] == 0, f"healthy workers declared lost: {stats}"


def test_full_volume_fails_with_an_error_naming_the_work_dir(job_name: str) -> None:
    n = 300
    work = on_login("sh", "-c", 'mktemp -d "$SHOAL_MN_SCRATCH/enospc-XXXXXX"').strip()
    d = start(job_name, "--tasks", str(n), "--seconds", "0.2", "--work-dir", work, "--wait-end")
    filled = False
    try:
        mid_map_on(d, "n1", results=10)
        fault("fill", "n3")
        filled = True
        d.wait(
            "an error or the end of the map",
            lambda d: bool(d.of("error")) or bool(d.of("mapped")),
            180,
        )
        first_error: Optional[dict[str, Any]] = next(iter(d.of("error")), None)
        fault("unfill")
        filled = False
        d.wait("the end of the map", lambda d: bool(d.of("mapped")), 180)
        d.end()
    finally:
        if filled:
            fault("unfill")
        d.kill()
        on_login("rm", "-rf", work)
    # Nothing delivered wrong: each result is its own task's, at most once.
    got = collections.Counter(r["x"] for r in d.of("result"))
    assert all(c == 1 for c in got.values()), d.report()
    assert first_error is not None, f"the volume filled up and nothing failed\n{d.report()}"
    msg = first_error["message"]
    assert "No space left on device" in msg and work in msg, msg

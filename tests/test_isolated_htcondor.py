"""HTCondor without a shared filesystem (issue 13), on the isolated cluster
(`ci/clusters/cluster up isolated`): the schedd on the login machine, two execute nodes c1, c2
in their own network and mount namespaces with private /tmp and homes and no shared mount.

Each test runs tests/multinode_driver.py on the login machine as the submitting user: a
`shoal.Pool(backend="htcondor", transport="tcp", python_path=...)` of 4 workers of 2 CPUs (two
per execute node), mapping over tasks that report where they ran, whether they could see the
driver's session dir, and their HTCondor job. It checks that every result arrives exactly once
(or the failure names its cause) and that no job of the session is left in the queue. The
tests run on the host as root (they kill processes on the nodes and hold jobs).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from namespace_cluster import (
    Driver,
    assert_exactly_once,
    cluster,
    kill_a_worker_mid_map,
    mid_map_on,
    on_login,
)

NAME = "isolated"
EXECUTE_NODES = {"c1", "c2"}
# The interpreter with shoal installed: the checkout's venv, at the same path on every machine
# (the only thing the isolated machines share with the host is this software).
PYTHON = sys.executable

pytestmark = [
    pytest.mark.isolated,
    pytest.mark.timeout(420),
]


def session_jobs(session: str) -> list[str]:
    """The session's jobs in the login machine's schedd: `CLUSTER.PROC STATUS` lines."""
    out = on_login(
        NAME, "condor_q", "-constraint", f'ShoalSession == "{session}"',
        "-af:j", "JobStatus",
    )  # fmt: skip
    return [ln for ln in out.splitlines() if ln.strip()]


class Sessions:
    """Drivers a test started; afterwards no job of their sessions may be left in the queue."""

    def __init__(self) -> None:
        self.drivers: list[Driver] = []

    def start(self, *args: str) -> Driver:
        d = Driver(
            NAME, "--backend", "htcondor", "--transport", "tcp", "--python-path", PYTHON,
            "--no-record", "--workers", "4", "--cpus", "2", *args,
        )  # fmt: skip
        self.drivers.append(d)
        return d.started()

    def check_queues(self, timeout: float = 120) -> None:
        ids = [s["id"] for d in self.drivers for s in d.of("session")]
        deadline = time.monotonic() + timeout
        for sid in ids:
            while (left := session_jobs(sid)) and time.monotonic() < deadline:
                time.sleep(1)
            assert left == [], f"jobs of session {sid} left in the queue: {left}"


@pytest.fixture
def sessions() -> Sessions:
    s = Sessions()
    yield s
    for d in s.drivers:
        d.kill()
    try:
        s.check_queues()
    finally:
        cluster("up", NAME)  # heal a killed node or a cut link for the next test


def test_map_runs_on_execute_nodes_that_see_nothing_of_the_driver(sessions: Sessions) -> None:
    n = 40
    d = sessions.start("--tasks", str(n), "--seconds", "0.2", "--wait-end")
    d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
    stats = d.end()
    assert_exactly_once(d, n, stats)
    results = d.of("result")
    assert {r["host"] for r in results} == EXECUTE_NODES, d.report()
    assert not [r for r in results if r["saw_driver"]], "a task saw the driver's session dir"
    assert all(r["job"] for r in results), "a task ran outside an HTCondor job"


def test_killed_worker_loses_nothing(sessions: Sessions) -> None:
    d = sessions.start("--tasks", "60", "--seconds", "1", "--heartbeat-timeout", "15")
    kill_a_worker_mid_map(NAME, d, "c1", 60)


def test_held_job_is_replaced_and_removed(sessions: Sessions) -> None:
    n = 60
    d = sessions.start("--tasks", str(n), "--seconds", "1", "--heartbeat-timeout", "15")
    mid_map_on(d, "c2", results=6, timeout=180)
    job = d.results_from("c2")[-1]["job"]
    cluster("fault", NAME, "hold", job)
    held_at = time.time()
    d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
    stats = d.end()
    assert_exactly_once(d, n, stats)
    assert stats["workers_lost"] >= 1, f"no worker counted lost: {stats}\n{d.report()}"
    late = [r for r in d.of("result") if r["job"] == job and r["t1"] > held_at + 1]
    assert late == [], f"results from the held job after the hold: {late}"


def test_killed_driver_leaves_no_job_in_the_queue(sessions: Sessions) -> None:
    d = sessions.start("--tasks", "400", "--seconds", "1")
    d.wait("results", lambda d: len(d.of("result")) >= 4, 180)
    sid = d.of("session")[0]["id"]
    assert session_jobs(sid), "the session has no job in the queue mid-map"
    # the machines share the host's pid namespace: SIGKILL the driver itself, no clean-up
    os.kill(d.of("session")[0]["driver_pid"], signal.SIGKILL)
    # its workers lose their connection, give up on the driver and end their jobs
    sessions.check_queues(timeout=180)

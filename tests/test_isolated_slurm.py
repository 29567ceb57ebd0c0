"""Slurm without a shared filesystem (issue 13), on the isolated cluster (`ci/clusters/cluster
up isolated`): the controller on its own machine, two Slurm nodes n1, n2 in their own network
and mount namespaces with private /tmp and homes and no shared mount; the driver on the login
machine, its work dir on the login machine's private /tmp, so `transport="auto"` picks TCP.

Each test runs tests/multinode_driver.py on the login machine as the submitting user (4 workers
of 4 CPUs: two per node of 8), injects one fault mid-map, and checks that every result arrives
exactly once (or the failure names its cause) and that no job of the session is left in the
queue. The tests run on the host as root (they kill processes and cut links); the cluster is
healed after each one.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import pytest
from namespace_cluster import (
    Driver,
    assert_exactly_once,
    cluster,
    kill_a_worker_mid_map,
    mid_map_on,
    on_login,
    slurm_job_name,
    slurm_queued,
)

NAME = "isolated"
NODES = {"n1", "n2"}

pytestmark = [pytest.mark.isolated, pytest.mark.timeout(420)]


def queued(job_name: str) -> list[str]:
    return slurm_queued(NAME, job_name)


@pytest.fixture
def job_name() -> Iterator[str]:
    yield from slurm_job_name(NAME, "iso")


def start(job_name: str, *args: str) -> Driver:
    return Driver(
        NAME, "--backend", "slurm", "--job-name", job_name, "--no-record",
        "--workers", "4", "--cpus", "4", *args,
    ).started()  # fmt: skip


def test_map_runs_on_nodes_that_see_nothing_of_the_driver(job_name: str) -> None:
    n = 40
    d = start(job_name, "--tasks", str(n), "--seconds", "0.2", "--wait-end")
    d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
    stats = d.end()
    assert_exactly_once(d, n, stats)
    assert d.of("session")[0]["transport"] == "tcp", d.report()
    results = d.of("result")
    assert {r["host"] for r in results} == NODES, d.report()
    assert not [r for r in results if r["saw_driver"]], "a task saw the driver's session dir"
    assert all(r["job"] for r in results), "a task ran outside a Slurm job"


def test_killed_worker_loses_nothing(job_name: str) -> None:
    d = start(job_name, "--tasks", "60", "--seconds", "1", "--heartbeat-timeout", "15")
    kill_a_worker_mid_map(NAME, d, "n1", 60)


def test_cancelled_job_loses_nothing(job_name: str) -> None:
    n = 60
    d = start(job_name, "--tasks", str(n), "--seconds", "1", "--heartbeat-timeout", "15")
    mid_map_on(d, "n2", results=6, timeout=180)
    job = d.results_from("n2")[-1]["job"]
    on_login(NAME, "scancel", job)
    cancelled_at = time.time()
    d.wait("the end of the map", lambda d: bool(d.of("mapped")), 240)
    stats = d.end()
    assert_exactly_once(d, n, stats)
    # scancel's SIGTERM is a preemption: the worker gives its task back (no attempt, no
    # loss: docs/checkpoints.md) and its job ends.
    left = on_login(NAME, "sh", "-c", f"squeue -h -j {job} -o %T 2>/dev/null; true").split()
    assert not set(left) & {"PENDING", "RUNNING", "SUSPENDED"}, left
    late = [r for r in d.of("result") if r["job"] == job and r["t1"] > cancelled_at + 1]
    assert late == [], f"results from the cancelled job after scancel: {late}"


def test_partitioned_node_is_given_up_on_and_nothing_is_delivered_twice(job_name: str) -> None:
    n = 60
    d = start(job_name, "--tasks", str(n), "--seconds", "1", "--heartbeat-timeout", "10")
    mid_map_on(d, "n1", results=6, timeout=180)
    cluster("fault", NAME, "link-down", "n1")
    try:
        # The map ends on n2's workers (and replacements); n1's chunks are requeued when its
        # connections fall silent.
        d.wait("the end of the map", lambda d: bool(d.of("mapped")), 300)
    finally:
        cluster("fault", NAME, "link-up", "n1")
    stats = d.end()
    assert_exactly_once(d, n, stats)
    assert stats["workers_lost"] + stats["workers_fenced"] >= 1, f"{stats}\n{d.report()}"


def test_killed_driver_leaves_no_job_in_the_queue(job_name: str) -> None:
    d = start(job_name, "--tasks", "400", "--seconds", "1")
    d.wait("results", lambda d: len(d.of("result")) >= 4, 180)
    assert queued(job_name), "the session has no job in the queue mid-map"
    # The machines share the host's pid namespace: SIGKILL the driver itself, no clean-up.
    os.kill(d.of("session")[0]["driver_pid"], signal.SIGKILL)
    # Its workers lose their connection and end their jobs (the fixture checks the queue).
    deadline = time.monotonic() + 120
    while queued(job_name) and time.monotonic() < deadline:
        time.sleep(1)
    assert queued(job_name) == [], "the killed driver's jobs stayed in the queue"

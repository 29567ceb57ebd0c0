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
import time
from typing import Any, Iterator, Optional

import pytest
from namespace_cluster import (
    Driver,
    assert_exactly_once,
    cluster,
    mid_map_on,
    on_login,
    slurm_job_name,
    slurm_queued,
)

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(420)]

OUTAGE = 60.0  # seconds a link stays cut / the file server stays stopped
NAME = "slurm-multinode"


def fault(*args: str) -> None:
    cluster("fault", NAME, *args)


def queued(job_name: str) -> list[str]:
    return slurm_queued(NAME, job_name)


@pytest.fixture
def job_name() -> Iterator[str]:
    yield from slurm_job_name(NAME, "mnf")


def assert_counted_lost(d: Driver, stats: dict[str, Any]) -> None:
    """The lost node's workers held claimed chunks: docs/protocol.md counts every such loss in
    `workers_lost`, also when the driver gave up on them (fenced) before the scheduler reported
    their jobs lost (SlurmdTimeout, 30 s later, often after the map is over)."""
    assert stats["workers_lost"] >= 1, f"no worker counted lost: {stats}\n{d.report()}"


def start(job_name: str, *args: str) -> Driver:
    return Driver(NAME, "--job-name", job_name, *args).started()


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
    late = [r for r in d.results_from("n2") if r["t1"] > killed_at]
    assert late == [], f"results from the killed node after its death: {late}"
    assert_counted_lost(d, stats)


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
    assert_counted_lost(d, stats)


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
    lost = stats["workers_lost"] + stats["workers_fenced"]
    assert lost == 0, f"healthy workers declared lost or fenced: {stats}"


def test_full_volume_fails_with_an_error_naming_the_work_dir(job_name: str) -> None:
    n = 300
    work = on_login(NAME, "sh", "-c", 'mktemp -d "$SHOAL_MN_SCRATCH/enospc-XXXXXX"').strip()
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
        on_login(NAME, "rm", "-rf", work)
    # Nothing delivered wrong: each result is its own task's, at most once.
    got = collections.Counter(r["x"] for r in d.of("result"))
    assert all(c == 1 for c in got.values()), d.report()
    assert first_error is not None, f"the volume filled up and nothing failed\n{d.report()}"
    msg = first_error["message"]
    assert "No space left on device" in msg and work in msg, msg

"""Per-call resources (docs/resources.md): a map or submit with ``resources={...}`` runs on
workers of its own shape, started while such work waits; everything else on the pool's own.

The local tests tell workers apart by the pid each task reports and the pids the session's
journal records per worker (``shoal show --json``); the Slurm tests ask Slurm itself what each
job was given (``squeue -t all``: the test cluster has no accounting database, and finished jobs
stay listed for MinJobAge).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from cluster_helpers import wait_for
from test_htcondor import CONDOR_CONFIG, Runner, condor  # noqa: F401  (the job user's fixture)

import shoal
from shoal.errors import ConfigError


def pid(_: object) -> int:
    return os.getpid()


def workers_of(session: str) -> dict[int, dict]:
    """pid -> the journal's record of the worker (id, job, shape label in `job`)."""
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "shoal"), "show", session, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {w["pid"]: w for w in json.loads(out)["workers"] if w.get("pid")}


def test_a_map_with_resources_runs_only_on_workers_of_its_shape() -> None:
    with shoal.Pool(2) as p:
        shaped = p.map_async(pid, range(12), chunksize=1, resources={"cpus": 2})
        plain = p.map(pid, range(12), chunksize=1)
        calls = [p.apply_async(pid, (0,), resources={"cpus": 2}) for _ in range(3)]
        shaped_pids = set(shaped.get(timeout=60)) | {c.get(timeout=60) for c in calls}
        session = p.session
    workers = workers_of(session)
    assert {workers[x]["id"] for x in shaped_pids} <= {
        w["id"] for w in workers.values() if w["id"].startswith("s1")
    }
    assert all(workers[x]["job"] == "(cpus=2)" for x in shaped_pids), workers
    assert all(not workers[x]["id"].startswith("s") for x in set(plain)), workers
    assert not shaped_pids & set(plain)


def test_equal_resources_share_a_shape_and_imap_takes_them_too() -> None:
    with shoal.Pool(2) as p:
        a = set(p.imap_unordered(pid, range(6), resources={"cpus": 3}))
        b = set(p.imap(pid, range(6), chunksize=2, resources={"cpus": 3}))
        c = set(p.starmap(pid_star, [(1,), (2,)], resources={"cpus": 4}))
        session = p.session
    workers = workers_of(session)
    assert {workers[x]["job"] for x in a | b} == {"(cpus=3)"}
    assert {workers[x]["job"] for x in c} == {"(cpus=4)"}


def slow_pid(_: object) -> int:
    time.sleep(0.2)
    return os.getpid()


def test_a_shape_caps_its_own_workers() -> None:
    """`workers` in the resources is that shape's own cap: eight 0.2-s tasks of a 1-worker
    shape all run in one process while the pool's own map spreads over its three."""
    with shoal.Pool(3) as p:
        one = p.map_async(slow_pid, range(8), chunksize=1, resources={"cpus": 2, "workers": 1})
        plain = p.map(slow_pid, range(9), chunksize=1)
        shaped = set(one.get(timeout=60))
        session = p.session
    workers = workers_of(session)
    assert len(shaped) == 1, shaped
    assert {workers[x]["job"] for x in shaped} == {"(cpus=2,workers=1)"}
    assert len(set(plain)) > 1, "the pool's own shape keeps its three workers"


def pid_star(_: object) -> int:
    return os.getpid()


def test_executor_with_resources_is_a_view_and_submit_keeps_the_users_keywords() -> None:
    with shoal.Executor(2) as ex:
        big = ex.with_resources(cpus=2)
        shaped = {big.submit(pid_kw, resources="mine").result(timeout=60) for _ in range(3)}
        shaped |= set(big.map(pid, range(4)))
        # `resources=` of plain submit is the function's own keyword
        plain = ex.submit(pid_kw, resources="mine").result(timeout=60)
        session = ex.session
    workers = workers_of(session)
    assert {workers[x]["job"] for x in shaped} == {"(cpus=2)"}
    assert workers[plain]["job"] is None


def pid_kw(*, resources: str) -> int:
    assert resources == "mine"
    return os.getpid()


def test_unknown_or_bad_resources_fail_before_anything_is_submitted() -> None:
    with shoal.Pool(1) as p:
        with pytest.raises(ConfigError) as e:
            p.map(pid, range(3), resources={"cpu": 2})
        assert "did you mean `cpus`?" in str(e.value)
        assert "per-call resources of local: cpus" in str(e.value)
        with pytest.raises(ConfigError, match="cpus"):
            p.map(pid, range(3), resources={"cpus": 0})
        with pytest.raises(TypeError, match="mapping"):
            p.map(pid, range(3), resources=["cpus"])  # type: ignore[arg-type]
        assert p._driver.stats()["tasks_total"] == 0
    with shoal.Executor(1) as ex, pytest.raises(ConfigError, match="not a resource"):
        ex.with_resources(partition="x")


# ---------------------------------------------------------------- Slurm


def slurm_job(_: object) -> str:
    """The Slurm job (array element) a task ran in."""
    return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"


def slurm_cpus(jobs: set[str]) -> dict[str, int]:
    """The CPUs Slurm gave each array element, from its own records."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i %C", "-j", ",".join(sorted(jobs))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return {job: int(cpus) for job, cpus in rows}


def squeue_jobs(name: str) -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-n", name, "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_slurm_two_shapes_in_flight_run_in_jobs_of_their_size() -> None:
    name = f"shoal-r-{uuid.uuid4().hex[:8]}"
    with shoal.Pool(
        2, backend="slurm", job_name=name, time="10m", memory="200M", idle_timeout=2
    ) as p:
        shaped = p.map_async(slurm_job, range(8), chunksize=1, resources={"cpus": 2})
        plain = p.map_async(slurm_job, range(8), chunksize=1)
        big, small = shaped.get(timeout=180), plain.get(timeout=180)
        big_jobs, small_jobs = set(big), set(small)
        assert not big_jobs & small_jobs
        cpus = slurm_cpus(big_jobs | small_jobs)
        assert {cpus[j] for j in big_jobs} == {2}, cpus
        assert {cpus[j] for j in small_jobs} == {1}, cpus
        # Its work done, no worker of the 2-CPU shape is left (they exit once idle), while
        # the pool itself goes on.
        gone = wait_for(lambda: not (squeue_jobs(name) & big_jobs), 60)
        assert gone, squeue_jobs(name)
        assert {slurm_cpus({j})[j] for j in p.map(slurm_job, range(2))} == {1}
        session = p.session
    labels = {w["job"] for w in workers_of(session).values()}
    assert any(label and label.endswith("(cpus=2)") for label in labels), labels


@pytest.mark.slurm
def test_slurm_resources_are_checked_by_the_registry() -> None:
    name = f"shoal-r-{uuid.uuid4().hex[:8]}"
    with shoal.Pool(1, backend="slurm", job_name=name, time="5m") as p:
        with pytest.raises(ConfigError) as e:
            p.map(pid, range(2), resources={"request_cpus": 2})
        assert "per-call resources of slurm: cpus, memory" in str(e.value)
        with pytest.raises(ConfigError, match="partition"):
            p.map(pid, range(2), resources={"partition": "no-such-partition"})
        assert not squeue_jobs(name)


# ---------------------------------------------------------------- Grid Engine


def sge_job(_: object) -> str:
    return f"{os.environ['JOB_ID']}.{os.environ['SGE_TASK_ID']}"


def qacct_slots(job: str) -> dict[str, int]:
    """task id -> slots, from Grid Engine's accounting of an array job."""
    out = subprocess.run(["qacct", "-j", job], capture_output=True, text=True).stdout
    slots, task = {}, None
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "taskid":
            task = value.strip()
        elif key == "slots" and task is not None:
            slots[task] = int(value)
    return slots


@pytest.mark.sge
@pytest.mark.timeout(240)
def test_sge_two_shapes_in_flight_run_in_jobs_of_their_size() -> None:
    name = f"shoal-r-{uuid.uuid4().hex[:8]}"
    with shoal.Pool(
        2, backend="sge", job_name=name, pe="smp", time="10m", poll_interval=0.5, idle_timeout=2
    ) as p:
        shaped = p.map_async(sge_job, range(6), chunksize=1, resources={"slots": 2})
        plain = p.map_async(sge_job, range(6), chunksize=1)
        big, small = set(shaped.get(timeout=180)), set(plain.get(timeout=180))
        assert not big & small
    # Grid Engine writes an array task's accounting record when it ends.
    jobs = {t.split(".")[0] for t in big | small}
    records = wait_for(
        lambda: (
            (r := {j: qacct_slots(j) for j in jobs})
            and all(t.split(".")[1] in r[t.split(".")[0]] for t in big | small)
            and r
        ),
        60,
    )
    assert records, {j: qacct_slots(j) for j in jobs}
    assert {records[t.split(".")[0]][t.split(".")[1]] for t in big} == {2}, records
    assert {records[t.split(".")[0]][t.split(".")[1]] for t in small} == {1}, records


# ---------------------------------------------------------------- HTCondor


@pytest.mark.htcondor
@pytest.mark.timeout(400)
def test_htcondor_two_shapes_in_flight_run_in_jobs_of_their_size(condor: Runner) -> None:  # noqa: F811
    r = condor.run("shapes")
    assert r["left"] == [] and r["left_big"] == [], r
    big, small = set(r["big"]), set(r["small"])
    assert big and small and not big & small, r
    history = condor_history(big | small)
    assert {history[j]["RequestCpus"] for j in big} == {2}, history
    assert {history[j]["RequestCpus"] for j in small} == {1}, history
    assert {history[j].get("CpusProvisioned", 2) for j in big} == {2}, history


@pytest.mark.htcondor
@pytest.mark.timeout(400)
def test_htcondor_a_shape_no_slot_can_run_fails_only_its_own_tasks(condor: Runner) -> None:  # noqa: F811
    """A shape whose requirements no slot meets passes `condor_submit -dry-run`; HTCondor's
    analysis then says no slot can ever run it. Before, that ended the whole session; now
    only its tasks fail (with the analysis), the pool's other maps finish, and a later call
    for the shape fails at once."""
    r = condor.run("dead_shape")
    assert r["error"].startswith("SchedulerError: task "), r
    assert "workers of shape (requirements=Machine" in r["error"], r
    assert "HTCondor will never run the worker jobs" in r["error"], r
    assert r["again"].startswith("SchedulerError: task "), r
    assert "HTCondor will never run" in r["again"], r
    assert (r["good"], r["later"]) == (4, 2), r
    assert r["left"] == [], r


def condor_history(jobs: set[str]) -> dict[str, dict]:
    """The schedd's records of ended jobs (Cluster.Proc -> attributes)."""
    clusters = sorted({j.split(".")[0] for j in jobs})
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
    out = subprocess.run(
        [
            "condor_history",
            "-json",
            "-constraint",
            constraint,
            "-attributes",
            "ClusterId,ProcId,RequestCpus,CpusProvisioned",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CONDOR_CONFIG": CONDOR_CONFIG},
    ).stdout
    ads = json.loads(out) if out.strip() else []
    return {f"{a['ClusterId']}.{a['ProcId']}": a for a in ads}


@pytest.mark.htcondor
@pytest.mark.timeout(400)
def test_htcondor_workers_per_job_runs_two_workers_in_each_job(condor: Runner) -> None:  # noqa: F811
    r = condor.run("per_job")
    assert r["left"] == [], r
    workers = r["workers"]
    assert workers and all(re.fullmatch(r"b\d+-\d+\.[01]", w) for w in workers), workers
    # Workers come in pairs of one job: `bB-P.0` and `bB-P.1`.
    elements = {w.rsplit(".", 1)[0] for w in workers}
    assert len(workers) == 2 * len(elements), workers
    assert "request_cpus = 2" in r["submit"] and "request_memory = 256" in r["submit"], r
    history = condor_history(set(r["jobs"]))
    assert {a["RequestCpus"] for a in history.values()} == {2}, history

"""Scenarios for the HTCondor backend, run by tests/test_htcondor.py as the job user.

HTCondor never runs root's jobs, so the driver must run as the user whose jobs these are:
test_htcondor.py copies this file somewhere that user can read and runs
``python htcondor_scenarios.py NAME`` with the interpreter made by ci/clusters/condor-python.sh.
Each scenario prints ``RESULT <json>`` as its last line; the test asserts on it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import shoal
from shoal.errors import ConfigError, SchedulerError, SessionError, TaskError

SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {}


def scenario(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def slow_square(x: int) -> int:
    time.sleep(0.1)
    return x * x


def fail(x: int) -> int:
    if x == 3:
        raise KeyError(f"bad item {x}")
    return x


def session_jobs(session: str) -> list[str]:
    """Jobs of a session still in the queue (any state)."""
    out = subprocess.run(
        [
            "condor_q",
            "-json",
            "-constraint",
            f'ShoalSession == "{session}"',
            "-attributes",
            "ClusterId,ProcId",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f"{a['ClusterId']}.{a['ProcId']}" for a in json.loads(out)] if out.strip() else []


def _worker_id(info_path: str) -> str:
    """The worker id a worker announced (its file is named by id and incarnation)."""
    with open(info_path) as f:
        return str(json.load(f)["worker"])


def running_worker(pool: shoal.Pool, timeout: float = 90) -> str:
    """A worker id whose process has started (it wrote its info file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = sorted(glob.glob(os.path.join(pool._driver.path, "workers", "*.json")))
        if infos:
            return _worker_id(infos[0])
        time.sleep(0.2)
    raise TimeoutError("no worker started")


def running_job(session: str, timeout: float = 90) -> str:
    """Cluster.Proc of a running job of the session (what condor_hold and condor_rm take)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [
                "condor_q",
                "-constraint",
                f'ShoalSession == "{session}" && JobStatus == 2',
                "-af",
                "ClusterId",
                "ProcId",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if out:
            return f"{out[0]}.{out[1]}"
        time.sleep(0.2)
    raise TimeoutError("no job running")


@scenario
def results() -> dict[str, Any]:
    with shoal.Pool(
        4,
        backend="htcondor",
        request_memory="256M",
        request_cpus=1,
        attributes={"ProjectName": "shoal-tests"},
    ) as pool:
        session = pool.session
        mapped = pool.map(square, range(200))
        imapped = list(pool.imap(square, range(50), chunksize=5))
        unordered = sorted(pool.imap_unordered(square, range(50)))
        star = pool.starmap(add, [(i, i) for i in range(20)])
        applied = pool.apply(add, (2, 3))
        asyncs = [pool.apply_async(square, (i,)) for i in range(10)]
        got_async = [a.get(timeout=120) for a in asyncs]
        stats = pool._driver.stats()
        # The workers are one cluster's procs, named Cluster.Proc.
        worker_ids = sorted(
            _worker_id(p) for p in glob.glob(os.path.join(pool._driver.path, "workers", "*.json"))
        )
        with open(os.path.join(pool._driver.path, "condor.sub")) as f:
            sub = f.read()
        with open(os.path.join(pool._driver.path, "condor.log")) as f:
            submitted = [
                f"{int(c)}.{int(p)}"
                for c, p in re.findall(r"^000 \((\d+)\.(\d+)\.\d+\)", f.read(), re.M)
            ]
    ok = (
        mapped == [i * i for i in range(200)]
        and imapped == [i * i for i in range(50)]
        and unordered == sorted(i * i for i in range(50))
        and star == [2 * i for i in range(20)]
        and applied == 5
        and got_async == [i * i for i in range(10)]
    )
    return {
        "ok": ok,
        "stats": stats,
        "workers": worker_ids,
        "submitted": submitted,
        "submit": sub,
        "left": session_jobs(session),
    }


@scenario
def executor() -> dict[str, Any]:
    with shoal.Executor(max_workers=3, backend="htcondor") as ex:
        futs = [ex.submit(add, i, 1) for i in range(30)]
        values = [f.result(timeout=120) for f in futs]
        mapped = list(ex.map(square, range(40)))
        session = ex._driver.id
    return {
        "ok": values == [i + 1 for i in range(30)] and mapped == [i * i for i in range(40)],
        "left": session_jobs(session),
    }


@scenario
def traceback() -> dict[str, Any]:
    with shoal.Pool(2, backend="htcondor") as pool:
        session = pool.session
        try:
            pool.map(fail, range(6))
            err = None
        except KeyError as e:
            err = e
        except TaskError as e:
            err = e
        cause = getattr(err, "__cause__", None)
        ok_after = pool.apply(square, (7,))
    return {
        "type": type(err).__name__,
        "message": str(err),
        "cause": str(cause),
        "ok_after": ok_after,
        "left": session_jobs(session),
    }


def disturb(action: str) -> dict[str, Any]:
    """Hold or remove one running worker mid-map; every result must still come, once."""
    with shoal.Pool(3, backend="htcondor", heartbeat_timeout=60) as pool:
        session = pool.session
        n = 60
        result = pool.imap_unordered(slow_square, range(n), chunksize=2)
        running_worker(pool)
        victim = running_job(session)
        time.sleep(1.0)  # let it claim a chunk
        done = subprocess.run([f"condor_{action}", victim], capture_output=True, text=True)
        values = list(result)
        stats = pool._driver.stats()
    # Unordered, so a result delivered twice or never would show.
    return {
        "ok": sorted(values) == [i * i for i in range(n)],
        "victim": victim,
        "action_rc": done.returncode,
        "action_out": done.stdout + done.stderr,
        "stats": stats,
        "left": session_jobs(session),
    }


@scenario
def hold() -> dict[str, Any]:
    return disturb("hold")


@scenario
def remove() -> dict[str, Any]:
    return disturb("rm")


class Steps:
    """`n` one-second steps, logged to `log`; checkpointable (docs/checkpoints.md). The same
    task as tests/checkpoint_tasks.py's, here because this file runs on its own."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, n: int, log: str) -> int:
        return self.resume(0, n, log)

    def resume(self, start: int, n: int, log: str) -> int:
        self.done = start
        with open(log, "a") as f:
            f.write(f"start {start}\n")
        for i in range(start, n):
            time.sleep(1.0)
            self.done = i + 1
            with open(log, "a") as f:
                f.write(f"step {i}\n")
        return n

    def checkpoint(self, n: int, log: str) -> Any:
        return Rest(self, n, log)


class Rest:
    def __init__(self, steps: Steps, n: int, log: str) -> None:
        self.steps, self.n, self.log = steps, n, log

    def __call__(self) -> int:
        return self.steps.resume(self.steps.done, self.n, self.log)


@scenario
def vacate() -> dict[str, Any]:
    """condor_vacate_job of the worker running a checkpointing task: the job goes back to
    idle and runs again; the task resumes there, and no attempt is charged."""
    log = os.path.abspath("vacate.log")
    if os.path.exists(log):
        os.remove(log)
    with shoal.Pool(1, backend="htcondor", max_attempts=1) as pool:
        session = pool.session
        fut = pool.apply_async(Steps(), (20, log))
        victim = running_job(session)
        end = time.monotonic() + 60
        # The log appears when the task starts, some time after its job runs.
        while time.monotonic() < end and (
            not os.path.exists(log) or open(log).read().count("step") < 5
        ):
            time.sleep(0.2)
        done = subprocess.run(["condor_vacate_job", victim], capture_output=True, text=True)
        value = fut.get(timeout=240)
        stats = pool._driver.stats()
    lines = open(log).read().split()
    starts = [int(lines[i + 1]) for i, w in enumerate(lines) if w == "start"]
    steps = [int(lines[i + 1]) for i, w in enumerate(lines) if w == "step"]
    return {
        "ok": value == 20,
        "action_rc": done.returncode,
        "action_out": done.stdout + done.stderr,
        "starts": starts,
        "steps": steps,
        "stats": stats,
        "left": session_jobs(session),
    }


def error_of(make: Callable[[], Any]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        make()
        return {"error": None, "seconds": time.monotonic() - start}
    except Exception as e:  # the test checks the class and message
        return {
            "error": type(e).__name__,
            "message": str(e),
            "config_error": isinstance(e, ConfigError),
            "scheduler_error": isinstance(e, SchedulerError),
            "seconds": time.monotonic() - start,
        }


@scenario
def bad_requests() -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="bad-requests-", dir=os.environ["SHOAL_HOME"])

    def pool(**options: Any) -> shoal.Pool:
        return shoal.Pool(2, backend="htcondor", work_dir=work, **options)

    return {
        "memory": error_of(lambda: pool(request_memory="lots")),
        "universe": error_of(lambda: pool(universe="standard")),
        "requirements": error_of(lambda: pool(requirements="(Memory > )")),
        "schedd": error_of(lambda: pool(schedd="no-such-schedd")),
        "option": error_of(lambda: pool(partition="debug")),
        "sessions_left": len(os.listdir(work)),
    }


def session_error(**options: Any) -> dict[str, Any]:
    """A map on a pool whose workers can never run: the SessionError, and how soon."""
    start = time.monotonic()
    pool = shoal.Pool(2, backend="htcondor", **options)
    session = pool.session
    try:
        pool.map(square, range(10))
        err = None
    except SessionError as e:
        err = e
    finally:
        pool.terminate()
    return {
        "error": type(err).__name__,
        "message": str(err),
        "seconds": time.monotonic() - start,
        "left": session_jobs(session),
    }


@scenario
def held_forever() -> dict[str, Any]:
    """Every worker is put on hold by policy: a clear error, never a hang."""
    return session_error(extra_directives=["periodic_hold = True"])


@scenario
def interrupted() -> dict[str, Any]:
    """Killed by Ctrl-C (SIGINT from the test) while workers run: they must all go."""
    pool = shoal.Pool(3, backend="htcondor")
    session = pool.session
    result = pool.map_async(slow_square, range(3000), chunksize=10)
    running_worker(pool)
    try:
        # Inside the try: the test's SIGINT may arrive as soon as this line is out.
        print(f"SESSION {session}", flush=True)
        result.get(timeout=240)
    except KeyboardInterrupt:
        pool.terminate()
        return {"interrupted": True, "left": session_jobs(session)}
    return {"interrupted": False, "left": session_jobs(session)}


def nap2(x: int) -> int:
    time.sleep(2)
    return x


@scenario
def outage() -> dict[str, Any]:
    """A 40-s map on 3 workers; the test stops the schedd for 30 s (and kills a worker) once
    it reads READY. Result arrival times tell whether delivery stalled."""
    arrivals: list[float] = []
    with shoal.Pool(3, backend="htcondor", heartbeat_timeout=120) as pool:
        session = pool.session
        it = pool.imap_unordered(nap2, range(60), chunksize=1)
        got = [next(it)]
        deadline = time.monotonic() + 90
        while len(glob.glob(os.path.join(pool._driver.path, "workers", "*.json"))) < 3:
            assert time.monotonic() < deadline, "3 workers never started"
            time.sleep(0.2)
        print(f"READY {pool._driver.path}", flush=True)
        for v in it:
            got.append(v)
            arrivals.append(time.time())
        stats = pool._driver.stats()
    return {
        "ok": sorted(got) == list(range(60)),
        "arrivals": arrivals,
        "stats": stats,
        "left": session_jobs(session),
    }


@scenario
def unsatisfiable() -> dict[str, Any]:
    """More memory than any slot has: a clear error soon, never a silent wait."""
    return session_error(request_memory="100G")


@scenario
def caps() -> dict[str, Any]:
    """A default pool (16 workers) under MAX_JOBS_PER_SUBMISSION=4, MAX_JOBS_PER_OWNER=8."""
    with shoal.Pool(backend="htcondor") as pool:
        session = pool.session
        values = pool.map(slow_square, range(64), chunksize=1)
        stats = pool._driver.stats()
        with open(os.path.join(pool._driver.path, "condor.log")) as f:
            submitted = re.findall(r"^000 \((\d+)\.(\d+)\.\d+\)", f.read(), re.M)
    per_cluster: dict[str, int] = {}
    for c, _ in submitted:
        per_cluster[c] = per_cluster.get(c, 0) + 1
    return {
        "ok": values == [i * i for i in range(64)],
        "stats": stats,
        "per_cluster": list(per_cluster.values()),
        "left": session_jobs(session),
    }


@scenario
def suspend() -> dict[str, Any]:
    """condor_suspend of the only worker: it is no longer counted running; condor_continue
    brings it back, and the map completes."""
    with shoal.Pool(1, backend="htcondor") as pool:
        session = pool.session
        res = pool.map_async(nap2, range(6), chunksize=1)

        def running(ok: Callable[[int], bool], timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if ok(pool._driver.stats()["workers_running"]):
                    return True
                time.sleep(0.2)
            return False

        started = running(lambda n: n == 1, 90)
        job = running_job(session)
        before = pool._driver.stats()["workers_started"]
        sus = subprocess.run(["condor_suspend", job], capture_output=True, text=True)
        # No longer counted running: it drops out, or the engine starts a replacement.
        seen_suspended = running(
            lambda n: n == 0 or pool._driver.stats()["workers_started"] > before, 20
        )
        cont = subprocess.run(["condor_continue", job], capture_output=True, text=True)
        # Resumed (a replacement may have been started meanwhile).
        seen_resumed = running(lambda n: n >= 1, 20)
        values = res.get(timeout=120)
    return {
        "started": started,
        "suspend": sus.returncode,
        "suspend_out": sus.stdout + sus.stderr,
        "continue": cont.returncode,
        "seen_suspended": seen_suspended,
        "seen_resumed": seen_resumed,
        "ok": values == list(range(6)),
        "left": session_jobs(session),
    }


def condor_job(_: object) -> str:
    """The job (Cluster.Proc) a task ran in, from the job ad HTCondor gives the job."""
    with open(os.environ["_CONDOR_JOB_AD"]) as f:
        ad = dict(line.split(" = ", 1) for line in f.read().splitlines() if " = " in line)
    return f"{int(ad['ClusterId'])}.{int(ad['ProcId'])}"


@scenario
def shapes() -> dict[str, Any]:
    """Two worker shapes in flight (tests/test_resources.py): a map asking for 2 CPUs and
    one asking for nothing."""
    with shoal.Pool(
        2, backend="htcondor", request_memory="256M", request_cpus=1, idle_timeout=2
    ) as pool:
        session = pool.session
        big = pool.map_async(condor_job, range(6), chunksize=1, resources={"request_cpus": 2})
        small = pool.map_async(condor_job, range(6), chunksize=1)
        big_jobs, small_jobs = (
            sorted(set(big.get(timeout=240))),
            sorted(set(small.get(timeout=240))),
        )
        deadline = time.monotonic() + 90
        while set(session_jobs(session)) & set(big_jobs) and time.monotonic() < deadline:
            time.sleep(0.5)
        left_big = sorted(set(session_jobs(session)) & set(big_jobs))
    return {
        "big": big_jobs,
        "small": small_jobs,
        "left_big": left_big,
        "left": session_jobs(session),
    }


@scenario
def dead_shape() -> dict[str, Any]:
    """A shape no slot can run (tests/test_resources.py): its tasks fail with HTCondor's
    analysis, the pool's own map in flight and a map after it still finish."""
    with shoal.Pool(
        2, backend="htcondor", request_memory="128M", request_cpus=1, idle_timeout=2
    ) as pool:
        session = pool.session
        nowhere = {"requirements": 'Machine == "nowhere.invalid"'}
        bad = pool.map_async(condor_job, range(3), chunksize=1, resources=nowhere)
        good = pool.map_async(condor_job, range(4), chunksize=1)
        try:
            bad.get(timeout=240)
            error = ""
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        later = pool.map(condor_job, range(2), chunksize=1)
        try:
            pool.apply(condor_job, (0,), resources=nowhere)
            again = ""
        except Exception as e:
            again = f"{type(e).__name__}: {e}"
        good_n = len(good.get(timeout=240))
    return {
        "error": error,
        "again": again,
        "good": good_n,
        "later": len(later),
        "left": session_jobs(session),
    }


@scenario
def per_job() -> dict[str, Any]:
    """workers_per_job=2 (tests/test_resources.py): each job runs two workers `ID.K`."""
    with shoal.Pool(
        4, backend="htcondor", workers_per_job=2, request_cpus=1, request_memory="128M"
    ) as pool:
        session = pool.session
        jobs = pool.map(condor_job, range(40), chunksize=1)
        workers = sorted(
            _worker_id(p) for p in glob.glob(os.path.join(pool._driver.path, "workers", "*.json"))
        )
        with open(os.path.join(pool._driver.path, "condor.sub")) as f:
            sub = f.read()
    return {
        "jobs": sorted(set(jobs)),
        "workers": workers,
        "submit": sub,
        "left": session_jobs(session),
    }


def main() -> None:
    name = sys.argv[1]
    out = SCENARIOS[name]()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

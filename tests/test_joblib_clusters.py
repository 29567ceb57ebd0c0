"""The joblib backends on the real test clusters (ci/clusters): the joblib-htcondor README,
scikit-learn, errors and nesting, each leaving no job in the queue.

Slurm and SGE run root's jobs, so those tests drive the cluster from this process. HTCondor
never runs root's jobs: its scenarios run as the job user (`shoal` under root) with the
interpreter from ci/clusters/condor-python.sh, as tests/test_htcondor.py does.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from joblib import Parallel, delayed, parallel_config

from shoal.joblib import register

register()

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
_names = itertools.count()
# Each engine's own options for the test clusters, next to joblib-htcondor's.
SITE = {
    "slurm": {"partition": "debug", "time": "10m"},
    "sge": {"queue": "all.q", "time": "10m"},
}
ENGINES = [pytest.param(e, marks=getattr(pytest.mark, e)) for e in SITE]


def job_name() -> str:
    return f"jl{os.getpid() % 100000}x{next(_names)}"


def queued(engine: str, name: str) -> list[str]:
    """Jobs of this name still in the scheduler's queue (any state but finished)."""
    if engine == "slurm":
        out = subprocess.run(
            ["squeue", "-h", "-n", name, "-o", "%i %t"], capture_output=True, text=True, check=True
        ).stdout
        return [ln for ln in out.splitlines() if ln.strip()]
    out = subprocess.run(
        ["qstat", "-xml", "-u", "*"], capture_output=True, text=True, check=True
    ).stdout
    return re.findall(rf"<JB_name>{re.escape(name)}</JB_name>", out)


def assert_no_jobs(engine: str, name: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while (left := queued(engine, name)) and time.monotonic() < end:
        time.sleep(1)
    assert left == [], f"{engine} jobs left in the queue: {left}"


def neg(x: int) -> int:
    return -x


def boom(x: int) -> int:
    if x == 3:
        raise ValueError(f"boom {x}")
    time.sleep(0.2)
    return x


def nested_sum(n: int) -> tuple[str, int]:
    return os.environ.get("SHOAL_WORKER", ""), sum(Parallel()(delayed(neg)(i) for i in range(n)))


@pytest.mark.parametrize("engine", ENGINES)
def test_readme_example(engine: str) -> None:
    name = job_name()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every option means something on the cluster
        with parallel_config(
            backend=engine, n_jobs=-1, request_cpus=1, request_memory="1Gb", job_name=name,
            **SITE[engine],
        ):  # fmt: skip
            assert Parallel()(delayed(neg)(i + 1) for i in range(5)) == [-1, -2, -3, -4, -5]
    assert_no_jobs(engine, name)


@pytest.mark.parametrize("engine", ENGINES)
def test_many_calls_reuse_few_workers_and_errors_stop_them(engine: str) -> None:
    name = job_name()
    with parallel_config(backend=engine, n_jobs=4, job_name=name, **SITE[engine]) as cfg:
        assert Parallel()(delayed(neg)(i) for i in range(500)) == [-i for i in range(500)]
        stats = cfg["backend"]._session.driver.stats()
        # Workers run many tasks: a handful of scheduler jobs (the engine may replace a few it
        # gave back), not one per call. (How many calls joblib batches per task depends on the
        # round-trip time it measures: on a network filesystem it may stay at one.)
        assert stats["workers_started"] < stats["tasks_total"] <= 500
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joblib's "tasks were cancelled"
            with pytest.raises(ValueError, match="boom 3") as info:
                Parallel(batch_size=1)(delayed(boom)(i) for i in range(40))
        assert "in boom" in str(info.value.__cause__)
        assert_no_jobs(engine, name)  # the abort cancelled every job at once
    assert_no_jobs(engine, name)


@pytest.mark.slurm
def test_gridsearchcv_on_slurm_matches_sequential() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}
    seq = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
    name = job_name()
    with parallel_config(backend="slurm", job_name=name, throttle=4, **SITE["slurm"]):
        par = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert par.best_params_ == seq.best_params_
    assert list(par.cv_results_["mean_test_score"]) == list(seq.cv_results_["mean_test_score"])
    assert_no_jobs("slurm", name)


@pytest.mark.slurm
def test_nested_parallel_on_slurm() -> None:
    name = job_name()
    with parallel_config(
        backend="slurm", max_recursion_level=1, throttle=[2, 2], job_name=name, **SITE["slurm"]
    ):
        out = Parallel()(delayed(nested_sum)(5) for _ in range(2))
    assert out == [("1", -10)] * 2  # the outer tasks ran on workers, each with nested sessions
    assert_no_jobs("slurm", name)


# ---------------------------------------------------------------- HTCondor, as the job user

USER = os.environ.get("SHOAL_USER", "shoal")
CONDOR_CONFIG = os.environ.get("CONDOR_CONFIG", "/var/lib/shoal-condor/host/condor_config")
PREPARE = REPO / "ci" / "clusters" / "condor-python.sh"
CONDOR_SCENARIO = textwrap.dedent(
    """
    import json, os, sys, warnings
    from operator import neg
    from joblib import Parallel, delayed, parallel_config
    from shoal.joblib import register_htcondor

    register_htcondor()

    def boom(x):
        if x == 3:
            raise ValueError(f"boom {x}")
        return x

    out = {}
    with parallel_config(
        backend="htcondor", n_jobs=-1, request_cpus=1, request_memory="1Gb", throttle=4,
        poll_interval=1,
    ) as cfg:
        out["readme"] = Parallel()(delayed(neg)(i + 1) for i in range(5))
        out["many"] = sum(Parallel()(delayed(neg)(i) for i in range(300)))
        out["sessions"] = [cfg["backend"].session]
        warnings.simplefilter("ignore")
        try:
            Parallel(batch_size=1)(delayed(boom)(i) for i in range(20))
        except ValueError as e:
            out["error"] = [str(e), str(e.__cause__)]
    print("RESULT " + json.dumps(out))
    """
)


def condor_jobs(sessions: list[str]) -> list[str]:
    """Jobs of these shoal sessions still in the queue (other users' sessions are theirs)."""
    if not sessions:
        return []
    constraint = " || ".join(f'ShoalSession == "{s}"' for s in sessions)
    out = subprocess.run(
        ["condor_q", "-allusers", "-json", "-constraint", constraint,
         "-attributes", "ClusterId,ProcId"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "CONDOR_CONFIG": CONDOR_CONFIG},
    ).stdout  # fmt: skip
    return [f"{a['ClusterId']}.{a['ProcId']}" for a in json.loads(out)] if out.strip() else []


@pytest.mark.htcondor
def test_readme_and_errors_on_htcondor() -> None:
    if not PREPARE.exists():
        pytest.fail(f"{PREPARE} is missing: the HTCondor job interpreter cannot be prepared")
    as_user = os.geteuid() == 0
    if as_user:
        env = {**os.environ, "PYTHON": sys.executable}
        res = subprocess.run([str(PREPARE)], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    python = subprocess.run(
        [str(PREPARE), "--print"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if subprocess.run([python, "-c", "import joblib"], capture_output=True).returncode != 0:
        # The job interpreter carries shoal's wheel; this scenario also needs joblib there.
        subprocess.run([python, "-m", "pip", "install", "-q", "joblib"], check=True)
    r: dict = {}
    sandbox = Path(tempfile.mkdtemp(prefix="shoal-joblib-", dir="/tmp"))
    script = sandbox / "scenario.py"
    script.write_text(CONDOR_SCENARIO)
    (sandbox / "home").mkdir()
    env = {
        "CONDOR_CONFIG": CONDOR_CONFIG,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "SHOAL_HOME": str(sandbox / "home"),
        "HOME": pwd.getpwnam(USER).pw_dir if as_user else os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
    }
    cmd = [python, str(script)]
    if as_user:
        for p in (sandbox, sandbox / "home", script):
            shutil.chown(p, USER, USER)
        cmd = [
            "runuser",
            "-u",
            USER,
            "--",
            "env",
            "-i",
            *[f"{k}={v}" for k, v in env.items()],
            *cmd,
        ]
    try:
        proc = subprocess.run(
            cmd, cwd=sandbox, env={**os.environ, **env}, capture_output=True, text=True, timeout=500
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, proc.stderr[-3000:]
        r = json.loads(lines[-1][len("RESULT ") :])
        assert r["readme"] == [-1, -2, -3, -4, -5]
        assert r["many"] == -sum(range(300))
        assert r["error"][0] == "boom 3" and "in boom" in r["error"][1]
    finally:
        sessions_dir = sandbox / "home" / "sessions"
        sessions = [p.name for p in sessions_dir.iterdir()] if sessions_dir.exists() else []
        sessions += r.get("sessions", [])
        end = time.monotonic() + 60
        while (left := condor_jobs(sessions)) and time.monotonic() < end:
            time.sleep(1)
        shutil.rmtree(sandbox, ignore_errors=True)
    assert left == [], f"HTCondor jobs left in the queue: {left}"

"""The joblib backends on the local engine, and the option mapping of every engine.

Cluster runs of the same scenarios are in test_joblib_clusters.py.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Optional

import joblib
import pytest
from joblib import Parallel, delayed, parallel_config

import shoal
from shoal import _joblib_options as jo
from shoal.joblib import NAMES, ShoalBackend, register

register()

README = """
from joblib_htcondor import register_htcondor

register_htcondor()

from operator import neg
from joblib import Parallel, delayed, parallel_config

with parallel_config(
    backend="htcondor",
    n_jobs=-1,
    request_cpus=1,
    request_memory="1Gb"
):
  result = Parallel()(delayed(neg)(i + 1) for i in range(5))
"""


def worker_pids(session_path: str) -> list[int]:
    """Live processes whose command line names the session dir (its workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie runs nothing
        except OSError:
            continue
        if session_path.encode() in argv and b"shoal.worker" in argv:
            found.append(int(entry))
    return found


def wait_gone(session_path: str, timeout: float = 10.0) -> list[int]:
    end = time.monotonic() + timeout
    while (pids := worker_pids(session_path)) and time.monotonic() < end:
        time.sleep(0.05)
    return pids


def backend_of(cfg: dict) -> ShoalBackend:
    backend = cfg["backend"]
    assert isinstance(backend, ShoalBackend)
    return backend


def session_path(backend: ShoalBackend) -> str:
    driver = backend._session.driver
    assert driver is not None, "no live session"
    return driver.path


def boom(x: int) -> int:
    if x == 3:
        raise ValueError(f"boom {x}")
    return x


def pid_of(_: object = None) -> int:
    return os.getpid()


def nested_pids(n: int) -> tuple[int, list[int]]:
    """Runs in a worker: a nested Parallel with whatever joblib hands it."""
    inner = Parallel()(delayed(pid_of)(i) for i in range(n))
    return os.getpid(), inner


# ---------------------------------------------------------------- drop-in for joblib-htcondor


def test_readme_example_runs_unchanged_but_for_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    # SHOAL_JOBLIB_ENGINE runs cluster code on local processes (the htcondor engine is not
    # merged yet; test_joblib_clusters runs the same text on the pool).
    monkeypatch.setenv("SHOAL_JOBLIB_ENGINE", "local")
    code = README.replace("from joblib_htcondor import", "from shoal.joblib import")
    scope: dict = {}
    with pytest.warns(UserWarning, match=r"request_memory \(no equivalent on local\)"):
        exec(compile(code, "README.md", "exec"), scope)
    assert scope["result"] == [-1, -2, -3, -4, -5]


def test_every_name_registers_and_shoal_follows_SHOAL_BACKEND(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in NAMES:
        assert name in joblib.parallel.BACKENDS
    monkeypatch.delenv("SHOAL_JOBLIB_ENGINE", raising=False)
    monkeypatch.delenv("SHOAL_BACKEND", raising=False)
    with parallel_config(backend="shoal") as cfg:
        assert backend_of(cfg).engine == "local"
    monkeypatch.setenv("SHOAL_BACKEND", "sge")
    with parallel_config(backend="shoal", queue="all.q") as cfg:
        assert backend_of(cfg).engine == "sge"
        assert backend_of(cfg).settings.backend_options == {"queue": "all.q"}
    with parallel_config(backend="slurm") as cfg:
        assert backend_of(cfg).engine == "slurm"


@pytest.mark.parametrize("engine", ["slurm", "sge", "htcondor"])
def test_engine_without_its_scheduler_is_a_config_error(
    engine: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No scheduler commands on PATH (or, before its backend is merged: "not available yet"):
    # a ConfigError at the first call, nothing runs and nothing hangs.
    monkeypatch.delenv("SHOAL_JOBLIB_ENGINE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("SGE_ROOT", "CONDOR_CONFIG", "SLURM_CONF"):
        monkeypatch.delenv(var, raising=False)
    with parallel_config(backend=engine, n_jobs=2):
        with pytest.raises(shoal.ConfigError):
            Parallel()(delayed(abs)(i) for i in range(3))


# ---------------------------------------------------------------- option mapping (no sessions)


def test_htcondor_options_map_to_each_engine() -> None:
    opts = {
        "request_cpus": 2,
        "request_memory": "1Gb",
        "request_disk": "2G",
        "poll_interval": 2,
        "extra_directives": {"Requirements": 'Arch == "X86_64"'},
        "log_dir_prefix": "/tmp/logs",
        "universe": "vanilla",
        "pool": ["cm.example.org"],
        "schedd": "schedd@cm",
    }
    htc = jo.parse("htcondor", opts)
    assert htc.backend_options == {
        "request_cpus": 2,
        "request_memory": "1Gb",
        "request_disk": "2G",
        "poll_interval": 2,
        "extra_directives": {"Requirements": 'Arch == "X86_64"'},
        "log_dir": "/tmp/logs",
        "universe": "vanilla",
        "pool": "cm.example.org",
        "schedd": "schedd@cm",
    }
    assert htc.ignored == [] and htc.cpus_per_worker == 2
    slurm_opts = {**opts, "partition": "debug", "time": "10m", "extra_directives": ["--nice=5"]}
    slurm = jo.parse("slurm", slurm_opts)
    assert slurm.backend_options == {
        "cpus": 2,
        "memory": "1Gb",
        "poll_interval": 2,
        "extra_directives": ["--nice=5"],
        "partition": "debug",
        "time": "10m",
    }
    assert sorted(slurm.ignored) == sorted(
        [f"{n} (no equivalent on slurm)" for n in
         ("request_disk", "log_dir_prefix", "universe", "pool", "schedd")]
    )  # fmt: skip
    sge = jo.parse("sge", {"request_cpus": 4, "request_memory": "1.5G", "pe": "smp"})
    assert sge.backend_options == {"slots": 4, "resources": {"h_vmem": "1536M"}, "pe": "smp"}
    sge_text = jo.parse("sge", {"request_memory": "2Gb", "resources": "arch=lx-amd64"})
    assert sge_text.backend_options == {"resources": "arch=lx-amd64,h_vmem=2048M"}
    sge_list = jo.parse("sge", {"request_memory": 512, "resources": ["arch=lx-amd64"]})
    assert sge_list.backend_options == {"resources": ["arch=lx-amd64", "h_vmem=512M"]}
    # one slot needs no parallel environment (the README's request_cpus=1 works on SGE)
    assert jo.parse("sge", {"request_cpus": 1}).backend_options == {}
    local = jo.parse("local", {"request_cpus": 2, "request_memory": "1Gb"})
    assert local.backend_options == {} and local.local_cpus_per_worker == 2
    assert local.ignored == ["request_memory (no equivalent on local)"]


def test_behaviour_and_generic_options() -> None:
    s = jo.parse(
        "htcondor",
        {
            "throttle": [10, 100],
            "batch_size": 5,
            "max_recursion_level": 1,
            "export_metadata": True,
            "worker_log_level": "debug",
            "delete_task_file_on_load": True,
            "shared_data_dir": "/work/shared-data",
            "initial_dir": "/work",
            "python_path": sys.executable,
            "idle_timeout": 5,
            "env": {"A": "1"},
        },
    )
    assert s.throttle == [10, 100] and s.batch_size == 5 and s.max_recursion_level == 1
    assert s.export_metadata and s.worker_log_level == logging.DEBUG
    assert s.session == {
        "max_attempts": 1,
        "work_dir": "/work/shared-data",
        "cwd": "/work",
        "python_path": sys.executable,
        "idle_timeout": 5,
        "env": {"A": "1"},
    }
    assert s.backend_options == {"initial_dir": "/work"}
    assert jo.parse("local", {"throttle": 3}).throttle == [3]
    assert jo.parse("local", {"batch_size": "auto"}).batch_size is None


@pytest.mark.parametrize(
    ("engine", "options", "message"),
    [
        ("slurm", {"partiton": "debug"}, r"unknown option 'partiton' for the slurm"),
        ("local", {"throttle": []}, r"at least one value"),
        ("local", {"throttle": [2, 0]}, r"invalid value 0 for throttle"),
        ("local", {"max_recursion_level": -2}, r"max_recursion_level"),
        ("htcondor", {"schedd": object()}, r"schedd must be the schedd's name"),
        ("htcondor", {"pool": ["a", "b"]}, r"one central manager"),
        ("slurm", {"request_cpus": 2, "cpus": 4}, r"conflicting values for cpus"),
        ("sge", {"request_memory": "lots"}, r"invalid value 'lots' for request_memory"),
        ("local", {"worker_log_level": "LOUD"}, r"worker_log_level"),
        ("slurm", {"poll_interval": 0}, r"poll_interval"),
        ("slurm", {"extra_directives": {"a": "b"}}, r"list of sbatch options"),
        ("nowhere", {}, r"unknown backend 'nowhere'"),
    ],
)
def test_bad_options_are_config_errors(engine: str, options: dict, message: str) -> None:
    with pytest.raises(shoal.ConfigError, match=message):
        jo.parse(engine, options)


def test_options_of_another_engine_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_JOBLIB_ENGINE", raising=False)
    with pytest.warns(UserWarning, match=r"partition \(a slurm option\)"):
        parallel_config(backend="htcondor", partition="debug").unregister()
    with pytest.raises(shoal.ConfigError, match="unknown option 'bogus'"):
        parallel_config(backend="local", bogus=1)


def test_effective_n_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_JOBLIB_ENGINE", raising=False)
    cpus = joblib.cpu_count()
    local = ShoalBackend(_name="local")
    assert local.effective_n_jobs(-1) == cpus
    assert local.effective_n_jobs(None) == 1  # joblib's meaning of None
    assert local.effective_n_jobs(5) == 5
    assert ShoalBackend(_name="local", throttle=2).effective_n_jobs(-1) == min(cpus, 2)
    assert ShoalBackend(_name="local", request_cpus=cpus).effective_n_jobs(-1) == 1
    slurm = ShoalBackend(_name="slurm")
    assert slurm.effective_n_jobs(-1) == jo.DEFAULT_THROTTLE == 1000
    assert slurm.effective_n_jobs(-2) == 999
    assert slurm.effective_n_jobs(40) == 40
    # joblib would run a 1-job Parallel here, in the driver: unset n_jobs uses the cluster.
    assert slurm.effective_n_jobs(None) == 1000
    assert ShoalBackend(_name="sge", throttle=[25, 5]).effective_n_jobs(None) == 25
    with parallel_config(backend="slurm", throttle=3):
        assert Parallel()._effective_n_jobs() == 3  # joblib reads default_n_jobs, not None
    with parallel_config(backend="local"):
        assert Parallel()._effective_n_jobs() == 1
    assert ShoalBackend(_name="sge", throttle=[25, 5]).effective_n_jobs(-1) == 25
    assert ShoalBackend(_name="sge", throttle=[25, 5]).effective_n_jobs(100) == 25
    with pytest.raises(ValueError, match="n_jobs == 0"):
        slurm.effective_n_jobs(0)


def test_backend_pickles_without_its_session() -> None:
    import pickle

    b = ShoalBackend(_name="local", throttle=[2, 3], max_recursion_level=1)
    b.configure(n_jobs=2)
    b.start_call()
    try:
        nested, n = b.get_nested_backend()
        copy = pickle.loads(pickle.dumps(nested))
        assert isinstance(copy, ShoalBackend) and copy.settings.throttle == [3]
        assert copy.recursion_level == 1 and copy.parent_session == b.session
        assert copy._session.driver is None and n == 2  # the outer call's n_jobs
        deeper, _ = copy.get_nested_backend()
        assert isinstance(deeper, joblib.parallel.SequentialBackend)
    finally:
        b.terminate()


# ---------------------------------------------------------------- runs on local workers


def test_session_is_reused_within_a_context_and_gone_after(capfd: pytest.CaptureFixture) -> None:
    with parallel_config(backend="local", n_jobs=2) as cfg:
        backend = backend_of(cfg)
        assert Parallel()(delayed(abs)(-i) for i in range(10)) == list(range(10))
        first, path = backend.session, session_path(backend)
        assert len(worker_pids(path)) == 2
        assert Parallel()(delayed(pow)(i, 2) for i in range(10)) == [i * i for i in range(10)]
        assert backend.session == first
    assert backend.session is None
    assert wait_gone(path) == []
    # A finished session leaves only its logs (for `shoal logs`).
    assert sorted(os.listdir(path)) == ["calls", "index", "journal", "logs", "session.json"]
    assert "shoal:" not in capfd.readouterr().err  # no internal errors, no kept work dir


def slow_pid(_: object = None) -> int:
    time.sleep(0.05)
    return os.getpid()


def test_with_resources_runs_a_call_on_workers_of_its_shape_in_the_same_session() -> None:
    """docs/resources.md: a view of the context's backend runs one Parallel call on workers
    of its own shape, capped by the call's n_jobs, without a second session."""
    from shoal.errors import ConfigError
    from shoal.joblib import with_resources

    with pytest.raises(ConfigError, match="needs an active shoal backend"):
        with_resources(cpus=2)
    with parallel_config(backend="local", n_jobs=3) as cfg:
        backend = backend_of(cfg)
        plain = set(Parallel()(delayed(slow_pid)(i) for i in range(24)))
        session = backend.session
        view = with_resources(cpus=2)
        shaped = Parallel(n_jobs=2, backend=view, batch_size=1)(
            delayed(slow_pid)(i) for i in range(24)
        )
        assert backend.session == session, "the view ran in the context's session"
        before = backend._session.driver.stats()["tasks_total"]  # type: ignore[union-attr]
        with pytest.raises(ConfigError, match="did you mean `cpus`"):
            Parallel(n_jobs=2, backend=with_resources(cpu=2))(delayed(abs)(-1) for _ in range(2))
        assert backend._session.driver.stats()["tasks_total"] == before  # type: ignore[union-attr]
        # the context's own calls still run on its own workers after the view's
        again = set(Parallel()(delayed(slow_pid)(i) for i in range(24)))
        assert backend.session == session
    from test_resources import workers_of

    workers = workers_of(session)
    assert 1 <= len(set(shaped)) <= 2, "n_jobs=2 caps the shape's workers"
    assert {workers[p]["job"] for p in shaped} == {"(cpus=2,workers=2)"}, workers
    assert not set(shaped) & (plain | again)
    assert all(workers[p]["job"] is None for p in plain | again), workers


def test_parallel_outside_a_context_closes_its_session() -> None:
    backend = ShoalBackend(_name="local")
    out = Parallel(n_jobs=2, backend=backend)(delayed(pid_of)(i) for i in range(20))
    assert os.getpid() not in out and 1 <= len(set(out)) <= 2
    assert backend.session is None


def test_many_calls_travel_in_few_tasks() -> None:
    n = 1000
    with parallel_config(backend="local", n_jobs=2) as cfg:
        assert Parallel()(delayed(abs)(-i) for i in range(n)) == list(range(n))
        stats = backend_of(cfg)._session.driver.stats()  # type: ignore[union-attr]
    # joblib's auto-batching grouped calls: far fewer shoal tasks than calls.
    assert stats["tasks_done"] == stats["tasks_total"] < n / 5
    with parallel_config(backend="local", n_jobs=2, batch_size=10) as cfg:
        assert Parallel()(delayed(abs)(-i) for i in range(n)) == list(range(n))
        stats = backend_of(cfg)._session.driver.stats()  # type: ignore[union-attr]
    # batches of 10 (joblib splits the last ones finer to balance the tail)
    assert n // 10 <= stats["tasks_total"] < n // 5


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_return_as(return_as: str) -> None:
    with parallel_config(backend="local", n_jobs=2):
        out = Parallel(return_as=return_as)(delayed(pow)(i, 2) for i in range(50))
        if return_as != "list":
            assert not isinstance(out, list)
        out = list(out)
    expected = [i * i for i in range(50)]
    assert (sorted(out) if return_as == "generator_unordered" else out) == expected


def test_exception_carries_remote_traceback_and_stops_every_worker() -> None:
    with parallel_config(backend="local", n_jobs=2) as cfg:
        backend = backend_of(cfg)
        Parallel()(delayed(abs)(i) for i in range(4))
        path = session_path(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joblib's "tasks were cancelled" notice
            with pytest.raises(ValueError, match="boom 3") as info:
                Parallel(batch_size=1)(delayed(boom)(i) for i in range(40))
        assert isinstance(info.value.__cause__, shoal.RemoteTraceback)
        assert "in boom" in str(info.value.__cause__)
        assert wait_gone(path) == []
        # the context stays usable: a new session
        assert Parallel()(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
        assert session_path(backend) != path


def test_submit_apply_async_and_callbacks() -> None:
    backend = ShoalBackend(_name="local")
    assert backend.configure(n_jobs=2) == 2
    backend.start_call()
    try:
        seen: list = []
        fut = backend.submit(lambda: 6 * 7, callback=seen.append)
        assert fut.get(timeout=30) == 42
        assert seen == [fut] and backend.retrieve_result_callback(fut) == 42
        fut2 = backend.apply_async(lambda: boom(3), callback=seen.append)
        with pytest.raises(ValueError, match="boom 3"):
            backend.retrieve_result(fut2, timeout=30)
        assert seen[-1] is fut2
        # a batch that cannot be pickled fails its future (joblib raises it), nothing hangs
        lock = threading.Lock()
        bad = backend.submit(lambda: lock)
        with pytest.raises(shoal.PicklingError, match="cannot pickle"):
            bad.result(timeout=30)
    finally:
        backend.terminate()
    assert backend.session is None


def test_abort_everything_cancels_all_workers_at_once() -> None:
    backend = ShoalBackend(_name="local")
    backend.configure(n_jobs=2)
    backend.start_call()
    path = session_path(backend)
    futs = [backend.submit(lambda: time.sleep(60)) for _ in range(4)]
    end = time.monotonic() + 20
    while backend._session.driver.stats()["workers_running"] < 2:  # type: ignore[union-attr]
        assert time.monotonic() < end
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.monotonic()
    backend.abort_everything(ensure_ready=True)
    for f in futs:
        with pytest.raises(shoal.SessionError):
            f.result(timeout=10)
    assert time.monotonic() - t0 < 5
    assert wait_gone(path) == []
    # ensure_ready: the next batch gets a fresh session
    assert backend.submit(lambda: 1).result(timeout=30) == 1
    assert session_path(backend) != path
    backend.terminate()


def test_nested_parallel_with_recursion_and_throttle_list() -> None:
    with parallel_config(backend="local", n_jobs=-1, max_recursion_level=1, throttle=[2, 10]):
        out = Parallel()(delayed(nested_pids)(4) for _ in range(4))
    outer = {pid for pid, _ in out}
    inner = {p for _, pids in out for p in pids}
    assert len(outer) <= 2 and os.getpid() not in outer
    # each nested call ran on workers of its own session, not in the outer worker
    assert inner and not inner & outer and os.getpid() not in inner


def test_nested_parallel_is_sequential_by_default() -> None:
    with parallel_config(backend="local", n_jobs=2):
        out = Parallel()(delayed(nested_pids)(3) for _ in range(3))
    for pid, pids in out:
        assert pids == [pid] * 3


def explicit_nested(n: int) -> list[int]:
    with parallel_config(backend="shoal", n_jobs=2):
        return Parallel()(delayed(pow)(i, 2) for i in range(n))


def test_backend_names_are_usable_inside_workers() -> None:
    with parallel_config(backend="local", n_jobs=2):
        out = Parallel()(delayed(explicit_nested)(3) for _ in range(2))
    assert out == [[0, 1, 4], [0, 1, 4]]


def set_flag() -> None:
    os.environ["SHOAL_TEST_CONTEXT"] = "set"


def read_flag(_: int) -> tuple:
    return os.environ.get("SHOAL_TEST_CONTEXT"), logging.getLogger().level


def test_context_func_and_worker_log_level() -> None:
    with parallel_config(
        backend="local", n_jobs=2, context_func=set_flag, worker_log_level=logging.DEBUG
    ):
        out = Parallel()(delayed(read_flag)(i) for i in range(6))
    assert out == [("set", logging.DEBUG)] * 6


def read_session_meta(_: int) -> dict:
    # The worker's command line names its session dir (sys.argv is the driver's, as under
    # multiprocessing); session.json there holds the metadata.
    with open("/proc/self/cmdline") as f:
        cmdline = f.read().split("\0")
    path = cmdline[cmdline.index("shoal.worker") + 1]
    with open(os.path.join(path, "session.json")) as f:
        return json.load(f)["metadata"]


def test_export_metadata_reaches_the_session_record(tmp_path) -> None:
    with parallel_config(
        backend="local", n_jobs=2, export_metadata=True, throttle=[2, 4],
        shared_data_dir=str(tmp_path), metadata={"run": "grid"}, initial_dir=str(tmp_path),
    ):  # fmt: skip
        meta = Parallel()(delayed(read_session_meta)(i) for i in range(2))[0]
        cwd = Parallel()(delayed(os.getcwd)() for _ in range(2))
    assert meta["run"] == "grid"
    assert meta["joblib"]["backend"] == "local" and meta["joblib"]["throttle"] == [2, 4]
    assert meta["joblib"]["recursion_level"] == 0 and meta["joblib"]["n_jobs"] == 2
    assert cwd == [str(tmp_path)] * 2


def getenv(name: str) -> Optional[str]:
    # (not os.environ.get itself: that pickles the driver's environ along)
    return os.environ.get(name)


def test_inner_max_num_threads_sizes_thread_pools_in_workers() -> None:
    with parallel_config(backend="local", n_jobs=2, inner_max_num_threads=1):
        out = Parallel()(delayed(getenv)("OMP_NUM_THREADS") for _ in range(4))
    assert out == ["1"] * 4


def test_timeout_aborts_the_call_and_its_workers() -> None:
    with parallel_config(backend="local", n_jobs=2) as cfg:
        Parallel()(delayed(abs)(i) for i in range(2))
        path = session_path(backend_of(cfg))
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # joblib raises multiprocessing's TimeoutError (the builtin one in some versions)
            with pytest.raises((TimeoutError, multiprocessing.TimeoutError)):
                Parallel(timeout=0.5)(delayed(time.sleep)(30) for _ in range(4))
        assert time.monotonic() - t0 < 15
        assert wait_gone(path) == []


def test_initial_dir_must_exist(tmp_path) -> None:
    with parallel_config(backend="local", n_jobs=2, initial_dir=str(tmp_path / "nope")):
        with pytest.raises(shoal.ConfigError, match="is not a directory"):
            Parallel()(delayed(abs)(i) for i in range(3))


CTRL_C_DRIVER = textwrap.dedent(
    """
    import sys, time
    from joblib import Parallel, delayed, parallel_config
    from shoal.joblib import register
    register()
    with parallel_config(backend="local", n_jobs=2) as cfg:
        Parallel()(delayed(time.sleep)(60) for _ in range(6))
    """
)


def test_ctrl_c_in_the_driver_leaves_no_workers(tmp_path) -> None:
    env = {**os.environ, "SHOAL_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_DRIVER], env=env, stderr=subprocess.PIPE, text=True
    )
    sessions = tmp_path / "sessions"
    end = time.monotonic() + 30
    pids: list[int] = []
    while len(pids) < 2:
        assert time.monotonic() < end and proc.poll() is None, "workers never started"
        time.sleep(0.1)
        dirs = list(sessions.iterdir()) if sessions.exists() else []
        pids = worker_pids(str(dirs[0])) if dirs else []
    path = str(dirs[0])
    time.sleep(0.5)  # the sleeps are running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert wait_gone(path) == []
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or pid not in worker_pids(path)
    # Interrupted, not failed: no task failed, so nothing is kept.
    assert not os.path.exists(path)


def test_gridsearchcv_matches_sequential() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}
    seq = GridSearchCV(SVC(), grid, cv=3, n_jobs=None).fit(X, y)
    with parallel_config(backend="local") as cfg:
        par = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
        assert backend_of(cfg).session is not None  # the search really ran on shoal
    assert par.best_params_ == seq.best_params_
    assert list(par.cv_results_["mean_test_score"]) == list(seq.cv_results_["mean_test_score"])

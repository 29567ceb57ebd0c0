"""The same behaviours on both transports (docs/protocol.md, docs/transport-tcp.md): results
exactly once, a killed worker's chunk requeued, a failure's traceback and stderr tail, `shoal
logs`; and what only TCP has: its record in session.json, the token never on a command line,
a wrong token or certificate refused and logged, nothing unpickled before authentication.
Parametrized over the transport on the local backend and on the real single-host Slurm, SGE
and HTCondor (markers), and on the isolated cluster whose nodes share nothing (`isolated`)."""

from __future__ import annotations

import functools
import glob
import json
import os
import pickle
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
from protocol_tasks import count_run, kill_worker_once, runs_of

import shoal

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSPORTS = ("fs", "tcp")
# On the isolated cluster the work dir is shared with no node: only TCP can work there.
ON_ANY = (pytest.param("fs", marks=pytest.mark.shared_dir), "tcp")


def _cluster(backend: str) -> dict[str, Any]:
    """Options of a small, quick pool on `backend`."""
    if backend == "local":
        return {}
    if backend == "slurm":
        return {"backend": "slurm", "job_name": "transport", "poll_interval": 0.5}
    return {"backend": "sge", "job_name": "transport", "poll_interval": 0.5}


BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    pytest.param("sge", id="sge", marks=pytest.mark.sge),
    # HTCondor runs no job of root's: tested below as the job user, through test_htcondor's
    # fixture.
]


def _run_or_kill(directory: str, marker: str, x: object) -> object:
    if x == "kill":
        return kill_worker_once(directory, x, marker)
    return count_run(directory, x, 0.3)


def noisy_failure(x: int) -> int:
    print(f"stdout of task {x}")
    print(f"stderr of task {x}", file=sys.stderr)
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x


def last_words_then_die(_: object) -> None:
    print("last words before the kill", file=sys.stderr, flush=True)
    time.sleep(1.0)  # longer than the TCP worker's output interval
    os.kill(os.getpid(), signal.SIGKILL)


def _session(session_dir: str) -> dict[str, Any]:
    with open(os.path.join(session_dir, "session.json")) as f:
        data: dict[str, Any] = json.load(f)
    return data


# ------------------------------------------------------------------ both transports


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.shared_dir
def test_results_exactly_once_and_the_transport_recorded(backend, transport, tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    f = functools.partial(count_run, str(runs))
    with shoal.Pool(2, transport=transport, **_cluster(backend)) as pool:
        assert _session(pool._driver.path)["transport"] == transport
        assert pool.map(f, range(200), chunksize=7) == list(range(200))
        assert sorted(pool.imap_unordered(f, range(200, 230))) == list(range(200, 230))
    assert runs_of(str(runs)) == {str(i): 1 for i in range(230)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.shared_dir
def test_a_killed_worker_loses_only_the_task_it_ran(backend, transport, tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    f = functools.partial(_run_or_kill, str(runs), str(tmp_path / "killed"))
    # A heartbeat timeout far beyond the test: the loss must be seen otherwise (the
    # connection on tcp, the backend's report on fs).
    with shoal.Pool(1, transport=transport, heartbeat_timeout=600, **_cluster(backend)) as pool:
        t0 = time.monotonic()
        assert pool.map(f, [0, 1, 2, "kill", 4], chunksize=5) == [0, 1, 2, "kill", 4]
        took = time.monotonic() - t0
        assert pool._driver.stats()["workers_lost"] == 1
    counts = runs_of(str(runs))
    assert {k: counts[k] for k in "0124"} == {"0": 1, "1": 1, "2": 1, "4": 1}, counts
    assert took < 120, took


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transport", ON_ANY)
def test_a_failure_carries_its_traceback_and_shoal_logs_shows_its_output(
    backend, transport, capfd
) -> None:
    pool = shoal.Pool(2, transport=transport, **_cluster(backend))
    session = pool.session
    with pytest.raises(ValueError, match="bad value 3") as info:
        pool.map(noisy_failure, range(6), chunksize=1)
    assert "in noisy_failure" in str(info.value.__cause__)
    pool.close()
    pool.join()
    capfd.readouterr()
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "logs", session, "3"], capture_output=True, text=True
    )
    assert "stdout of task 3" in out.stdout and "stderr of task 3" in out.stdout, out
    assert "ValueError: bad value 3" in out.stdout, out.stdout
    assert "task 2" not in out.stdout.split("---", 1)[1]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_lost_worker_is_reported_with_its_stderr_tail(transport) -> None:
    with shoal.Pool(1, transport=transport, max_attempts=1) as pool:
        with pytest.raises(shoal.WorkerLostError) as info:
            pool.apply(last_words_then_die, (0,))
    assert "last words before the kill" in str(info.value), info.value


def test_workers_that_connect_as_the_session_ends_stop_quietly(capfd) -> None:
    # Closed at once: every worker connects after the session began to end (spawning takes
    # longer than this). Each is told to stop, as on the work dir, not refused with an error.
    pool = shoal.Pool(4, transport="tcp")
    pool.close()
    pool.join()
    err = capfd.readouterr().err
    assert "refused" not in err and "cannot join" not in err, err


def test_auto_picks_the_work_dir_locally_and_tcp_for_a_cluster_on_a_local_disk() -> None:
    with shoal.Pool(1) as pool:
        assert _session(pool._driver.path)["transport"] == "fs"


def test_a_wrong_transport_fails_at_start_and_says_which_are_known() -> None:
    with pytest.raises(shoal.ConfigError, match="transport") as info:
        shoal.Pool(1, transport="udp")
    assert "fs" in str(info.value) and "tcp" in str(info.value)
    with pytest.raises(shoal.ConfigError, match="listen"):
        shoal.Pool(1, transport="tcp", listen="203.0.113.77:1-2")


def test_sessions_lists_the_transport() -> None:
    with shoal.Pool(1, transport="tcp") as pool:
        pool.map(abs, range(3))
        out = subprocess.run(
            [sys.executable, "-m", "shoal.cli", "sessions"], capture_output=True, text=True
        )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(pool.session))
    assert "tcp" in line, out.stdout


# ------------------------------------------------------------------ TCP only


def _worker_cmdlines(session: str) -> list[list[str]]:
    out = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "shoal.worker" in argv and any(session in a for a in argv):
            out.append(argv)
    return out


def _address(session_dir: str) -> tuple[str, int]:
    with open(os.path.join(session_dir, "logs", "transport.log")) as f:
        first = f.readline()
    host, port = first.split()[2].rsplit(":", 1)
    return host, int(port)


def _transport_log(session_dir: str) -> str:
    with open(os.path.join(session_dir, "logs", "transport.log")) as f:
        return f.read()


def _worker(session_dir: str, fingerprint: str, token: str) -> subprocess.CompletedProcess:
    host, port = _address(session_dir)
    env = dict(os.environ, SHOAL_TOKEN=token)
    argv = [sys.executable, "-m", "shoal.worker", session_dir, "--worker-id", "intruder"]
    argv += ["--connect", f"{host}:{port}", "--fingerprint", fingerprint]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_the_token_travels_in_the_environment_and_bad_credentials_are_refused() -> None:
    import base64

    with shoal.Pool(1, transport="tcp") as pool:
        assert pool.map(abs, [-1]) == [1]
        argv = _worker_cmdlines(pool.session)
        assert argv, "the worker is running"
        fingerprint = argv[0][argv[0].index("--fingerprint") + 1]
        pid = next(
            int(p.split("/")[2])
            for p in glob.glob("/proc/[0-9]*/cmdline")
            if open(p, "rb").read().split(b"\0")[:-1] == [a.encode() for a in argv[0]]
        )
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)
        token = env["SHOAL_TOKEN"]
        assert all(token not in a for a in argv[0]), "never on the command line"
        wrong_token = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        refused = _worker(pool._driver.path, fingerprint, wrong_token)
        assert refused.returncode == 3 and "refused" in refused.stderr, refused.stderr
        wrong_cert = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        mistrusted = _worker(pool._driver.path, wrong_cert, token)
        assert mistrusted.returncode == 3, mistrusted.stderr
        assert "certificate" in mistrusted.stderr, mistrusted.stderr
        assert pool.map(abs, [-2, -3]) == [2, 3], "the session goes on"
        log = _transport_log(pool._driver.path)
    assert "refused a connection" in log and "token" in log, log
    assert log.count("refused a connection") >= 2, log


def _raw_hello(token: bytes) -> bytes:
    fields = b"".join(bytes([len(v)]) + v for v in (b"s", b"evil", b"host"))
    body = token + struct.pack("<QI", 1, os.getpid()) + fields
    return b"SHWL" + bytes([1, 1]) + struct.pack("<IQ", 0, len(body)) + body


class _Boom:
    """Unpickling this anywhere creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


def test_nothing_a_peer_sends_is_unpickled_before_it_authenticated(tmp_path) -> None:
    marker = str(tmp_path / "unpickled")
    poison = pickle.dumps(_Boom(marker))
    part = b"SHWL" + bytes([1, 11]) + struct.pack("<IQ", 2, len(poison)) + b"{}" + poison
    with shoal.Pool(1, transport="tcp") as pool:
        host, port = _address(pool._driver.path)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # an attacker does not care whom it talks to
        with socket.create_connection((host, port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(_raw_hello(os.urandom(32)) + part * 4)
                try:
                    while tls.recv(4096):
                        pass
                except OSError:
                    pass
        assert pool.map(abs, [-5]) == [5]
        log = _transport_log(pool._driver.path)
    assert not os.path.exists(marker)
    assert "refused a connection" in log, log


# ------------------------------------------------------------------ HTCondor, as its job user

HTCONDOR_TCP = """
import glob, json, os, sys
import shoal

def square(x):
    print("stdout of", x)
    if x == 7:
        raise ValueError("bad value 7")
    return x * x

pool = shoal.Pool(2, backend="htcondor", transport="tcp", poll_interval=0.5, keep_work_dir=True)
path = pool._driver.path
out = {"transport": json.load(open(os.path.join(path, "session.json")))["transport"]}
out["squares"] = pool.map(square, range(7)) == [x * x for x in range(7)]
try:
    pool.map(square, range(10), chunksize=1)
except ValueError as e:
    out["error"] = str(e)
pool.close()
pool.join()
subs = glob.glob(os.path.join(path, "**", "*.sub"), recursive=True)
submits = "".join(open(f).read() for f in subs)
out["transfer"] = "should_transfer_files = YES" in submits
out["token_in_submit"] = open(os.path.join(path, "shoal-token")).read() in submits
out["token_mode"] = oct(os.stat(os.path.join(path, "shoal-token")).st_mode & 0o777)
# x=7 of the pool's second call (its second map) is task 2:7.
logs = os.popen(f"{sys.executable} -m shoal.cli logs {pool.session} 2:7").read()
out["logs"] = logs
print("RESULT " + json.dumps(out))
"""


@pytest.mark.htcondor
def test_htcondor_over_tcp_ships_the_token_by_file_transfer(tmp_path) -> None:
    from test_htcondor import condor as make_condor  # the job user's interpreter and sandbox

    factory = make_condor.__wrapped__()  # type: ignore[attr-defined]
    runner = next(factory)
    try:
        script = runner.sandbox / "transport_tcp.py"
        script.write_text(HTCONDOR_TCP)
        os.chmod(script, 0o644)
        cmd = [runner.python, str(script)]
        if runner.as_user:
            envs = [f"{k}={v}" for k, v in runner.env.items()]
            cmd = ["runuser", "-u", "shoal", "--", "env", "-i", *envs, *cmd]
        res = subprocess.run(cmd, cwd=runner.sandbox, capture_output=True, text=True, timeout=300)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        out = json.loads(lines[-1][len("RESULT ") :])
    finally:
        next(factory, None)
    assert out["transport"] == "tcp" and out["squares"], out
    assert "bad value 7" in out["error"], out
    assert out["transfer"] and not out["token_in_submit"], out
    assert out["token_mode"] == "0o600", out
    assert "stdout of 7" in out["logs"] and "bad value 7" in out["logs"], out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_joblib_takes_the_transport(transport) -> None:
    import joblib

    from shoal.joblib import register

    register()
    with joblib.parallel_config(backend="shoal", n_jobs=2, transport=transport):
        out = joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(20))
    assert out == list(range(20))


def test_shoal_run_takes_the_transport(tmp_path, sessions_dir) -> None:
    out = subprocess.run(
        ["shoal", "run", "--name", "t", "--param", "x=1,2,3", "--opt", "transport=tcp", "--",
         "sh", "-c", "echo hi {x}"],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    session = re.search(r"session (\S+)\)", out.stdout + out.stderr)
    assert session, out.stdout
    assert _session(os.path.join(sessions_dir, session.group(1)))["transport"] == "tcp"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_many_single_task_chunks_all_arrive_while_idle_workers_take_prefetched_ones(
    transport,
) -> None:
    # Idle workers steal prefetched chunks (revokes answered later on tcp): none may be lost.
    with shoal.Pool(16, transport=transport) as pool:
        for _ in range(3):
            res = pool.map_async(abs, range(-2000, 0), chunksize=1)
            assert res.get(timeout=60) == list(range(2000, 0, -1))


DRIVER = """
import sys, time, shoal
def nap(x):
    time.sleep(60)
    return x
pool = shoal.Pool(2, backend="slurm", job_name=sys.argv[1], transport="tcp", poll_interval=0.5)
it = pool.imap_unordered(nap, range(4), chunksize=1)
print("mapping", flush=True)
next(it)
"""


@pytest.mark.slurm
def test_a_killed_tcp_driver_leaves_no_job_behind(tmp_path) -> None:
    name = f"tcp-orphan-{os.getpid()}"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), name], stdout=subprocess.PIPE, text=True
    )

    def jobs(states: str) -> list[str]:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-n", name, "-t", states, "-o", "%i"],
            capture_output=True,
            text=True,
        )
        return out.stdout.split()

    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "mapping"
        deadline = time.monotonic() + 60
        while len(jobs("R")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(jobs("R")) == 2, "both workers run"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # Its workers see the connection end and exit at once (no driver_timeout to wait).
        deadline = time.monotonic() + 30
        while jobs("PD,R,CG") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not jobs("PD,R,CG"), jobs("all")
    finally:
        if driver.poll() is None:
            driver.kill()
        left = jobs("PD,R,CG,S")
        if left:
            subprocess.run(["scancel", *left], capture_output=True)


OWN_MODULE = """
SCALE = 3


def helper(x):
    return x


def triple(x):
    return helper(x) * SCALE


class Box:
    def __init__(self, v):
        self.v = v


def boxed(x):
    return Box(x)
"""

OWN_MODULE_DRIVER = """
import os, shutil, sys
sys.path.insert(0, sys.argv[1])
import own_mod_for_tcp as m
import shoal
# The workers cannot import it any more, as on a node that has none of the driver's files.
os.remove(m.__file__)
shutil.rmtree(os.path.join(sys.argv[1], "__pycache__"), ignore_errors=True)
for t in sys.argv[2:]:
    try:
        with shoal.Pool(2, transport=t) as p:
            boxes = p.map(m.boxed, range(2))
            print(t, p.map(m.triple, range(4)), all(isinstance(b, m.Box) for b in boxes))
    except Exception as e:
        print(t, "ERR", type(e).__name__, str(e).splitlines()[0])
"""


def test_a_tcp_session_sends_the_users_own_modules_by_value(tmp_path) -> None:
    # A module of the user's own (not installed) is unknown on the nodes of a TCP session: it
    # travels by value, like __main__, and what comes back is of the driver's own classes.
    (tmp_path / "own_mod_for_tcp.py").write_text(OWN_MODULE)
    script = tmp_path / "driver.py"
    script.write_text(OWN_MODULE_DRIVER)

    def run(*transports: str, **env: str) -> list[str]:
        res = subprocess.run(
            [sys.executable, str(script), str(tmp_path), *transports],
            capture_output=True, text=True, timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        return [ln for ln in res.stdout.splitlines() if ln.startswith(transports)]

    fs, tcp = run("fs", "tcp")
    assert fs.startswith("fs ERR") and "No module named 'own_mod_for_tcp'" in fs, fs
    assert tcp == "tcp [0, 3, 6, 9] True", tcp
    (tmp_path / "own_mod_for_tcp.py").write_text(OWN_MODULE)
    [off] = run("tcp", SHOAL_PICKLE_BY_VALUE="0")
    assert off.startswith("tcp ERR") and "own_mod_for_tcp" in off, off


_STATE: dict[str, str] = {}


def _set_state(value: str) -> None:
    _STATE["v"] = value


def _get_state(_: object) -> object:
    return _STATE.get("v")


def test_an_fs_pool_after_a_tcp_one_keeps_its_initializer_state() -> None:
    # By-value pickling is for a TCP session's payloads only: a function sent by value has its
    # own copy of its module's globals, which would hide an initializer's state from the tasks.
    with shoal.Pool(1, transport="tcp") as p:
        assert p.map(abs, [-1]) == [1]
    with shoal.Pool(2, initializer=_set_state, initargs=("ready",), transport="fs") as p:
        assert p.map(_get_state, range(4)) == ["ready"] * 4

"""The HTCondor backend on the real test pool (ci/clusters/cluster up htcondor).

HTCondor never runs root's jobs, so each scenario of htcondor_scenarios.py runs as the job
user (`shoal` when the tests run as root), with the interpreter made by
ci/clusters/condor-python.sh (a world-readable copy of this Python with this checkout's wheel),
in a sandbox under /tmp that the user owns. A scenario prints `RESULT <json>`; the assertions
are here. Every test also checks that no job of the session is left in the queue.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.htcondor, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "ci" / "clusters" / "condor-python.sh"
SCENARIOS = Path(__file__).with_name("htcondor_scenarios.py")
USER = os.environ.get("SHOAL_USER", "shoal")
CONDOR_CONFIG = os.environ.get("CONDOR_CONFIG", "/var/lib/shoal-condor/host/condor_config")


class Runner:
    """Runs scenarios as the job user and returns their RESULT."""

    def __init__(self, python: str, sandbox: Path, as_user: bool) -> None:
        self.python = python
        self.sandbox = sandbox
        self.as_user = as_user
        self.stderr = ""  # of the last scenario that finished
        home = pwd.getpwnam(USER).pw_dir if as_user else os.environ.get("HOME", "/tmp")
        self.env = {
            "CONDOR_CONFIG": CONDOR_CONFIG,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "SHOAL_HOME": str(sandbox / "home"),
            "HOME": home,
            "LANG": "C.UTF-8",
        }

    def command(self, name: str) -> list[str]:
        cmd = [self.python, str(self.sandbox / SCENARIOS.name), name]
        if self.as_user:
            envs = [f"{k}={v}" for k, v in self.env.items()]
            return ["runuser", "-u", USER, "--", "env", "-i", *envs, *cmd]
        return cmd

    def popen(self, name: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(name),
            cwd=self.sandbox,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def result(self, name: str, proc: subprocess.Popen, timeout: float = 300) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"scenario {name} did not finish in {timeout} s\n--- stderr\n{err[-3000:]}")
        self.stderr = err
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            pytest.fail(
                f"scenario {name} failed (exit {proc.returncode})\n--- stdout\n{out[-3000:]}"
                f"\n--- stderr\n{err[-3000:]}"
            )
        return json.loads(lines[-1][len("RESULT ") :])

    def run(self, name: str, timeout: float = 300) -> dict[str, Any]:
        return self.result(name, self.popen(name), timeout)


def shoal_jobs() -> list[str]:
    """Every shoal worker job in the queue, of any user and session."""
    out = subprocess.run(
        [
            "condor_q",
            "-allusers",
            "-json",
            "-constraint",
            "ShoalSession =!= undefined",
            "-attributes",
            "ClusterId,ProcId,Owner,JobStatus",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CONDOR_CONFIG": CONDOR_CONFIG},
        check=True,
    ).stdout
    return [f"{a['ClusterId']}.{a['ProcId']}" for a in json.loads(out)] if out.strip() else []


@pytest.fixture(scope="module")
def condor() -> Runner:
    as_user = os.geteuid() == 0
    if as_user and subprocess.run([str(PREPARE), "--check"]).returncode != 0:
        # Build this checkout's wheel into the job interpreter; a debug build is quicker and
        # enough for tests (benches/htcondor/run installs a release build).
        env = {**os.environ, "PYTHON": sys.executable}
        env.setdefault("SHOAL_WHEEL_PROFILE", "debug")
        maturin = Path(sys.executable).with_name("maturin")
        if maturin.exists():
            env["MATURIN"] = str(maturin)
        res = subprocess.run([str(PREPARE)], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            pytest.fail(f"{PREPARE} failed:\n{res.stderr[-4000:]}")
    elif subprocess.run([str(PREPARE), "--check"]).returncode != 0:
        pytest.fail(f"the job interpreter is missing or stale: run `sudo {PREPARE}`")
    python = subprocess.run(
        [str(PREPARE), "--print"], capture_output=True, text=True, check=True
    ).stdout.strip()
    sandbox = Path(tempfile.mkdtemp(prefix="shoal-htcondor-", dir="/tmp"))
    shutil.copy(SCENARIOS, sandbox / SCENARIOS.name)
    (sandbox / "home").mkdir()
    if as_user:
        for p in [sandbox, sandbox / "home", sandbox / SCENARIOS.name]:
            shutil.chown(p, USER, USER)
    os.chmod(sandbox / SCENARIOS.name, 0o644)
    yield Runner(python, sandbox, as_user)
    left = shoal_jobs()
    if left:
        subprocess.run(["condor_rm", "-forcex", *left], capture_output=True)
    shutil.rmtree(sandbox, ignore_errors=True)
    assert left == [], f"shoal jobs left in the queue: {left}"


def test_map_imap_apply_results_from_one_cluster_of_workers(condor: Runner) -> None:
    r = condor.run("results")
    assert r["ok"], r
    assert r["left"] == []
    workers, submitted = r["workers"], r["submitted"]
    assert workers and all(re.fullmatch(r"b\d+-\d+", w) for w in workers), workers
    assert len(workers) <= len(submitted), (workers, submitted)
    # Workers come as the procs of `queue N` clusters (one per batch), not one job each.
    clusters = {w.split(".")[0] for w in submitted}
    assert len(clusters) < len(submitted) <= 4, submitted
    assert len(clusters) == len({w.split("-")[0] for w in workers}), (workers, submitted)
    sub = r["submit"]
    assert re.search(r"^queue \d+$", sub, re.M), sub
    assert re.search(r"--worker-id b\d+-\$\(Process\)", sub), sub
    assert re.search(r"logs/b\d+-\$\(Process\)\.out", sub), sub
    assert "request_memory = 256" in sub and '+ProjectName = "shoal-tests"' in sub
    assert r["stats"]["workers_lost"] == 0


def test_executor(condor: Runner) -> None:
    r = condor.run("executor")
    assert r["ok"], r
    assert r["left"] == []


def test_remote_traceback(condor: Runner) -> None:
    r = condor.run("traceback")
    assert r["type"] == "KeyError", r
    assert "bad item 3" in r["message"]
    assert "Traceback (most recent call last)" in r["cause"] and "in fail" in r["cause"], r
    assert re.search(r"on worker b\d+-\d+", r["cause"]), r["cause"]
    assert r["ok_after"] == 49
    assert r["left"] == []


def test_hold_of_a_running_worker_is_reported_and_its_work_redone(condor: Runner) -> None:
    r = condor.run("hold")
    assert r["action_rc"] == 0 and "held" in r["action_out"], r
    assert r["ok"], r
    assert r["left"] == []


def test_condor_rm_of_a_worker_mid_map_yields_every_result_once(condor: Runner) -> None:
    # condor_rm sends SIGTERM first: the worker gives its chunk back (docs/checkpoints.md).
    r = condor.run("remove")
    assert r["action_rc"] == 0, r
    assert r["ok"], r
    assert r["left"] == []


def test_a_vacated_worker_costs_no_attempt_and_its_task_resumes(condor: Runner) -> None:
    r = condor.run("vacate")
    assert r["action_rc"] == 0, r
    assert r["ok"], r
    assert r["steps"] == list(range(20)), r
    assert len(r["starts"]) == 2 and r["starts"][1] >= 5, r
    assert r["left"] == []


def test_bad_requests_fail_fast_with_clear_errors(condor: Runner) -> None:
    r = condor.run("bad_requests")
    for case in ("memory", "universe", "requirements", "schedd", "option"):
        assert r[case]["error"] is not None, (case, r[case])
        assert r[case]["seconds"] < 10, (case, r[case])
    assert r["memory"]["config_error"] and '"lots"' in r["memory"]["message"]
    assert r["universe"]["config_error"] and '"standard"' in r["universe"]["message"]
    assert "vanilla" in r["universe"]["message"]
    # condor_submit's own message about the expression
    assert r["requirements"]["config_error"]
    assert "Parse error in expression" in r["requirements"]["message"]
    assert r["schedd"]["scheduler_error"]
    assert "no HTCondor schedd reachable" in r["schedd"]["message"]
    assert r["option"]["config_error"] and "partition" in r["option"]["message"]
    # a session that never started leaves no work dir
    assert r["sessions_left"] == 0


def test_workers_held_by_policy_fail_the_session_with_the_reason(condor: Runner) -> None:
    r = condor.run("held_forever")
    assert r["error"] == "SessionError", r
    assert "held by HTCondor" in r["message"] and "PeriodicHold" in r["message"], r
    assert r["seconds"] < 120
    assert r["left"] == []


def test_ctrl_c_removes_every_job(condor: Runner) -> None:
    proc = condor.popen("interrupted")
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    session = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("SESSION "):
            session = line.split()[1]
            break
    assert session, "the scenario never started a worker"
    os.killpg(proc.pid, signal.SIGINT)
    r = condor.result("interrupted", proc, timeout=120)
    assert r["interrupted"] is True
    assert r["left"] == []
    assert shoal_jobs() == []


def schedd_pid() -> int:
    """The condor_schedd that the chroot's condor_master runs."""
    with open("/var/lib/shoal-condor/run/condor/master.pid") as f:
        master = f.read().strip()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = text[text.rindex(")") + 2 :].split()[1]
        if comm == "condor_schedd" and ppid == master:
            return int(stat.parent.name)
    raise RuntimeError("no condor_schedd under the test pool's condor_master")


def test_a_30_s_schedd_outage_mid_map_is_ridden_out(condor: Runner) -> None:
    proc = condor.popen("outage")
    assert proc.stdout is not None
    session_dir = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("READY "):
            session_dir = line.split(maxsplit=1)[1].strip() if line else None
            break
    assert session_dir, "the scenario never got 3 workers running"
    schedd = schedd_pid()
    os.kill(schedd, signal.SIGSTOP)
    try:
        t_stop = time.time()
        infos = sorted(Path(session_dir, "workers").glob("*.json"))
        os.kill(json.loads(infos[0].read_text())["pid"], signal.SIGKILL)
        time.sleep(30)
    finally:
        os.kill(schedd, signal.SIGCONT)
    t_cont = time.time()
    r = condor.result("outage", proc, timeout=240)
    assert r["ok"], r
    during = [t for t in r["arrivals"] if t_stop < t < t_cont]
    assert len(during) >= 5, f"results stalled during the outage: {len(during)}"
    assert r["stats"]["workers_lost"] >= 1, r["stats"]
    assert r["left"] == []


def test_a_request_no_slot_can_meet_fails_fast_with_htcondors_analysis(condor: Runner) -> None:
    r = condor.run("unsatisfiable")
    assert r["error"] == "SessionError", r
    msg = r["message"]
    assert "never run" in msg and "TARGET.Memory >= RequestMemory" in msg, msg
    assert "better-analyze" in msg and "request_memory=" in msg, msg
    assert r["seconds"] < 60, r
    assert r["left"] == []


CHROOT = "/var/lib/shoal-condor"
CAPS = f"{CHROOT}/etc/condor/config.d/90-shoal-test-caps.conf"


def test_schedd_caps_shape_a_default_pool(condor: Runner) -> None:
    def reconfig() -> None:
        # An administrator's command: host root maps to the job user, so run it inside.
        subprocess.run(
            ["chroot", CHROOT, "condor_reconfig", "-schedd"],
            capture_output=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
            check=True,
        )
        time.sleep(1)

    with open(CAPS, "w") as f:
        f.write("MAX_JOBS_PER_SUBMISSION = 4\nMAX_JOBS_PER_OWNER = 8\n")
    try:
        reconfig()
        r = condor.run("caps")
    finally:
        os.remove(CAPS)
        reconfig()
    assert r["ok"], r
    assert r["per_cluster"] and max(r["per_cluster"]) <= 4, r
    assert r["stats"]["workers_started"] >= 1, r
    assert "MAX_JOBS_PER_SUBMISSION=4" in condor.stderr, condor.stderr[-2000:]
    assert "at most 8 workers" in condor.stderr, condor.stderr[-2000:]
    assert r["left"] == []


def test_a_suspended_worker_is_not_counted_running(condor: Runner) -> None:
    r = condor.run("suspend")
    assert r["started"] and r["suspend"] == 0, r
    assert r["seen_suspended"] and r["seen_resumed"], r
    assert r["ok"], r
    assert r["left"] == []

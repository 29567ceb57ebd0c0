"""The `shoal` command against live and kept sessions, and Ctrl-C in a driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shoal
from helpers import printer, sleep_return
from procs import live_worker_pids


def shoal_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["shoal", *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands():
    out = shoal_cli("--help")
    assert out.returncode == 0
    for cmd in ("sessions", "logs", "cancel", "clean"):
        assert cmd in out.stdout


def test_sessions_shows_live_session_with_progress():
    with shoal.Pool(2) as p:
        p.map_async(sleep_return, [0.0] * 4 + [60.0], chunksize=1)
        deadline = time.monotonic() + 30
        while True:
            data = json.loads(shoal_cli("sessions", "--json").stdout)
            mine = next(s for s in data if s["id"] == p.session)
            if mine["tasks_done"] >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert mine["tasks_total"] == 5 and mine["tasks_done"] == 4
        out = shoal_cli("sessions")
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(p.session))
        assert "local" in line and "running" in line and "4/5 (80%)" in line


def test_logs_of_a_task_and_of_a_failed_session(capfd):
    p = shoal.Pool(1)
    session = p.session
    assert p.map(printer, range(3)) == [0, 1, 2]
    with pytest.raises(ZeroDivisionError):
        p.apply(divmod, (1, 0))
    p.close()
    p.join()
    capfd.readouterr()
    out = shoal_cli("logs", session, "1")
    assert out.returncode == 0, out.stderr
    assert "stdout of task 1" in out.stdout and "stderr of task 1" in out.stdout
    assert "task 0" not in out.stdout.split("---", 1)[1]
    # The apply is the session's second call: its task is 2:0, as its error says.
    out = shoal_cli("logs", session, "2:0")
    assert out.returncode == 1
    assert "ZeroDivisionError" in out.stdout and "traceback" in out.stdout
    summary = shoal_cli("logs", session)
    assert "task 2:0 failed" in summary.stdout and "ZeroDivisionError" in summary.stdout


def test_cancel_fails_pending_work_and_stops_workers(sessions_dir):
    with shoal.Pool(2) as p:
        r = p.map_async(sleep_return, [20.0] * 4, chunksize=1)
        time.sleep(1.0)
        out = shoal_cli("cancel", p.session)
        assert out.returncode == 0 and "cancelled" in out.stdout
        with pytest.raises(shoal.SessionError, match="cancelled"):
            r.get(20)
        path = os.path.join(sessions_dir, p.session)
        assert live_worker_pids(path) == []


def test_unknown_session_error():
    out = shoal_cli("logs", "does-not-exist")
    assert out.returncode == 1
    assert "no session" in out.stderr and "shoal sessions" in out.stderr


DRIVER = textwrap.dedent(
    """
    import sys, time, shoal
    sys.path.insert(0, {tests!r})
    from helpers import sleep_return
    with shoal.Pool(2, progress={progress}) as p:
        print(p.session, flush=True)
        p.map(sleep_return, [{sleep}] * {n}, chunksize=1)
    print("finished", flush=True)
    """
)


def _driver(tmp_path, sleep: float, n: int, progress: bool = False) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    tests = os.path.dirname(__file__)
    script.write_text(DRIVER.format(tests=tests, sleep=sleep, n=n, progress=progress))
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_ctrl_c_stops_every_worker_and_keeps_nothing(tmp_path, sessions_dir):
    proc = _driver(tmp_path, 30.0, 4)
    session = proc.stdout.readline().strip()
    path = os.path.join(sessions_dir, session)
    deadline = time.time() + 20
    while len(live_worker_pids(path)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    pids = live_worker_pids(path)
    assert len(pids) == 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    # Interrupted, not failed: no task failed, so no work dir is kept (test_pool checks the
    # recorded state).
    assert not os.path.exists(path) and "failed" not in err


def test_progress_bar_shows_rate_and_eta(tmp_path):
    proc = _driver(tmp_path, 0.2, 20, progress=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "finished" in out
    assert "20/20 tasks" in err and "ETA" in err

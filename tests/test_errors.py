"""Bad input fails before anything starts, with an error that names the problem and the fix;
failures never vanish: lost workers are retried, then reported with their stderr."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest

import shoal
from helpers import die, die_once, fail_on, square


def test_unpicklable_argument_is_named():
    lock = threading.Lock()
    with shoal.Pool(1) as p:
        with pytest.raises(shoal.PicklingError, match=r"argument 2 of 'square' \(a lock\)"):
            p.map(square, [1, 2, lock, 4])
        # As in multiprocessing, apply_async's result carries the error.
        with pytest.raises(shoal.PicklingError, match="argument"):
            p.apply_async(square, (lock,)).get(10)
        # Nothing was submitted: the pool still works.
        assert p.map(square, [3]) == [9]


def test_unpicklable_function_is_named():
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with shoal.Pool(1) as p, pytest.raises(shoal.PicklingError, match="function 'test_unpickl"):
        p.map(uses_lock, [1])


def test_pickling_error_is_also_stdlib_type():
    import pickle

    assert issubclass(shoal.PicklingError, pickle.PicklingError)
    assert issubclass(shoal.ConfigError, ValueError)


def test_python_path_missing():
    with pytest.raises(shoal.ConfigError, match="does not exist"):
        shoal.Pool(1, python_path="/no/such/python")


def test_python_path_without_shoal(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named shoal' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(shoal.ConfigError, match="cannot import shoal") as info:
        shoal.Pool(1, python_path=str(fake))
    # shoal is on no public index: the hint says how to install the project's own wheel.
    hint = str(info.value).split("hint:")[1]
    assert "pip install shoal " not in hint and ".whl" in hint and str(fake) in hint


def test_work_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(shoal.ConfigError, match="not writable"):
        shoal.Pool(1, work_dir=str(blocker / "sub"))


def test_unknown_backend_and_option():
    with pytest.raises(shoal.ConfigError, match='unknown backend "slurmm"'):
        shoal.Pool(1, backend="slurmm")
    with pytest.raises(shoal.ConfigError, match="does not apply to the local backend"):
        shoal.Pool(1, partition="debug")


def test_worker_killed_once_is_retried_exactly_once(tmp_path):
    marker = str(tmp_path / "marker")
    with shoal.Pool(2) as p:
        out = p.starmap(die_once, [(marker, i) for i in range(10)], chunksize=10)
    assert out == [i * 10 for i in range(10)]


def test_worker_killed_every_time_is_reported():
    with shoal.Pool(1, max_attempts=2) as p:
        with pytest.raises(shoal.WorkerLostError, match="killed by signal 9"):
            p.apply(die)
        assert p.apply(square, (5,)) == 25


def test_failed_session_keeps_work_dir_and_says_where(sessions_dir, capfd):
    p = shoal.Pool(1)
    session = p.session
    with pytest.raises(ValueError):
        p.map(fail_on, range(5))
    p.close()
    p.join()
    err = capfd.readouterr().err
    kept = os.path.join(sessions_dir, session)
    assert os.path.isdir(kept)
    assert kept in err and f"shoal logs {session}" in err


def test_successful_session_keeps_only_what_logs_need(sessions_dir, monkeypatch):
    with shoal.Pool(1) as p:
        p.map(square, range(3))
        session = p.session
        assert os.path.isdir(os.path.join(sessions_dir, session))
    kept = os.path.join(sessions_dir, session)
    assert sorted(os.listdir(kept)) == ["calls", "index", "journal", "logs", "session.json"]
    # SHOAL_KEEP_LOGS=0 keeps nothing; a size budget lets the oldest go first.
    monkeypatch.setenv("SHOAL_KEEP_LOGS", "0")
    with shoal.Pool(1) as p:
        p.map(square, range(3))
        session2 = p.session
    assert not os.path.exists(os.path.join(sessions_dir, session2))
    monkeypatch.delenv("SHOAL_KEEP_LOGS")
    monkeypatch.setenv("SHOAL_KEEP_LOGS_SIZE", "1K")
    with shoal.Pool(1) as p:
        p.map(square, range(3))
    # The older one goes to make room (on a thread of its own: ending never waits for it).
    deadline = time.monotonic() + 30
    while os.path.exists(kept) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(kept)


def test_session_dir_is_private(sessions_dir):
    with shoal.Pool(1) as p:
        mode = os.stat(os.path.join(sessions_dir, p.session)).st_mode & 0o777
    assert mode == 0o700


def test_initializer_failure_fails_session_with_its_traceback():
    def bad_init():
        raise RuntimeError("init exploded")

    with shoal.Pool(1, initializer=bad_init) as p:
        with pytest.raises(shoal.SessionError, match="init exploded"):
            p.map(square, range(3))


def test_pickled_main_function_runs(tmp_path):
    _, out = _run_script(
        tmp_path,
        "main_fn.py",
        (
            "import shoal\n"
            "def cube(x):\n    return x ** 3\n"
            "if __name__ == '__main__':\n"
            "    with shoal.Pool(2) as p:\n"
            "        print(p.map(cube, range(5)))\n"
        ),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 8, 27, 64]"


def test_unpicklable_module_level_function_names_the_global(tmp_path):
    _, out = _run_script(
        tmp_path,
        "uses_global.py",
        (
            "import threading, shoal\n"
            "LOCK = threading.Lock()\n"
            "def work(x):\n"
            "    with LOCK:\n"
            "        return x\n"
            "if __name__ == '__main__':\n"
            "    with shoal.Pool(1) as p:\n"
            "        try:\n"
            "            p.map(work, [1])\n"
            "        except TypeError as e:\n"
            "            print(e)\n"
        ),
    )
    assert out.returncode == 0, out.stderr
    assert "cannot pickle the function 'work': it uses the global 'LOCK' (a lock)" in out.stdout


def test_task_traceback_shows_the_users_file_and_line(tmp_path):
    script, out = _run_script(
        tmp_path,
        "fails_here.py",
        (
            "import shoal\n"
            "def boom(x):\n"
            "    raise ValueError('boom')  # the line to show\n"
            "if __name__ == '__main__':\n"
            "    with shoal.Pool(1) as p:\n"
            "        try:\n"
            "            p.map(boom, [1])\n"
            "        except ValueError as e:\n"
            "            print(e.__cause__)\n"
        ),
    )
    assert out.returncode == 0, out.stderr
    assert f'File "{script}", line 3, in boom' in out.stdout
    assert "raise ValueError('boom')  # the line to show" in out.stdout
    assert "<dynamic-code>" not in out.stdout


def _run_script(tmp_path, name: str, code: str) -> tuple[str, subprocess.CompletedProcess]:
    """Run `code` as the main script `name` (functions in __main__ travel by value)."""
    script = tmp_path / name
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    return str(script), out


def _shoal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_one_number_for_one_task_in_errors_logs_and_show(capfd):
    from helpers import printer

    with shoal.Pool(2, keep_work_dir=True) as p:
        assert p.map(printer, range(20)) == list(range(20))  # call 1
        p.apply(square, (3,))  # call 2
        with pytest.raises(ValueError) as info:
            p.map(fail_on, range(8), chunksize=3)  # call 3: its task 3 fails
        session = p.session
    # The error names the task by its place in the user's map, and `shoal logs` takes that.
    note = str(info.value.__cause__)
    assert "task 3:3 failed on worker" in note and f"`shoal logs {session} 3:3`" in note
    logs = _shoal("logs", session, "3:3")
    assert logs.stdout.startswith("task 3:3 ·") and "ValueError" in logs.stdout, logs
    first = _shoal("logs", session, "7")  # the first call's task 7
    assert "stdout of task 7" in first.stdout and "task 17" not in first.stdout, first
    listing = _shoal("logs", session)
    assert "task 3:3 failed on" in listing.stdout, listing
    shown = _shoal("show", session)
    assert "— task 3:3" in shown.stdout and f"shoal logs {session} 3:3" in shown.stdout, shown
    bad = _shoal("logs", session, "3:99")
    assert bad.returncode != 0 and "no such task" in bad.stderr and "CALL:N" in bad.stderr
    capfd.readouterr()


def test_a_bare_number_for_memory_is_warned_about_with_its_unit():
    # Warned before anything starts (the bad python_path then stops it, so no cluster is used).
    with pytest.warns(UserWarning, match=r'memory=2 is read as 2 MB on slurm; write memory="2G"'):
        with pytest.raises(shoal.ConfigError):
            shoal.Pool(2, backend="slurm", memory=2, python_path="/nonexistent/python")
    with pytest.warns(UserWarning, match=r"request_memory=512 is read as 512 MB on htcondor"):
        with pytest.raises(shoal.ConfigError):
            shoal.Executor(1, backend="htcondor", request_memory=512, python_path="/nope")


def test_a_loop_of_submits_is_numbered_by_call_in_one_line_per_run():
    with shoal.Executor(2) as ex:
        assert ex.submit(square, 2).result(30) == 4  # call 1
        futs = [ex.submit(fail_on, i) for i in range(40)]  # calls 2..41; fail_on(3) raises
        for f in futs[:3] + futs[4:]:
            f.result(30)
        err = futs[3].exception(30)
        session = ex.session
    note = str(err.__cause__)
    assert f"`shoal logs {session} 5:0`" in note, note  # the 5th call, its only task
    logs = _shoal("logs", session, "5:0")
    assert logs.stdout.startswith("task 5:0 ·") and "bad value 3" in logs.stdout, logs
    path = os.path.join(os.environ["SHOAL_HOME"], "sessions", session, "calls")
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) < 10, lines  # runs of one-task calls share a line

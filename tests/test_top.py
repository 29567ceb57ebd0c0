"""`shoal top` in a real terminal: tmux runs it at 80x24 against a live session (local
backend, and Slurm when its cluster is up); keys are typed with send-keys and the screen is
read with capture-pane, as a person over ssh would see it."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

pytestmark = pytest.mark.timeout(240)

DRIVER = textwrap.dedent(
    """
    import sys, time, shoal
    def work(i):
        time.sleep(0.3)
        if i == 3:
            raise ValueError(f"bad input {i}")
        return i
    backend = sys.argv[1]
    opts = {} if backend == "local" else {"backend": backend, "job_name": sys.argv[2],
                                          "time": "10m"}
    with shoal.Pool(2, **opts) as p:
        print(p.session, flush=True)
        rs = [p.apply_async(work, (i,)) for i in range(400)]
        for r in rs:
            try:
                r.get()
            except ValueError:
                pass
    """
)


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=True, timeout=20
    ).stdout


class Screen:
    """One tmux session of 80x24 running a command."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (scripts/bootstrap installs it)")
        self.name = f"shoal-top-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex_quote(v)}" for k, v in env.items())
        tmux("new-session", "-d", "-s", self.name, "-x", "80", "-y", "24",
             f"env {exports} {command}; echo EXITED $?; sleep 600")  # fmt: skip

    def text(self, escapes: bool = False) -> str:
        return tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", self.name)

    def wait(self, cond, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            if cond(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never showed {what}:\n{screen}")
            time.sleep(0.2)

    def keys(self, *keys: str) -> None:
        tmux("send-keys", "-t", self.name, *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)

    def program_pid(self) -> int:
        """The pid of the command (the pane runs it under a shell)."""
        shell = int(tmux("list-panes", "-t", self.name, "-F", "#{pane_pid}").split()[0])
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == shell:
                return int(stat.split("/")[2])
        raise AssertionError("the command is not running in its pane")


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def short(session: str) -> str:
    """How the list shows a session id: MMDD-HHMMSS-xxxx."""
    date, clock, salt = session.split("-", 2)
    return f"{date[4:]}-{clock}-{salt[:4]}"


@pytest.fixture
def top_env(tmp_path) -> dict[str, str]:
    env = {"SHOAL_HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"], "TERM": "xterm"}
    for k in ("SLURM_CONF", "SGE_ROOT", "SGE_CELL", "VIRTUAL_ENV", "HOME"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def start_driver(backend: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    job = f"shoal-top-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, backend, job],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip() if proc.stdout else ""
    assert line, proc.stderr.read() if proc.stderr else "no session id"
    return proc, line


def drive_top(backend: str, env: dict[str, str]) -> None:
    proc, session = start_driver(backend, env)
    screen = Screen("shoal top", env)
    try:
        # The list: the live session with its backend, progress, rate, a failure, its state.
        row = re.compile(rf"{short(session)}\s+{backend}\s+\d+/400 .*\s1\s+\S+\s+running")
        s = screen.wait(
            lambda s: row.search(s),
            "the live session with one failure",
            timeout=120,
        )
        assert "q quit" in s and "/ filter" in s and "c cancel" in s, s
        assert all(len(line) <= 80 for line in s.splitlines())
        # The session: workers with their state (and on a cluster their job id and host).
        screen.keys("Enter")
        s = screen.wait(
            lambda s: "Workers (" in s and "Failed tasks (1)" in s and s.count("running") >= 2,
            "the workers and the failed task",
        )
        assert f"session {session}" in s and "ValueError: bad input 3" in s, s
        if backend != "local":
            jobs = [
                ln for ln in s.splitlines() if re.search(r"│b\d+-\d+\s+\d+_\d+\s+\S+\s+running", ln)
            ]
            assert jobs, f"no worker row with an array job id and a host:\n{s}"
        # Enter moves to the failed tasks, Enter again opens the task's output.
        screen.keys("Enter")
        screen.keys("Enter")
        s = screen.wait(
            lambda s: "--- traceback ---" in s and "ValueError: bad input 3" in s,
            "the task's traceback",
        )
        assert "task 4:0 of session" in s  # apply_async(work, (3,)) is the session's 4th call
        screen.keys("Escape")
        screen.wait(lambda s: "Workers (" in s, "the session again")
        # c asks first; y cancels the way `shoal cancel` does.
        screen.keys("c")
        s = screen.wait(lambda s: f"Cancel session {session}?" in s, "the confirmation")
        screen.keys("y")
        screen.wait(lambda s: f"cancelled session {session}" in s, "the cancel", timeout=60)
        proc.wait(timeout=60)
        assert "cancelled by `shoal cancel`" in (proc.stderr.read() if proc.stderr else "")
        screen.wait(lambda s: "failed" in s.splitlines()[0], "the session's end")
        # q leaves a clean screen: the shell's, not the UI's.
        screen.keys("q")
        s = screen.wait(lambda s: "EXITED 0" in s, "top to exit")
        assert "shoal top" not in s and "Workers" not in s, s
    finally:
        screen.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_top_on_a_live_local_session(top_env) -> None:
    drive_top("local", top_env)


@pytest.mark.slurm
def test_top_on_a_live_slurm_session(top_env) -> None:
    drive_top("slurm", top_env)


def finished_session(env: dict[str, str]) -> str:
    code = (
        "import shoal\n"
        "with shoal.Pool(2, keep_work_dir=True) as p:\n"
        "    print(p.session); p.map(abs, range(-50, 50), chunksize=5)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def tree(path: str) -> list[tuple[str, int, int]]:
    out = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, path), st.st_size, st.st_mtime_ns))
    return sorted(out)


def test_top_only_reads_filters_and_honours_no_color(top_env) -> None:
    session = finished_session(top_env)
    path = os.path.join(top_env["SHOAL_HOME"], "sessions", session)
    before = tree(path)
    coloured = Screen("shoal top", top_env)
    plain = Screen("shoal top", {**top_env, "NO_COLOR": "1"})
    try:
        for screen in (coloured, plain):
            screen.wait(lambda s: short(session) in s and "finished" in s, "the finished session")
        colour = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;5;\d+)m")
        assert colour.search(coloured.text(escapes=True)), "no colour without NO_COLOR"
        assert not colour.search(plain.text(escapes=True)), "colour despite NO_COLOR"
        # / filters the list; Esc clears the filter.
        plain.keys("/", "n", "o", "-", "s", "u", "c", "h", "Enter")
        plain.wait(lambda s: short(session) not in s and "0 sessions" in s, "an empty list")
        plain.keys("Escape")
        plain.wait(lambda s: short(session) in s, "the list again")
        plain.keys("Enter")
        plain.wait(lambda s: "Workers (2)" in s and "exited" in s, "the ended session's workers")
        # Ctrl-C quits as cleanly as q.
        plain.keys("C-c")
        assert "shoal top" not in plain.wait(lambda s: "EXITED 0" in s, "top to exit")
        coloured.keys("j", "k", "Enter", "Escape", "q")
        coloured.wait(lambda s: "EXITED 0" in s, "top to exit")
    finally:
        coloured.close()
        plain.close()
    assert tree(path) == before, "shoal top wrote to a session it only watched"


def test_top_ends_when_its_terminal_hangs_up(top_env) -> None:
    screen = Screen("shoal top", top_env)
    try:
        screen.wait(lambda s: "shoal top" in s, "top")
        pid = screen.program_pid()
    finally:
        screen.close()  # the terminal goes away, as when ssh drops
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = os.path.exists(f"/proc/{pid}")
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "shoal top kept running after its terminal hung up"

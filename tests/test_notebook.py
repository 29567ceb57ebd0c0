"""Notebooks, as a user runs them: a real Jupyter kernel (ipykernel) executing cells through
nbclient. Functions defined in cells travel to workers through Pool, Executor and joblib;
progress=True is one live display (no carriage-return lines); a task's error shows its remote
traceback once; interrupting the kernel stops every worker. On the local backend, and on
Slurm when its cluster is up."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import nbformat
import pytest
from nbclient import NotebookClient

from procs import live_worker_pids

pytestmark = pytest.mark.timeout(300)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def backends():
    return [
        pytest.param("local", id="local"),
        pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    ]


def cluster_args(backend: str, *, with_backend: bool = True) -> str:
    """Keywords that put a session on `backend`, named so that its jobs can be found."""
    if backend == "local":
        return ""
    named = f", job_name='shoal-nb-{uuid.uuid4().hex[:8]}', time='10m'"
    return (f", backend={backend!r}" if with_backend else "") + named


def cells(backend: str) -> list[str]:
    args = "2" + cluster_args(backend)
    return [
        # 0: everything the workers run is defined here, in cells (__main__ of the kernel).
        "import shoal, time\n"
        "def square(x):\n    return x * x\n"
        "class Scaled:\n    def __init__(self, k):\n        self.k = k\n"
        "    def __call__(self, x):\n        return self.k * x\n"
        "def fails(x):\n    if x == 2:\n        raise ValueError(f'bad input {x}')\n    return x",
        # 1: Pool with a live progress display
        f"with shoal.Pool({args}, progress=True) as p:\n"
        "    squares = p.map(square, range(400), chunksize=20)\n"
        "    tripled = p.map(Scaled(3), range(10))\n"
        "    lam = p.apply(lambda a, b: a + b, (2, 3))\n"
        "    p.map(time.sleep, [0.1] * 30, chunksize=1)\n"
        "print(sum(squares), tripled[-1], lam)",
        # 2: Executor
        f"with shoal.Executor(max_workers=2{cluster_args(backend)}) as ex:\n"
        "    futs = [ex.submit(square, i) for i in range(20)]\n"
        "    print('executor', sum(f.result() for f in futs))",
        # 3: joblib
        "from joblib import Parallel, delayed, parallel_config\nimport shoal.joblib\n"
        "shoal.joblib.register()\n"
        f"with parallel_config(backend={backend!r}, n_jobs=2"
        f"{cluster_args(backend, with_backend=False)}):\n"
        "    out = Parallel()(delayed(square)(i) for i in range(30))\n"
        "print('joblib', sum(out))",
        # 4: a task fails
        f"with shoal.Pool({args}) as p:\n    p.map(fails, range(4), chunksize=1)",
        # 5: interrupted inside a with block
        f"with shoal.Pool({args}) as p:\n    p.map(time.sleep, [120] * 4, chunksize=1)",
        # 6: interrupted while a pool kept across cells computes
        f"kept = shoal.Pool({args})\nkept.map(time.sleep, [120] * 4, chunksize=1)",
        # 7: the kept pool says why it stopped
        "try:\n    kept.map(square, range(3))\nexcept Exception as e:\n"
        "    print('kept pool:', type(e).__name__, e)",
    ]


def sessions(home: str) -> set[str]:
    return set(glob.glob(os.path.join(home, "sessions", "*")))


def running_tasks(session: str) -> int:
    out = subprocess.run(["shoal", "show", session, "--json"], capture_output=True, text=True)
    return json.loads(out.stdout)["tasks"]["running"] if out.returncode == 0 else 0


def interrupt_when_running(
    client: NotebookClient, home: str, known: set[str], seen: dict[str, list[int]]
) -> threading.Thread:
    """Interrupt the kernel (as Jupyter does: SIGINT to its process group) once the new
    session's workers run their tasks; `seen` gets that session and its workers' pids (an
    interrupted session leaves no work dir to read them from afterwards)."""

    def wait_and_interrupt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for d in sessions(home) - known:
                if running_tasks(d) >= 2:
                    seen[d] = live_worker_pids(d)
                    os.killpg(client.km.provisioner.pgid, signal.SIGINT)
                    return
            time.sleep(0.2)

    t = threading.Thread(target=wait_and_interrupt, daemon=True)
    t.start()
    return t


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


class Watching(NotebookClient):
    """Keeps the in-place updates of displays, which the saved notebook shows only last."""

    updates: list[str] = []

    def process_message(self, msg, cell, cell_index):
        if msg["msg_type"] == "update_display_data":
            self.updates.append(msg["content"]["data"].get("text/plain", ""))
        return super().process_message(msg, cell, cell_index)


def text_of(cell) -> str:
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type == "error":
            out.append(ANSI.sub("", "\n".join(o.traceback)))
        elif "data" in o:
            out.append(o.data.get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.parametrize("backend", backends())
def test_a_notebook_on(backend: str, tmp_path) -> None:
    home = str(tmp_path / "home")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells(backend)])
    env = {**os.environ, "SHOAL_HOME": home}
    client = Watching(nb, timeout=240, allow_errors=True, kernel_name="python3")
    old = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        with client.setup_kernel():
            interrupted: dict[int, str] = {}
            for i, cell in enumerate(nb.cells):
                known = sessions(home)
                seen: dict[str, list[int]] = {}
                waiter = interrupt_when_running(client, home, known, seen) if i in (5, 6) else None
                client.execute_cell(cell, i)
                if waiter is not None:
                    waiter.join()
                    ((new, pids),) = seen.items()
                    interrupted[i] = new
                    assert pids, f"cell {i}: no worker seen running"
                    # Every worker of the interrupted session stops (cluster jobs: cancelled).
                    deadline = time.monotonic() + 60
                    while alive(pids) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    assert alive(pids) == [], f"cell {i}: workers still running"
    finally:
        os.environ.clear()
        os.environ.update(old)

    out = [text_of(c) for c in nb.cells]
    assert out[1].strip().endswith(f"{sum(x * x for x in range(400))} 27 5"), out[1]
    # progress=True: one display, updated in place to its final state, and no \r lines.
    displays = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert len(displays) == 1, nb.cells[1].outputs
    assert "text/html" in displays[0].data and "<div" in displays[0].data["text/html"]
    assert "441/441 tasks" in displays[0].data["text/plain"], displays[0].data
    assert "finished after" in displays[0].data["text/plain"]
    live = [u for u in client.updates if "ETA" in u and "workers" in u]
    assert live, f"no live update while the pool ran: {client.updates}"
    assert "\r" not in out[1]
    assert "executor 2470" in out[2], out[2]
    assert "joblib 8555" in out[3], out[3]
    # The remote traceback once, with the task's own frame and error, and where to look.
    err = out[4]
    assert "ValueError: bad input 2" in err
    assert err.count('in fails\nValueError: bad input 2\n"""') == 1, err
    assert "shoal logs" in err
    assert "KeyboardInterrupt" in out[5] and "KeyboardInterrupt" in out[6]
    assert "kept pool: SessionError" in out[7] and "keyboard interrupt" in out[7], out[7]

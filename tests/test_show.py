"""`shoal show SESSION`: the summary of a session that ran here, after its work dir is gone
(from $SHOAL_HOME/history), as JSON, and as a timeline picture."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import shoal
from helpers import sleep_return


def shoal_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["shoal", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


@pytest.fixture(scope="module")
def finished() -> str:
    """A session that finished cleanly and whose logs expired at once (SHOAL_KEEP_LOGS=0):
    its work dir was removed, its journal kept."""
    os.environ["SHOAL_KEEP_LOGS"] = "0"
    try:
        with shoal.Pool(2) as p:
            assert p.map(sleep_return, [0.01] * 40, chunksize=1) == [0.01] * 40
            session = p.session
    finally:
        del os.environ["SHOAL_KEEP_LOGS"]
    assert not os.path.exists(os.path.join(os.environ["SHOAL_HOME"], "sessions", session))
    return session


def test_show_of_a_finished_session_whose_logs_are_kept() -> None:
    with shoal.Pool(2) as p:
        p.map(sleep_return, [0.01] * 4, chunksize=1)
        session = p.session
    out = shoal_cli("show", session)
    assert out.returncode == 0, out.stderr
    assert "4 of 4 done" in out.stdout and f"shoal logs {session} TASK" in out.stdout
    s = json.loads(shoal_cli("show", session, "--json").stdout)
    assert s["work_dir"] == os.path.join(os.environ["SHOAL_HOME"], "sessions", session)


def test_show_summarises_a_finished_session_from_history(finished: str) -> None:
    out = shoal_cli("show", finished)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"session {finished} · local · finished")
    assert "40 of 40 done · 0 failed" in text
    assert "durations   p50" in text and "throughput" in text and "start-up" in text
    assert "w0001" in text and "w0002" in text
    assert "the work dir was removed" in text
    prefix = shoal_cli("show", finished[:-2])
    assert prefix.returncode == 0 and prefix.stdout == text


def test_show_json(finished: str) -> None:
    out = shoal_cli("show", finished, "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["display_state"] == "finished" and s["work_dir"] is None
    assert s["tasks"]["finished"] == 40 and s["tasks"]["failed"] == 0
    assert 0.005 < s["durations"]["p50"] < 2.0
    assert sum(w["tasks"] for w in s["workers"]) == 40
    assert s["hosts"][0]["tasks"] == 40


@pytest.mark.parametrize("suffix,magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_show_plot_writes_a_picture(finished: str, tmp_path, suffix: str, magic: bytes) -> None:
    path = tmp_path / f"timeline.{suffix}"
    out = shoal_cli("show", finished, "--plot", str(path), SHOAL_PYTHON=sys.executable)
    assert out.returncode == 0, out.stderr
    assert f"wrote {path}" in out.stdout
    assert path.read_bytes().startswith(magic)


def test_show_plot_says_how_to_install_matplotlib(finished: str, tmp_path) -> None:
    # An interpreter on which matplotlib cannot be imported.
    python = tmp_path / "python-without-matplotlib"
    python.write_text(
        "#!/bin/sh\n"
        f"exec {sys.executable} -c \"import sys, runpy; sys.modules['matplotlib'] = None; "
        f"sys.argv = sys.argv[2:]; runpy.run_module('shoal._plot', run_name='__main__')\" "
        '"$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    out = shoal_cli("show", finished, "--plot", str(tmp_path / "t.png"), SHOAL_PYTHON=str(python))
    assert out.returncode != 0
    assert "needs matplotlib" in out.stderr and "pip install matplotlib" in out.stderr
    assert not (tmp_path / "t.png").exists()


def test_show_errors_name_the_problem(finished: str, tmp_path) -> None:
    out = shoal_cli("show", "20990101-00")
    assert out.returncode == 1 and 'no session "20990101-00"' in out.stderr
    out = shoal_cli("show", finished, "--plot", str(tmp_path / "t.pdf"))
    assert out.returncode == 1 and "*.png or *.svg" in out.stderr


@pytest.mark.parametrize(
    "backend",
    [pytest.param("slurm", marks=pytest.mark.slurm), pytest.param("sge", marks=pytest.mark.sge)],
)
def test_output_and_summary_on_a_real_scheduler(backend: str, capsys) -> None:
    from helpers import chatty

    with shoal.Pool(2, backend=backend, time="10m") as p:
        assert p.map(chatty, range(6), chunksize=1) == list(range(6))
        session = p.session
    # Task output reaches the driver from the cluster's worker logs, as on the local backend.
    captured = capsys.readouterr()
    for x in range(6):
        assert f"stdout of task {x}" in captured.out and f"stderr of task {x}" in captured.err
    # The summary has what issue 16 asks of every backend: jobs, hosts, queue wait, start-up.
    s = json.loads(shoal_cli("show", session, "--json").stdout)
    assert s["tasks"]["finished"] == 6 and s["durations"]["max"] > 0
    assert s["queue_wait"] is not None and s["startup"] is not None
    ran = [w for w in s["workers"] if w["tasks"]]
    assert ran and all(w["job"] and w["host"] and w["queue_wait"] is not None for w in ran)
    assert sum(h["tasks"] for h in s["hosts"]) == 6
    text = shoal_cli("show", session).stdout
    assert "queue wait" in text and "start-up" in text and str(ran[0]["job"]) in text

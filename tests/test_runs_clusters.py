"""`shoal run` on each real engine: a 2x2 grid with a template of that backend's options;
all four tasks done and no job left in the queue afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from test_htcondor import USER, condor  # noqa: F401 - the fixture is used by name

JOB_NAME = "shoalrt"


def _queue_has(cmd: list[str], needle: str) -> bool:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return needle in out.stdout


def _assert_queue_drains(cmd: list[str], needle: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while _queue_has(cmd, needle):
        assert time.time() < deadline, f"jobs left in the queue: {cmd}"
        time.sleep(1.0)


def _grid(tmp_path, backend: str, template: str) -> dict:
    (tmp_path / "shoal.toml").write_text(template)
    out = subprocess.run(
        ["shoal", "run", "--name", f"grid-{backend}", "--backend", backend,
         "-P", "a=1,2", "-P", "b=x,y", "--", "sh", "-c", "echo {a}{b} > {out}/r.txt"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rid = out.stdout.split()[1]
    data = json.loads(
        subprocess.run(
            ["shoal", "show", rid, "--json"], capture_output=True, text=True, cwd=str(tmp_path)
        ).stdout
    )
    assert data["status"] == "done" and data["counts"]["done"] == 4
    got = sorted((tmp_path / t["out_dir"] / "r.txt").read_text().strip() for t in data["tasks"])
    assert got == ["1x", "1y", "2x", "2y"]
    return data


@pytest.mark.slurm
def test_grid_on_slurm(tmp_path):
    _grid(
        tmp_path,
        "slurm",
        f'[slurm.default]\ncpus = 1\ntime = "10m"\njob_name = "{JOB_NAME}"\nworkers = 2\n',
    )
    _assert_queue_drains(["squeue", "-h", "-o", "%j"], JOB_NAME)


@pytest.mark.sge
def test_grid_on_sge(tmp_path):
    _grid(tmp_path, "sge", f'[sge.default]\ntime = "10m"\njob_name = "{JOB_NAME}"\nworkers = 2\n')
    _assert_queue_drains(["qstat", "-u", "*"], JOB_NAME)


@pytest.mark.htcondor
def test_grid_on_htcondor(condor):  # noqa: F811 - the fixture from test_htcondor
    # HTCondor never runs root's jobs: run `shoal run` as the job user, in its own sandbox,
    # with the interpreter every node can read (see tests/test_htcondor.py).
    work = condor.sandbox / "grid"
    work.mkdir()
    (work / "shoal.toml").write_text(
        '[htcondor.default]\nrequest_cpus = 1\nrequest_memory = "256M"\nworkers = 2\n'
    )
    if condor.as_user:
        shutil.chown(work, USER, USER)
        shutil.chown(work / "shoal.toml", USER, USER)

    def shoal(*args: str) -> subprocess.CompletedProcess:
        cmd = [condor.python, "-m", "shoal.cli", *args]
        if condor.as_user:
            envs = [f"{k}={v}" for k, v in condor.env.items()]
            cmd = ["runuser", "-u", USER, "--", "env", "-i", *envs, *cmd]
        return subprocess.run(
            cmd,
            cwd=str(work),
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, **condor.env},
        )

    out = shoal(
        "run",
        "--name",
        "grid-htcondor",
        "--backend",
        "htcondor",
        "-P",
        "a=1,2",
        "-P",
        "b=x,y",
        "--",
        "sh",
        "-c",
        "echo {a}{b} > {out}/r.txt",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rid = out.stdout.split()[1]
    data = json.loads(shoal("show", rid, "--json").stdout)
    assert data["status"] == "done" and data["counts"]["done"] == 4
    got = sorted((work / t["out_dir"] / "r.txt").read_text().strip() for t in data["tasks"])
    assert got == ["1x", "1y", "2x", "2y"]
    _assert_queue_drains(["condor_q", "-allusers", "-af", "Args"], data["session"])

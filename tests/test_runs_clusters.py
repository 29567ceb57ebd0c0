"""`shoal run` on each real engine: a 2x2 grid with a template of that backend's options;
all four tasks done and no job left in the queue afterwards. On Slurm also the registry shared
with a compute node: `shoal run` and `shoal runs` there (through srun) while a driver writes it
here.

Everything comes from the environment, so the same tests run on the single-host clusters and on
a multi-node one: there, give pytest a `--basetemp` on the shared filesystem (the tasks write
their {out} dirs from other nodes) and a SHOAL_HOME on it too (with SHOAL_TEST_KEEP_HOME=1),
which is where the registry is kept as records (runs.d), not SQLite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from test_htcondor import USER, condor  # noqa: F401 - the fixture is used by name
from test_runs import NETWORK_FS, _journal

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
@pytest.mark.shared_dir
def test_grid_on_slurm(tmp_path):
    _grid(
        tmp_path,
        "slurm",
        f'[slurm.default]\ncpus = 1\ntime = "10m"\njob_name = "{JOB_NAME}"\nworkers = 2\n',
    )
    _assert_queue_drains(["squeue", "-h", "-o", "%j"], JOB_NAME)


@pytest.mark.slurm
@pytest.mark.shared_dir
def test_per_task_resources_on_slurm(tmp_path):
    """`-R cpus={threads}`: Slurm gives each task's job as many CPUs as its parameter says
    (the job's own SLURM_CPUS_PER_TASK, written by the task), one shape per distinct value."""
    (tmp_path / "shoal.toml").write_text(
        f'[slurm.default]\ncpus = 1\ntime = "10m"\njob_name = "{JOB_NAME}"\nworkers = 2\n'
    )
    out = subprocess.run(
        ["shoal", "run", "--name", "cpus-slurm", "--backend", "slurm", "-P", "threads=1,2,3,2",
         "-R", "cpus={threads}", "--", "sh", "-c", "echo $SLURM_CPUS_PER_TASK > {out}/r.txt"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(
        subprocess.run(
            ["shoal", "show", out.stdout.split()[1], "--json"],
            capture_output=True, text=True, cwd=str(tmp_path),
        ).stdout
    )  # fmt: skip
    got = {
        t["idx"]: ((tmp_path / t["out_dir"] / "r.txt").read_text().strip(), t["params"]["threads"])
        for t in data["tasks"]
    }
    assert all(cpus == str(threads) for cpus, threads in got.values()), got
    _assert_queue_drains(["squeue", "-h", "-o", "%j"], JOB_NAME)


def _shoal_cmd() -> list[str]:
    # The interpreter running the tests is the one every node runs workers with.
    return [sys.executable, "-m", "shoal.cli"]


@pytest.mark.slurm
@pytest.mark.shared_dir
def test_registry_is_shared_with_a_compute_node(tmp_path):
    home = os.environ["SHOAL_HOME"]
    (tmp_path / "shoal.toml").write_text(
        f'[slurm.default]\ncpus = 1\ntime = "10m"\njob_name = "{JOB_NAME}"\nworkers = 2\n'
    )
    here = subprocess.Popen(
        [*_shoal_cmd(), "run", "--name", "login-side", "--backend", "slurm", "-P", "i=0..19",
         "--", "sh", "-c", "sleep 0.2; echo {i} > {out}/r.txt"],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    srun = ["srun", "--quiet", "-N1", "-n1", "-t", "5", f"--job-name={JOB_NAME}",
            f"--chdir={tmp_path}"]  # fmt: skip
    # Another node writes the same registry (a local-backend run there) and reads it.
    there = subprocess.run(
        [*srun, *_shoal_cmd(), "run", "--name", "node-side", "--backend", "local", "-j", "2",
         "-P", "i=0..29", "--", "true"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert there.returncode == 0, there.stdout + there.stderr
    out, err = here.communicate(timeout=600)
    assert here.returncode == 0, out + err
    listed = subprocess.run([*srun, *_shoal_cmd(), "runs", "--json"], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    mine = subprocess.run([*_shoal_cmd(), "runs", "--json"], capture_output=True, text=True)
    for runs in (json.loads(listed.stdout), json.loads(mine.stdout)):
        by_name = {r["name"]: r for r in runs}
        assert by_name["login-side"]["status"] == "done", by_name["login-side"]
        assert by_name["login-side"]["counts"]["done"] == 20
        assert by_name["node-side"]["counts"]["done"] == 30
    _assert_store(home)
    _assert_queue_drains(["squeue", "-h", "-o", "%j"], JOB_NAME)


def _assert_store(home: str) -> None:
    """SQLite (WAL) on a local disk; on a network filesystem only records (runs.d), no
    runs.db for two nodes' caches to corrupt."""
    fstype = subprocess.run(["stat", "-f", "-c", "%T", home], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    if fstype in NETWORK_FS:
        assert os.path.isdir(os.path.join(home, "runs.d")), fstype
        assert not os.path.exists(os.path.join(home, "runs.db")), fstype
    else:
        assert _journal(os.path.join(home, "runs.db")) == "wal", fstype


def _runs(cmd: list[str], prefix: str) -> dict:
    out = subprocess.run([*cmd, "runs", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "malformed" not in out.stderr and "I/O error" not in out.stderr, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout) if r["name"].startswith(prefix)}


@pytest.mark.slurm
@pytest.mark.shared_dir
def test_registry_writers_on_two_nodes_at_once(tmp_path):
    # The reproduction of the GlusterFS corruption: drivers on the login machine and on a
    # compute node register and record runs at the same moment, then both list them.
    srun = ["srun", "--quiet", "-N1", "-n1", "-t", "5", f"--job-name={JOB_NAME}",
            f"--chdir={tmp_path}"]  # fmt: skip
    loop = "for k in 1 2 3; do {shoal} run --name {side}$k --backend local -j 2 -P i=0..29 -- true >/dev/null || exit 1; done"  # noqa: E501
    shoal = " ".join(_shoal_cmd())
    there = subprocess.Popen([*srun, "sh", "-c", loop.format(shoal=shoal, side="twoN")],
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    here = subprocess.run(["sh", "-c", loop.format(shoal=shoal, side="twoL")], cwd=str(tmp_path),
                          stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    _, there_err = there.communicate(timeout=300)
    assert here.returncode == 0, here.stderr
    assert there.returncode == 0, there_err
    views = [_runs([*srun, *_shoal_cmd()], "two"), _runs(_shoal_cmd(), "two")]
    for runs in views:
        assert sorted(runs) == [f"two{s}{k}" for s in "LN" for k in (1, 2, 3)], runs
        assert all(r["status"] == "done" and r["counts"]["done"] == 30 for r in runs.values())
    # One id each, the same on both nodes.
    assert len({r["id"] for r in views[0].values()}) == 6
    assert {n: r["id"] for n, r in views[0].items()} == {n: r["id"] for n, r in views[1].items()}
    _assert_store(os.environ["SHOAL_HOME"])
    _assert_queue_drains(["squeue", "-h", "-o", "%j"], JOB_NAME)


@pytest.mark.slurm
@pytest.mark.shared_dir
def test_registry_survives_a_killed_driver(tmp_path):
    # A driver killed (SIGKILL) in the middle of recording, while a compute node lists the
    # registry: both sides keep a consistent registry, and `shoal resume` finishes the run.
    srun = ["srun", "--quiet", "-N1", "-n1", "-t", "5", f"--job-name={JOB_NAME}",
            f"--chdir={tmp_path}"]  # fmt: skip
    drv = subprocess.Popen(
        [*_shoal_cmd(), "run", "--name", "killme", "--backend", "local", "-j", "2",
         "-P", "i=0..199", "--", "sleep", "0.02"],
        cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    reader = subprocess.Popen(
        [*srun, "sh", "-c", f"for k in $(seq 40); do {' '.join(_shoal_cmd())} runs >/dev/null "
         "|| exit 1; sleep 0.1; done"], stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while True:
        run = _runs(_shoal_cmd(), "killme").get("killme")
        if run and run["counts"]["done"] >= 20:
            break
        assert time.time() < deadline and drv.poll() is None, run
        time.sleep(0.2)
    os.killpg(drv.pid, 9)
    drv.wait()
    _, reader_err = reader.communicate(timeout=300)
    assert reader.returncode == 0, reader_err
    killed = _runs(_shoal_cmd(), "killme")["killme"]
    assert killed["display_status"] == "interrupted", killed
    assert sum(killed["counts"].values()) == 200
    # The compute node's view converges on the same counts (its listing may lag ~1 s).
    for _ in range(10):
        there = _runs([*srun, *_shoal_cmd()], "killme")["killme"]
        if there["counts"] == killed["counts"]:
            break
    assert there["counts"] == killed["counts"], (there, killed)
    out = subprocess.run([*_shoal_cmd(), "resume", str(killed["id"])], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for cmd in (_shoal_cmd(), [*srun, *_shoal_cmd()]):
        # Another node may lag the resume's last records by ~1 s (its attribute cache).
        for _ in range(10):
            done = _runs(cmd, "killme")["killme"]
            if done["status"] == "done":
                break
        assert done["status"] == "done" and done["counts"]["done"] == 200, done
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

"""`shoal run` end to end through the `shoal` command on the local backend: exit codes,
resume after SIGKILL of the driver, concurrent runs and readers, config errors, cancel,
rerun, Ctrl-C, rm. Real-engine variants are in test_runs_clusters.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

from procs import live_worker_pids


def shoal(*args: str, cwd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["shoal", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def run_id(stdout: str) -> int:
    m = re.search(r"^run (\d+) \(", stdout, re.M)
    assert m, stdout
    return int(m.group(1))


def show(rid: int, cwd: str) -> dict:
    out = shoal("show", str(rid), "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_failed_exit_codes_are_recorded_and_reported(tmp_path):
    out = shoal(
        "run", "--name", "codes", "--param", "code=0,3,0,7", "--",
        "sh", "-c", "echo out {task}; echo err {task} >&2; exit {code}",
        cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    rid = run_id(out.stdout)
    assert f"task 1 failed with exit code 3: shoal logs {rid} 1" in out.stderr
    data = show(rid, str(tmp_path))
    assert data["status"] == "failed"
    assert [t["state"] for t in data["tasks"]] == ["done", "failed", "done", "failed"]
    assert [t["exit_code"] for t in data["tasks"]] == [0, 3, 0, 7]
    assert all(t["duration"] is not None and t["duration"] >= 0 for t in data["tasks"])
    assert data["counts"] == {"pending": 0, "running": 0, "done": 2, "failed": 2, "cancelled": 0}
    task3 = data["tasks"][3]
    assert task3["params"] == {"code": 7} and task3["out_dir"].endswith(f"codes-{rid}/3")
    with open(os.path.join(task3["out_dir"], "stdout.txt")) as f:
        assert f.read() == "out 3\n"
    logs = shoal("logs", str(rid), "3", "--stderr", cwd=str(tmp_path))
    assert logs.returncode == 1 and "err 3" in logs.stdout and "out 3" not in logs.stdout
    summary = shoal("logs", "codes", cwd=str(tmp_path))
    assert "task 1 failed with exit code 3: err 1" in summary.stdout
    assert "task 3 failed with exit code 7: err 3" in summary.stdout
    table = shoal("runs", cwd=str(tmp_path)).stdout
    line = next(ln for ln in table.splitlines() if ln.startswith(f"{rid} "))
    assert "codes" in line and "failed" in line and "4/4 (2 failed)" in line
    text = shoal("show", "codes", cwd=str(tmp_path)).stdout
    assert "--param code=0,3,0,7" in text and "2 done · 2 failed" in text


def test_missing_program_fails_the_task_not_the_run(tmp_path):
    out = shoal("run", "--name", "missing", "--", "no-such-program-xyz", cwd=str(tmp_path))
    assert out.returncode == 1
    data = show(run_id(out.stdout), str(tmp_path))
    assert data["tasks"][0]["state"] == "failed" and data["tasks"][0]["exit_code"] == 127


def test_grid_and_group_reach_the_command(tmp_path):
    out = shoal(
        "run", "--name", "grid", "-p", "x=0:1:0.5", "-g", "a=1,2", "b=u,v", "--",
        "sh", "-c", "echo {x}-{a}{b} > {out}/r.txt",
        cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = show(run_id(out.stdout), str(tmp_path))
    got = []
    for t in data["tasks"]:
        with open(os.path.join(t["out_dir"], "r.txt")) as f:
            got.append(f.read().strip())
    assert got == ["0-1u", "0-2v", "0.5-1u", "0.5-2v", "1-1u", "1-2v"]


def test_unknown_placeholder_fails_before_anything_runs(tmp_path):
    out = shoal("run", "--name", "typo", "-p", "lr=1,2", "--", "echo", "{lrr}", cwd=str(tmp_path))
    assert out.returncode == 1
    assert "unknown placeholder {lrr}" in out.stderr and "{lr}" in out.stderr
    assert "typo" not in shoal("runs", cwd=str(tmp_path)).stdout
    assert not (tmp_path / "results").exists()


SLOW_APPEND = "sleep 0.4; echo {i} >> {shared}"


def test_resume_after_sigkill_of_the_driver_runs_no_task_twice(tmp_path):
    shared = tmp_path / "shared.txt"
    proc = subprocess.Popen(
        ["shoal", "run", "--name", "killme", "-w", "2", "-p", "i=0..11", "--",
         "sh", "-c", SLOW_APPEND.replace("{shared}", str(shared))],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rid = run_id(proc.stdout.readline())
    wait_for(lambda: shared.exists() and len(shared.read_text().split()) >= 3, what="3 tasks")
    data = show(rid, str(tmp_path))
    assert data["display_status"] == "running"
    os.kill(data["driver_pid"], signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    data = show(rid, str(tmp_path))
    assert data["display_status"] == "interrupted"
    assert 0 < data["counts"]["done"] < 12
    line = next(ln for ln in shoal("runs", cwd=str(tmp_path)).stdout.splitlines()
                if ln.startswith(f"{rid} "))  # fmt: skip
    assert "interrupted" in line
    # The old workers died with the driver, and so did the commands they were running.
    assert live_worker_pids(data["session_path"]) == []
    res = shoal("resume", str(rid), cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    data = show(rid, str(tmp_path))
    assert data["status"] == "done" and data["counts"]["done"] == 12
    counts = Counter(shared.read_text().split())
    assert counts == Counter({str(i): 1 for i in range(12)}), counts
    assert "no unfinished tasks" in shoal("resume", str(rid), cwd=str(tmp_path)).stdout


def test_resume_harvests_markers_of_unrecorded_tasks(tmp_path):
    """A task that finished (marker written) after the driver's last registry write is
    recorded from its marker, not run again."""
    shared = tmp_path / "shared.txt"
    out = shoal("run", "--name", "harvest", "-p", "i=0..2", "--",
                "sh", "-c", "echo {i} >> " + str(shared), cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 0
    rid = run_id(out.stdout)
    # Pretend the driver died before recording tasks 1 and 2.
    from shoal import _native

    reg = _native.Registry(os.path.join(os.environ["SHOAL_HOME"], "runs.db"))
    reg.set_states(rid, ["done"], "running")
    reg.set_status(rid, "interrupted")
    res = shoal("resume", str(rid), cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "recorded 3 tasks that had finished unrecorded" in res.stderr
    assert sorted(shared.read_text().split()) == ["0", "1", "2"]
    assert show(rid, str(tmp_path))["status"] == "done"


def test_concurrent_runs_and_readers_do_not_fail(tmp_path):
    procs = [
        subprocess.Popen(
            ["shoal", "run", "--name", f"par{k}", "-w", "1", "-p", "i=0..24", "--", "true"],
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    reads = 0
    while any(p.poll() is None for p in procs):
        for args in (("runs",), ("runs", "--json")):
            r = shoal(*args, cwd=str(tmp_path))
            assert r.returncode == 0, r.stderr
            reads += 1
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert reads >= 3
    runs = {r["name"]: r for r in json.loads(shoal("runs", "--json", cwd=str(tmp_path)).stdout)}
    for k in range(3):
        assert runs[f"par{k}"]["status"] == "done"
        assert runs[f"par{k}"]["counts"]["done"] == 25


def test_config_errors_point_at_file_and_line(tmp_path):
    (tmp_path / "shoal.toml").write_text("[local.default]\nworkers = 1\nworker = 2\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    out = shoal("run", "--", "true", cwd=str(sub))
    assert out.returncode == 1
    assert f'{tmp_path}/shoal.toml:3:1: unknown key "worker"' in out.stderr, out.stderr
    assert "hint:" in out.stderr and "workers" in out.stderr
    (tmp_path / "shoal.toml").unlink()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.shoal.slurm.big]\ncpus = 4\ntime = "forever"\n'
    )
    out = shoal("run", "-b", "slurm", "-t", "big", "--", "true", cwd=str(sub))
    assert out.returncode == 1
    assert f"{tmp_path}/pyproject.toml:6:8: " in out.stderr and "forever" in out.stderr


def test_templates_and_init(tmp_path):
    out = shoal("init", cwd=str(tmp_path))
    assert out.returncode == 0 and (tmp_path / "shoal.toml").exists()
    assert shoal("init", cwd=str(tmp_path)).returncode == 1
    text = (
        (tmp_path / "shoal.toml")
        .read_text()
        .replace(
            "[local.default]\n# workers = 4",
            "[local.default]\nworkers = 1\n\n[local.pair]\nworkers = 2",
        )
    )
    (tmp_path / "shoal.toml").write_text(text)
    out = shoal("run", "--name", "tpl", "-t", "pair", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    data = show(run_id(out.stdout), str(tmp_path))
    assert data["template"] == "pair" and data["options"] == {"workers": 2}
    assert data["run_dir"].startswith(str(tmp_path / "results"))
    out = shoal("run", "-t", "nope", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 1 and "local templates: default, pair" in out.stderr


def test_git_commit_and_dirty_flag_are_recorded(tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    out = shoal("run", "--name", "gitrun", "--", "true", cwd=str(tmp_path))
    data = show(run_id(out.stdout), str(tmp_path))
    assert data["git_commit"] == head and data["git_dirty"] is False


def _start_slow(tmp_path, name: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        ["shoal", "run", "--name", name, "-w", "2", "-p", "i=0..5", "--", "sleep", "30"],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    rid = run_id(proc.stdout.readline())
    wait_for(lambda: show(rid, str(tmp_path))["counts"]["running"] == 2, what="2 running tasks")
    return proc, rid


def test_cancel_stops_workers_and_marks_tasks_cancelled(tmp_path):
    proc, rid = _start_slow(tmp_path, "tocancel")
    out = shoal("cancel", "tocancel", cwd=str(tmp_path))
    assert out.returncode == 0 and f"cancelled run {rid}" in out.stdout, out.stdout + out.stderr
    proc.communicate(timeout=30)
    data = show(rid, str(tmp_path))
    assert data["status"] == "cancelled"
    assert data["counts"]["cancelled"] == 6 and data["counts"]["done"] == 0
    assert live_worker_pids(data["session_path"]) == []
    assert "already cancelled" in shoal("cancel", str(rid), cwd=str(tmp_path)).stdout


def test_ctrl_c_leaves_no_workers_and_run_can_resume(tmp_path):
    proc, rid = _start_slow(tmp_path, "ctrlc")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    data = show(rid, str(tmp_path))
    assert data["display_status"] == "interrupted" and data["counts"]["pending"] == 6
    assert live_worker_pids(data["session_path"]) == []
    out = shoal("rm", str(rid), cwd=str(tmp_path))
    assert out.returncode == 0 and not os.path.exists(data["run_dir"])
    assert shoal("show", str(rid), cwd=str(tmp_path)).returncode == 1


def test_rerun_failed_makes_a_new_attempt_and_keeps_history(tmp_path):
    out = shoal("run", "--name", "flaky", "-p", "x=0..2", "--",
                "sh", "-c", "echo try; test {x} != 1 || test -e ok", cwd=str(tmp_path))  # fmt: skip
    rid = run_id(out.stdout)
    assert out.returncode == 1
    assert shoal("rerun", str(rid), cwd=str(tmp_path)).returncode == 1  # which tasks?
    (tmp_path / "ok").write_text("")
    out = shoal("rerun", str(rid), "--failed", cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rerunning 1 failed tasks" in out.stdout
    data = show(rid, str(tmp_path))
    assert data["status"] == "done"
    assert [t["attempt"] for t in data["tasks"]] == [1, 2, 1]
    assert os.path.exists(os.path.join(data["tasks"][1]["out_dir"], ".attempt-1", "stdout.txt"))


def test_logs_and_cancel_still_take_session_ids(tmp_path):
    out = shoal("run", "--name", "sess", "--", "echo", "hi", cwd=str(tmp_path))
    data = show(run_id(out.stdout), str(tmp_path))
    logs = shoal("logs", data["session"], cwd=str(tmp_path))
    assert logs.returncode == 0 and f"session {data['session']}" in logs.stdout
    wl = shoal("logs", str(data["id"]), "0", "--worker-log", cwd=str(tmp_path))
    assert wl.returncode == 0 and "--- w0001" in wl.stdout, wl.stdout


def test_import_qanat(tmp_path):
    (tmp_path / ".qanat").mkdir()
    (tmp_path / ".qanat" / "config.yaml").write_text(
        "htcondor:\n  default:\n    request_cpus: 2\n    request_memory: 1GB\n"
        "    +WishedAcctGroup: group_x\nslurm:\n  default:\n    --cpus-per-task: 2\n"
        "    --time: 1-00:00:00\n"
    )
    out = shoal("import-qanat", "-o", "shoal.toml", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "shoal.toml").read_text()
    assert "[slurm.default]" in text and "cpus = 2" in text and "WishedAcctGroup" in text
    dry = shoal("run", "-b", "slurm", "--dry-run", "--", "true", cwd=str(tmp_path))
    assert dry.returncode == 0 and "with template default" in dry.stdout


def test_driver_python_comes_from_the_entry_point(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_PYTHON"}
    env["PATH"] = "/nonexistent"  # no python3 on PATH: only SHOAL_PYTHON can start the driver
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "run", "--name", "ep", "--", "/bin/true"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr

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

import pytest

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
        "run", "--name", "grid", "-P", "x=0:1:0.5", "-g", "a=1,2", "b=u,v", "--",
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
    out = shoal("run", "--name", "typo", "-P", "lr=1,2", "--", "echo", "{lrr}", cwd=str(tmp_path))
    assert out.returncode == 1
    assert "unknown placeholder {lrr}" in out.stderr and "{lr}" in out.stderr
    assert "typo" not in shoal("runs", cwd=str(tmp_path)).stdout
    assert not (tmp_path / "results").exists()


SLOW_APPEND = "sleep 0.4; echo {i} >> {shared}"


def test_resume_after_sigkill_of_the_driver_runs_no_task_twice(tmp_path):
    shared = tmp_path / "shared.txt"
    proc = subprocess.Popen(
        ["shoal", "run", "--name", "killme", "-j", "2", "-P", "i=0..11", "--",
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
    out = shoal("run", "--name", "harvest", "-P", "i=0..2", "--",
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
            ["shoal", "run", "--name", f"par{k}", "-j", "1", "-P", "i=0..24", "--", "true"],
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
    out = shoal("run", "--backend", "slurm", "-T", "big", "--", "true", cwd=str(sub))
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
    out = shoal("run", "--name", "tpl", "-T", "pair", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    data = show(run_id(out.stdout), str(tmp_path))
    assert data["template"] == "pair" and data["options"] == {"workers": 2}
    assert data["run_dir"].startswith(str(tmp_path / "results"))
    out = shoal("run", "-T", "nope", "--", "true", cwd=str(tmp_path))
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
        ["shoal", "run", "--name", name, "-j", "2", "-P", "i=0..5", "--", "sleep", "30"],
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
    out = shoal("rm", str(rid), "--yes", cwd=str(tmp_path))
    assert out.returncode == 0 and not os.path.exists(data["run_dir"])
    assert shoal("show", str(rid), cwd=str(tmp_path)).returncode == 1


def test_rerun_failed_makes_a_new_attempt_and_keeps_history(tmp_path):
    out = shoal("run", "--name", "flaky", "-P", "x=0..2", "--",
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
    dry = shoal("run", "--backend", "slurm", "--dry-run", "--", "true", cwd=str(tmp_path))
    assert dry.returncode == 0 and "with template default" in dry.stdout


def test_import_qanat_carries_experiments_datasets_and_actions(tmp_path):
    import sqlite3

    q = tmp_path / ".qanat"
    q.mkdir()
    (q / "config.yaml").write_text("result_dir: results\n")
    # The tables (and the columns shoal reads) of Qanat's database.
    with sqlite3.connect(q / "database.db") as db:
        db.executescript(
            """
            CREATE TABLE experiments (id INTEGER PRIMARY KEY, path VARCHAR, name VARCHAR,
                description VARCHAR, executable VARCHAR, executable_command VARCHAR);
            CREATE TABLE datasets (id INTEGER PRIMARY KEY, path VARCHAR, name VARCHAR,
                description VARCHAR);
            CREATE TABLE tags (id INTEGER PRIMARY KEY, name VARCHAR, description VARCHAR);
            CREATE TABLE actions (id INTEGER PRIMARY KEY, experiment_id INTEGER, name VARCHAR,
                executable VARCHAR, executable_command VARCHAR, description VARCHAR);
            CREATE TABLE datasets_experiments (id INTEGER PRIMARY KEY, experiment_id INTEGER,
                dataset_id INTEGER);
            CREATE TABLE experiments_tags (id INTEGER PRIMARY KEY, experiment_id INTEGER,
                tag_id INTEGER);
            CREATE TABLE datasets_tags (id INTEGER PRIMARY KEY, dataset_id INTEGER,
                tag_id INTEGER);
            INSERT INTO experiments VALUES (1, 'exp', 'histogram', 'Histogram', 'exp/h.sh', 'sh');
            INSERT INTO datasets VALUES (1, 'data', 'numbers', 'some numbers');
            INSERT INTO datasets_experiments VALUES (1, 1, 1);
            INSERT INTO tags VALUES (1, 'stats', '');
            INSERT INTO experiments_tags VALUES (1, 1, 1);
            INSERT INTO actions VALUES (1, 1, 'count', 'exp/count.sh', 'sh', 'count outputs');
            """
        )
    out = shoal("import-qanat", ".qanat", "-o", "shoal.toml", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    (tmp_path / "exp").mkdir()
    (tmp_path / "data").mkdir()
    # Qanat's scripts take --storage_path DIR and their parameters as flags.
    (tmp_path / "exp" / "h.sh").write_text('echo "$3=$4" > "$2/r.txt"\n')
    (tmp_path / "exp" / "count.sh").write_text('ls "$2" | grep -c "^[0-9]"\n')
    run = shoal("run", "histogram", "-P", "nbins=10,20", cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    rid = run_id(run.stdout)
    data = show(rid, str(tmp_path))
    got = [open(os.path.join(t["out_dir"], "r.txt")).read() for t in data["tasks"]]
    assert got == ["--nbins=10\n", "--nbins=20\n"] and data["tags"] == ["stats"]
    act = shoal("action", str(rid), "count", cwd=str(tmp_path))
    assert act.returncode == 0 and act.stdout.splitlines()[-1] == "2", act.stdout + act.stderr


def test_driver_python_comes_from_the_entry_point(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_PYTHON"}
    env["PATH"] = "/nonexistent"  # no python3 on PATH: only SHOAL_PYTHON can start the driver
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "run", "--name", "ep", "--", "/bin/true"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


# --- `shoal run` as a daily tool -----------------------------------------------------------


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    """A registry of this test's own, for assertions about every run listed."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))


def test_old_short_flags_are_refused_with_the_new_ones(tmp_path, own_home):
    out = shoal("run", "-p", "debug", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 1
    assert "-P/--param" in out.stderr and "--opt partition=" in out.stderr, out.stderr
    out = shoal("run", "-t", "1h", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 1 and "-T/--template" in out.stderr, out.stderr
    assert "no runs" in shoal("runs", cwd=str(tmp_path)).stdout


def test_opt_overrides_the_template_and_is_checked_like_it(tmp_path, own_home):
    (tmp_path / "shoal.toml").write_text(
        '[local.default]\nworkers = 1\n\n[slurm.default]\ncpus = 1\ntime = "1h"\n'
    )
    out = shoal("run", "--name", "opt", "-X", "workers=2", "-X", "idle_timeout=5", "--",
                "true", cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = show(run_id(out.stdout), str(tmp_path))
    assert data["options"] == {"workers": 2, "idle_timeout": 5}
    assert data["overrides"] == {"workers": 2, "idle_timeout": 5}
    assert data["launches"][0]["options_from"].endswith("+ idle_timeout=5 workers=2")
    # Bad keys and values fail before anything is registered, with the template's rules.
    for opt, needle in [
        ("cpu=2", 'slurm has no option "cpu"'),
        ("cpus=0", "for cpus: must be a whole number >= 1"),
        ("time=forever", "forever"),
    ]:
        bad = shoal("run", "--backend", "slurm", "-X", opt, "--", "true", cwd=str(tmp_path))
        assert bad.returncode == 1 and needle in bad.stderr, (opt, bad.stderr)
        assert "hint:" in bad.stderr
    dry = shoal("run", "--backend", "slurm", "-X", "partition=debug", "-X", "time=10m",
                "--dry-run", "--", "true", cwd=str(tmp_path))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert '"partition":"debug"' in dry.stdout and '"time":"10m"' in dry.stdout
    assert [r["name"] for r in json.loads(shoal("runs", "--json", cwd=str(tmp_path)).stdout)] == [
        "opt"
    ]


def test_a_bare_size_from_a_template_or_opt_is_warned_about_once(tmp_path, own_home):
    (tmp_path / "shoal.toml").write_text("[slurm.default]\ncpus = 1\nmemory = 4\n")

    def dry(*opts: str) -> str:
        out = shoal("run", "--backend", "slurm", *opts, "--dry-run", "--", "true",
                    cwd=str(tmp_path))  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stderr

    # The registry's words, as the Python API gives them (test_errors.py), said once.
    said = 'warning: memory=4 is read as 4 MB on slurm; write memory="4G" for gigabytes'
    assert dry().count(said) == 1
    err = dry("-X", "memory=8")  # --opt overrides the template: only its value is judged
    assert "memory=8 is read as 8 MB on slurm" in err and "memory=4" not in err, err
    assert "warning" not in dry("-X", "memory=8G")


def test_params_file_rows_combine_with_the_grid(tmp_path):
    (tmp_path / "rows.csv").write_text("lr,opt\n0.1,adam\n0.01,sgd\n")
    (tmp_path / "rows.yaml").write_text("- {lr: 0.1, opt: adam}\n- {lr: 0.01, opt: sgd}\n")
    for rows in ("rows.csv", "rows.yaml"):
        out = shoal("run", "--name", "file", "-f", rows, "-P", "seed=0..1", "--",
                    "sh", "-c", "echo {lr}-{opt}-{seed} > {out}/r.txt",
                    cwd=str(tmp_path))  # fmt: skip
        assert out.returncode == 0, out.stderr
        data = show(run_id(out.stdout), str(tmp_path))
        got = [open(os.path.join(t["out_dir"], "r.txt")).read().strip() for t in data["tasks"]]
        assert got == ["0.1-adam-0", "0.1-adam-1", "0.01-sgd-0", "0.01-sgd-1"], rows
    assert "--params-file" in shoal("show", "file", cwd=str(tmp_path)).stdout
    (tmp_path / "bad.json").write_text('[{"lr": 1}, {"opt": "x"}]')
    out = shoal("run", "-f", "bad.json", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 1 and "row 2 has no lr" in out.stderr, out.stderr


METRICS = """import json, os, sys
lr = float(sys.argv[1])
json.dump({"acc": round(1 - lr, 3), "loss": {"val": lr * 2}},
          open(os.path.join(sys.argv[2], "metrics.json"), "w"))
sys.exit(1 if lr > 1 else 0)
"""


def test_results_join_params_with_metrics(tmp_path):
    (tmp_path / "train.py").write_text(METRICS)
    out = shoal("run", "--name", "res", "-P", "lr=0.1,0.5,2", "-P", "opt=sgd", "--",
                sys.executable, "train.py", "{lr}", "{out}", cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 1, out.stderr  # lr=2 exits 1
    rid = run_id(out.stdout)
    csv = shoal("results", str(rid), "--format", "csv", cwd=str(tmp_path))
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines() == [
        "task,state,lr,opt,acc,loss.val",
        "0,done,0.1,sgd,0.9,0.2",
        "1,done,0.5,sgd,0.5,1.0",
        "2,failed,2,sgd,-1.0,4.0",
    ]
    records = json.loads(shoal("results", "res", "--format", "json", cwd=str(tmp_path)).stdout)
    assert records[1] == {"task": 1, "state": "done", "lr": 0.5, "opt": "sgd", "acc": 0.5,
                          "loss.val": 1.0}  # fmt: skip
    table = shoal("results", "res", cwd=str(tmp_path)).stdout.splitlines()
    assert table[0].split() == ["task", "state", "lr", "opt", "acc", "loss.val"]
    other = shoal("run", "--name", "res2", "-P", "lr=0.3", "--",
                  sys.executable, "train.py", "{lr}", "{out}", cwd=str(tmp_path))  # fmt: skip
    both = shoal("results", str(rid), str(run_id(other.stdout)), "--format", "csv",
                 cwd=str(tmp_path))  # fmt: skip
    lines = both.stdout.splitlines()
    assert lines[0].startswith("run,task,state,lr") and len(lines) == 5, both.stdout
    nothing = shoal("results", "res", "--metrics", "none.json", cwd=str(tmp_path))
    assert "no task wrote none.json" in nothing.stderr


def test_tags_notes_and_filters(tmp_path, own_home):
    a = run_id(shoal("run", "--name", "iris-a", "--tag", "baseline,v1", "--note", "first try",
                     "--", "true", cwd=str(tmp_path)).stdout)  # fmt: skip
    b = run_id(shoal("run", "--name", "mnist", "--", "false", cwd=str(tmp_path)).stdout)
    assert shoal("tag", str(b), "baseline", cwd=str(tmp_path)).returncode == 0
    assert "v1" not in shoal("tag", "iris-a", "v1", "--remove", cwd=str(tmp_path)).stdout
    shoal("note", str(b), "diverged", "early", cwd=str(tmp_path))
    assert shoal("note", str(b), cwd=str(tmp_path)).stdout == "diverged early\n"
    data = show(a, str(tmp_path))
    assert data["tags"] == ["baseline"] and data["note"] == "first try"

    def names(*args: str) -> list[str]:
        out = shoal("runs", "--json", *args, cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr
        return [r["name"] for r in json.loads(out.stdout)]

    assert names("--tag", "baseline") == ["iris-a", "mnist"]
    assert names("--name", "iris*") == ["iris-a"]
    assert names("--status", "failed") == ["mnist"]
    assert names("--since", "today", "--status", "done") == ["iris-a"]
    assert names("--until", "1d") == []
    assert "no runs match" in shoal("runs", "--tag", "nope", cwd=str(tmp_path)).stdout
    bad = shoal("runs", "--since", "last tuesday", cwd=str(tmp_path))
    assert bad.returncode == 1 and "not a date or an age" in bad.stderr
    line = next(ln for ln in shoal("runs", cwd=str(tmp_path)).stdout.splitlines()
                if ln.startswith(f"{b} "))  # fmt: skip
    assert line.rstrip().endswith("baseline")


def test_rm_takes_several_runs_and_asks_before_deleting_results(tmp_path, own_home):
    ids = [run_id(shoal("run", "--name", f"rm{k}", "--", "true", cwd=str(tmp_path)).stdout)
           for k in range(3)]  # fmt: skip
    dirs = [show(i, str(tmp_path))["run_dir"] for i in ids]
    # No terminal to ask on: refused, nothing removed.
    out = subprocess.run(["shoal", "rm", str(ids[0]), str(ids[1])], cwd=str(tmp_path),
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 1 and "--yes" in out.stderr, out.stderr
    assert all(os.path.isdir(d) for d in dirs)
    out = shoal("rm", f"{ids[0]}..{ids[1]}", "--yes", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(dirs[0]) and not os.path.exists(dirs[1])
    out = shoal("rm", "rm2", "--keep-files", cwd=str(tmp_path))  # keeps files: no question
    assert out.returncode == 0 and os.path.isdir(dirs[2])
    assert "no runs" in shoal("runs", cwd=str(tmp_path)).stdout


EXPERIMENT_TOML = """
[datasets]
iris = "data/iris.csv"

[experiments.hist]
description = "histograms of a dataset"
tags = ["stats"]
script = "exp/hist.py"
interpreter = "{python}"
args = ["--data", "{{dataset:iris}}", "--out", "{{out}}"]
datasets = ["iris"]

[experiments.hist.actions.plot]
description = "one line per task"
command = ["{python}", "exp/plot.py", "{{results}}", "{{run_dir}}/plot.txt"]
"""

HIST = """import argparse, json, os
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--out"); p.add_argument("--bins", type=int)
a = p.parse_args()
rows = open(a.data).read().split()
json.dump({"bins": a.bins, "rows": len(rows), "env": os.environ["SHOAL_DATASET_IRIS"] == a.data},
          open(os.path.join(a.out, "metrics.json"), "w"))
"""

PLOT = """import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
open(sys.argv[2], "w").write("".join(f"{r['bins']}:{r['rows']}:{r['env']}\\n" for r in rows))
"""


def test_experiments_datasets_and_actions(tmp_path):
    (tmp_path / "shoal.toml").write_text(EXPERIMENT_TOML.format(python=sys.executable))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "iris.csv").write_text("a\nb\nc\n")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "hist.py").write_text(HIST)
    (tmp_path / "exp" / "plot.py").write_text(PLOT)
    sub = tmp_path / "exp"  # started from a subdirectory: paths come from shoal.toml
    out = shoal("run", "hist", "-P", "bins=5,10", cwd=str(sub))
    assert out.returncode == 0, out.stdout + out.stderr
    rid = run_id(out.stdout)
    data = show(rid, str(sub))
    assert data["name"] == "hist" and data["experiment"] == "hist" and data["tags"] == ["stats"]
    assert data["datasets"][0]["path"] == str(tmp_path / "data" / "iris.csv")
    # The parameter no argument names is passed as a flag, Qanat's way.
    assert data["tasks"][0]["argv"][-2:] == ["--bins", "5"]
    assert shoal("action", str(rid), cwd=str(sub)).stdout.startswith("ACTION")
    act = shoal("action", str(rid), "plot", cwd=str(sub))
    assert act.returncode == 0, act.stdout + act.stderr
    assert (tmp_path / "results" / f"hist-{rid}" / "plot.txt").read_text() == (
        "5:3:true\n10:3:true\n"
    )
    listing = shoal("experiments", cwd=str(sub)).stdout
    line = next(ln for ln in listing.splitlines() if ln.startswith("hist "))
    assert "exp/hist.py" in line and "stats" in line and "plot" in line and " 1 " in line
    assert "iris" in listing and "data/iris.csv" in listing
    missing = shoal("action", str(rid), "nope", cwd=str(sub))
    assert missing.returncode == 1 and "its actions: plot" in missing.stderr
    unknown = shoal("run", "nope", cwd=str(sub))
    assert unknown.returncode == 1 and "experiments: hist" in unknown.stderr


def test_detach_survives_its_shell_and_logs_follow_shows_it(tmp_path):
    out = shoal("run", "--name", "bg", "--detach", "-P", "i=0..3", "--",
                "sh", "-c", "sleep 0.5; echo task {i}", cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "runs in the background" in out.stdout and "shoal logs --follow" in out.stdout
    rid = run_id(out.stdout)
    data = show(rid, str(tmp_path))
    # Its own session, so the terminal's hang-up at logout never reaches it.
    pid = data["driver_pid"]
    assert os.getsid(pid) == pid != os.getsid(0)
    follow = shoal("logs", "--follow", str(rid), cwd=str(tmp_path), timeout=60)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert f"run {rid}: 4 tasks on" in follow.stdout
    assert f"run {rid} done: 4/4" in follow.stdout
    assert show(rid, str(tmp_path))["launches"][0]["detached"] is True
    task = shoal("logs", "-f", str(rid), "2", cwd=str(tmp_path))
    assert task.returncode == 0 and "task 2\n" in task.stdout and "task 2 done" in task.stdout


def test_progress_line_on_a_terminal(tmp_path):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["shoal", "run", "--name", "tty", "-j", "2", "-P", "i=0..5", "--", "sleep", "0.4"],
        cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=slave, text=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the pty closes when the last writer exits
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert re.search(r"\d/6 done · \d running · [\d.]+s · ETA ", text), text
    assert "\x1b[2K" in text  # redrawn in place, and cleared at the end
    # What the terminal shows: each line as left after its last erase.
    shown = [seg.split("\x1b[2K")[-1].strip("\r") for seg in text.split("\n")]
    shown = [ln for ln in shown if ln.strip()]
    assert shown[-1].startswith("run ") and " done: 6 done" in shown[-1], shown[-3:]
    assert not any("ETA" in ln for ln in shown), shown  # progress lines never stay behind


def test_failed_preflight_says_how_to_retry_and_resume_rereads_the_template(tmp_path):
    (tmp_path / "shoal.toml").write_text('[local.default]\npython_path = "/no/such/python"\n')
    out = shoal("run", "--name", "pre", "-P", "i=0..2", "--", "true", cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr
    rid = run_id(out.stdout)
    assert "failed before any task ran" in out.stderr
    assert f"template default of {tmp_path}/shoal.toml" in out.stderr
    assert f"`shoal resume {rid}`: it re-reads the template" in out.stderr
    data = show(rid, str(tmp_path))
    assert data["status"] == "failed" and data["counts"]["pending"] == 3
    # The hint is true: fix shoal.toml, resume, and the new template is used.
    (tmp_path / "shoal.toml").write_text("[local.default]\nworkers = 2\n")
    res = shoal("resume", str(rid), cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "as it is now" in res.stdout and "python_path removed" in res.stdout
    data = show(rid, str(tmp_path))
    assert data["status"] == "done" and data["options"] == {"workers": 2}
    assert [lch["kind"] for lch in data["launches"]] == ["run", "resume"]


def test_a_relaunch_without_its_config_says_which_options_it_can_reuse(tmp_path):
    (tmp_path / "shoal.toml").write_text("[local.default]\nworkers = 1\n")
    out = shoal("run", "--name", "noconf", "-P", "x=0..1", "--", "test", "{x}", "=", "0",
                cwd=str(tmp_path))  # fmt: skip
    rid = run_id(out.stdout)
    (tmp_path / "shoal.toml").unlink()
    gone = shoal("rerun", str(rid), "--failed", cwd=str(tmp_path))
    assert gone.returncode == 1 and "shoal.toml is gone" in gone.stderr, gone.stderr
    assert '--recorded-options to use what launch 1 used: {"workers":1}' in gone.stderr
    res = shoal("rerun", str(rid), "--failed", "--recorded-options", "-X", "idle_timeout=9",
                cwd=str(tmp_path))  # fmt: skip
    assert "options: the options recorded by launch 1 + idle_timeout=9" in res.stdout, res.stdout
    assert show(rid, str(tmp_path))["launches"][1]["options"] == {"workers": 1, "idle_timeout": 9}


def _git(cwd, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def test_rerun_records_the_commit_of_each_attempt(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "job.sh").write_text('test "$1" != 1\n')
    _git(tmp_path, "add", "job.sh")
    _git(tmp_path, "commit", "-qm", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")
    out = shoal("run", "--name", "git", "-P", "x=0..2", "--", "sh", "job.sh", "{x}",
                cwd=str(tmp_path))  # fmt: skip
    rid = run_id(out.stdout)
    assert out.returncode == 1
    (tmp_path / "job.sh").write_text("true\n")
    _git(tmp_path, "commit", "-qam", "fix")
    second = _git(tmp_path, "rev-parse", "HEAD")
    res = shoal("rerun", str(rid), "--failed", cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    data = show(rid, str(tmp_path))
    assert [(lch["kind"], lch["git_commit"]) for lch in data["launches"]] == [
        ("run", first),
        ("rerun", second),
    ]
    assert [t["launch"] for t in data["tasks"]] == [1, 2, 1]
    assert f"launch 2 (rerun at {second[:12]})" in shoal("logs", str(rid), "1",
                                                         cwd=str(tmp_path)).stdout  # fmt: skip
    assert "launches:" in shoal("show", str(rid), cwd=str(tmp_path)).stdout


def test_worker_log_is_found_in_the_session_that_ran_the_task(tmp_path):
    out = shoal("run", "--name", "wl", "-P", "x=0..1", "--",
                "sh", "-c", "test {x} = 0 || test -e ok", cwd=str(tmp_path))  # fmt: skip
    rid = run_id(out.stdout)
    first = show(rid, str(tmp_path))["session"]
    (tmp_path / "ok").write_text("")
    shoal("rerun", str(rid), "--failed", cwd=str(tmp_path))
    data = show(rid, str(tmp_path))
    assert data["session"] != first and data["tasks"][0]["session"] == first
    wl = shoal("logs", str(rid), "0", "--worker-log", cwd=str(tmp_path))
    assert wl.returncode == 0, wl.stdout
    assert f"session {first} · worker w" in wl.stdout and " out ---" in wl.stdout, wl.stdout


def test_logs_piped_into_head_ends_quietly(tmp_path):
    out = shoal("run", "--name", "loud", "--", sys.executable, "-c",
                "print('x' * 80 + '\\n' * 0, end=''); [print(i) for i in range(200000)]",
                cwd=str(tmp_path))  # fmt: skip
    rid = run_id(out.stdout)
    proc = subprocess.Popen(["shoal", "logs", str(rid), "0"], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline().startswith(b"task 0")
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0, err
    assert "Broken pipe" not in err and "panicked" not in err and err == "", err


def test_an_ambiguous_session_prefix_is_refused_with_the_candidates(tmp_path):
    sessions = [
        show(run_id(shoal("run", "--name", f"amb{k}", "--", "true", cwd=str(tmp_path)).stdout),
             str(tmp_path))["session"]
        for k in range(2)
    ]  # fmt: skip
    a, b = sessions
    prefix = a[: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))]
    assert len(prefix) >= 8, sessions
    out = shoal("logs", prefix, cwd=str(tmp_path))
    assert out.returncode == 1
    assert sessions[0] in out.stderr and sessions[1] in out.stderr, out.stderr
    assert "give more of the session id" in out.stderr


NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "fuseblk", "fuse", "fuse.glusterfs", "beegfs",
              "cifs", "smb2", "ceph"}  # fmt: skip


def _journal(db: str) -> str:
    import sqlite3

    with sqlite3.connect(db) as c:
        return c.execute("PRAGMA journal_mode").fetchone()[0]


def test_registry_journal_follows_its_filesystem(tmp_path):
    home = os.environ["SHOAL_HOME"]
    fstype = subprocess.run(["stat", "-f", "-c", "%T", home], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    shoal("run", "--name", "fs", "--", "true", cwd=str(tmp_path))
    want = "delete" if fstype in NETWORK_FS else "wal"
    assert _journal(os.path.join(home, "runs.db")) == want, fstype
    # SHOAL_REGISTRY_JOURNAL chooses for a registry another host reaches over the network.
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home"), "SHOAL_REGISTRY_JOURNAL": "delete"}
    out = subprocess.run(["shoal", "run", "--name", "nfs", "--", "true"], cwd=str(tmp_path),
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _journal(str(tmp_path / "home" / "runs.db")) == "delete"
    env["SHOAL_REGISTRY_JOURNAL"] = "fast"
    out = subprocess.run(["shoal", "runs"], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 1 and "not a journal mode" in out.stderr


def test_per_task_resources_take_the_tasks_parameters(tmp_path):
    """`-R cpus={threads}`: each task asks for as many CPUs as its parameter says; tasks that
    ask alike share a worker shape (docs/runs.md). On the local backend `cpus` is a label,
    which the session's journal shows next to each worker."""
    dry = shoal(
        "run", "--dry-run", "-P", "threads=1,2", "-R", "cpus={threads}", "--", "true",
        cwd=str(tmp_path),
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "0: true  [cpus=1]" in dry.stdout and "1: true  [cpus=2]" in dry.stdout
    bad = shoal("run", "-P", "threads=1,0", "-R", "cpus={threads}", "--", "true", cwd=str(tmp_path))
    assert bad.returncode != 0
    assert "task 1 asks for resources cpus=0" in bad.stderr, bad.stderr
    typo = shoal("run", "-P", "threads=1", "-R", "cpus={thread}", "--", "true", cwd=str(tmp_path))
    assert "unknown placeholder {thread} in --resources cpus=" in typo.stderr, typo.stderr
    assert "run " not in typo.stdout, "nothing registered"
    out = shoal(
        "run", "--name", "shaped", "-j", "2", "-P", "threads=1,2,2,1", "-R", "cpus={threads}",
        "--", "sh", "-c", "echo {threads}", cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = show(run_id(out.stdout), str(tmp_path))
    session = shoal("show", data["session"], "--json", cwd=str(tmp_path))
    assert session.returncode == 0, session.stderr
    label = {str(w["pid"]): w["job"] for w in json.loads(session.stdout)["workers"]}
    for t in data["tasks"]:
        assert t["state"] == "done", t
        assert label[t["worker"]] == f"(cpus={t['params']['threads']})", (t, label)
    # (the pool's own local workers start warm, as always, and stay idle here)
    assert set(label.values()) - {None} == {"(cpus=1)", "(cpus=2)"}, label

"""shoal.Pool on the local backend: the multiprocessing.Pool API and its semantics."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.pool import MaybeEncodingError

import pytest

import shoal
from helpers import (
    add,
    fail_on,
    init_state,
    lineage,
    pid,
    read_state,
    rendezvous,
    returns_unpicklable,
    sleep_return,
    square,
    start_sleeper,
    surroundings,
)
from procs import live_worker_pids


@pytest.fixture(scope="module")
def pool():
    with shoal.Pool(2) as p:
        yield p


def test_map_matches_builtin(pool):
    assert pool.map(square, range(1000)) == [x * x for x in range(1000)]
    assert pool.map(square, []) == []


def test_lambda_and_closure(pool):
    k = 7
    assert pool.map(lambda x: x + k, range(5)) == [7, 8, 9, 10, 11]


def test_apply_and_apply_async(pool):
    assert pool.apply(add, (2, 3)) == 5
    assert pool.apply(add, (), {"a": 1, "b": 2}) == 3
    r = pool.apply_async(divmod, (7, 2))
    assert r.get(timeout=10) == (3, 1)
    assert r.ready() and r.successful()


def test_async_result_timeout_and_not_ready(pool):
    r = pool.apply_async(sleep_return, (1.0,))
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    with pytest.raises(ValueError, match="not ready"):
        r.successful()
    r.wait(10)
    assert r.get() == 1.0


def test_imap_ordered_and_unordered(pool):
    assert list(pool.imap(square, range(50))) == [x * x for x in range(50)]
    assert list(pool.imap(square, iter(range(50)), chunksize=7)) == [x * x for x in range(50)]
    assert sorted(pool.imap_unordered(square, range(50), chunksize=8)) == sorted(
        x * x for x in range(50)
    )
    it = pool.imap(sleep_return, [0.5])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.01)
    assert it.next(timeout=10) == 0.5
    with pytest.raises(StopIteration):
        next(it)


def test_imap_of_generator_that_raises(pool):
    def gen():
        yield 1
        yield 2
        raise RuntimeError("source broke")

    it = pool.imap(square, gen())
    assert next(it) == 1
    assert next(it) == 4
    with pytest.raises(RuntimeError, match="source broke"):
        next(it)


def test_starmap_and_async_callbacks(pool):
    assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    got: list = []
    errors: list = []
    r = pool.starmap_async(add, [(1, 1), (2, 2)], callback=got.append)
    assert r.get(10) == [2, 4]
    r.wait()
    assert got == [[2, 4]]
    r = pool.map_async(fail_on, range(6), error_callback=errors.append)
    with pytest.raises(ValueError, match="bad value 3"):
        r.get(10)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert not r.successful()


def test_apply_async_callbacks(pool):
    done = threading.Event()
    got: list = []
    pool.apply_async(square, (9,), callback=lambda v: (got.append(v), done.set()))
    assert done.wait(10)
    assert got == [81]


def test_chunksize_validation(pool):
    with pytest.raises(ValueError, match="Chunksize"):
        pool.map(square, range(3), chunksize=0)


def test_task_exception_is_same_type_with_remote_traceback(pool):
    with pytest.raises(ValueError) as info:
        pool.map(fail_on, range(10), chunksize=2)
    exc = info.value
    assert str(exc) == "bad value 3"
    cause = exc.__cause__
    assert isinstance(cause, shoal.RemoteTraceback)
    text = str(cause)
    assert "fail_on" in text and 'raise ValueError(f"bad value {x}")' in text
    # Task 3 of this map (CALL:3 when the module's pool ran other calls first).
    assert re.search(r"task (\d+:)?3 failed", text), text
    assert "about to fail on 3" in text  # the task's own stderr tail


def test_other_tasks_unaffected_by_one_failure(pool):
    results = [pool.apply_async(fail_on, (i,)) for i in range(6)]
    values = []
    for r in results:
        r.wait(10)
        values.append(r.get() if r.successful() else "err")
    assert values == [0, 1, 2, "err", 4, 5]


def test_system_exit_in_task_fails_only_that_task(pool):
    from helpers import exit_task

    with pytest.raises(SystemExit):
        pool.apply(exit_task, (3,))
    assert pool.apply(square, (4,)) == 16


def test_unpicklable_result_names_the_problem(pool):
    # multiprocessing's MaybeEncodingError, carrying the pickler's own exception.
    with pytest.raises(MaybeEncodingError, match=r"\(a Unpicklable\) cannot be pickled") as info:
        pool.apply(returns_unpicklable)
    assert isinstance(info.value, shoal.PicklingError)
    assert isinstance(info.value.original, TypeError)
    assert "refuses to be pickled" in info.value.exc
    assert pool.map(square, [2]) == [4]  # the worker went on


def test_initializer_and_initargs():
    with shoal.Pool(2, initializer=init_state, initargs=("ready",)) as p:
        assert p.map(read_state, range(4)) == ["ready"] * 4


def test_maxtasksperchild_replaces_workers():
    with shoal.Pool(2, maxtasksperchild=1) as p:
        pids = p.map(pid, range(6))
    assert len(set(pids)) == 6


def test_workers_really_run_in_parallel(tmp_path):
    with shoal.Pool(2) as p:
        pids = set(p.starmap(rendezvous, [(str(tmp_path), 2)] * 2, chunksize=1))
    assert len(pids) == 2 and os.getpid() not in pids


def test_close_join_terminate_semantics():
    p = shoal.Pool(2)
    with pytest.raises(ValueError, match="still running"):
        p.join()
    r = p.map_async(square, range(10))
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(square, (1,))
    p.join()
    assert r.get(0) == [x * x for x in range(10)]
    p.terminate()  # idempotent after join
    with pytest.raises(ValueError):
        with p:
            pass


def test_invalid_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        shoal.Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        shoal.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        shoal.Pool(1, initializer=3)  # type: ignore[arg-type]


def test_pool_repr_and_pickling(pool):
    assert "backend=local" in repr(pool) and pool.session in repr(pool)
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_many_small_tasks_make_few_chunks(sessions_dir):
    with shoal.Pool(2, keep_work_dir=True) as p:
        assert p.map(square, range(20_000)) == [x * x for x in range(20_000)]
        session = p.session
    # Guided chunks (see the next test): 17 here, where multiprocessing's rule makes 8.
    assert 1 <= len(_chunks_delivered(sessions_dir, session)) <= 20


def test_map_chunks_shrink_toward_the_end_so_workers_finish_together(pool):
    driver = pool._driver  # the pool has 2 workers
    bounds = list(driver.chunk_bounds(1000, None))
    sizes = [hi - lo for lo, hi in bounds]
    assert [lo for lo, _ in bounds] == [0] + [hi for _, hi in bounds[:-1]], "contiguous"
    assert bounds[-1][1] == 1000 and sizes == sorted(sizes, reverse=True), sizes
    mp = driver.default_chunksize(1000)  # multiprocessing's size: 125
    assert sizes[0] == 250 and max(sizes[-3:]) <= -(-mp // 16), sizes
    assert len(sizes) <= 2 * -(-1000 // mp), "a few more chunks than multiprocessing's rule"
    # An explicit chunksize is honoured exactly.
    assert [hi - lo for lo, hi in driver.chunk_bounds(10, 4)] == [4, 4, 2]


def test_guided_chunks_respect_maxtasksperchild():
    with shoal.Pool(2, maxtasksperchild=7) as p:
        sizes = [hi - lo for lo, hi in p._driver.chunk_bounds(1000, None)]
        assert max(sizes) == 7 and sum(sizes) == 1000
        assert p.map(square, range(50)) == [x * x for x in range(50)]


def test_apply_async_batches_into_few_chunks(sessions_dir):
    with shoal.Pool(2, keep_work_dir=True) as p:
        results = [p.apply_async(square, (i,)) for i in range(2000)]
        assert [r.get(30) for r in results] == [i * i for i in range(2000)]
        session = p.session
    assert len(_chunks_delivered(sessions_dir, session)) < 200


def _chunks_delivered(sessions_dir, session):
    """Distinct chunks in the session's log index (one line per delivered result part)."""
    with open(os.path.join(sessions_dir, session, "index")) as f:
        return {json.loads(line)["chunk"] for line in f}


def test_throughput_sanity():
    # Not a benchmark (see benches/local): only guards against pathological slowness.
    with shoal.Pool(2) as p:
        p.map(square, range(10))
        t = time.perf_counter()
        p.map(square, range(50_000))
        assert time.perf_counter() - t < 20


def _raises_at(n: int, when: int):
    for i in range(n):
        if i == when:
            raise KeyError("source broke")
        yield i


def test_imap_iterable_error_surfaces_at_its_position(pool):
    # Without a chunksize: exactly where the iterable raised.
    it = pool.imap(square, _raises_at(10, 5))
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    with pytest.raises(KeyError, match="source broke"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    # With one, at the start of the chunk being filled, as multiprocessing does.
    it = pool.imap(square, _raises_at(20, 7), 4)
    assert [next(it) for _ in range(4)] == [0, 1, 4, 9]
    with pytest.raises(KeyError):
        next(it)


class RefusesWithRuntimeError:
    def __reduce__(self):
        raise RuntimeError("cannot pickle me")


def test_pickling_error_keeps_the_original_type(pool):
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 1 of 'square' \(a lock\)") as info:
        pool.map(square, [1, lock])
    assert isinstance(info.value, shoal.PicklingError)
    with pytest.raises(RuntimeError, match="cannot pickle me") as info:
        pool.map(square, [RefusesWithRuntimeError()] * 3)
    assert isinstance(info.value, shoal.PicklingError) and "argument 0" in str(info.value)
    errors: list = []
    r = pool.apply_async(square, (lock,), error_callback=errors.append)
    with pytest.raises(TypeError):
        r.get(10)
    assert len(errors) == 1 and errors[0] is r._value
    assert pool.map(square, [3]) == [9]


def test_remote_traceback_is_multiprocessing_own(pool):
    with pytest.raises(ValueError) as info:
        pool.apply(fail_on, (3,))
    assert type(info.value.__cause__) is multiprocessing.pool.RemoteTraceback


def test_manager_proxies_work_in_tasks_and_initializer():
    from helpers import append_to, init_append

    with multiprocessing.Manager() as mgr:
        shared = mgr.list()
        p = shoal.Pool(2, initializer=init_append, initargs=(shared,))
        p.starmap(append_to, [(shared, i) for i in range(4)])
        p.close()
        p.join()  # both workers ran their initializer, as under multiprocessing
        assert sorted(shared, key=str) == [0, 1, 2, 3, "init", "init"]


ENDING = """
import sys, time, shoal
sys.path.insert(0, {tests!r})
from helpers import sleep_return
try:
    with shoal.Pool(2, keep_work_dir={keep}) as p:
        print(p.session, flush=True)
        {body}
except RuntimeError as e:
    print("caught", e)
"""


def _ending(tmp_path, body: str, keep: bool = False) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    tests = os.path.dirname(__file__)
    script.write_text(ENDING.format(tests=tests, keep=keep, body=body))
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _recorded_state(sessions_dir: str, session: str) -> str:
    with open(os.path.join(sessions_dir, session, "session.json")) as f:
        return json.load(f)["state"]


def test_ctrl_c_ends_the_session_as_interrupted(tmp_path, sessions_dir):
    proc = _ending(tmp_path, "p.map(sleep_return, [30.0] * 4, chunksize=1)", keep=True)
    session = proc.stdout.readline().strip()
    path = os.path.join(sessions_dir, session)
    deadline = time.monotonic() + 20
    while len(live_worker_pids(path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err and "failed" not in err
    assert _recorded_state(sessions_dir, session) == "interrupted"
    assert live_worker_pids(path) == []


# SIGINT raised in a thread other than the main one: the kernel may deliver Ctrl-C to any of
# the driver's threads, and CPython then runs the handler only once the main thread is back in
# the interpreter.
ON_ANOTHER_THREAD = (
    "import threading; threading.Thread(target=lambda: (time.sleep(1.0), "
    "__import__('signal').pthread_kill(threading.get_ident(), 2))).start(); "
)


@pytest.mark.parametrize(
    "wait",
    [
        "p.map(sleep_return, [30.0] * 4, chunksize=1)",
        "list(p.imap(sleep_return, [30.0] * 4))",
        "ex = shoal.Executor(2); list(ex.map(sleep_return, [30.0] * 4))",
        "ex = shoal.Executor(2); ex.submit(sleep_return, 30.0).result()",
    ],
    ids=["map", "imap", "executor_map", "submit"],
)
def test_ctrl_c_taken_by_another_thread_still_interrupts_the_wait(tmp_path, wait):
    proc = _ending(tmp_path, ON_ANOTHER_THREAD + wait)
    proc.stdout.readline()
    t = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err, err
    # Before, the wait went on until the 30 s tasks ended.
    assert time.monotonic() - t < 10


def test_an_exception_the_user_caught_is_no_failure(tmp_path, sessions_dir):
    body = "p.map_async(sleep_return, [5.0] * 4); raise RuntimeError('mine')"
    for keep in (False, True):
        proc = _ending(tmp_path, body, keep=keep)
        out, err = proc.communicate(timeout=60)
        session = out.split()[0]
        assert proc.returncode == 0 and "caught mine" in out and "failed" not in err, err
        if keep:
            assert _recorded_state(sessions_dir, session) == "interrupted"
        else:
            assert not os.path.exists(os.path.join(sessions_dir, session))


def test_shoal_cancel_ends_the_session_as_cancelled(sessions_dir):
    for keep in (False, True):
        with shoal.Pool(2, keep_work_dir=keep) as p:
            r = p.map_async(sleep_return, [20.0] * 4, chunksize=1)
            out = subprocess.run(
                [sys.executable, "-m", "shoal.cli", "cancel", p.session],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            with pytest.raises(shoal.SessionError, match="cancelled"):
                r.get(30)
            session = p.session
        path = os.path.join(sessions_dir, session)
        if keep:
            assert _recorded_state(sessions_dir, session) == "cancelled"
        else:
            assert not os.path.exists(path)  # nothing failed: nothing kept


def test_break_out_of_imap_withdraws_its_work(tmp_path, sessions_dir):
    # How fast the workers stop is measured in benches/local (timed tests lie on busy hosts).
    from helpers import count_call

    for how in ("with", "close"):
        runs = tmp_path / how
        runs.mkdir()
        p = shoal.Pool(2)
        path = os.path.join(sessions_dir, p.session)
        for _ in p.imap(count_call, [(str(runs), 0.05)] * 200):
            break
        pids = live_worker_pids(path)
        if how == "with":
            p.terminate()
        else:
            p.close()
            p.join()  # the dropped iterator's unstarted chunks were withdrawn: no waiting
        assert len(os.listdir(runs)) < 40  # only chunks already started ran
        assert not [q for q in pids if os.path.exists(f"/proc/{q}/status") and _alive(q)]
        assert not os.path.exists(path)  # interrupted, nothing failed: nothing kept


def _alive(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return "\nState:\tZ" not in f.read()


def test_tasks_see_the_drivers_argv(pool):
    from helpers import argv

    # As under multiprocessing: the driver script's argv, not the worker's command line.
    assert pool.apply(argv) == sys.argv
    with shoal.Executor(1) as ex:
        assert ex.submit(argv).result(30) == sys.argv


OUTPUT = """
import resource, sys, shoal
sys.path.insert(0, {tests!r})
from helpers import chatty, flood
with shoal.Pool(2, **{options!r}) as p:
    {body}
print("driver done", flush=True)
"""


def _output_of(tmp_path, body: str, **options: object) -> tuple[str, str]:
    script = tmp_path / "driver.py"
    tests = os.path.dirname(__file__)
    script.write_text(OUTPUT.format(tests=tests, options=options, body=body))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


def test_task_output_reaches_the_drivers_stdout_and_stderr(tmp_path):
    out, err = _output_of(tmp_path, 'print(sum(p.map(chatty, range(6), chunksize=1)), "= sum")')
    lines = out.splitlines()
    for x in range(6):
        # As with multiprocessing: each task's output comes before the result it returned.
        assert lines.index(f"stdout of task {x}") < lines.index("15 = sum")
        assert f"stderr of task {x}" in err
        assert f"UserWarning: warning of task {x}" in err
    assert lines[-1] == "driver done"


def test_forward_output_false_keeps_task_output_in_the_logs_only(tmp_path, capsys):
    from helpers import chatty

    out, err = _output_of(tmp_path, "p.map(chatty, range(3))", forward_output=False)
    assert "of task" not in out + err
    for forward in (False, True):
        with shoal.Executor(1, forward_output=forward) as ex:
            assert ex.submit(chatty, 7).result(30) == 7
            session = ex.session
        captured = capsys.readouterr()
        assert ("stdout of task 7" in captured.out) is forward
        assert ("stderr of task 7" in captured.err) is forward
    # The finished session kept its logs: `shoal logs` shows the task's output.
    logs = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "logs", session, "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "stdout of task 7" in logs.stdout and "stderr of task 7" in logs.stdout, logs


def test_output_written_once_the_pool_is_terminating_is_not_forwarded(tmp_path, capsys):
    from shoal._output import Forwarder

    logs = tmp_path / "logs"
    logs.mkdir()
    err = logs / "b1-0.err"
    err.write_text("a task's last words\nand a partial line")
    out = Forwarder(str(tmp_path), shared=False)
    out.freeze()  # terminate(): the jobs are being cancelled
    with err.open("a") as f:
        f.write("\nslurmstepd: *** JOB 5 ON n1 CANCELLED AT 2026-12-02T01:09:46 ***\n")
    out.pump(catch_up=True)  # a result collected meanwhile
    out.drain()
    assert capsys.readouterr().err == "a task's last words\nand a partial line"


def test_ten_megabytes_of_output_are_forwarded_in_bounded_slices(tmp_path):
    body = (
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    print(p.map(flood, [10, 0, 0, 0]))\n"
        "    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print('grew', grew, 'KB', file=sys.stderr)"
    )
    out, err = _output_of(tmp_path, body)
    lines = out.splitlines()
    numbered = [ln for ln in lines if ln[:6].isdigit()]
    assert len(numbered) == 10 * 1024  # all of it, whole lines, in order
    assert [int(ln[:6]) for ln in numbered] == list(range(10 * 1024))
    assert lines.index("[10, 0, 0, 0]") > lines.index(numbered[-1])
    grew = int(err.split("grew ")[1].split()[0])
    assert grew < 6 * 1024, err  # the driver held slices of it, never the 10 MB


def _still_running(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Those of `pids` that have not ended within `timeout` (awaited through pidfds)."""
    import select

    deadline = time.monotonic() + timeout
    left = []
    for p in pids:
        try:
            fd = os.pidfd_open(p)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                left.append(p)
        finally:
            os.close(fd)
    return left


def _lineage(pool: shoal.Pool, directory: str) -> list[tuple[int, int, str, float]]:
    os.makedirs(directory)
    return pool.map(lineage, [directory] * 2, chunksize=1)


def test_local_workers_are_forked_by_one_template_kept_across_pools(tmp_path, monkeypatch):
    with shoal.Pool(2) as p:
        first = _lineage(p, str(tmp_path / "a"))
    with shoal.Pool(2) as p:
        second = _lineage(p, str(tmp_path / "b"))
    parents = {(ppid, cmd) for _, ppid, cmd, _ in first + second}
    assert len(parents) == 1, parents
    ((template, cmd),) = parents
    assert template != os.getpid() and cmd.endswith("-m shoal._template"), cmd
    assert len({draw for *_, draw in first}) == 2  # not the template's random sequence
    # What a fork cannot reproduce is spawned by the driver, as before: another interpreter,
    # variables the interpreter reads at start, or the switch that turns the template off.
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    for n, kw in enumerate([{"python_path": str(wrapper)}, {"env": {"PYTHONPATH": "/nowhere"}}]):
        with shoal.Pool(2, **kw) as p:
            assert {ppid for _, ppid, *_ in _lineage(p, str(tmp_path / f"s{n}"))} == {os.getpid()}
    monkeypatch.setenv("SHOAL_LOCAL_TEMPLATE", "0")
    with shoal.Pool(2) as p:
        assert {ppid for _, ppid, *_ in _lineage(p, str(tmp_path / "off"))} == {os.getpid()}


def test_forked_workers_get_the_pools_environment_and_directory(tmp_path, monkeypatch):
    with shoal.Pool(1) as p:
        p.apply(square, (1,))  # the template runs from here on
    monkeypatch.setenv("SHOAL_TEST_LATE", "set after the template started")
    monkeypatch.delenv("HOME")
    monkeypatch.chdir(tmp_path)  # workers start where the driver is
    with shoal.Pool(1, env={"SHOAL_TEST_OWN": "1"}) as p:
        env, cwd, parent = p.apply(surroundings)
    assert parent.endswith("-m shoal._template"), parent
    assert env["SHOAL_TEST_LATE"] == "set after the template started"
    assert env["SHOAL_TEST_OWN"] == "1" and "HOME" not in env
    assert cwd == str(tmp_path)


def test_terminate_leaves_no_process(tmp_path):
    p = shoal.Pool(2)
    workers = [w for w, *_ in _lineage(p, str(tmp_path / "meet"))]
    sleeper = p.apply(start_sleeper)
    p.terminate()
    # The workers are reaped by the time terminate returns; the task's subprocess was killed
    # with its worker's process group (its own reaping is init's).
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")]
    assert not _still_running([sleeper])


DIES = """
import json, sys, time
sys.path.insert(0, {tests!r})
import shoal
from helpers import lineage, start_sleeper
p = shoal.Pool(2)
info = p.map(lineage, [{meet!r}] * 2, chunksize=1)
print(json.dumps([info, p.apply(start_sleeper)]), flush=True)
time.sleep(300)
"""


def test_the_template_and_its_workers_die_with_the_driver(tmp_path):
    script = tmp_path / "driver.py"
    (tmp_path / "meet").mkdir()
    tests = os.path.dirname(__file__)
    script.write_text(DIES.format(tests=tests, meet=str(tmp_path / "meet")))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        info, sleeper = json.loads(driver.stdout.readline())
    finally:
        driver.kill()
        driver.wait()
    (template,) = {ppid for _, ppid, *_ in info}
    assert template != driver.pid
    left = _still_running([template, sleeper, *[w for w, *_ in info]])
    assert not left, [open(f"/proc/{q}/cmdline").read() for q in left]


def test_a_payload_s_large_buffers_are_not_searched_but_main_still_travels_by_value(
    monkeypatch,
):
    """`_pickling.dumps` reads which modules a payload names off its opcode stream, with
    large buffers taken out of band (benches/transport: searching 16 MiB arrays for
    b"__main__" cost a sixth of the driver's time). Bytes that merely spell __main__ are data;
    a class of __main__ next to a large buffer still sends the payload by value."""
    import pickle

    import __main__
    from shoal import _pickling

    calls = []
    real = _pickling.cloud_dumps
    monkeypatch.setattr(_pickling, "cloud_dumps", lambda obj: calls.append(obj) or real(obj))
    import numpy as np

    data = np.frombuffer(b"__main__" * 100_000, dtype=np.uint8).copy()
    blob = _pickling.dumps((data, square))
    assert calls == [], "bytes that spell __main__ are data, not a reference"
    back, fn = pickle.loads(blob)
    assert fn is square and np.array_equal(back, data)
    assert blob == pickle.dumps((data, square), protocol=_pickling.PROTOCOL), "in band"

    class Marker:
        pass

    Marker.__module__, Marker.__qualname__ = "__main__", "ShoalTestMarker"
    monkeypatch.setattr(__main__, "ShoalTestMarker", Marker, raising=False)
    blob = _pickling.dumps((data, Marker))
    assert len(calls) == 1, "a class of __main__ sends the payload by value"
    assert np.array_equal(pickle.loads(blob)[0], data)

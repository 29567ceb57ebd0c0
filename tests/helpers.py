"""Task functions for the tests. They live in an importable module so that they are pickled by
reference, as users' module-level functions are; tests also use lambdas (pickled by value)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Optional

_state: dict[str, Any] = {}


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        print(f"about to fail on {x}", file=sys.stderr)
        raise ValueError(f"bad value {x}")
    return x


def sleep_return(x: float) -> float:
    time.sleep(x)
    return x


def pid(_: Any = None) -> int:
    return os.getpid()


def slow_pid(_: Any = None) -> int:
    time.sleep(0.05)
    return os.getpid()


def init_state(value: Any) -> None:
    _state["value"] = value


def read_state(_: Any = None) -> Any:
    return _state.get("value")


def die(_: Any = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_once(marker: str, x: int) -> int:
    """Kill this worker the first time it is called for `marker`; succeed on the retry."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def printer(x: int) -> int:
    print(f"stdout of task {x}")
    print(f"stderr of task {x}", file=sys.stderr)
    return x


def exit_task(code: int) -> None:
    sys.exit(code)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def returns_unpicklable(_: Any = None) -> Any:
    return Unpicklable()


def rendezvous(directory: str, parties: int = 2, timeout: float = 60.0) -> int:
    """Wait until `parties` tasks are inside this function at once; proves parallelism."""
    with open(os.path.join(directory, str(os.getpid())), "w") as f:
        f.write("here")
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {parties} tasks ran at once")
        time.sleep(0.01)
    return os.getpid()


def append_to(shared: Any, x: Any) -> None:
    shared.append(x)


def init_append(shared: Any) -> None:
    shared.append("init")


class ExitsWhenPickled:
    """A result whose pickling raises SystemExit (as concurrent.futures' own tests use)."""

    def __reduce__(self) -> Any:
        raise SystemExit(7)


def returns_exits_when_pickled(counter: str) -> ExitsWhenPickled:
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    return ExitsWhenPickled()


def write_after(path: str, delay: float) -> str:
    time.sleep(delay)
    with open(path, "w") as f:
        f.write("done")
    return path


class Box:
    """A result that can be weakly referenced."""


def make_box(_: Any = None) -> Box:
    return Box()


def count_call(arg: tuple[str, float]) -> None:
    """Leave a file in `directory` for each call, then sleep."""
    directory, delay = arg
    with open(os.path.join(directory, f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    time.sleep(delay)


def argv(_: Any = None) -> list[str]:
    return sys.argv


def chatty(x: int) -> int:
    """Writes to stdout and stderr and warns, as a task of a user's script would."""
    import warnings

    print(f"stdout of task {x}")
    print(f"stderr of task {x}", file=sys.stderr)
    warnings.warn(f"warning of task {x}", stacklevel=1)
    return x


def flood(mb: int) -> int:
    """Prints `mb` MB in numbered 1 KB lines."""
    line = "x" * 1017
    for i in range(mb * 1024):
        print(f"{i:06d}", line)
    return mb


def lineage(directory: str) -> tuple[int, int, str, float]:
    """Meet the other worker (see rendezvous), then say who started this one: (pid, parent
    pid, the parent's command line) and a draw of `random`."""
    import random

    rendezvous(directory)
    ppid = os.getppid()
    with open(f"/proc/{ppid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode().strip()
    return os.getpid(), ppid, cmd, random.random()


def start_sleeper(_: Any = None) -> int:
    """A subprocess of a task, left running in the worker's process group."""
    import subprocess

    return subprocess.Popen(["sleep", "300"]).pid


def surroundings(_: Any = None) -> tuple[dict[str, str], str, str]:
    """The worker's environment, working directory and parent's command line."""
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        parent = f.read().replace(b"\0", b" ").decode().strip()
    return dict(os.environ), os.getcwd(), parent


def fork_and_terminate(_: Any = None) -> tuple[bool, Optional[int]]:
    """Fork a multiprocessing child that sleeps, SIGTERM it, and say whether it is still alive
    10 s later and its exit code (-15 when SIGTERM ended it, as it should)."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    time.sleep(0.3)
    child.terminate()
    child.join(10)
    alive = child.is_alive()
    if alive:
        child.kill()
        child.join()
    return alive, child.exitcode

"""The local backend's template process: ``python -m shoal._template``, started once per driver
process (crates/shoal-sched/src/local/template.rs). It imports what every worker imports, then
forks a worker per request, which is ready in about a millisecond where a fresh interpreter
spends tens of milliseconds on imports.

Its stdin is a Unix socket to the driver, the *lifeline*: each byte read from it comes with one
file descriptor (SCM_RIGHTS), a new connection of one local backend; end of file means the
driver is gone, and the template kills every worker it forked and exits. On a connection, a
request is one JSON line ``{"id", "argv", "env", "cwd", "stdout", "stderr"}`` (``argv`` is the
worker command line the backend would have spawned); the template answers ``{"id", "pid"}``
at once and ``{"id", "code"}`` or ``{"id", "signal"}`` when the worker has ended. ``{"kill":
id}`` kills that worker's process group (the end is reported as any other). A connection that
closes takes its workers with it.

A forked worker is made like a spawned one: its own process group, killed if the template dies
(PR_SET_PDEATHSIG), the request's environment, directory and log files, stdin from /dev/null,
no other inherited descriptor, the command line ``argv`` (in ps and /proc; the template's
argument, blank padding, makes room for it), and ``shoal.worker.main`` with its arguments.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import selectors
import signal
import socket
import sys
import time

import cloudpickle  # type: ignore[import-untyped]  # noqa: F401  (maps' functions need it)

import shoal.worker

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing into every worker
if TYPE_CHECKING:
    from typing import Any

PR_SET_PDEATHSIG = 1
# How long the graveyard holds a killed worker's descriptors before closing them.
HOLD = 0.1
SYS_PIDFD_GETFD = 438  # the same number on every architecture (Linux 5.6)
_libc = ctypes.CDLL(None, use_errno=True)


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.workers: dict[int, str] = {}  # pid -> worker id
        self.open = True

    def send(self, msg: dict[str, object]) -> None:
        if self.open:
            try:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError:
                self.open = False


def _retitle(argv: list[str]) -> None:
    """Make this process's command line (ps, /proc/PID/cmdline) the worker's, as if spawned:
    written over the template's own, which the backend padded for the purpose."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # stat fields 48 and 49: arg_start, arg_end
    title = b"\0".join(a.encode() for a in argv) + b"\0"
    if len(title) <= end - start:  # else keep the template's
        ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)


def _child(req: dict[str, Any], parent: int) -> None:
    """In the forked worker: become what `argv` would have started, run it, never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        _die_with_parent()
        if os.getppid() != parent:  # the template died between fork and prctl
            os._exit(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            log = os.open(str(req[key]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(log, fd)
        for name in os.listdir("/proc/self/fd"):  # the template's sockets, pidfds, the logs
            if int(name) > 2:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        os.environ.clear()
        os.environ.update(dict(req["env"]))
        cwd = str(req["cwd"])
        os.chdir(cwd)
        # As `python -m shoal.worker ...` would have them.
        sys.path[0] = cwd
        argv = [str(a) for a in req["argv"]]
        _retitle(argv)
        sys.argv = [shoal.worker.__file__, *argv[3:]]
        if "random" in sys.modules:  # forked workers must not share the template's sequence
            sys.modules["random"].seed()
        code = shoal.worker.main(argv[3:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _graveyard() -> socket.socket:
    """A child that closes the descriptors sent to it. A killed worker's inotify descriptor
    takes the kernel ~10 ms to tear down (an RCU grace period), which the exiting worker would
    wait for, and so would its pool's shutdown: the template takes a duplicate before the kill
    and lets this process pay for the last close, off everyone's path."""
    ours, theirs = socket.socketpair()
    if os.fork() == 0:
        _die_with_parent()
        ours.close()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the lifeline
        held: list[tuple[float, list[int]]] = []
        while True:
            # Closed a while after they came, so that the template's own copy, closed just
            # after sending, is never the last one.
            if select.select([theirs], [], [], HOLD if held else None)[0]:
                data, fds, _, _ = socket.recv_fds(theirs, 64, 64)
                if not data:
                    os._exit(0)
                held.append((time.monotonic(), fds))
            while held and time.monotonic() - held[0][0] >= HOLD:
                for fd in held.pop(0)[1]:
                    os.close(fd)
    theirs.close()
    return ours


def _watches(pid: int) -> list[int]:
    """Duplicates of a worker's inotify descriptors (best effort: needs pidfd_getfd)."""
    out: list[int] = []
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return out
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:inotify":
                    continue
            except OSError:
                continue
            fd = _libc.syscall(
                ctypes.c_long(SYS_PIDFD_GETFD),
                ctypes.c_long(pidfd),
                ctypes.c_long(int(name)),
                ctypes.c_long(0),
            )
            if fd >= 0:
                out.append(fd)
    except OSError:
        pass
    finally:
        os.close(pidfd)
    return out


def main() -> None:
    me = os.getpid()
    # Workers are watched through pidfds (Linux 5.3): without them, exit at once, and the
    # backend spawns its workers instead.
    os.close(os.pidfd_open(me))
    sel = selectors.DefaultSelector()
    lifeline = socket.socket(fileno=0)
    sel.register(lifeline, selectors.EVENT_READ, "lifeline")
    pidfds: dict[int, tuple[int, _Conn]] = {}  # pidfd -> (pid, its connection)

    grave = _graveyard()

    def kill(pid: int) -> None:
        """Kill a worker's process group, the worker itself should it have none yet."""
        held = _watches(pid)
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, 9)):
            try:
                target()
            except OSError:
                pass
        if held:
            try:
                socket.send_fds(grave, [b"x"], held)
            except OSError:
                pass
            for fd in held:  # not the last reference if the graveyard has them
                os.close(fd)

    def close(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        conn.open = False
        for pid in conn.workers:
            kill(pid)

    while True:
        for key, _ in sel.select():
            if key.data == "lifeline":
                try:
                    data, fds, _, _ = socket.recv_fds(lifeline, 64, 16)
                except OSError:
                    data, fds = b"", []
                if not data:  # the driver is gone: so are its workers
                    for pid, _conn in pidfds.values():
                        kill(pid)
                    os._exit(0)
                for fd in fds:
                    sock = socket.socket(fileno=fd)
                    sel.register(sock, selectors.EVENT_READ, _Conn(sock))
            elif isinstance(key.data, _Conn):
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    close(conn)
                    continue
                conn.buf += data
                while b"\n" in conn.buf:
                    line, conn.buf = conn.buf.split(b"\n", 1)
                    req = json.loads(line)
                    if "kill" in req:
                        for pid, worker in conn.workers.items():
                            if worker == req["kill"]:
                                kill(pid)
                        continue
                    try:
                        pid = os.fork()
                    except OSError as e:
                        conn.send({"id": req["id"], "error": str(e)})
                        continue
                    if pid == 0:
                        _child(req, me)
                    try:
                        os.setpgid(pid, pid)  # also here: the backend may kill the group at once
                    except OSError:
                        pass
                    pidfd = os.pidfd_open(pid)
                    pidfds[pidfd] = (pid, conn)
                    sel.register(pidfd, selectors.EVENT_READ, "pidfd")
                    conn.workers[pid] = req["id"]
                    conn.send({"id": req["id"], "pid": pid})
            else:  # a worker ended
                pidfd = key.fd
                sel.unregister(pidfd)
                os.close(pidfd)
                pid, conn = pidfds.pop(pidfd)
                _, status = os.waitpid(pid, 0)
                worker = conn.workers.pop(pid)
                if os.WIFSIGNALED(status):
                    conn.send({"id": worker, "signal": os.WTERMSIG(status)})
                else:
                    conn.send({"id": worker, "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()

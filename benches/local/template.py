"""A prototype of pre-imported local workers, measured against today's local backend.

A *template* process (one per driver process, started once) imports everything a worker needs,
then forks a worker for each request: a forked worker is ready in ~1 ms where a fresh
interpreter needs ~25 ms of imports. The prototype plugs in without changing the engine: the
local backend starts `python_path`, here a tiny shell stub that hands its worker arguments to
the template through a FIFO and then sleeps; the forked worker joins the stub's process group,
reads the stub's environment and working directory from /proc, and runs shoal.worker.main. The
engine's kill of the stub's process group therefore kills the worker too.

What a real implementation needs is in benches/local/README.md ("Cold start").
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile

SERVER = r"""
import os, signal, sys
import shoal.worker  # everything a worker imports, once
import cloudpickle, multiprocessing  # what tasks usually need too

def reap(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass

signal.signal(signal.SIGCHLD, reap)
fifo = os.open(sys.argv[1], os.O_RDWR)  # read-write: never sees EOF between requests
buf = b""
while True:
    try:
        data = os.read(fifo, 4096)
    except InterruptedError:
        continue
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        stub, session, worker = line.decode().split(" ")
        if os.fork():
            continue
        # The worker: in the stub's process group, with its environment and directory.
        os.close(fifo)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            os.setpgid(0, int(stub))
            with open(f"/proc/{stub}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:  # the stub was killed meanwhile (its pool ended): nothing to do
            os._exit(0)
        os.environ.clear()
        os.environ.update({k.decode(): v.decode() for k, v in env.items()})
        os.chdir(os.readlink(f"/proc/{stub}/cwd"))
        for fd, ext in ((1, "out"), (2, "err")):
            log = os.open(f"{session}/logs/{worker}.{ext}", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.dup2(log, fd)
            os.close(log)
        code = shoal.worker.main([session, "--worker-id", worker])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
"""

STUB = """#!/bin/sh
# The local backend runs: STUB -m shoal.worker SESSION_DIR --worker-id ID
[ "$1" = -m ] || exec {python} "$@"
printf '%s %s %s\\n' "$$" "$3" "$5" > {fifo}
exec sleep 2147483647
"""


class Template:
    """The template process and the stub to pass as ``python_path``."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="shoal-template-")
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo, 0o600)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, fifo])
        self.python = os.path.join(self.dir, "python")
        with open(self.python, "w") as f:
            f.write(STUB.format(python=sys.executable, fifo=fifo))
        os.chmod(self.python, 0o700)
        atexit.register(self.close)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

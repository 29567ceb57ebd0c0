"""Make directories on the shared volume while another node looks for each one (as a worker
polls for its inbox), for tests/test_multinode_storage.py. Roles:

  gluster_dirs.py make DIR N whole|in-place   make DIR/d0..d{N-1} and a file in each
  gluster_dirs.py look DIR N                  wait for each and read its file

Each prints a JSON line: how many it got through and the errors it met other than ENOENT.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time


def make(root: str, n: int, whole: bool) -> dict[str, object]:
    time.sleep(1.5)  # the looker is started on its node meanwhile
    done, error = 0, ""
    try:
        for i in range(n):
            d = os.path.join(root, f"d{i}")
            if whole:
                os.mkdir(d + ".tmp", 0o700)
                os.rename(d + ".tmp", d)
            else:
                os.mkdir(d, 0o700)
            tmp = os.path.join(d, ".f.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"ticket")
            os.close(fd)
            os.rename(tmp, os.path.join(d, "f"))
            done += 1
            time.sleep(0.01)
    except OSError as e:
        error = f"{errno.errorcode.get(e.errno or 0, e.errno)}: {e.filename}"
    return {"made": done, "error": error}


def look(root: str, n: int) -> dict[str, object]:
    errors: dict[str, int] = {}
    i, end = 0, time.monotonic() + 30
    while i < n and time.monotonic() < end:
        d = os.path.join(root, f"d{i}")
        if not os.path.isdir(d):
            continue
        try:
            with open(os.path.join(d, "f"), "rb") as f:
                f.read()
            i += 1
        except OSError as e:
            if e.errno != errno.ENOENT:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                errors[name] = errors.get(name, 0) + 1
    return {"read": i, "errors": errors}


if __name__ == "__main__":
    role, root, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = make(root, count, sys.argv[4] == "whole") if role == "make" else look(root, count)
    print(json.dumps(out), flush=True)

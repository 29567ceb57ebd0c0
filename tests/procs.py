"""Find a session's worker processes from the pids they record in the work dir."""

from __future__ import annotations

import glob
import json
import os


def live_worker_pids(session_path: str) -> list[int]:
    pids = []
    for path in glob.glob(os.path.join(session_path, "workers", "*.json")):
        with open(path) as f:
            pid = int(json.load(f)["pid"])
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(pid)
    return pids

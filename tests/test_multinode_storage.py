"""Storage on the multi-node cluster (ci/clusters/cluster up slurm-multinode), where the user's
home exists only on GlusterFS, as it is on NFS at most sites: what shoal puts there by default.
The local backend keeps its session dirs on the node's own storage, and `shoal sessions`
still finds them.

(The run registry on the shared volume — rollback journal, read and written from a compute node
— is tests/test_runs_clusters.py::test_registry_is_shared_with_a_compute_node, which
scripts/test runs on the login machine with SHOAL_HOME on the volume.)
"""

from __future__ import annotations

import json
import textwrap

import pytest
from namespace_cluster import on_login

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180)]

NAME = "slurm-multinode"

# A local-backend pool on the login machine with shoal's defaults (no SHOAL_HOME, no work_dir):
# where its session dir is, what filesystem that is, and whether `shoal sessions` lists it.
PROBE = textwrap.dedent(
    """
    import json, subprocess, shoal
    with shoal.Pool(2) as p:
        assert p.map(abs, [-1, -2]) == [1, 2]
        path = p._driver.path
        fs = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
        listed = subprocess.run(["shoal", "sessions", "--json"], capture_output=True, text=True)
        ids = [s["id"] for s in json.loads(listed.stdout or "[]")]
        print(json.dumps({"path": path, "fs": fs.stdout.strip(), "listed": p.session in ids}))
    """
)


def test_local_backend_keeps_its_session_dirs_off_the_network_home() -> None:
    out = json.loads(on_login(NAME, "python", "-c", PROBE).splitlines()[-1])
    assert out["fs"] != "fuseblk", f"the session dir {out['path']} is on the GlusterFS home"
    assert out["listed"], f"`shoal sessions` does not list the session at {out['path']}"

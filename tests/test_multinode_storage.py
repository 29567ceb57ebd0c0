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
from namespace_cluster import REPO, on_login

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


def test_a_directory_renamed_into_place_is_usable_while_another_node_looks_for_it() -> None:
    """What a worker's welcome relies on (docs/protocol.md): on GlusterFS a directory made in
    place while another client looks it up can be unusable for seconds, to its maker too
    (EACCES creating in it, most runs of 300 here); made under a temporary name
    and renamed into place (`fsutil::create_dir_whole`, the driver's welcome), never."""
    helper = str(REPO / "tests" / "gluster_dirs.py")
    script = textwrap.dedent(
        f"""
        set -e
        d=$(mktemp -d -p "$SHOAL_MN_WORK")
        srun -N1 -w n2 python {helper} look "$d" 300 > "$d.look" &
        python {helper} make "$d" 300 whole
        wait
        cat "$d.look"
        rm -rf "$d" "$d.look"
        """
    )
    made, looked = (json.loads(line) for line in on_login(NAME, "bash", "-c", script).splitlines())
    assert made == {"made": 300, "error": ""}, made
    assert looked == {"read": 300, "errors": {}}, looked

"""Shared fixtures: every test session gets its own SHOAL_HOME so work dirs never pile up in
the user's home, and real-cluster tests run only where ci/clusters brought the cluster up
(in CI a missing cluster is a failure, never a skip)."""

from __future__ import annotations

import os

import pytest

# marker -> the cluster (`ci/clusters/cluster up NAME`) its tests need
CLUSTER_MARKERS = {
    "slurm": "slurm",
    "sge": "sge",
    "htcondor": "htcondor",
    "multinode": "slurm-multinode",
    "isolated": "isolated",
}


@pytest.fixture(autouse=True, scope="session")
def _shoal_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "SHOAL_TEST_KEEP_HOME" not in os.environ:
        os.environ["SHOAL_HOME"] = str(tmp_path_factory.mktemp("shoal-home"))


@pytest.fixture
def sessions_dir() -> str:
    return os.path.join(os.environ["SHOAL_HOME"], "sessions")


def pytest_runtest_setup(item: pytest.Item) -> None:
    available = set(os.environ.get("SHOAL_TEST_CLUSTERS", "").split())
    for marker, name in CLUSTER_MARKERS.items():
        if item.get_closest_marker(marker) and name not in available:
            msg = f"{name} cluster not up (run: sudo ci/clusters/cluster up {name})"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)

"""The runner on a real 2-node Ray cluster (issue 20), isolated in namespaces of its own.

tests/e2e/ray_cluster_driver.py runs as PID 1 of a new network namespace (loopback only:
Ray binds nothing else) and PID namespace (its ``ray stop`` sees only its own Ray, and
nothing it started outlives it). Needs root and util-linux's ``unshare``; about 4 minutes
on 2 shared cores, most of it Ray starting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run([*UNSHARE, "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


def _processes_in(netns: str) -> list[int]:
    """PIDs (of this machine's view) of processes still in the network namespace ``netns``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "ns" / "net") == netns:
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> dict:
    if not _namespaces_work():
        pytest.skip("needs root and `unshare --net --pid` (util-linux) with `ip` (iproute2)")
    out = tmp_path_factory.mktemp("ray-cluster")
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("RAY_ADDRESS", None)  # the driver chooses for each run
    proc = subprocess.run(
        [*UNSHARE, sys.executable, "-m", "tests.e2e.ray_cluster_driver", str(out)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    result["out"] = out
    return result


def test_the_federation_ran_on_both_ray_nodes(cluster_run):
    assert cluster_run["cluster-exit"] == 0, cluster_run["cluster-log"]
    assert cluster_run["ray-nodes"] == 2
    placed = cluster_run["actor-nodes"]  # from the cluster's GCS actor table
    assert len(placed) == 2, placed  # one ClientApp worker (1 CPU, 1 GPU) on each node
    granted = [r for actors in placed.values() for r in actors]
    assert granted and all(r == {"CPU": 1.0, "GPU": 1.0} for r in granted), placed
    address = cluster_run["cluster-log"].split("Ray: cluster ")[1].split()[0]
    assert "2 node(s), 2 CPU(s), 2 GPU(s)" in cluster_run["cluster-log"]
    run_dir = cluster_run["out"] / "cluster" / "maml" / "seed0"
    assert json.loads((run_dir / "federation.json").read_text()) == {
        "num-supernodes": 2, "cpus-per-client": 1.0, "gpus-per-client": 1.0,
        "ray": address, "ray-nodes": 2, "ray-gpus": 2.0,
    }  # fmt: skip
    assert (run_dir / "flwr.log").read_text().startswith(f"Ray: cluster {address}")


def test_theta_on_the_cluster_equals_theta_on_a_private_ray(cluster_run):
    assert cluster_run["private-exit"] == 0, cluster_run["private-log"]
    assert "Ray: private" in cluster_run["private-log"]
    assert cluster_run["theta-equal"], cluster_run["theta-max-diff"]


def test_nothing_of_the_cluster_is_left_running(cluster_run):
    assert cluster_run["left-after-ray-stop"] is not None  # the driver's teardown ran
    assert _processes_in(cluster_run["netns"]) == []

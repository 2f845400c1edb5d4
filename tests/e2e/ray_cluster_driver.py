"""A real 2-node Ray cluster, run as PID 1 of its own network and PID namespaces.

    unshare -n -p -f --mount-proc python -m tests.e2e.ray_cluster_driver OUT_DIR

The network namespace holds only loopback, so Ray binds nothing else; in the PID namespace
``ray stop`` sees only this cluster's processes (outside it, ``ray stop`` stops every Ray
of the machine's user), and when this process exits the kernel ends whatever is left.
Steps: start a head and a second node with one CPU and one (logical) GPU each, run a tiny
experiment through the runner on the cluster with one GPU per worker and again on a
private Ray, read from the cluster's GCS on which nodes the ClientApp workers (Ray actors)
ran and what each was granted, stop everything (``ray stop``, then by PID),
and write ``OUT_DIR/result.json`` for tests/e2e/test_ray_cluster.py to judge.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from common.processes import console_script, free_port

EXPERIMENT = """\
name: cluster
engine: simulation
num-supernodes: 2
seeds: [0]
base: {num-rounds: 2, local-steps: 1, hidden-sizes: '8', fraction-train: 1.0,
       fraction-evaluate: 1.0, new-clients: 2, eval-steps: 1}
algorithms: {maml: {}}
"""


def ray(*args: str) -> float:
    """Run a ``ray`` CLI command to completion; return the seconds it took."""
    t0 = time.monotonic()
    subprocess.run(
        [console_script("ray"), *args], check=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=180,
    )  # fmt: skip
    return time.monotonic() - t0


def run_experiment(
    yaml: Path, out: Path, address: str, nodes: int, *options: str
) -> tuple[int, str, float]:
    """The runner in this process (its cluster options under test); (exit, output, s)."""
    from simulations.run import main

    buffer = io.StringIO()
    t0 = time.monotonic()
    args = [str(yaml), "--out", str(out), "--ray-address", address, "--ray-nodes", str(nodes)]
    args += options
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(args)
    return code, buffer.getvalue(), time.monotonic() - t0


def actor_nodes(address: str) -> dict[str, list[dict[str, float]]]:
    """Ray node id -> the resources each ClientApp actor that lived there was granted, read
    from the cluster's GCS actor table (what Ray scheduled, not what we asked for)."""
    import ray as ray_api
    from ray.core.generated import gcs_pb2

    ray_api.init(address=address, log_to_driver=False)
    try:
        accessor = ray_api._private.state.state._connect_and_get_accessor()
        placed: dict[str, list[dict[str, float]]] = {}
        for raw in accessor.get_actor_table(None, None):
            actor = gcs_pb2.ActorTableData.FromString(raw)
            if "ClientAppActor" in actor.class_name:
                node = actor.address.node_id.hex()
                placed.setdefault(node, []).append(dict(actor.required_resources))
        return placed
    finally:
        ray_api.shutdown()


def theta_equal(a: Path, b: Path) -> tuple[bool, float]:
    import torch

    ta = torch.load(a / "model.pt", weights_only=True)["theta"]
    tb = torch.load(b / "model.pt", weights_only=True)["theta"]
    diff = max(float((ta[k] - tb[k]).abs().max()) for k in ta)
    return set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), diff


def teardown() -> dict[str, object]:
    """``ray stop`` (this namespace's Ray only), then every other process here, by PID."""
    took = ray("stop")
    me = os.getpid()
    left = [p for p in psutil.process_iter(["name"]) if p.pid != me]
    names = sorted({p.info["name"] for p in left})
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(left, timeout=10)
    return {"ray-stop-s": round(took, 1), "left-after-ray-stop": names}


def main(out: Path) -> dict[str, object]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's sockets
    os.environ.pop("RAY_ADDRESS", None)
    result: dict[str, object] = {"netns": os.readlink("/proc/self/ns/net")}
    yaml = out / "cluster.yaml"
    yaml.write_text(EXPERIMENT)
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        # One logical GPU per node: Ray schedules it like a real one (no device needed), so
        # the runner's gpus-per-client reaches Ray's scheduler; with the CPU build of torch
        # the workers still compute on the CPU (device auto), so theta is comparable.
        common = ["--num-cpus=1", "--num-gpus=1", "--disable-usage-stats"]
        result["head-start-s"] = round(
            ray("start", "--head", f"--port={port}", "--include-dashboard=false", *common), 1
        )
        result["node-start-s"] = round(ray("start", f"--address={address}", *common), 1)
        code, log, took = run_experiment(
            yaml, out / "cluster", address, 2, "--gpus-per-client", "1"
        )
        result |= {"cluster-exit": code, "cluster-log": log, "cluster-s": round(took, 1)}
        result["actor-nodes"] = actor_nodes(address)
        from simulations.ray_cluster import live_nodes

        result["ray-nodes"] = len(live_nodes(address))
        code, log, took = run_experiment(yaml, out / "private", "local", 0)
        result |= {"private-exit": code, "private-log": log, "private-s": round(took, 1)}
        run = Path("maml") / "seed0"
        equal, diff = theta_equal(out / "cluster" / run, out / "private" / run)
        result |= {"theta-equal": equal, "theta-max-diff": diff}
    finally:
        result |= teardown()
    return result


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    outcome = main(folder)
    (folder / "result.json").write_text(json.dumps(outcome, indent=1) + "\n")

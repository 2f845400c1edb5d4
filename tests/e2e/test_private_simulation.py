"""DP and SecAgg+ on Flower's real Simulation Engine: the same theta as the one-process loop
(the DP noise and the Poisson sample are seeded with dp-reproducible-noise; SecAgg+ adds
only quantization error)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.run_folder import RunFolder
from server.secagg import quantization_range
from simulations.engine import simulation_superlink
from simulations.loop import run_in_loop

pytestmark = pytest.mark.slow

NODES, PER_NODE, CLIP = 3, 2, 0.01
CONFIG = {
    "algorithm": "maml",
    "num-rounds": 2,
    "local-steps": 2,
    "hidden-sizes": "16",
    "clients-per-node": PER_NODE,
    "min-available-nodes": NODES,
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
    "eval-steps": 2,
    "server-optimizer": "sgd",
    "server-lr": 1.0,
    "weighting": "uniform",
    "secagg": True,
    "dp": True,
    "dp-clip": CLIP,
    "dp-noise-multiplier": 0.8,
    "dp-reproducible-noise": True,  # the loop and the engine must draw the same noise
}


def test_secagg_with_dp_on_the_simulation_engine_matches_the_loop(tmp_path):
    with simulation_superlink(tmp_path / "flwr-home") as link:
        log = link.run(CONFIG | {"run-dir": str(tmp_path / "sim")}, NODES, timeout=400)
    assert link.process.poll() is not None, "the SuperLink must be stopped"
    assert "Secure aggregation completed" in log
    run_in_loop(CONFIG | {"run-dir": str(tmp_path / "loop")}, NODES)
    rows = [json.loads(x) for x in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert [r["privacy"]["secagg"]["nodes"] for r in rows] == [NODES, NODES]
    assert rows[-1]["privacy"]["epsilon"] > 0
    sim, loop = (
        RunFolder(tmp_path / "sim").load_checkpoint(),
        RunFolder(tmp_path / "loop").load_checkpoint(),
    )
    assert sim is not None and loop is not None and sim.privacy == loop.privacy
    k = int(NODES * PER_NODE * CONFIG["fraction-train"])  # the fixed denominator
    bound = 2 * NODES * PER_NODE * 2 * CLIP / quantization_range(NODES) / k + 1e-6
    for key, value in loop.state.items():
        np.testing.assert_allclose(sim.state[key], value, rtol=0, atol=bound)


def test_distributed_dp_on_the_simulation_engine_matches_the_loop(tmp_path):
    """Each node's sample, rounding and noise share (reproducible mode: from the seed and
    its partitions) and the integer sum SecAgg+ unmasks are the same as in the loop."""
    config = CONFIG | {"dp-mechanism": "distributed", "fraction-train": 0.5}
    with simulation_superlink(tmp_path / "flwr-home") as link:
        log = link.run(config | {"run-dir": str(tmp_path / "sim")}, NODES, timeout=400)
    assert link.process.poll() is not None, "the SuperLink must be stopped"
    assert "Secure aggregation completed" in log
    run_in_loop(config | {"run-dir": str(tmp_path / "loop")}, NODES)
    rows = [json.loads(x) for x in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["privacy"]["mechanism"] == "distributed"
        assert row["privacy"]["nodes-summed"] == NODES and row["accepted"] is None
    sim, loop = (
        RunFolder(tmp_path / "sim").load_checkpoint(),
        RunFolder(tmp_path / "loop").load_checkpoint(),
    )
    assert sim is not None and loop is not None and sim.privacy == loop.privacy
    for key, value in loop.state.items():
        np.testing.assert_allclose(sim.state[key], value, rtol=0, atol=1e-7)

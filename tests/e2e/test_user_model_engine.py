"""A user's model factory in a module outside the project, on Flower's Simulation Engine:
Ray workers import it from PYTHONPATH, exactly as the server does (issue 16)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from simulations.engine import PROJECT_ROOT, SimulationError, simulation_superlink
from tests.user_code import write_user_module

pytestmark = pytest.mark.slow


def test_a_factory_outside_the_project_trains_on_the_simulation_engine(tmp_path):
    folder = tmp_path / "user-project"  # not under the project, not in the FAB
    folder.mkdir()
    name = write_user_module(folder)
    env = {
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(folder)]),
        "RAY_ADDRESS": "local",  # a Ray of its own, never one already running here
    }
    config = {
        "algorithm": "maml",
        "model": f"{name}:small_mlp",
        "model-args": json.dumps({"hidden": 12}),
        "loss": f"{name}:double_mse",
        "num-rounds": 2,
        "local-steps": 2,
        "fraction-train": 0.5,
        "new-clients": 3,
        "run-dir": str(tmp_path / "run"),
    }
    with simulation_superlink(tmp_path / "flwr-home", extra_env=env) as link:
        log = link.run(config, num_supernodes=4, timeout=300)
        with pytest.raises(SimulationError):  # the same factory where no one can import it
            link.run(
                config | {"model": "no_such_user_package_z3:net", "run-dir": str(tmp_path / "x")},
                2, log_file=tmp_path / "bad.txt", timeout=300,
            )  # fmt: skip
    assert link.process.poll() is not None, "the SuperLink must be stopped"
    assert "round 2/2 [maml]" in log
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in rows] == [2, 2]  # every client imported the factory
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert torch.isfinite(torch.tensor(summary["new-mse-k10-mean"]))
    theta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["theta"]
    assert theta["1.weight"].shape == (12, 1)  # the user's layers and model-args
    bad = (tmp_path / "bad.txt").read_text()
    assert "module 'no_such_user_package_z3' cannot be imported" in bad
    assert not (tmp_path / "x" / "metrics.jsonl").exists()  # refused before round 1

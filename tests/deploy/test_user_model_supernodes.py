"""A user's model factory on real SuperNodes (TLS, node authentication): the module is on
PYTHONPATH of the SuperLink's machine (the ServerApp builds theta) and of every SuperNode,
not inside the app, and the run trains with it (issue 16; docs/models.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from deploy.federation import PROJECT_ROOT, local_federation, run_outcome
from deploy.processes import descendants
from tests.user_code import write_user_module

pytestmark = pytest.mark.slow


def test_a_factory_on_pythonpath_trains_on_two_supernodes(tmp_path: Path, monkeypatch):
    folder = tmp_path / "user-project"
    folder.mkdir()
    name = write_user_module(folder)
    # Every Flower process inherits this environment (deploy.federation.flower_env).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT), str(folder)]))
    run = {
        "model": f"{name}:small_mlp",
        "model-args": json.dumps({"hidden": 12}),
        "num-rounds": 2,
        "local-steps": 2,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "min-available-nodes": 2,
        "run-dir": str(tmp_path / "run"),
    }
    helpers = []
    with local_federation(tmp_path / "federation", 2) as federation:
        proc = federation.start_run(run)
        log, _ = proc.communicate(timeout=400)
        outcome = run_outcome(federation.layout, log)
        for p in federation.processes:
            if p.alive():
                helpers += descendants(p.pid)
    assert outcome.completed, f"{outcome}\n{log[-3000:]}"
    assert not [p.name for p in federation.processes if p.alive()], "processes left running"
    assert not [h.pid for h in helpers if h.alive()], "helper processes left running"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in rows] == [2, 2]  # both nodes imported the factory
    theta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["theta"]
    assert theta["1.weight"].shape == (12, 1)

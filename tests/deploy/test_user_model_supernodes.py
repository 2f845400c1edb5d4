"""A user's model factory on real SuperNodes (TLS, node authentication), both ways a user's
module travels (issue 16; docs/models.md): on PYTHONPATH of the SuperLink's machine (the
ServerApp builds theta) and of every SuperNode, or inside the app's FAB."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from deploy.federation import PROJECT_ROOT, local_federation, run_outcome
from deploy.managed_process import descendants
from tests.user_code import write_user_module

pytestmark = pytest.mark.slow


def test_a_factory_on_pythonpath_or_in_the_fab_trains_on_two_supernodes(
    tmp_path: Path, monkeypatch
):
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
    # The same app with a module of its own that exists nowhere else: only the FAB has it.
    app = tmp_path / "app"
    shutil.copytree(PROJECT_ROOT, app, ignore=shutil.ignore_patterns(*NOT_THE_APP))
    in_fab = write_user_module(app)
    fab_run = run | {"model": f"{in_fab}:small_mlp", "run-dir": str(tmp_path / "fab-run")}
    helpers, outcomes = [], []
    with local_federation(tmp_path / "federation", 2) as federation:
        for config, app_dir in ((run, PROJECT_ROOT), (fab_run, app)):
            proc = federation.start_run(config, app=app_dir)
            log, _ = proc.communicate(timeout=400)
            outcomes.append((run_outcome(federation.layout, log), log))
        for p in federation.processes:
            if p.alive():
                helpers += descendants(p.pid)
    for outcome, log in outcomes:
        assert outcome.completed, f"{outcome}\n{log[-3000:]}"
    assert not [p.name for p in federation.processes if p.alive()], "processes left running"
    assert not [h.pid for h in helpers if h.alive()], "helper processes left running"
    for run_dir in (tmp_path / "run", tmp_path / "fab-run"):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["accepted"] for r in rows] == [2, 2]  # both nodes imported the factory
        theta = torch.load(run_dir / "model.pt", weights_only=True)["theta"]
        assert theta["1.weight"].shape == (12, 1)


# What a checkout holds besides the app (kept out of the copied app folder).
NOT_THE_APP = (".git", ".ci", "tests", "docs", "runs", "results", "__pycache__", "*.png")

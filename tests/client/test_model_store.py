"""Edge clients keep their personalised model on their own disk (node config `model-dir`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.app import app as client_app
from client.model_store import INFO_FILE, STATE_FILE, ModelStoreError, save_personalized
from common.config import parse_settings
from common.data.registry import load_client_data
from common.models import model_for
from common.personalize import personalize_and_score
from server.app import run_federation
from simulations.loop import LoopGrid

NODES = 4
CONFIG = {"num-rounds": 2, "local-steps": 2, "hidden-sizes": "16", "eval-steps": 5,
          "fraction-train": 0.5, "fraction-evaluate": 0.5}  # fmt: skip


def _federation_with_model_dirs(tmp_path: Path) -> tuple[dict, list[Path]]:
    config = CONFIG | {"run-dir": str(tmp_path / "run")}
    grid = LoopGrid(client_app, config, NODES)
    dirs = [tmp_path / f"node-{i}" for i in range(NODES)]
    for node_id, context in grid.contexts.items():
        context.node_config["model-dir"] = str(dirs[node_id - 1])
    run_federation(parse_settings(config), grid)
    return config, dirs


def test_every_node_keeps_exactly_the_model_it_scored_in_the_last_round(tmp_path):
    config, dirs = _federation_with_model_dirs(tmp_path)
    settings = parse_settings(config)
    theta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["theta"]
    for pid, folder in enumerate(dirs):
        info = json.loads((folder / INFO_FILE).read_text())
        assert info["round"] == 2 and info["partition-id"] == pid  # the final round scores all
        saved = torch.load(folder / STATE_FILE, weights_only=True)
        # Recompute the node's round-2 personalisation from the final theta: same numbers.
        expected = personalize_and_score(
            model_for(settings), theta, settings.inner_lr, load_client_data(settings, pid, NODES),
            steps=settings.eval_steps, batch_size=settings.batch_size, task=settings.task,
            rng=np.random.default_rng([settings.seed, pid, 2, 1]), device=torch.device("cpu"),
        )  # fmt: skip
        assert info["scores"]["loss-after"] == pytest.approx(expected.after.loss, rel=1e-6)
        assert info["scores"]["loss-after"] != info["scores"]["loss-before"]
        for name, value in expected.params.items():
            torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
        model_for(settings).load_state_dict(saved)  # a plain state_dict of the model
        assert sorted(p.name for p in folder.iterdir()) == [INFO_FILE, STATE_FILE]  # no temp


def test_an_unwritable_model_dir_is_named_in_the_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelStoreError, match="a-file.*writable folder"):
        save_personalized(blocker, {"w": torch.zeros(2)}, {"round": 1})


def test_rewriting_replaces_the_previous_model(tmp_path):
    save_personalized(tmp_path, {"w": torch.zeros(2)}, {"round": 1})
    save_personalized(tmp_path, {"w": torch.ones(2)}, {"round": 2})
    assert torch.equal(torch.load(tmp_path / STATE_FILE, weights_only=True)["w"], torch.ones(2))
    assert json.loads((tmp_path / INFO_FILE).read_text())["round"] == 2

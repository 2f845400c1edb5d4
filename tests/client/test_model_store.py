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
from common.scoring import personalize_and_score
from server.app import run_federation
from simulations.loop import LoopGrid
from tests.torch_files import storage_locations

NODES = 4
CONFIG = {"num-rounds": 2, "local-steps": 2, "hidden-sizes": "16", "eval-steps": 5,
          "fraction-train": 0.5, "fraction-evaluate": 0.5}  # fmt: skip
# Where a node may have computed on CUDA, its model is compared with a CPU recomputation to
# float32 rounding (different kernels sum in different orders); on CPU the numbers are equal.
CUDA_VS_CPU = {"rtol": 1e-5, "atol": 1e-6}
DEVICES = ["auto", pytest.param("cuda", marks=pytest.mark.cuda)]


def _federation_with_model_dirs(tmp_path: Path, device: str) -> tuple[dict, list[Path]]:
    config = CONFIG | {"run-dir": str(tmp_path / "run"), "device": device}
    grid = LoopGrid(client_app, config, NODES)
    dirs = [tmp_path / f"node-{i}" for i in range(NODES)]
    for node_id, context in grid.contexts.items():
        context.node_config["model-dir"] = str(dirs[node_id - 1])
    run_federation(parse_settings(config), grid)
    return config, dirs


@pytest.mark.parametrize("device", DEVICES)
def test_every_node_keeps_exactly_the_model_it_scored_in_the_last_round(tmp_path, device):
    config, dirs = _federation_with_model_dirs(tmp_path, device)
    settings = parse_settings(config)
    on_cpu = not torch.cuda.is_available()  # then every node computed on the CPU
    tol = {"rtol": 0, "atol": 0} if on_cpu else CUDA_VS_CPU
    assert storage_locations(tmp_path / "run" / "model.pt") == {"cpu"}
    theta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["theta"]
    for pid, folder in enumerate(dirs):
        info = json.loads((folder / INFO_FILE).read_text())
        assert info["round"] == 2 and info["partition-id"] == pid  # the final round scores all
        assert storage_locations(folder / STATE_FILE) == {"cpu"}  # loads on a CPU-only device
        saved = torch.load(folder / STATE_FILE, weights_only=True)
        # Recompute the node's round-2 personalisation from the final theta: same numbers.
        expected = personalize_and_score(
            model_for(settings), theta, settings.inner_lr, load_client_data(settings, pid, NODES),
            steps=settings.eval_steps, batch_size=settings.batch_size, task=settings.task,
            rng=np.random.default_rng([settings.seed, pid, 2, 1]), device=torch.device("cpu"),
        )  # fmt: skip
        loss_rel = 1e-6 if on_cpu else CUDA_VS_CPU["rtol"]
        assert info["scores"]["loss-after"] == pytest.approx(expected.after.loss, rel=loss_rel)
        assert info["scores"]["loss-after"] != info["scores"]["loss-before"]
        for name, value in expected.params.items():
            torch.testing.assert_close(saved[name], value, **tol)
        model_for(settings).load_state_dict(saved)  # a plain state_dict of the model
        assert sorted(p.name for p in folder.iterdir()) == [INFO_FILE, STATE_FILE]  # no temp


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_saved_model_is_a_cpu_copy_of_the_params_wherever_they_live(tmp_path, device):
    params = {"w": torch.arange(3.0, device=device).requires_grad_(True)}
    save_personalized(tmp_path, params, {"round": 1})
    with torch.no_grad():
        params["w"].add_(1.0)  # the node goes on training: the file must not follow
    assert storage_locations(tmp_path / STATE_FILE) == {"cpu"}
    saved = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert saved["w"].device.type == "cpu" and not saved["w"].requires_grad
    torch.testing.assert_close(saved["w"], torch.arange(3.0), rtol=0, atol=0)


def test_one_client_of_a_stacked_cohort_is_saved_alone(tmp_path):
    # A cohort's models arrive stacked; torch.save of a view would write the whole stack.
    stacked = torch.zeros(1000, 256)
    save_personalized(tmp_path, {"w": stacked[1]}, {"round": 1})
    assert (tmp_path / STATE_FILE).stat().st_size < 256 * 4 + 2048
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["w"].shape == (256,)


def test_the_location_check_sees_a_tensor_saved_from_cuda_without_cuda(tmp_path, monkeypatch):
    # torch.save records each storage's device through location_tag: make it say CUDA.
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"w": torch.zeros(2)}, tmp_path / "from-gpu.pt")
    monkeypatch.undo()
    assert storage_locations(tmp_path / "from-gpu.pt") == {"cuda:0"}


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


def test_a_node_hosting_several_clients_keeps_one_model_folder_per_client(tmp_path):
    config = CONFIG | {"run-dir": str(tmp_path / "run"), "clients-per-node": 3,
                       "min-available-nodes": 1, "num-rounds": 1}  # fmt: skip
    grid = LoopGrid(client_app, config, 2)
    for node_id, context in grid.contexts.items():
        context.node_config["model-dir"] = str(tmp_path / f"node-{node_id - 1}")
    run_federation(parse_settings(config), grid)
    for node in range(2):
        folders = sorted(p.name for p in (tmp_path / f"node-{node}").iterdir())
        assert folders == [f"partition-{3 * node + j}" for j in range(3)]
        for j in range(3):
            info = json.loads((tmp_path / f"node-{node}" / folders[j] / INFO_FILE).read_text())
            assert info["partition-id"] == 3 * node + j and info["num-partitions"] == 6

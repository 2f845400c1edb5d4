"""Checkpoints: atomic, exact, refused when they do not match the model, and resumed only
beside the config.json they were trained with."""

from __future__ import annotations

import re

import numpy as np
import pytest

from common.config import ConfigError, parse_settings
from server.optimizer import OptimizerState
from server.run_folder import Checkpoint, CheckpointMismatch, RunFolder

STATE = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "alpha/w": np.full((2, 3), 0.1, np.float32),
}


def test_checkpoint_round_trips_exactly(tmp_path):
    folder = RunFolder(tmp_path)
    opt = OptimizerState(step=3, m={"w": np.ones((2, 3))}, v={"w": np.full((2, 3), 2.0)})
    folder.save_checkpoint(Checkpoint(7, STATE, opt))
    got = folder.load_checkpoint(expected=STATE)
    assert got is not None and got.server_round == 7 and got.optimizer.step == 3
    for k in STATE:
        np.testing.assert_array_equal(got.state[k], STATE[k])
    np.testing.assert_array_equal(got.optimizer.v["w"], opt.v["w"])
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, no leftovers


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({"w": np.zeros((2, 3), np.float32)}, "different model or algorithm"),
        (STATE | {"w": np.zeros((3, 2), np.float32)}, "float32[3, 2]"),
    ],
)
def test_a_checkpoint_of_another_model_is_refused(tmp_path, expected, message):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(Checkpoint(1, STATE, OptimizerState()))
    with pytest.raises(CheckpointMismatch, match=re.escape(message)):
        folder.load_checkpoint(expected=expected)


def test_a_fresh_run_does_not_overwrite_a_checkpoint(tmp_path):
    from server.app import initial_state, run_federation

    settings = parse_settings({"run-dir": str(tmp_path)})
    trained = Checkpoint(4, initial_state(settings), OptimizerState(step=4))
    RunFolder(tmp_path).save_checkpoint(trained)
    with pytest.raises(ConfigError, match="resume=true"):
        run_federation(settings, grid=None)  # type: ignore[arg-type]


def test_rows_after_the_checkpoint_and_a_row_cut_short_are_dropped(tmp_path):
    folder = RunFolder(tmp_path)
    for rnd in (1, 2, 3):
        folder.append_jsonl("metrics.jsonl", {"round": rnd})
    with folder.file("metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "acc')  # the crash came mid-write
    folder.truncate_jsonl_after("metrics.jsonl", 2)
    assert folder.file("metrics.jsonl").read_text() == '{"round": 1}\n{"round": 2}\n'


TINY = {"num-rounds": 1, "local-steps": 1, "hidden-sizes": "8", "fraction-train": 0.5}


def _trained_run(run_dir) -> dict[str, bytes]:
    from simulations.loop import run_in_loop

    run_in_loop(TINY | {"algorithm": "maml", "run-dir": str(run_dir)}, num_nodes=4)
    (run_dir / "summary.json").unlink()  # as if interrupted after its last checkpoint
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_the_settings_hash_is_written_with_theta(tmp_path):
    import json

    import torch

    from server.run_folder import settings_hash

    _trained_run(tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())
    ckpt = RunFolder(tmp_path).load_checkpoint()
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt is not None and ckpt.settings_hash == settings_hash(recorded)
    assert model["settings-hash"] == settings_hash(json.loads(model["settings"]))
    assert settings_hash(recorded | {"num-rounds": 99}) == ckpt.settings_hash  # resumable
    assert settings_hash(recorded | {"algorithm": "fedavg"}) != ckpt.settings_hash


def _without_config(run_dir) -> str:
    (run_dir / "config.json").unlink()
    return "config.json is missing"


def _config_edited(run_dir) -> str:
    import json

    path = run_dir / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"algorithm": "fedavg"}))
    return "does not hold the settings the checkpoint at round 1 was trained with"


@pytest.mark.parametrize("damage", [_without_config, _config_edited], ids=["deleted", "edited"])
def test_a_checkpoint_resumes_only_beside_the_config_it_was_trained_with(tmp_path, damage):
    """Without the hash, deleting or editing config.json let a checkpoint of maml resume
    as fedavg, and config.json and model.pt then claimed fedavg for the whole run."""
    from server.run_folder import RunFolderError
    from simulations.loop import run_in_loop

    _trained_run(tmp_path)
    problem = damage(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fedavg = TINY | {"algorithm": "fedavg", "run-dir": str(tmp_path), "resume": True}
    with pytest.raises(RunFolderError, match=problem) as err:
        run_in_loop(fedavg | {"num-rounds": 2}, num_nodes=4)
    assert "resume=false" in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_run_dir_of_the_users_is_refused_and_untouched(tmp_path):
    from common.folders import FolderError
    from simulations.loop import run_in_loop

    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(FolderError, match=f"{tmp_path} is not empty and holds no records"):
        run_in_loop(TINY | {"run-dir": str(tmp_path)}, num_nodes=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "summary.json"]
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_a_crash_after_the_last_checkpoint_loses_no_scores(tmp_path):
    """The disk filled up writing summary.json after the final round's checkpoint: the
    rerun has no round left to train and must still score the final model, as the run did."""
    import json

    from simulations.loop import run_in_loop

    config = TINY | {"num-rounds": 2, "run-dir": str(tmp_path)}
    first = run_in_loop(config, num_nodes=4)
    (tmp_path / "summary.json").unlink()
    (tmp_path / "model.pt").unlink()
    again = run_in_loop(config | {"resume": True}, num_nodes=4)
    scores = [k for k in first if k.startswith("mse-")]
    assert scores and {k: again[k] for k in scores} == {k: first[k] for k in scores}
    rounds = [
        json.loads(r)["round"] for r in (tmp_path / "metrics.jsonl").read_text().split("\n") if r
    ]
    assert rounds == [1, 2]

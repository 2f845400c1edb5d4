"""Checkpoints: atomic, exact, and refused when they do not match the model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from common.config import ConfigError, parse_settings
from server.aggregate import OptimizerState
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

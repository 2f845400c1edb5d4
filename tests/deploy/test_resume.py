"""A server killed mid-run resumes from its last checkpoint to exactly the uninterrupted result.

The federation runs in-process (simulations/loop.py) so a crash can be placed precisely:
during round 3 (after its training, before its checkpoint), or right after round 3's
metrics row is written but before its checkpoint is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType

from client.app import app as client_app
from common.config import parse_settings
from server.app import run_federation
from server.run_folder import RunFolder
from simulations.loop import LoopGrid, run_in_loop

NODES = 6
CONFIG = {
    "algorithm": "maml",  # second-order, deterministic on CPU
    "server-optimizer": "adam",  # its moments and step count must survive the crash too
    "server-lr": 0.01,
    "num-rounds": 3,
    "local-steps": 2,
    "hidden-sizes": "16",
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
}


class ServerKilled(BaseException):
    """Stands in for SIGKILL: a BaseException, so no `except Exception` absorbs it."""


class GridDyingInRound(LoopGrid):
    def __init__(self, *args, die_in_round: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.die_in_round = die_in_round

    def _deliver(self, msg: Message) -> Message:
        if (
            msg.metadata.message_type == MessageType.EVALUATE
            and msg.content["config"]["server-round"] == self.die_in_round
        ):
            raise ServerKilled
        return super()._deliver(msg)


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a thread pool only adds hand-offs
    yield
    torch.set_num_threads(previous)


def _checkpoint(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoint.npz") as z:
        return {k: z[k] for k in z.files}


def _rounds(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["round"] for line in lines]


def _crash_during_round_3(run_dir: Path, monkeypatch) -> None:
    config = CONFIG | {"run-dir": str(run_dir)}
    grid = GridDyingInRound(client_app, config, NODES, die_in_round=3)
    with pytest.raises(ServerKilled):
        run_federation(parse_settings(config), grid)


def _crash_before_checkpoint_3(run_dir: Path, monkeypatch) -> None:
    original = RunFolder.save_checkpoint

    def dying(self, ckpt):
        if ckpt.server_round == 3:
            raise ServerKilled
        original(self, ckpt)

    monkeypatch.setattr(RunFolder, "save_checkpoint", dying)
    with pytest.raises(ServerKilled):
        run_in_loop(CONFIG | {"run-dir": str(run_dir)}, NODES)
    monkeypatch.undo()
    assert _rounds(run_dir) == [1, 2, 3]  # round 3's row was written, its checkpoint was not


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    run_in_loop(CONFIG | {"run-dir": str(run_dir)}, NODES)
    return run_dir


@pytest.mark.parametrize("crash", [_crash_during_round_3, _crash_before_checkpoint_3])
def test_resumed_run_ends_exactly_where_an_uninterrupted_one_does(
    crash, uninterrupted, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    crash(run_dir, monkeypatch)
    after_crash = _checkpoint(run_dir)
    assert json.loads(after_crash["__meta__"].tobytes())["round"] == 2

    run_in_loop(CONFIG | {"run-dir": str(run_dir), "resume": True}, NODES)

    straight, resumed = _checkpoint(uninterrupted), _checkpoint(run_dir)
    assert set(resumed) == set(straight)
    for key in straight:  # theta, alpha, Adam's m and v, and the round/step record
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    # ...and round 3 changed theta, so equality above is not the trivial kind.
    assert any(
        not np.array_equal(after_crash[k], straight[k]) for k in straight if k.startswith("state/")
    )
    assert _rounds(run_dir) == [1, 2, 3]
    theta = torch.load(run_dir / "model.pt", weights_only=True)["theta"]
    for name, value in torch.load(uninterrupted / "model.pt", weights_only=True)["theta"].items():
        torch.testing.assert_close(theta[name], value, rtol=0, atol=0)

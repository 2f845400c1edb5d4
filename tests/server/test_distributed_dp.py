"""Distributed DP with SecAgg+ through the real server loop, ClientApp and Flower's SecAgg+
(simulations/loop.py): without noise it gives the central aggregate; with noise the server
learns no per-client detail, epsilon counts the noise shares that survived a node dropping
in the middle of a round, and the labelled reproducible mode reproduces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from common.config import ConfigError
from server.privacy import PrivacyLedger
from server.run_folder import RunFolder
from simulations.loop import LoopGrid, run_in_loop

NODES, PER_NODE, CLIP = 3, 4, 0.01
FAST = {
    "num-rounds": 2, "local-steps": 2, "hidden-sizes": "16", "clients-per-node": PER_NODE,
    "min-available-nodes": 2, "fraction-train": 0.5, "fraction-evaluate": 0.25,
    "eval-steps": 2, "server-optimizer": "sgd", "server-lr": 1.0, "weighting": "uniform",
    "secagg": True, "dp": True, "dp-clip": CLIP, "dp-delta": 1e-3,
}  # fmt: skip
DISTRIBUTED = FAST | {"dp-mechanism": "distributed", "dp-noise-multiplier": 1.0}


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _state(run_dir):
    ckpt = RunFolder(run_dir).load_checkpoint()
    assert ckpt is not None
    return ckpt


def test_without_noise_the_distributed_sum_is_the_central_one(tmp_path):
    exact = FAST | {"fraction-train": 1.0, "dp-noise-multiplier": 0.0}  # q = 1: same clients
    run_in_loop(exact | {"run-dir": str(tmp_path / "central")}, NODES)
    run_in_loop(exact | {"run-dir": str(tmp_path / "dist"), "dp-mechanism": "distributed"}, NODES)
    a, b = _state(tmp_path / "central"), _state(tmp_path / "dist")
    for key in a.state:  # rounding on a grid of ~1e-9 C: float32 cannot tell
        np.testing.assert_allclose(b.state[key], a.state[key], rtol=0, atol=1e-7)
    row = _rows(tmp_path / "dist")[0]["privacy"]
    assert row["mechanism"] == "distributed" and row["nodes-summed"] == NODES


def test_distributed_noise_is_private_accounted_and_reveals_no_client(tmp_path):
    summary = run_in_loop(DISTRIBUTED | {"run-dir": str(tmp_path / "a")}, NODES)
    run_in_loop(DISTRIBUTED | {"run-dir": str(tmp_path / "b")}, NODES)
    rows = _rows(tmp_path / "a")
    for row in rows:
        assert row["accepted"] is None and row["train"] == {} and not row["dropped"]
        assert row["privacy"]["effective-noise-multiplier"] == pytest.approx(1.0, rel=1e-9)
        assert row["privacy"]["release"] == "private"
    q = rows[0]["privacy"]["q"]
    assert q == 0.5
    expected = PrivacyLedger().add(q, rows[0]["privacy"]["effective-noise-multiplier"], 2)
    assert summary["epsilon"] == pytest.approx(expected.epsilon(1e-3))
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    for key in a.state:  # the nodes' noise (and samples) come from OS entropy
        assert not np.array_equal(a.state[key], b.state[key])


def test_a_node_none_of_whose_clients_was_sampled_still_sends_its_noise(tmp_path):
    # q = 1/12: in most rounds two of the three nodes sample no client
    config = DISTRIBUTED | {"fraction-train": 0.1, "num-rounds": 3, "run-dir": str(tmp_path)}
    run_in_loop(config, NODES)
    rows = _rows(tmp_path)
    assert all(r["privacy"]["nodes-summed"] == NODES and not r["dropped"] for r in rows)


def test_the_reproducible_mode_reproduces_distributed_noise(tmp_path):
    labelled = DISTRIBUTED | {"dp-reproducible-noise": True}
    summary = run_in_loop(labelled | {"run-dir": str(tmp_path / "a")}, NODES)
    run_in_loop(labelled | {"run-dir": str(tmp_path / "b")}, NODES)
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    for key in a.state:
        np.testing.assert_array_equal(a.state[key], b.state[key])
    assert summary["not-a-private-release"] == 1.0


def _drop_node_when_masking(monkeypatch, node: int) -> list[int]:
    """Node ``node`` fails in SecAgg+'s 'collect masked vectors' stage: after the keys were
    shared, before its noised sum is in. Returns the rounds (calls) it dropped in."""
    deliver, dropped = LoopGrid._deliver, []

    def failing(self, msg: Message) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = configs.get(Key.STAGE) if configs is not None else None
        if msg.metadata.dst_node_id == node and stage == Stage.COLLECT_MASKED_VECTORS:
            dropped.append(node)
            return Message(Error(code=0, reason="node went away mid-round"), reply_to=msg)
        return deliver(self, msg)

    monkeypatch.setattr(LoopGrid, "_deliver", failing)
    return dropped


@pytest.mark.parametrize("tolerated", [0, 1])
def test_a_node_dropping_mid_round_is_accounted_with_the_noise_that_survived(
    tmp_path, monkeypatch, tolerated
):
    dropped = _drop_node_when_masking(monkeypatch, node=3)
    config = DISTRIBUTED | {"dp-tolerated-drops": tolerated, "run-dir": str(tmp_path / "run")}
    summary = run_in_loop(config, NODES)
    assert dropped == [3, 3]  # in both rounds
    rows = _rows(tmp_path / "run")
    # 2 of the 3 shares survived; each share was sigma^2 / (3 - tolerated)
    z = 1.0 * math.sqrt(2 / (NODES - tolerated))
    for row in rows:
        assert row["privacy"]["nodes-summed"] == 2 and row["privacy"]["nodes"] == NODES
        assert row["privacy"]["effective-noise-multiplier"] == pytest.approx(z, rel=1e-9)
        assert any("node 3" in d and "noise share is missing" in d for d in row["dropped"])
    ledger = PrivacyLedger().add(0.5, rows[0]["privacy"]["effective-noise-multiplier"], 2)
    assert summary["epsilon"] == pytest.approx(ledger.epsilon(1e-3))
    full = PrivacyLedger().add(0.5, 1.0, 2).epsilon(1e-3)
    assert (
        (summary["epsilon"] > full) if tolerated == 0 else summary["epsilon"] == pytest.approx(full)
    )


def test_tolerating_as_many_drops_as_there_are_nodes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'dp-tolerated-drops'"):
        run_in_loop(DISTRIBUTED | {"dp-tolerated-drops": 3, "run-dir": str(tmp_path)}, NODES)

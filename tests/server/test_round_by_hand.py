"""One federated round's theta, computed by hand from what the clients sent.

Four clients of unequal sizes (synthetic: 124, 72, 154 and 182 training examples; their
test splits are 31, 18, 39 and 45, so train-size and test-size weights differ) train one
round on the in-process loop. The test records every reply, weights each client's update
by the size of its training split (read from the data here, not from the reply), and
checks the saved theta against that mean, for the server's SGD (lr = 1: FedAvg) and for
the first Adam step (bias-corrected, m_hat = g and v_hat = g^2).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Message, MessageType

from client.app import app as client_app
from common import messages
from common.arrays import from_record
from common.config import parse_settings
from common.data.registry import load_client_data
from server.app import initial_state, run_federation
from simulations.loop import LoopGrid

NODES, PER_NODE = 2, 2
CLIENTS = NODES * PER_NODE


class RecordingGrid(LoopGrid):
    """A LoopGrid that keeps every train reply it delivers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_replies: list[Message] = []

    def send_and_receive(
        self, messages_: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages_, timeout=timeout))
        self.train_replies += [r for r in replies if r.metadata.message_type == MessageType.TRAIN]
        return replies


def _one_round(tmp_path, **extra) -> tuple[dict, dict, dict[int, dict[str, np.ndarray]], dict]:
    config = {
        "algorithm": "fedavg", "dataset": "synthetic", "model": "logreg",
        "clients-per-node": PER_NODE, "num-rounds": 1, "fraction-train": 1.0,
        "local-steps": 3, "batch-size": 10, "outer-lr": 0.5, "weighting": "examples",
        "aggregation": "mean", "run-dir": str(tmp_path / "run"), **extra,
    }  # fmt: skip
    grid = RecordingGrid(client_app, config, NODES)
    run_federation(parse_settings(config), grid)
    updates: dict[int, dict[str, np.ndarray]] = {}
    for reply in grid.train_replies:
        stacked = from_record(messages.reply_updates(reply.content))
        pids = reply.content.metric_records[messages.METRICS][messages.PARTITION_ID]
        for row, pid in enumerate(pids):
            updates[int(pid)] = {k: v[row].astype(np.float64) for k, v in stacked.items()}
    theta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["theta"]
    return config, initial_state(parse_settings(config)), updates, theta


def _mean(updates: dict[int, dict[str, np.ndarray]], weights: dict[int, float]) -> dict:
    total = sum(weights.values())
    return {k: sum(weights[p] * updates[p][k] for p in sorted(updates)) / total for k in updates[0]}


def _sizes(config: dict) -> tuple[dict[int, int], dict[int, int]]:
    settings = parse_settings(config)
    data = {p: load_client_data(settings, p, CLIENTS) for p in range(CLIENTS)}
    return {p: len(d.x_train) for p, d in data.items()}, {p: len(d.x_test) for p, d in data.items()}


def test_one_fedavg_round_is_the_train_size_weighted_mean_of_the_updates(tmp_path):
    config, theta0, updates, theta1 = _one_round(
        tmp_path, **{"server-optimizer": "sgd", "server-lr": 1.0}
    )
    train, test = _sizes(config)
    assert sorted(updates) == list(range(CLIENTS)) and len(set(train.values())) == CLIENTS
    by_train, by_test = _mean(updates, train), _mean(updates, test)
    gap = max(np.abs(by_train[k] - by_test[k]).max() for k in theta0)
    assert gap > 1e-5  # the two weightings give thetas far apart at float32 precision
    for k, start in theta0.items():
        np.testing.assert_allclose(theta1[k].numpy(), start + by_train[k], rtol=0, atol=1e-7)


def test_the_first_adam_round_steps_by_lr_times_the_sign_of_the_weighted_mean(tmp_path):
    """Adam's first step: m_hat = g, v_hat = g^2, so theta moves by lr * D / (|D| + eps)
    with D the train-size weighted mean update (about +-lr wherever D is not tiny)."""
    lr, eps = 0.03, 1e-8
    config, theta0, updates, theta1 = _one_round(
        tmp_path, **{"server-optimizer": "adam", "server-lr": lr, "server-eps": eps}
    )
    train, _ = _sizes(config)
    delta = _mean(updates, train)
    for k, start in theta0.items():
        expected = start + lr * delta[k] / (np.abs(delta[k]) + eps)
        np.testing.assert_allclose(theta1[k].numpy(), expected, rtol=0, atol=2e-7)
    assert any(np.abs(delta[k]).max() > 1e-3 for k in delta)  # the step is not all zeros


def test_uniform_weighting_ignores_the_sizes(tmp_path):
    config, theta0, updates, theta1 = _one_round(
        tmp_path, **{"server-optimizer": "sgd", "server-lr": 1.0, "weighting": "uniform"}
    )
    plain = _mean(updates, dict.fromkeys(updates, 1.0))
    for k, start in theta0.items():
        np.testing.assert_allclose(theta1[k].numpy(), start + plain[k], rtol=0, atol=1e-7)

"""The strategy screens replies before they touch theta and aggregates the rest."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.arrays import to_record
from common.config import parse_settings
from server.aggregate import OptimizerConfig
from server.strategy import MetaStrategy

THETA = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}


class _Nodes:
    def sample(self, fraction, seed, server_round, purpose):
        return [1, 2, 3, 4, 5, 6]

    def partition_of(self, node_id):
        return node_id - 1


@pytest.fixture(autouse=True)
def _server_identity():
    """Messages are stamped with the identity of the process that creates them."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def _instruction(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int, update: dict, n: int) -> Message:
    content = RecordDict(
        {
            "arrays": to_record(update),
            "metrics": MetricRecord({"num-examples": n, "skipped": 0, "loss": 1.0}),
        }
    )
    return Message(content, reply_to=_instruction(node))


def test_bad_replies_are_dropped_and_the_rest_aggregated():
    settings = parse_settings({"fraction-train": 1.0})
    strategy = MetaStrategy(settings, _Nodes(), OptimizerConfig("sgd", 1.0))  # type: ignore[arg-type]
    strategy.configure_train(1, to_record(THETA), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    good1 = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([0.0], np.float32)}
    good2 = {"w": np.array([-1.0, 3.0], np.float32), "b": np.array([2.0], np.float32)}
    nan = {"w": np.array([np.nan, 0.0], np.float32), "b": np.array([0.0], np.float32)}
    shape = {"w": np.zeros(3, np.float32), "b": np.array([0.0], np.float32)}
    dtype = {"w": np.zeros(2, np.float64), "b": np.array([0.0], np.float32)}
    errored = Message(Error(code=1, reason="boom"), reply_to=_instruction(6))
    replies = [
        _reply(1, good1, 1),
        _reply(2, nan, 5),
        _reply(3, shape, 5),
        _reply(4, good2, 3),
        _reply(5, dtype, 5),
        errored,
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    new = {k: v.numpy() for k, v in arrays.items()}
    # SGD(lr=1): theta + (1 * good1 + 3 * good2) / 4
    np.testing.assert_allclose(new["w"], [1.0 + (1 - 3) / 4, 2.0 + (1 + 9) / 4])
    np.testing.assert_allclose(new["b"], [0.5 + (0 + 6) / 4])
    assert strategy.report.accepted == 2
    reasons = " | ".join(strategy.report.dropped)
    assert "NaN" in reasons and "shape" in reasons and "dtype" in reasons and "boom" in reasons
    assert metrics["clients"] == 2


def test_round_with_only_bad_replies_leaves_theta_unchanged():
    settings = parse_settings({})
    strategy = MetaStrategy(settings, _Nodes(), OptimizerConfig("adam", 0.1))  # type: ignore[arg-type]
    strategy.configure_train(1, to_record(THETA), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    extra = dict(THETA) | {"z": np.zeros(1, np.float32)}
    arrays, metrics = strategy.aggregate_train(1, [_reply(1, extra, 3)])
    assert arrays is None and metrics is None
    assert "extra ['z']" in strategy.report.dropped[0]
    assert strategy.optimizer_state.step == 0  # the optimizer did not move


def test_aggregation_does_not_depend_on_reply_order():
    """Floating-point sums are not associative; replies are summed in partition order."""
    settings = parse_settings({"fraction-train": 1.0})
    values = [1e16, 1.0, -1e16]  # (a + b) + c != (a + c) + b in floating point
    results = []
    for order in ([0, 1, 2], [0, 2, 1], [2, 1, 0]):
        strategy = MetaStrategy(settings, _Nodes(), OptimizerConfig("sgd", 1.0))  # type: ignore[arg-type]
        strategy.configure_train(1, to_record(THETA), ConfigRecord(), grid=None)  # type: ignore[arg-type]
        replies = [
            _reply(i + 1, {"w": np.full(2, values[i], np.float32), "b": np.zeros(1, np.float32)}, 1)
            for i in order
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        results.append(arrays["w"].numpy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])

"""A training round screens every client's update before it touches theta and aggregates the rest,
whether a node answers for one client or for a cohort."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.arrays import to_record
from server.evaluation import summarise_evaluation
from tests.server.rounds import FixedNodes, round_on_replies, strategy_for

THETA = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}


# Six one-client nodes (node n hosts partition n - 1) and one node 7 hosting 6..9.
NODES = {n: [n - 1] for n in range(1, 7)} | {7: [6, 7, 8, 9]}


@pytest.fixture(autouse=True)
def _server_identity():
    """Messages are stamped with the identity of the process that creates them."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def _instruction(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int, updates: list[dict], ns: list[int], partitions=None, skipped=None) -> Message:
    partitions = partitions or ([node - 1] if node < 7 else list(range(6, 6 + len(updates))))
    stacked = {k: np.stack([u[k] for u in updates]) for k in updates[0]}
    content = RecordDict(
        {
            "updates": to_record(stacked),
            "metrics": MetricRecord(
                {
                    "partition-id": partitions,
                    "num-examples": ns,
                    "skipped": skipped or [0] * len(ns),
                    "loss": [1.0] * len(ns),
                }
            ),
            "skip": ConfigRecord({"reasons": ["too small" if s else "" for s in skipped or ns]}),
        }
    )
    return Message(content, reply_to=_instruction(node))


# These tests pin screening and the example-weighted mean's arithmetic, so they state
# the plain weighting; the defaults (capped claims, a norm bound) are tested on their own.
PLAIN = {"weighting": "examples", "norm-bound-median-factor": 0.0}


def _round(replies, optimizer=("sgd", 1.0), **config):
    config = {"fraction-train": 1.0, **PLAIN, **config}
    return round_on_replies(config, FixedNodes(NODES), replies, THETA, optimizer)


def _u(w, b=0.0, dtype=np.float32) -> dict:
    return {"w": np.asarray(w, dtype), "b": np.array([b], np.float32)}


def test_each_node_is_asked_for_its_sampled_clients():
    strategy = strategy_for({}, FixedNodes(NODES))
    messages = strategy.train_messages(3, to_record(THETA), strategy.sample_train(3))
    asked = {m.metadata.dst_node_id: m.content["config"]["clients"] for m in messages}
    assert asked[7] == [6, 7, 8, 9] and asked[1] == [0]
    assert all(m.content["config"]["server-round"] == 3 for m in messages)


def test_bad_replies_are_dropped_and_the_rest_aggregated():
    good1, good2 = _u([1.0, 1.0]), _u([-1.0, 3.0], 2.0)
    errored = Message(Error(code=1, reason="boom"), reply_to=_instruction(6))
    replies = [
        _reply(1, [good1], [1]),
        _reply(2, [_u([np.nan, 0.0])], [5]),
        _reply(3, [_u([0.0, 0.0, 0.0])], [5]),  # wrong shape
        _reply(4, [good2], [3]),
        _reply(5, [_u([0.0, 0.0], dtype=np.float64)], [5]),
        errored,
    ]
    out = _round(replies)
    arrays, metrics = out.theta, out.metrics
    assert arrays is not None and metrics is not None
    new = arrays
    # SGD(lr=1): theta + (1 * good1 + 3 * good2) / 4
    np.testing.assert_allclose(new["w"], [1.0 + (1 - 3) / 4, 2.0 + (1 + 9) / 4])
    np.testing.assert_allclose(new["b"], [0.5 + (0 + 6) / 4])
    assert out.report.accepted == 2
    reasons = " | ".join(out.report.dropped)
    assert "NaN" in reasons and "shape" in reasons and "dtype" in reasons and "boom" in reasons
    assert "partition 5 (node 6): error reply: boom" in reasons
    assert metrics["clients"] == 2


def test_a_nan_client_inside_a_cohort_is_dropped_alone():
    cohort = [_u([1.0, 1.0]), _u([np.inf, 0.0]), _u([3.0, 3.0], 1.0), _u([0.0, 0.0])]
    # partition 9 was skipped by its node (too little data): dropped with the node's reason
    reply = _reply(7, cohort, [1, 1, 1, 1], skipped=[0, 0, 0, 1])
    out = _round([reply])
    arrays = out.theta
    assert arrays is not None and out.report.accepted == 2
    np.testing.assert_allclose(arrays["w"], [1.0 + 2.0, 2.0 + 2.0])  # mean of 6 and 8
    dropped = out.report.dropped
    assert any(d.startswith("partition 7 (node 7)") and "NaN or infinite" in d for d in dropped)
    assert any(d.startswith("partition 9 (node 7)") and "too small" in d for d in dropped)
    # every other asked-for client without a reply is reported too, never silently lost
    assert sum("no train reply" in d for d in dropped) == 6  # partitions 0..5 of nodes 1..6


def test_a_node_cannot_answer_for_clients_it_was_not_asked_for():
    reply = _reply(1, [_u([1.0, 1.0]), _u([100.0, 100.0])], [1, 1], partitions=[0, 3])
    out = _round([reply])
    arrays = out.theta
    assert arrays is not None and out.report.accepted == 1
    np.testing.assert_allclose(arrays["w"], [2.0, 3.0])
    assert any("partition 3 (node 1)" in d and "did not ask" in d for d in out.report.dropped)


def test_a_malformed_cohort_reply_drops_each_of_its_clients_by_name():
    reply = _reply(7, [_u([1.0, 1.0]), _u([1.0, 1.0])], [1, 1, 1], partitions=[6, 7, 8])
    out = _round([reply])
    arrays = out.theta
    assert arrays is None
    assert (
        sum(
            d.startswith(f"partition {p} (node 7)")
            for p in (6, 7, 8, 9)
            for d in out.report.dropped
        )
        == 4
    )


def test_round_with_only_bad_replies_leaves_theta_unchanged():
    extra = dict(THETA) | {"z": np.zeros(1, np.float32)}
    out = _round([_reply(1, [extra], [3])], optimizer=("adam", 0.1))
    arrays, metrics = out.theta, out.metrics
    assert arrays is None and metrics is None
    assert any(
        d.startswith("partition 0 (node 1)") and "extra ['z']" in d for d in out.report.dropped
    )
    assert out.optimizer_state.step == 0  # the optimizer did not move


def test_aggregation_does_not_depend_on_reply_order():
    """Floating-point sums are not associative; clients are summed in partition order."""
    values = [1e16, 1.0, -1e16]  # (a + b) + c != (a + c) + b in floating point
    results = []
    for order in ([0, 1, 2], [0, 2, 1], [2, 1, 0]):
        replies = [_reply(i + 1, [_u(np.full(2, values[i]))], [1]) for i in order]
        out = _round(replies)
        arrays = out.theta
        assert arrays is not None
        results.append(arrays["w"])
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_evaluation_rows_are_read_per_client_like_training_replies():
    from server.evaluation import evaluation_rows

    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "partition-id": [6, 7, 8, 3],
                    "skipped": [0, 1, 0, 0],
                    "num-examples": [5, 0, 4, 9],
                    "loss-before": [2.0, 0.0, 3.0, 1.0],
                    "loss-after": [1.0, 0.0, 2.5, 0.1],
                }
            ),
            "skip": ConfigRecord({"reasons": ["", "no test examples", "", ""]}),
        }
    )
    rows, dropped = evaluation_rows(content, asked=[6, 7, 8, 9])
    assert [r["partition-id"] for r in rows] == [6, 8]
    assert rows[1] == {"partition-id": 8, "num-examples": 4, "loss-before": 3.0, "loss-after": 2.5}
    assert dropped == {
        7: "client skipped: no test examples",
        3: "a result for a client the server did not ask this node for",
        9: "the node's reply has no result for this client",
    }


def test_pooled_accuracy_weights_each_client_by_its_test_size():
    from common.config import Task

    rows = [
        {
            "num-examples": 10,
            "acc-before": 0.5,
            "acc-after": 1.0,
            "loss-before": 1.0,
            "loss-after": 0.1,
        },
        {
            "num-examples": 30,
            "acc-before": 0.1,
            "acc-after": 0.2,
            "loss-before": 2.0,
            "loss-after": 1.5,
        },
    ]
    out = summarise_evaluation(rows, Task.CLASSIFICATION)
    assert out["acc-after-mean"] == pytest.approx(0.6)  # (1.0 + 0.2) / 2
    assert out["acc-after-pooled"] == pytest.approx((10 * 1.0 + 30 * 0.2) / 40)  # 0.4
    assert out["acc-before-pooled"] == pytest.approx((10 * 0.5 + 30 * 0.1) / 40)  # 0.2
    # regression has no accuracy to pool
    assert "acc-after-pooled" not in summarise_evaluation(rows, Task.REGRESSION)

"""An evaluation round's replies, screened and summarised (server/evaluation.py)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.config import Task
from server.evaluation import collect_evaluation


@pytest.fixture(autouse=True)
def _server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def _asked(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type=MessageType.EVALUATE)


def _scores(node: int, partitions, before, after) -> Message:
    metrics = MetricRecord({
        "partition-id": list(partitions), "skipped": [0] * len(partitions),
        "num-examples": [10] * len(partitions), "loss-before": list(before),
        "loss-after": list(after),
    })  # fmt: skip
    skip = ConfigRecord({"reasons": [""] * len(partitions)})
    return Message(RecordDict({"metrics": metrics, "skip": skip}), reply_to=_asked(node))


def test_rows_come_in_partition_order_and_the_summary_is_over_them():
    asked = {1: [4, 0], 2: [2]}
    replies = [_scores(2, [2], [3.0], [1.0]), _scores(1, [4, 0], [5.0, 1.0], [2.0, 0.5])]
    out = collect_evaluation(replies, asked, Task.REGRESSION)
    assert [r["partition-id"] for r in out.clients] == [0, 2, 4]
    assert out.dropped == []
    assert out.metrics is not None and out.metrics["clients"] == 3
    assert out.metrics["mse-before-mean"] == pytest.approx((5.0 + 1.0 + 3.0) / 3)
    assert out.metrics["mse-after-mean"] == pytest.approx((2.0 + 0.5 + 1.0) / 3)
    assert out.metrics["mse-after-worst10"] == pytest.approx(2.0)  # the worst client alone


def test_errors_and_silent_nodes_drop_their_clients_by_name():
    asked = {1: [0, 1], 2: [2], 3: [3]}
    failed = Message(Error(code=1, reason="boom"), reply_to=_asked(1))
    out = collect_evaluation([failed, _scores(2, [2], [1.0], [0.5])], asked, Task.REGRESSION)
    assert [r["partition-id"] for r in out.clients] == [2]
    assert out.dropped == [
        "partition 3 (node 3): no evaluate reply within round-timeout",
        "partition 0 (node 1): error reply to evaluate: boom",
        "partition 1 (node 1): error reply to evaluate: boom",
    ]
    assert out.metrics is not None and out.metrics["clients"] == 1


def test_a_malformed_reply_is_named_and_no_rows_means_no_summary():
    asked = {1: [0]}
    bad = Message(RecordDict({"metrics": MetricRecord({"loss": 1.0})}), reply_to=_asked(1))
    out = collect_evaluation([bad], asked, Task.REGRESSION)
    assert out.metrics is None and out.clients == []
    assert len(out.dropped) == 1
    assert out.dropped[0].startswith("partition 0 (node 1): evaluation reply: ")


def test_a_reply_without_after_scores_drops_each_of_its_clients_by_name():
    asked = {1: [0, 1], 2: [2]}
    partial = Message(
        RecordDict({"metrics": MetricRecord({
            "partition-id": [0, 1], "skipped": [0, 0], "loss-before": [1.0, 2.0],
        })}),
        reply_to=_asked(1),
    )  # fmt: skip
    out = collect_evaluation([partial, _scores(2, [2], [3.0], [1.0])], asked, Task.REGRESSION)
    assert [r["partition-id"] for r in out.clients] == [2]
    assert out.dropped == [
        "partition 0 (node 1): evaluation: no 'loss-before'/'loss-after' scores",
        "partition 1 (node 1): evaluation: no 'loss-before'/'loss-after' scores",
    ]


def test_a_rejected_reply_or_an_unasked_node_does_not_stop_the_replies_after_it():
    asked = {1: [0], 2: [1], 3: [2]}
    bad = Message(RecordDict({"metrics": MetricRecord({"loss": 1.0})}), reply_to=_asked(1))
    stranger = _scores(9, [5], [1.0], [0.5])  # a node the server did not ask
    replies = [bad, stranger, _scores(2, [1], [4.0], [2.0]), _scores(3, [2], [2.0], [1.0])]
    out = collect_evaluation(replies, asked, Task.REGRESSION)
    assert [r["partition-id"] for r in out.clients] == [1, 2]
    assert out.dropped[1:] == [
        "partition 5 (node 9): evaluation: a result for a client the server did not ask "
        "this node for"
    ]
    assert out.metrics is not None and out.metrics["mse-before-mean"] == 3.0

"""With default settings one hostile client per round cannot move theta more than an honest
client can (weights capped at the round's median claim, updates bounded at 5x the round's
median norm), every client's norm and weight is logged, and claims are checked."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.arrays import to_record
from common.config import Task
from server.collect import MAX_CLAIMED_EXAMPLES, claimed_examples
from server.evaluation import summarise_evaluation
from tests.server.rounds import FixedNodes, round_on_replies

N = 20  # clients per round, as in the quickstart
THETA = {"w": np.zeros(8, np.float32)}
OLD_DEFAULTS = {"weighting": "examples", "norm-bound-median-factor": 0.0}


def _honest_updates() -> list[np.ndarray]:
    """Random directions with norms spread like the quickstart's honest clients (the
    largest about 6x the median, as in 1-3% of its rounds)."""
    rng = np.random.default_rng(0)
    norms = np.geomspace(0.02, 0.6, N)  # median ~0.1, max 0.6
    dirs = rng.normal(size=(N, 8))
    rows = zip(norms, dirs, strict=True)
    return [(n * d / np.linalg.norm(d)).astype(np.float32) for n, d in rows]


def _aggregate(updates, claims, losses=None, **config):
    """(Delta the server steps on, train metrics, the round's report) for one node's reply."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    metrics = MetricRecord(
        {
            "partition-id": list(range(N)),
            "num-examples": claims,
            "skipped": [0] * N,
            "train-loss": losses or [1.0] * N,
        }
    )
    content = RecordDict({"updates": to_record({"w": np.stack(updates)}), "metrics": metrics})
    asked = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    config = {"fraction-train": 1.0, **config}
    reply = Message(content, reply_to=asked)
    out = round_on_replies(config, FixedNodes({1: range(N)}), [reply], THETA)
    assert out.theta is not None
    return out.theta["w"].astype(np.float64), out.metrics, out.report


def _shift(attacked, honest_updates, claims=None, **config) -> float:
    """How far one round's aggregate moves when client 0 sends ``attacked`` instead of its
    honest update."""
    claims = claims or [20] * N
    clean, _, _ = _aggregate(honest_updates, [20] * N, **config)
    hostile, _, _ = _aggregate([attacked, *honest_updates[1:]], claims, **config)
    return float(np.linalg.norm(hostile - clean))


def test_a_1e6_update_moves_theta_no_more_than_the_largest_honest_client():
    honest = _honest_updates()
    largest = max(float(np.linalg.norm(u)) for u in honest) / N  # its own share of the mean
    attacker = honest[0] * 1e6
    assert _shift(attacker, honest) <= largest + float(np.linalg.norm(honest[0])) / N
    assert _shift(attacker, honest, **OLD_DEFAULTS) > 1e3 * largest  # before: it owned theta


def test_a_1e9_claim_counts_like_a_typical_client_and_does_not_set_the_train_loss():
    honest = _honest_updates()
    liar = -honest[-1]  # the num-examples-lie: an honest-sized update pointing the wrong way
    claims = [10**9] + [20] * (N - 1)
    largest = max(float(np.linalg.norm(u)) for u in honest) / N
    assert _shift(liar, honest, claims) <= 2 * largest
    assert _shift(liar, honest, claims, **OLD_DEFAULTS) > 10 * largest
    losses = [1000.0] + [1.0] * (N - 1)  # the liar reports an absurd training loss
    _, train, report = _aggregate([liar, *honest[1:]], claims, losses)
    assert train["train-loss"] == pytest.approx((1000.0 + N - 1) / N)  # same weights as Delta
    logged = report.robust["per-client"]
    assert logged[0] == {"partition": 0, "norm": pytest.approx(np.linalg.norm(liar)), "weight": 20}
    _, train, _ = _aggregate([liar, *honest[1:]], claims, losses, **OLD_DEFAULTS)
    assert train["train-loss"] > 999  # what the liar got before: its own loss


def test_every_client_norm_and_weight_is_logged_even_when_no_rule_acts():
    honest = _honest_updates()
    _, _, report = _aggregate(honest, [20] * N, **OLD_DEFAULTS)  # plain mean: no actions
    log = report.robust
    assert log["clients"] == []  # nothing was clipped, capped or excluded ...
    assert [u["partition"] for u in log["per-client"]] == list(range(N))  # ... all are logged
    for u, update in zip(log["per-client"], honest, strict=True):
        assert u["weight"] == 20 and u["norm"] == pytest.approx(np.linalg.norm(update), rel=1e-6)


def test_a_claim_of_1e20_examples_is_dropped_with_a_reason_not_a_crash():
    honest = _honest_updates()
    claims = [10**20] + [20] * (N - 1)
    _, _, report = _aggregate(honest, claims)
    assert report.accepted == N - 1
    (reason,) = report.dropped
    assert reason.startswith("partition 0 (node 1): 'num-examples' must be a whole number")
    assert "100000000000000000000" in reason


@pytest.mark.parametrize(
    "claim", [0, -3, 2.5, float("nan"), float("inf"), True, "20", None, MAX_CLAIMED_EXAMPLES + 1]
)
def test_claimed_examples_must_be_whole_numbers_within_the_bound(claim):
    assert isinstance(claimed_examples(claim), str)


def test_claimed_examples_accepts_whole_numbers_up_to_the_bound():
    assert claimed_examples(1) == 1.0 and claimed_examples(20.0) == 20.0
    assert claimed_examples(MAX_CLAIMED_EXAMPLES) == float(MAX_CLAIMED_EXAMPLES)


def test_a_client_whose_personalisation_exploded_is_counted_not_averaged():
    rows = [{"loss-before": 3.0, "loss-after": 0.5} for _ in range(8)]
    rows += [{"loss-before": 3.0, "loss-after": 1e31}, {"loss-before": 2.0, "loss-after": np.nan}]
    rows += [{"loss-before": 3.0, "loss-after": 29.0}]  # 9.7x its loss before: kept
    out = summarise_evaluation(rows, Task.REGRESSION)
    assert out["diverged-after"] == 2
    assert out["mse-after-mean"] == pytest.approx((8 * 0.5 + 29.0) / 9)
    assert out["mse-before-mean"] == pytest.approx((10 * 3.0 + 2.0) / 11)  # all clients
    every = summarise_evaluation(rows[8:10], Task.REGRESSION)
    assert every["diverged-after"] == 2 and "mse-after-mean" not in every  # nothing measured

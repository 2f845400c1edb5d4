"""Evaluation summaries against hand-computed figures (server/evaluation.py), and the server
optimizer's config read from the settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.config import Task, parse_settings
from server.evaluation import client_stats, diverged_clients, summarise_evaluation
from server.optimizer import OptimizerConfig


def test_the_optimizer_config_is_read_key_by_key_from_the_settings():
    s = parse_settings({"server-optimizer": "adam", "server-lr": 0.03, "server-beta1": 0.8,
                        "server-beta2": 0.95, "server-eps": 1e-6})  # fmt: skip
    assert OptimizerConfig.from_settings(s) == OptimizerConfig("adam", 0.03, 0.8, 0.95, 1e-6)


def test_diverged_means_not_finite_after_or_above_ten_times_before():
    before = [1.0, 1.0, 1.0, 0.0, math.inf, 2.0, 1.0]
    after = [10.0, 10.5, math.nan, 1e-13, 5.0, -math.inf, 9.99]
    # 10 x 1 is the limit itself (not above); 0 before uses 1e-12 as its floor; an infinite
    # loss before explodes nothing; -inf after is not finite
    assert diverged_clients(before, after) == [False, True, True, False, False, True, False]


def test_client_stats_worst_tenth_rounds_up_and_takes_the_worst_side():
    values = [float(v) for v in range(1, 12)]  # 11 clients: ceil(1.1) = 2 worst
    low = client_stats(values, higher_is_better=True)
    high = client_stats(values, higher_is_better=False)
    assert low.worst10 == 1.5 and high.worst10 == 10.5
    assert low.mean == high.mean == 6.0 and low.count == 11
    assert low.std == pytest.approx(math.sqrt(sum((v - 6.0) ** 2 for v in values) / 11))


def _row(pid, lb, la, ab, aa, n):
    return {"partition-id": pid, "loss-before": lb, "loss-after": la, "acc-before": ab,
            "acc-after": aa, "num-examples": n}  # fmt: skip


def test_a_classification_summary_by_hand_with_a_diverged_client():
    rows = [
        _row(0, 1.0, 0.5, 0.50, 0.75, 4),
        _row(1, 2.0, 1.0, 0.25, 0.50, 8),
        _row(2, 1.0, 30.0, 0.40, 0.10, 2),  # diverged: 30 > 10 x 1
    ]
    out = summarise_evaluation(rows, Task.CLASSIFICATION)
    assert out["clients"] == 3 and out["diverged-after"] == 1
    # before: every client; after: the two that did not diverge
    assert out["acc-before-mean"] == pytest.approx((0.50 + 0.25 + 0.40) / 3)
    assert out["acc-before-worst10"] == pytest.approx(0.25)
    assert out["loss-before-worst10"] == pytest.approx(2.0)
    assert out["acc-after-mean"] == pytest.approx(0.625)
    assert out["acc-after-std"] == pytest.approx(0.125)
    assert out["acc-after-worst10"] == pytest.approx(0.50)
    assert out["loss-after-mean"] == pytest.approx(0.75)
    assert out["loss-after-worst10"] == pytest.approx(1.0)
    # pooled: each client's accuracy weighted by its test size
    assert out["acc-before-pooled"] == pytest.approx((0.5 * 4 + 0.25 * 8 + 0.4 * 2) / 14)
    assert out["acc-after-pooled"] == pytest.approx((0.75 * 4 + 0.5 * 8) / 12)
    assert "mse-after-mean" not in out


def test_a_regression_summary_names_mse_and_every_diverged_client_leaves_no_after_figure():
    rows = [_row(0, 2.0, 1.0, 0, 0, 3), _row(1, 4.0, 3.0, 0, 0, 3)]
    out = summarise_evaluation(rows, Task.REGRESSION)
    assert out["mse-before-mean"] == 3.0 and out["mse-after-mean"] == 2.0
    assert out["mse-after-worst10"] == 3.0 and out["mse-before-std"] == 1.0
    assert "acc-after-mean" not in out and "loss-after-mean" not in out
    exploded = summarise_evaluation([_row(0, 1.0, math.inf, 0, 0, 3)], Task.REGRESSION)
    assert exploded["diverged-after"] == 1 and exploded["mse-before-mean"] == 1.0
    assert not any(k.startswith("mse-after") for k in exploded)


def test_small_losses_diverge_against_their_own_size_not_against_one():
    """The 1e-12 floor only guards a zero loss: a client at 0.01 before that ends at 0.5
    has grown fifty-fold and diverged; a zero loss that becomes 1e-10 too."""
    assert diverged_clients([0.01, 0.0, 0.01], [0.5, 1e-10, 0.09]) == [True, True, False]
    # NaN and infinities compare without a floating-point warning (none is silenced)
    with np.errstate(all="raise"):
        out = diverged_clients([math.nan, math.inf, 1.0], [math.nan, math.inf, -math.inf])
    assert out == [True, True, True]


@pytest.mark.parametrize(
    ("sizes", "pooled"),
    [
        ((4, 1), (0.5 * 4 + 1.0 * 1) / 5),  # one test example is a size like any other
        ((4, 0), None),  # a client scored on no example: no pooled accuracy
        ((4, None), None),  # a row without its size (an old node): none either
    ],
)
def test_pooled_accuracy_needs_every_client_s_test_size(sizes, pooled):
    rows = [_row(0, 1.0, 0.5, 0.5, 0.5, sizes[0]), _row(1, 1.0, 0.5, 1.0, 1.0, sizes[1])]
    if sizes[1] is None:
        del rows[1]["num-examples"]
    out = summarise_evaluation(rows, Task.CLASSIFICATION)
    for when in ("before", "after"):
        if pooled is None:
            assert f"acc-{when}-pooled" not in out
        else:
            assert out[f"acc-{when}-pooled"] == pytest.approx(pooled)
    assert out["acc-before-mean"] == 0.75  # the mean across clients is reported either way

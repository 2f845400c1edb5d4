"""The server optimizer's bookkeeping that the hand-computed steps of test_aggregate.py do
not pin: Adam keeps its moments in float64 whatever the update's dtype (drift over
thousands of rounds), and an unknown optimizer is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from server.evaluation import client_stats
from server.optimizer import OptimizerConfig, OptimizerState, server_step
from server.robust import weighted_mean


def test_adam_keeps_its_moments_in_float64_for_a_float32_update():
    theta = {"w": np.array([0.5, -0.5], np.float32)}
    delta = {"w": np.array([0.1, -0.3], np.float32)}
    new, opt = server_step(theta, delta, OptimizerConfig("adam", lr=0.1), OptimizerState())
    assert opt.m["w"].dtype == np.float64 and opt.v["w"].dtype == np.float64
    assert new["w"].dtype == np.float32  # theta keeps its own dtype
    np.testing.assert_allclose(opt.m["w"], 0.1 * -np.float64(delta["w"]), rtol=1e-15)


def test_an_unknown_server_optimizer_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"unknown server optimizer 'rmsprop'; use 'sgd' or 'adam'"
    ):
        server_step({"w": np.zeros(1)}, {"w": np.zeros(1)}, OptimizerConfig("rmsprop", 0.1),
                    OptimizerState())  # fmt: skip


def test_weighted_mean_sums_in_float64_and_normalises_the_weights():
    """Three clients whose float32 updates would lose the small one in float32 sums."""
    big = {"w": np.array([1e8], np.float32)}
    small = {"w": np.array([1.0], np.float32)}
    out = weighted_mean([big, small, {"w": np.array([-1e8], np.float32)}], [1, 2, 1])
    assert out["w"].dtype == np.float64
    np.testing.assert_allclose(out["w"], [2.0 / 4], rtol=0, atol=0)


def test_adams_eps_damps_a_tiny_update_instead_of_amplifying_it():
    """|delta| = 1e-9 < eps = 1e-8: the first step is lr * d / (|d| + eps) = lr / 11, in the
    update's direction (eps in the denominator's other sign would flip and enlarge it)."""
    cfg = OptimizerConfig("adam", lr=0.1, eps=1e-8)
    new, _ = server_step({"w": np.zeros(1)}, {"w": np.array([1e-9])}, cfg, OptimizerState())
    np.testing.assert_allclose(new["w"], [0.1 * 1e-9 / (1e-9 + 1e-8)], rtol=1e-9)


def test_client_stats_refuses_an_empty_round_by_name():
    with pytest.raises(ValueError, match="^no client values to summarise$"):
        client_stats([], higher_is_better=True)


def test_weighted_mean_of_one_client_is_its_update_whatever_its_weight():
    one = {"w": np.array([0.25, -4.0], np.float32)}
    for weight in (1, 0.5, 3.0):  # a weight sum of 1 or below is fine as long as it is > 0
        np.testing.assert_array_equal(weighted_mean([one], [weight])["w"], [0.25, -4.0])
    out = weighted_mean([one, {"w": np.zeros(2)}], [0.25, 0.75])  # normalised weights
    np.testing.assert_allclose(out["w"], [0.0625, -1.0])


def test_weighted_mean_needs_one_weight_per_update():
    updates = [{"w": np.ones(1)}, {"w": np.zeros(1)}]
    with pytest.raises(ValueError, match="need one weight per update, got 2 and 1"):
        weighted_mean(updates, [1.0])
    with pytest.raises(ValueError, match="need one weight per update, got 0 and 0"):
        weighted_mean([], [])

"""Server math on small arrays against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from server.evaluation import client_stats
from server.optimizer import OptimizerConfig, OptimizerState, server_step
from server.robust import weighted_mean


def test_weighted_mean_matches_hand_computation():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([3.0, -2.0], np.float32)}
    out = weighted_mean([a, b], [1, 3])
    np.testing.assert_allclose(out["w"], [(1 + 9) / 4, (2 - 6) / 4])


def test_weighted_mean_rejects_bad_weights():
    with pytest.raises(ValueError, match="positive"):
        weighted_mean([{"w": np.ones(1)}], [0])


def test_sgd_step_is_theta_plus_lr_delta_and_keeps_dtype():
    theta = {"w": np.array([1.0, -1.0], np.float32)}
    new, opt = server_step(
        theta, {"w": np.array([0.5, 0.25])}, OptimizerConfig("sgd", 2.0), OptimizerState()
    )
    np.testing.assert_allclose(new["w"], [2.0, -0.5])
    assert new["w"].dtype == np.float32 and opt.step == 1


def test_adam_two_steps_match_hand_computation_and_state_persists():
    cfg = OptimizerConfig("adam", lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
    theta = {"w": np.array([0.0])}
    d1, d2 = np.array([2.0]), np.array([-1.0])  # deltas; Adam sees g = -delta
    s1, opt = server_step(theta, {"w": d1}, cfg, OptimizerState())
    s2, opt = server_step(s1, {"w": d2}, cfg, opt)
    # by hand: g1 = -2, g2 = 1
    m1, v1 = 0.1 * -2, 0.01 * 4
    x1 = 0 - 0.1 * (m1 / 0.1) / (np.sqrt(v1 / 0.01) + 1e-8)
    m2, v2 = 0.9 * m1 + 0.1 * 1, 0.99 * v1 + 0.01 * 1
    x2 = x1 - 0.1 * (m2 / (1 - 0.81)) / (np.sqrt(v2 / (1 - 0.99**2)) + 1e-8)
    np.testing.assert_allclose(s1["w"], [x1])
    np.testing.assert_allclose(s2["w"], [x2])
    fresh, _ = server_step(s1, {"w": d2}, cfg, OptimizerState())  # moments reset: differs
    assert not np.allclose(fresh["w"], s2["w"])


def test_client_stats_worst_ten_percent():
    acc = client_stats([0.1 * i for i in range(1, 21)], higher_is_better=True)
    assert acc.worst10 == pytest.approx((0.1 + 0.2) / 2)
    mse = client_stats([1.0, 2.0, 3.0], higher_is_better=False)
    assert mse.worst10 == 3.0 and mse.mean == 2.0 and mse.count == 3

"""The across-client statistics the result tables publish (mean, std, worst 10%), by hand.

The worst 10% is the mean over the ceil(10%) worst clients, at least one: for accuracy
the lowest, for an error the highest."""

from __future__ import annotations

import numpy as np
import pytest

from server.evaluation import client_stats


def test_worst10_of_few_clients_is_the_single_worst_one():
    acc = client_stats([0.9, 0.5, 0.7, 0.8, 0.6], higher_is_better=True)  # ceil(0.5) = 1
    assert acc.worst10 == 0.5 and acc.count == 5
    mse = client_stats([0.9, 0.5, 0.7, 0.8, 0.6], higher_is_better=False)
    assert mse.worst10 == 0.9


def test_worst10_of_twenty_errors_is_the_mean_of_the_two_highest():
    values = [float(v) for v in np.random.default_rng(0).permutation(np.arange(1, 21))]
    stats = client_stats(values, higher_is_better=False)
    assert stats.worst10 == pytest.approx((20 + 19) / 2)
    assert stats.mean == pytest.approx(10.5)
    assert stats.std == pytest.approx(np.sqrt(np.mean((np.arange(1, 21) - 10.5) ** 2)))


def test_worst10_rounds_the_share_up():
    stats = client_stats([float(v) for v in range(11)], higher_is_better=True)  # ceil(1.1) = 2
    assert stats.worst10 == pytest.approx((0 + 1) / 2)

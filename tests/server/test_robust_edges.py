"""Robust rules at their edges, by hand: a round of exactly the clients a rule needs, the
Bulyan and Krum thresholds, clipping at the bound, one-update rules, and settings reaching
the rule unchanged (mutation survivors of server/robust.py)."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import Aggregation, ConfigError, Weighting, parse_settings
from server.robust import RobustConfig, check_round_size, clip_to_norm, trimmed_mean


def test_robust_settings_reach_the_rule_unchanged():
    s = parse_settings(
        {"aggregation": "trimmed-mean", "trim-fraction": 0.3, "krum-byzantine": 2,
         "multi-krum-keep": 4, "norm-bound": 2.5, "norm-bound-median-factor": 1.5,
         "weighting": "capped", "max-examples-weight": 40.0}
    )  # fmt: skip
    assert RobustConfig.from_settings(s) == RobustConfig(
        Aggregation.TRIMMED_MEAN, 0.3, 2, 4, 2.5, 1.5, Weighting.CAPPED, 40.0
    )


@pytest.mark.parametrize(
    ("rule", "f", "need"),
    [(Aggregation.KRUM, 1, 5), (Aggregation.MULTI_KRUM, 2, 7), (Aggregation.BULYAN, 1, 7),
     (Aggregation.BULYAN, 2, 11)],
)  # fmt: skip
def test_a_round_of_exactly_the_needed_clients_is_allowed_and_one_fewer_refused(rule, f, need):
    cfg = RobustConfig(rule, byzantine=f)
    check_round_size(cfg, need)  # Krum: n = 2f + 3; Bulyan: n = 4f + 3
    factor = 4 if rule is Aggregation.BULYAN else 2
    most = (need - 1 - 3) // factor  # the largest f the smaller round could defend
    with pytest.raises(ConfigError, match=f"at most {most} for {rule.value} \\({factor}f"):
        check_round_size(cfg, need - 1)


def test_clipping_scales_only_updates_above_the_bound_and_works_in_float64():
    update = {"w": np.array([3.0, 4.0], np.float32)}  # norm 5
    np.testing.assert_allclose(clip_to_norm(update, 5.0, 2.0)["w"], [1.2, 1.6])
    at_bound = clip_to_norm(update, 5.0, 5.0)["w"]
    np.testing.assert_array_equal(at_bound, [3.0, 4.0])
    assert at_bound.dtype == np.float64


def test_trimmed_mean_of_one_update_is_that_update():
    one = {"w": np.array([1.5, -2.0])}
    np.testing.assert_array_equal(trimmed_mean([one], 0.2)["w"], [1.5, -2.0])
    three = [{"w": np.array([v])} for v in (0.0, 1.0, 100.0)]
    np.testing.assert_allclose(trimmed_mean(three, 0.34)["w"], [1.0])  # one per side


def test_a_multi_krum_keep_above_n_minus_f_is_refused_with_its_value():
    cfg = RobustConfig(Aggregation.MULTI_KRUM, byzantine=1, keep=8)
    check_round_size(cfg, 9)  # n - f = 8: keeping 8 is allowed
    with pytest.raises(ConfigError, match=r"'multi-krum-keep' has value 8.*at most n - f = 7"):
        check_round_size(cfg, 8)


def test_median_and_trimmed_mean_of_float32_updates_are_float64():
    """The server steps on a float64 delta whatever the clients' dtype (no float32 sums)."""
    from server.robust import coordinate_median

    updates = [{"w": np.array([v, -v], np.float32)} for v in (0.1, 0.2, 0.7)]
    assert coordinate_median(updates)["w"].dtype == np.float64
    assert trimmed_mean(updates, 0.34)["w"].dtype == np.float64
    np.testing.assert_allclose(coordinate_median(updates)["w"], [0.2, -0.2], rtol=1e-7)


def test_norm_bounds_below_one_take_effect():
    """A fixed bound of 0.5 or a median factor of 0.5 (both below 1) clip; the bound is the
    smaller of the two; 0 turns each off."""
    from server.robust import norm_bound, robust_aggregate

    assert norm_bound([1.0, 2.0, 3.0], 0.5, 0.0) == 0.5
    assert norm_bound([1.0, 2.0, 3.0], 0.0, 0.5) == 1.0  # 0.5 x median 2
    assert norm_bound([1.0, 2.0, 3.0], 0.8, 0.5) == 0.8
    assert norm_bound([1.0, 2.0, 3.0], 0.0, 0.0) is None
    updates = [{"w": np.array([3.0, 4.0])}, {"w": np.array([0.0, 0.1])}]  # norms 5, 0.1
    out = robust_aggregate(updates, [1, 1], RobustConfig(norm_bound=0.5))
    np.testing.assert_allclose(out.delta["w"], [(0.3 + 0.0) / 2, (0.4 + 0.1) / 2])
    assert out.bound == 0.5

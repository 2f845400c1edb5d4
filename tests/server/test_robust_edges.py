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


def _krum_scores_by_hand(rows: np.ndarray, f: int) -> np.ndarray:
    """Each row's Krum score: the sum of squared distances to its n - f - 2 nearest others,
    from explicit differences in float64 (not the ||x||² + ||y||² - 2x·y expansion)."""
    n = len(rows)
    d2 = np.array([[np.sum((rows[i] - rows[j]) ** 2) for j in range(n)] for i in range(n)])
    nearest = n - f - 2
    return np.array([np.sort(np.delete(d2[i], i))[:nearest].sum() for i in range(n)])


def test_multi_krum_picks_the_lowest_hand_computed_scores_of_float32_updates():
    """Updates sharing a large common part (as a round's updates often do) in float32:
    Krum's distances are then differences of large squared norms, which float32 cannot
    resolve, so the selection must work in float64. The attacker sits first, so a selection
    that ignores the values (and takes the first rows) is caught too."""
    from server.robust import multi_krum_select

    rng = np.random.default_rng(3)
    offsets = rng.normal(0.0, 1e-2, size=(7, 6))
    offsets[0] += 0.05  # the attacker: still close, but farther than the honest spread
    rows32 = (300.0 + offsets).astype(np.float32)
    updates = [{"a": r[:4].reshape(2, 2), "b": r[4:]} for r in rows32]
    scores = _krum_scores_by_hand(rows32.astype(np.float64), f=1)
    for keep in (1, 3, 6):
        want = sorted(np.argsort(scores)[:keep].tolist())
        assert multi_krum_select(updates, 1, keep) == want
    assert 0 not in multi_krum_select(updates, 1, 6)


def test_bulyan_by_hand_per_coordinate_on_float32_updates():
    """Bulyan's median is per coordinate (coordinates on very different scales here, so a
    median over the whole layer lands elsewhere), its mean is over the beta values closest
    to it, and the aggregate is float64."""
    from server.robust import robust_aggregate

    # n = 7, f = 1: Multi-Krum keeps theta = 5 (the last row, far off, and row 5 are
    # excluded: their hand-computed scores are the largest); beta = theta - 2f = 3.
    rows = np.array(
        [[1.0, 100.0], [2.0, 300.0], [3.0, 200.0], [4.0, 500.0], [5.0, 400.0],
         [9.0, 900.0], [50.0, 5000.0]], np.float32,
    )  # fmt: skip
    scores = _krum_scores_by_hand(rows.astype(np.float64), f=1)
    picked = sorted(np.argsort(scores)[:5].tolist())
    assert picked == [0, 1, 2, 3, 4]
    out = robust_aggregate(
        [{"w": r} for r in rows], [1.0] * 7, RobustConfig(Aggregation.BULYAN, byzantine=1)
    )
    # coordinate 0: median of 1..5 is 3, closest three 2, 3, 4 -> 3.
    # coordinate 1: median of 100..500 is 300, closest three 200, 300, 400 -> 300.
    np.testing.assert_array_equal(out.delta["w"], [3.0, 300.0])
    assert out.delta["w"].dtype == np.float64
    assert [a.index for a in out.actions] == [5, 6]
    thirds = np.array([[0.1, 0.2], [0.2, 0.3], [0.3, 0.1], [0.4, 0.5], [0.5, 0.4],
                       [0.9, 0.9], [5.0, 5.0]], np.float32)  # fmt: skip
    out = robust_aggregate(
        [{"w": r} for r in thirds], [1.0] * 7, RobustConfig(Aggregation.BULYAN, byzantine=1)
    )
    # both coordinates: the float64 mean of the float32 values 0.2, 0.3, 0.4 as received
    want = np.mean(np.array([0.2, 0.3, 0.4], np.float32).astype(np.float64))
    np.testing.assert_array_equal(out.delta["w"], [want, want])


def test_robust_aggregate_refuses_a_count_per_update_mismatch_by_its_numbers():
    from server.robust import robust_aggregate

    updates = [{"w": np.array([1.0])}, {"w": np.array([2.0])}]
    with pytest.raises(ValueError, match="need one example count per update, got 2, 3"):
        robust_aggregate(updates, [1.0, 2.0, 3.0], RobustConfig())
    with pytest.raises(ValueError, match="got 0, 0"):
        robust_aggregate([], [], RobustConfig())


def test_robust_aggregate_weights_by_the_configured_rule_and_cap():
    """Claims 10, 30 and 200: 'examples' keeps them, 'capped' with max-examples-weight 50
    caps only the 200 (the round's median, 30, would cap it lower), uniform ignores them."""
    from server.robust import robust_aggregate

    updates = [{"w": np.array([v])} for v in (1.0, 2.0, 4.0)]
    claims = [10.0, 30.0, 200.0]
    out = robust_aggregate(updates, claims, RobustConfig(weighting=Weighting.EXAMPLES))
    assert out.weights == claims and out.actions == []
    np.testing.assert_allclose(out.delta["w"], [(10 + 60 + 800) / 240])
    capped = RobustConfig(weighting=Weighting.CAPPED, max_weight=50.0)
    out = robust_aggregate(updates, claims, capped)
    assert out.weights == [10.0, 30.0, 50.0]
    np.testing.assert_allclose(out.delta["w"], [(10 + 60 + 200) / 90])
    assert [(a.index, a.action) for a in out.actions] == [(2, "weight capped at 50 (claimed 200)")]
    out = robust_aggregate(updates, claims, RobustConfig(weighting=Weighting.UNIFORM))
    assert out.weights == [1.0, 1.0, 1.0]


def test_round_size_errors_name_the_value_and_the_largest_f_that_fits():
    # krum, f = 2 needs 7 clients; 5 clients allow f <= (5 - 3) // 2 = 1
    with pytest.raises(ConfigError, match=r"'krum-byzantine' has value 2; .*at most 1 for krum"):
        check_round_size(RobustConfig(Aggregation.KRUM, byzantine=2), 5)
    with pytest.raises(ConfigError, match="none: needs at least 3 clients for bulyan"):
        check_round_size(RobustConfig(Aggregation.BULYAN, byzantine=1), 2)
    with pytest.raises(ConfigError, match=r"'trim-fraction' has value 0.1; allowed: at least 1/5"):
        check_round_size(RobustConfig(Aggregation.TRIMMED_MEAN, trim_fraction=0.1), 5)


def test_mean_median_and_trimmed_mean_run_on_a_single_update():
    """Only Krum and Bulyan need more than one update: the others run on one, as it is."""
    from server.robust import coordinate_median, min_clients, robust_aggregate

    one = [{"w": np.array([2.0, -1.0]), "b": np.array([0.5])}]
    for rule in (Aggregation.MEAN, Aggregation.MEDIAN, Aggregation.TRIMMED_MEAN):
        assert min_clients(RobustConfig(rule)) == 1
        out = robust_aggregate(one, [3.0], RobustConfig(rule))
        assert out.rule is rule and out.note == ""
        np.testing.assert_array_equal(out.delta["w"], [2.0, -1.0])
    np.testing.assert_array_equal(coordinate_median(one)["b"], [0.5])


def test_a_float32_update_of_1e20_has_a_finite_norm_and_is_clipped():
    """Squares of 1e20 overflow float32 (max 3.4e38): the norm is summed in float64, so an
    attacker's huge float32 update is still clipped to the bound, not turned into NaN."""
    from server.robust import robust_aggregate, update_norm

    huge = {"w": np.array([3e20, 4e20], np.float32)}
    assert update_norm(huge) == pytest.approx(5e20, rel=1e-6)
    honest = {"w": np.array([0.3, 0.4], np.float32)}
    out = robust_aggregate([huge, honest], [1, 1], RobustConfig(norm_bound=1.0))
    np.testing.assert_allclose(out.delta["w"], [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)


def test_a_cap_below_one_example_still_caps_every_claim():
    from server.robust import client_weights

    weights, cap = client_weights([1.0, 2.0, 30.0], Weighting.CAPPED, 0.5)
    assert weights == [0.5, 0.5, 0.5] and cap == 0.5


def test_an_update_exactly_at_the_bound_is_not_logged_as_clipped_and_actions_join():
    """A norm equal to the bound is left alone (and not reported); a client both capped and
    clipped gets both actions in one line."""
    from server.robust import robust_aggregate

    updates = [{"w": np.array([3.0, 4.0])}, {"w": np.array([6.0, 8.0])}, {"w": np.zeros(2)}]
    cfg = RobustConfig(norm_bound=5.0, weighting=Weighting.CAPPED, max_weight=10.0)
    out = robust_aggregate(updates, [1.0, 20.0, 1.0], cfg)
    assert [(a.index, a.action) for a in out.actions] == [
        (1, "weight capped at 10 (claimed 20); clipped to 5")
    ]
    np.testing.assert_allclose(out.delta["w"], [(3.0 + 10 * 3.0) / 12, (4.0 + 10 * 4.0) / 12])

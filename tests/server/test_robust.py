"""Robust aggregation on small arrays against hand-computed values, each simulated attack
(client/attacks.py) against each defence, and what the strategy logs."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.attacks import forged_update
from common.arrays import to_record
from common.config import Aggregation, ConfigError, Weighting, parse_settings
from server.robust import (
    RobustConfig,
    check_round_size,
    client_weights,
    robust_aggregate,
    update_norm,
    weighted_mean,
)
from tests.server.rounds import FixedNodes, round_on_replies


def _rows(*values) -> list[dict[str, np.ndarray]]:
    return [{"w": np.asarray(v, np.float32)} for v in values]


def _agg(updates, rule, examples=None, **kw):
    cfg = RobustConfig(rule=Aggregation(rule), **kw)
    return robust_aggregate(updates, examples or [1.0] * len(updates), cfg)


def test_median_of_one_two_hundred_is_two_per_coordinate():
    out = _agg(_rows([1.0, 100.0], [2.0, 1.0], [100.0, 2.0]), "median")
    np.testing.assert_array_equal(out.delta["w"], [2.0, 2.0])
    assert out.actions == []  # per-coordinate rules exclude no client as a whole


def test_trimmed_mean_drops_int_fraction_n_at_each_end():
    # n = 5, fraction 0.2: one value per side; coordinate 0: mean(2, 3, 4) = 3
    updates = _rows([1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0])
    out = _agg(updates, "trimmed-mean", trim_fraction=0.2)
    np.testing.assert_allclose(out.delta["w"], [3.0, 1.0])


def test_krum_picks_a_member_of_the_honest_cluster_and_logs_the_rest():
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [1.05, 1.0]]
    updates = _rows(*honest, [100.0, 100.0], [-50.0, 80.0])  # n = 7 = 2f + 3 for f = 2
    out = _agg(updates, "krum", byzantine=2)
    assert out.rule is Aggregation.KRUM and not out.note
    assert any(np.allclose(out.delta["w"], h) for h in honest)
    excluded = {a.index for a in out.actions}
    assert {5, 6} <= excluded and len(excluded) == 6
    assert out.actions[-1].action == "excluded by krum"
    assert out.actions[-1].norm == pytest.approx(np.hypot(50.0, 80.0))


def test_multi_krum_keeps_exactly_the_honest_cluster_and_weighs_it():
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [1.05, 1.0]]
    updates = _rows(*honest, [100.0, 100.0], [-50.0, 80.0])
    examples = [1.0, 3.0, 1.0, 1.0, 1.0, 1000.0, 1000.0]
    out = _agg(updates, "multi-krum", examples, byzantine=2)  # keeps n - f = 5
    assert [a.index for a in out.actions] == [5, 6]
    np.testing.assert_allclose(out.delta["w"], weighted_mean(updates[:5], examples[:5])["w"])


def test_bulyan_averages_the_beta_closest_to_the_median_of_the_krum_picks():
    # n = 7, f = 1: Multi-Krum picks theta = 5, then per coordinate the mean of the
    # beta = 3 values closest to their median.
    updates = _rows([1.0], [2.0], [3.0], [4.0], [5.0], [7.0], [1000.0])
    out = _agg(updates, "bulyan", byzantine=1)
    # Krum scores (squared distances to the n - f - 2 = 4 nearest): 3 -> 10, 2 -> 15,
    # 4 -> 15, 5 -> 18, 1 -> 30 win; 7 -> 54 and 1000 lose. The median of the picks is 3
    # and the three closest to it are 2, 3, 4.
    np.testing.assert_allclose(out.delta["w"], [3.0])
    assert [(a.index, a.action) for a in out.actions] == [
        (5, "excluded by bulyan"),
        (6, "excluded by bulyan"),
    ]


def test_fixed_norm_bound_clips_a_huge_update_to_the_bound_and_logs_it():
    updates = [{"w": np.array([3e6, 4e6], np.float32), "alpha/w": np.zeros(1, np.float32)}]
    updates += [{"w": np.array([0.3, 0.4], np.float32), "alpha/w": np.zeros(1, np.float32)}]
    out = _agg(updates, "mean", [1.0, 1.0], norm_bound=5.0)
    # the big update becomes (3, 4); the small one (norm 0.5) is untouched
    np.testing.assert_allclose(out.delta["w"], [(3 + 0.3) / 2, (4 + 0.4) / 2], rtol=1e-6)
    assert out.bound == 5.0 and len(out.actions) == 1
    assert out.actions[0].index == 0 and out.actions[0].action == "clipped to 5"
    assert out.actions[0].norm == pytest.approx(5e6)


def test_norm_counts_alpha_keys_and_median_factor_bound_is_relative():
    assert update_norm({"w": np.array([3.0]), "alpha/w": np.array([4.0])}) == 5.0
    updates = _rows([1.0], [2.0], [3.0], [1e6])  # median norm 2.5, factor 2: bound 5
    out = _agg(updates, "mean", median_factor=2.0)
    assert out.bound == 5.0 and [a.index for a in out.actions] == [3]
    np.testing.assert_allclose(out.delta["w"], [(1 + 2 + 3 + 5) / 4])
    # with both bounds set the smaller one wins
    assert _agg(updates, "mean", median_factor=2.0, norm_bound=4.0).bound == 4.0


def test_uniform_and_capped_weights_defeat_a_num_examples_lie():
    # four honest clients (10 examples, update +1), one liar (-1, claiming 1e9)
    updates = _rows([1.0], [1.0], [1.0], [1.0], [-1.0])
    claims = [10.0, 10.0, 10.0, 10.0, 1e9]
    lied = _agg(updates, "mean", claims)
    assert lied.delta["w"][0] == pytest.approx(-1.0, abs=1e-6)  # the liar owns the round
    uniform = _agg(updates, "mean", claims, weighting=Weighting.UNIFORM)
    capped = _agg(updates, "mean", claims, weighting=Weighting.CAPPED)  # cap = median = 10
    assert uniform.delta["w"][0] == pytest.approx(3 / 5)
    assert capped.delta["w"][0] == pytest.approx((40 - 10) / 50)
    assert [(a.index, a.action) for a in capped.actions] == [
        (4, "weight capped at 10 (claimed 1e+09)")
    ]
    fixed = _agg(updates, "mean", claims, weighting=Weighting.CAPPED, max_weight=20.0)
    assert fixed.delta["w"][0] == pytest.approx((40 - 20) / 60)


def test_client_weights():
    assert client_weights([5, 50], Weighting.EXAMPLES) == ([5.0, 50.0], None)
    assert client_weights([5, 50], Weighting.UNIFORM) == ([1.0, 1.0], None)
    assert client_weights([5, 50, 7], Weighting.CAPPED) == ([5.0, 7.0, 7.0], 7.0)


def test_default_config_is_the_weighted_mean_bit_for_bit():
    rng = np.random.default_rng(0)
    updates = [{"w": rng.standard_normal(4).astype(np.float32)} for _ in range(5)]
    examples = [3.0, 1.0, 4.0, 1.0, 5.0]
    out = robust_aggregate(updates, examples, RobustConfig())
    assert np.array_equal(out.delta["w"], weighted_mean(updates, examples)["w"])
    assert out.actions == [] and out.rule is Aggregation.MEAN


def test_too_few_updates_for_the_rule_fall_back_to_the_median_and_say_so():
    out = _agg(_rows([1.0], [2.0], [100.0]), "bulyan", byzantine=1)  # needs 7
    assert out.rule is Aggregation.MEDIAN and out.delta["w"][0] == 2.0
    assert "bulyan needs at least 7 accepted updates" in out.note


@pytest.mark.parametrize(
    ("cfg", "n", "key", "allowed"),
    [
        (RobustConfig(Aggregation.KRUM, byzantine=4), 10, "krum-byzantine", "at most 3"),
        (RobustConfig(Aggregation.BULYAN, byzantine=2), 10, "krum-byzantine", "at most 1"),
        (RobustConfig(Aggregation.BULYAN, byzantine=0), 2, "krum-byzantine", "at least 3"),
        (RobustConfig(Aggregation.MULTI_KRUM, byzantine=2, keep=9), 10, "multi-krum-keep", "8"),
        (RobustConfig(Aggregation.TRIMMED_MEAN, trim_fraction=0.05), 10, "trim-fraction", "0.1"),
    ],
)
def test_impossible_rules_for_the_round_size_are_config_errors(cfg, n, key, allowed):
    with pytest.raises(ConfigError, match=allowed) as err:
        check_round_size(cfg, n)
    assert err.value.key == key and "clients per round" in err.value.allowed


def test_possible_rules_pass_the_round_size_check():
    for cfg in (
        RobustConfig(Aggregation.KRUM, byzantine=3),
        RobustConfig(Aggregation.BULYAN, byzantine=1),
        RobustConfig(Aggregation.MULTI_KRUM, byzantine=2, keep=8),
        RobustConfig(Aggregation.TRIMMED_MEAN, trim_fraction=0.1),
        RobustConfig(Aggregation.MEDIAN),
    ):
        check_round_size(cfg, 10)


# ---- each attack against each defence ------------------------------------------------
# 9 honest clients send 1 + 0.01 * (i - 4) in every coordinate (so 0.96 .. 1.04, mean 1);
# 2 attackers (n = 11 = 4f + 3 for f = 2) send what client/attacks.py forges from an honest
# update of ones. Label-flip poisons data, not the update: it is measured in the federated
# run and the benchmark (docs/robustness.md).
HONEST = [{"w": np.full(3, 1 + 0.01 * (i - 4), np.float32)} for i in range(9)]
ATTACKS = {
    "scaled": {"attack-scale": 1e6},
    "sign-flip": {"attack-scale": 10.0},
    "gaussian": {"attack-noise-std": 100.0},
    "num-examples-lie": {"attack-scale": 1e8},
    "same-bad-update": {"attack-scale": 10.0},
}
DEFENCES = {
    "median": {"rule": Aggregation.MEDIAN},
    "trimmed-mean": {"rule": Aggregation.TRIMMED_MEAN, "trim_fraction": 0.2},
    "krum": {"rule": Aggregation.KRUM, "byzantine": 2},
    "multi-krum": {"rule": Aggregation.MULTI_KRUM, "byzantine": 2},
    "bulyan": {"rule": Aggregation.BULYAN, "byzantine": 2},
}


def _attacked_round(attack: str) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    s = parse_settings({"attack": attack, "attack-fraction": 0.2, **ATTACKS[attack]})
    updates, examples = list(HONEST), [10.0] * 9
    for pid in (9, 10):
        honest = {"w": np.ones(3, np.float32)}
        forged, claim = forged_update(s, honest, 10, pid, server_round=1)
        updates.append(forged)
        examples.append(float(claim))
    return updates, examples


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_undefended_mean_is_taken_over_by_every_update_attack(attack):
    updates, examples = _attacked_round(attack)
    out = robust_aggregate(updates, examples, RobustConfig())
    assert np.abs(out.delta["w"] - 1.0).max() > 0.5


@pytest.mark.parametrize("defence", sorted(DEFENCES))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_robust_rule_stays_inside_the_honest_range(attack, defence):
    updates, examples = _attacked_round(attack)
    out = robust_aggregate(updates, examples, RobustConfig(**DEFENCES[defence]))
    assert out.rule.value == defence and np.all(np.abs(out.delta["w"] - 1.0) <= 0.04 + 1e-6)
    if defence in ("krum", "multi-krum", "bulyan"):
        assert {9, 10} <= {a.index for a in out.actions}  # both attackers excluded, logged


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_median_norm_bound_limits_what_an_update_attack_can_do(attack):
    """Norm bounding bounds the damage (each attacker counts at most 2x the median norm)
    but does not remove it: a bound alone loses to sign-flip and to a num-examples lie
    (the lie's update has an honest norm); uniform weights then remove the lie's hold."""
    updates, examples = _attacked_round(attack)
    out = robust_aggregate(updates, examples, RobustConfig(median_factor=2.0))
    bound = 2.0 * float(np.median([update_norm(u) for u in updates]))  # an honest norm x 2
    assert out.bound == pytest.approx(bound) and bound < 2.1 * np.sqrt(3)
    # the honest coordinates sum to 9, each clipped attacker's lies in [-bound, bound]:
    # |(9 + a + b) / 11 - 1| <= (2 bound + 2) / 11
    worst = (2 * bound + 2) / 11
    if attack == "num-examples-lie":  # weighted 1e9 with an honest norm: the bound misses it
        assert out.delta["w"][0] == pytest.approx(-1.0, abs=1e-5) and out.actions == []
        cfg = RobustConfig(median_factor=2.0, weighting=Weighting.UNIFORM)
        uniform = robust_aggregate(updates, examples, cfg)
        np.testing.assert_allclose(uniform.delta["w"], (9 - 2) / 11, rtol=1e-6)
    else:
        assert np.abs(out.delta["w"] - 1.0).max() <= worst
        assert {a.index for a in out.actions} == {9, 10}


# ---- the strategy logs what the rule did ---------------------------------------------
THETA = {"w": np.zeros(2, np.float32)}


TEN = FixedNodes({1: range(10)})


def _reply(updates: list[dict], partitions: list[int]) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    stacked = {k: np.stack([u[k] for u in updates]) for k in updates[0]}
    metrics = MetricRecord(
        {"partition-id": partitions, "num-examples": [5] * 10, "skipped": [0] * 10}
    )
    content = RecordDict({"updates": to_record(stacked), "metrics": metrics})
    instruction = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    return Message(content, reply_to=instruction)


def _round(replies, **config):
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    return round_on_replies({"fraction-train": 1.0, **config}, TEN, replies, THETA)


def test_the_strategy_steps_on_the_robust_aggregate_and_logs_each_excluded_client():
    no_bound = {"krum-byzantine": 2, "norm-bound-median-factor": 0.0}  # multi-krum alone
    updates = [{"w": np.array([1.0, 1.0 + 0.01 * i], np.float32)} for i in range(8)]
    updates += [{"w": np.array([1e6, -1e6], np.float32)}] * 2
    out = _round([_reply(updates, list(range(10)))], aggregation="multi-krum", **no_bound)
    assert out.theta is not None
    np.testing.assert_allclose(out.theta["w"], [1.0, 1.035], rtol=1e-6)  # mean of 8
    log = out.report.robust
    assert log["rule"] == "multi-krum"
    assert [(c["partition"], c["action"]) for c in log["clients"]] == [
        (8, "excluded by multi-krum"),
        (9, "excluded by multi-krum"),
    ]
    assert log["clients"][0]["norm"] == pytest.approx(np.sqrt(2) * 1e6)


def test_a_rule_the_round_size_cannot_support_stops_before_anything_is_sent():
    with pytest.raises(ConfigError) as err:  # bulyan with f = 2 needs 11 clients of 10
        _round([], aggregation="bulyan", **{"krum-byzantine": 2})
    assert err.value.key == "krum-byzantine" and "at most 1 for bulyan" in err.value.allowed

"""DP-FedAvg's server side: the noise has the configured std, adaptive clipping moves the
bound the right way, the accountant agrees with dp-accounting's own documented values, and
target-epsilon refuses a plan that would exceed it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from common.config import parse_settings
from common.streams import NOISE_PURPOSE
from server.privacy import (
    PLD_Z_FLOOR,
    DPConfig,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    PrivacyState,
    calibrate_noise,
    check_budget,
    fresh_noise_key,
    noise_rng,
    noise_split,
    private_mean,
    start_state,
)

DP = {"dp": True, "dp-clip": 0.5, "weighting": "uniform"}


def _cfg(**extra) -> DPConfig:
    return DPConfig.from_settings(parse_settings(DP | extra))


def test_noise_on_the_sum_has_std_z_times_clip_and_the_mean_a_fixed_denominator():
    cfg = _cfg(**{"dp-noise-multiplier": 1.3})
    state = PrivacyState(clip=0.5, noise_multiplier=1.3)
    total = {"w": np.full(200_000, 4.0)}
    out = private_mean(total, 0.0, state, cfg, expected=8, rng=np.random.default_rng(7))
    noise = out.delta["w"] * 8 - 4.0  # undo the fixed denominator k = 8
    # std 1.3 * 0.5 = 0.65; with 200,000 draws the sample std is within 0.5% (5 sigma)
    assert out.noise_std == pytest.approx(0.65)
    assert np.std(noise) == pytest.approx(0.65, rel=0.005)
    assert abs(np.mean(noise)) < 5 * 0.65 / math.sqrt(200_000)
    assert out.next_clip == 0.5  # fixed clipping


def test_adaptive_clipping_splits_the_noise_and_moves_the_bound_towards_the_quantile():
    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "dp-adaptive": True, "dp-clip-lr": 0.2})
    z_update, count_std = noise_split(cfg, 1.0, expected=100)
    assert count_std == pytest.approx(5.0)  # k / 20 (Andrew et al.)
    # z^-2 = z_D^-2 + (2 s_b)^-2: the two releases cost one Gaussian with z
    assert z_update**-2 + (2 * count_std) ** -2 == pytest.approx(1.0)
    state = PrivacyState(clip=1.0, noise_multiplier=1.0)
    total = {"w": np.zeros(3)}
    rng = np.random.default_rng(0)
    # every one of 100 clients needed no clipping (b_i = 1): the bound shrinks ...
    shrink = private_mean(total, 100 * 0.5, state, cfg, 100, rng)
    assert shrink.unclipped_fraction == pytest.approx(1.0, abs=0.2)
    assert shrink.next_clip < 1.0
    # ... and when every one was clipped (b_i = 0) it grows, by exp(-eta (b~ - g))
    grow = private_mean(total, -100 * 0.5, state, cfg, 100, rng)
    assert grow.next_clip == pytest.approx(math.exp(-0.2 * (grow.unclipped_fraction - 0.5)))
    assert grow.next_clip > 1.0


def test_too_little_count_noise_for_the_multiplier_is_a_config_error():
    cfg = _cfg(**{"dp-noise-multiplier": 2.0, "dp-adaptive": True})
    with pytest.raises(ValueError, match="dp-clipped-count-stddev"):
        noise_split(cfg, 2.0, expected=20)  # s_b = 1 <= z / 2


def test_accountant_matches_dp_accountings_documented_rdp_of_a_subsampled_gaussian():
    # dp-accounting's own test (rdp_privacy_accountant_test.py,
    # test_compute_rdp_poisson_sampled_gaussian): q = 0.01, z = 2.5, 50 steps has these RDP
    # values at orders 1.5, 2.5, 5, 50, 100; epsilon at delta follows from them.
    orders = [1.5, 2.5, 5, 50, 100]
    documented = [6.70579741e-04, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02, 1.67416308e02]
    expected, _ = rdp_privacy_accountant.compute_epsilon(orders, documented, 1e-5)
    ledger = PrivacyLedger().add(0.01, 2.5, 20).add(0.01, 2.5, 30)  # 50 rounds, one run
    assert ledger.runs == ((0.01, 2.5, 50),)
    assert ledger.epsilon(1e-5, "rdp", orders) == pytest.approx(expected, rel=1e-6)
    # with the library's default (denser) orders the bound can only be tighter
    assert ledger.epsilon(1e-5, "rdp") <= expected


def test_accountant_matches_the_documented_one_epsilon_gaussian():
    # dp-accounting's test_compute_epsilon_delta_gaussian: z = 4.530877117 at q = 1 is
    # exactly (1, 1e-6)-DP; the default orders are coarser, so within 1%
    one = PrivacyLedger().add(1.0, 4.530877117)
    assert one.epsilon(1e-6, "rdp") == pytest.approx(1.0, rel=0.01)
    # PLD is exact up to its grid: the same z is (0.927, 1e-6)-DP (Balle and Wang's exact
    # Gaussian, below), the documented 1 being an RDP-style bound
    exact = _exact_epsilon(lambda e: _gaussian_delta(e, 4.530877117), 1e-6)
    assert exact == pytest.approx(0.9274, abs=1e-4)
    assert exact <= one.epsilon(1e-6, "pld") <= exact * (1 + 2e-3)


def test_ledger_epsilon_equals_the_library_composing_every_round():
    from dp_accounting import dp_event
    from dp_accounting.rdp import RdpAccountant

    ledger = PrivacyLedger().add(0.02, 1.1, 150).add(0.05, 0.9, 7).add(0.02, 1.1, 3)
    accountant = RdpAccountant()
    for q, z, n in [(0.02, 1.1, 150), (0.05, 0.9, 7), (0.02, 1.1, 3)]:
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))
        accountant.compose(dp_event.SelfComposedDpEvent(event, n))
    assert ledger.epsilon(1e-5, "rdp") == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_ledger_merges_equal_rounds_and_counts_them():
    ledger = PrivacyLedger().add(0.1, 1.0).add(0.1, 1.0).add(0.2, 1.0)
    assert ledger.runs == ((0.1, 1.0, 2), (0.2, 1.0, 1)) and ledger.rounds == 3
    assert ledger.epsilon(1e-5) > PrivacyLedger().add(0.1, 1.0, 3).epsilon(1e-5)
    assert PrivacyLedger().add(0.1, 0.0).epsilon(1e-5) == math.inf  # clipping without noise
    state = PrivacyState(0.3, 1.1, ledger)
    assert PrivacyState.from_json(state.to_json()) == state


def test_calibrated_noise_spends_the_target_and_no_more():
    for accountant in ("rdp", "pld"):
        z = calibrate_noise(2.0, 0.02, 200, 1e-5, accountant)
        assert PrivacyLedger().add(0.02, z, 200).epsilon(1e-5, accountant) <= 2.0
        assert PrivacyLedger().add(0.02, 0.97 * z, 200).epsilon(1e-5, accountant) > 2.0
    # PLD is tighter, so it needs less noise for the same target (the issue measured 6-7%)
    assert calibrate_noise(2.0, 0.02, 200, 1e-5, "pld") < 0.97 * calibrate_noise(
        2.0, 0.02, 200, 1e-5, "rdp"
    )


def test_pld_calibration_stops_at_its_floor_instead_of_probing_tiny_noise():
    # epsilon = 60 in one unsampled round would need z ~ 0.1 (seconds and hundreds of MB of
    # PLD); the floor spends less than the target instead
    assert calibrate_noise(60.0, 1.0, 1, 1e-5, "pld") == PLD_Z_FLOOR
    assert PrivacyLedger().add(1.0, PLD_Z_FLOOR).epsilon(1e-5) < 60.0


def _gaussian_delta(epsilon: float, sigma: float) -> float:
    """delta(epsilon) of the Gaussian mechanism, sensitivity 1, std sigma: exact
    (Balle and Wang 2018, Thm. 8)."""
    from scipy.stats import norm

    a = 1 / (2 * sigma)
    return norm.cdf(-epsilon * sigma + a) - math.exp(epsilon) * norm.cdf(-epsilon * sigma - a)


def _sampled_gaussian_delta(epsilon: float, q: float, sigma: float) -> float:
    """delta(epsilon) of one Poisson-subsampled Gaussian round, add or remove one client,
    exact: P = (1-q) N(0, s^2) + q N(1, s^2) against Q = N(0, s^2), both ways round. The
    privacy loss log P/Q = log(1 - q + q exp((2x-1)/(2 s^2))) grows with x, so each
    hockey-stick divergence is a difference of normal tails past one point."""
    from scipy.stats import norm

    def point(loss: float) -> float:  # the x where log P/Q = loss
        return sigma**2 * math.log((math.exp(loss) - 1 + q) / q) + 0.5

    x = point(epsilon)  # P against Q: P(L > eps) - e^eps Q(L > eps)
    remove = (1 - q) * norm.sf(x / sigma) + q * norm.sf((x - 1) / sigma)
    remove -= math.exp(epsilon) * norm.sf(x / sigma)
    add = 0.0
    if 1 - q < math.exp(-epsilon):  # Q against P; empty when the loss cannot reach -eps
        x = point(-epsilon)
        add = norm.cdf(x / sigma) - math.exp(epsilon) * (
            (1 - q) * norm.cdf(x / sigma) + q * norm.cdf((x - 1) / sigma)
        )
    return max(remove, add)


def _exact_epsilon(delta_of, delta: float) -> float:
    from scipy.optimize import brentq

    return brentq(lambda e: delta_of(e) - delta, 1e-6, 100.0, xtol=1e-10)


@pytest.mark.parametrize("z, rounds", [(1.0, 1), (0.8, 10), (2.0, 50)])
def test_pld_epsilon_of_the_gaussian_equals_the_exact_one(z, rounds):
    # n rounds of the Gaussian mechanism (q = 1) are one Gaussian with std z / sqrt(n)
    exact = _exact_epsilon(lambda e: _gaussian_delta(e, z / math.sqrt(rounds)), 1e-5)
    pld = PrivacyLedger().add(1.0, z, rounds).epsilon(1e-5, "pld")
    assert exact <= pld <= exact * (1 + 2e-3)  # pessimistic, within its grid
    assert PrivacyLedger().add(1.0, z, rounds).epsilon(1e-5, "rdp") > pld


@pytest.mark.parametrize("q, z", [(0.1, 1.0), (0.5, 0.8), (0.01, 0.6)])
def test_pld_epsilon_of_one_sampled_round_equals_the_exact_one(q, z):
    exact = _exact_epsilon(lambda e: _sampled_gaussian_delta(e, q, z), 1e-5)
    pld = PrivacyLedger().add(q, z).epsilon(1e-5, "pld")
    assert exact * (1 - 1e-4) <= pld <= exact * (1 + 2e-3) + 2e-3


def test_pld_is_tighter_than_rdp_on_many_sampled_rounds():
    # the audit's 10-30%: e.g. q = 0.1, z = 1, 100 rounds
    ledger = PrivacyLedger().add(0.1, 1.0, 100)
    pld, rdp = ledger.epsilon(1e-5, "pld"), ledger.epsilon(1e-5, "rdp")
    assert 0.7 * rdp < pld < 0.95 * rdp


def test_target_epsilon_refuses_a_plan_that_would_exceed_it():
    settings = parse_settings(
        DP | {"dp-noise-multiplier": 0.8, "target-epsilon": 6.0, "num-rounds": 100}
    )
    cfg = DPConfig.from_settings(settings)
    with pytest.raises(PrivacyBudgetExceeded, match=r"rounds would fit") as err:
        start_state(settings, cfg, q=0.1, expected=10, saved=None)
    fits = int(str(err.value).split(" rounds would fit")[0].split()[-1])
    assert 0 < fits < 100
    assert check_budget(PrivacyLedger(), 0.1, 0.8, fits, cfg) <= 6.0
    # z = 0 with a target: calibrated, and then the plan fits exactly
    calibrated = parse_settings(DP | {"target-epsilon": 1.0, "num-rounds": 100})
    state, planned = start_state(calibrated, DPConfig.from_settings(calibrated), 0.1, 10, None)
    assert state.noise_multiplier > 0.8 and planned <= 1.0


def test_a_run_without_dp_never_imports_dp_accounting():
    """The server loads dp-accounting (and SciPy) only to account for a DP run."""
    import subprocess
    import sys

    code = "import sys, server.app; print(sorted({'dp_accounting', 'scipy'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_noise_key_survives_the_checkpoint_and_an_old_checkpoint_gets_a_fresh_one():
    state = PrivacyState(0.5, 1.1, PrivacyLedger().add(0.1, 1.1, 3), fresh_noise_key())
    assert PrivacyState.from_json(state.to_json()) == state
    old = {k: v for k, v in state.to_json().items() if k != "noise-key"}
    keys = {PrivacyState.from_json(old).noise_key for _ in range(2)}
    assert len(keys) == 2 and state.noise_key not in keys


def test_a_fresh_run_draws_its_key_from_os_entropy_unless_reproducible():
    settings = parse_settings(DP | {"dp-noise-multiplier": 1.0, "seed": 5})
    cfg = DPConfig.from_settings(settings)
    keys = {start_state(settings, cfg, 0.1, 10, None)[0].noise_key for _ in range(3)}
    assert len(keys) == 3 and 5 not in keys
    labelled = parse_settings(DP | {"dp-noise-multiplier": 1.0, "seed": 5,
                                    "dp-reproducible-noise": True})  # fmt: skip
    state, _ = start_state(labelled, DPConfig.from_settings(labelled), 0.1, 10, None)
    assert state.noise_key == 5
    first = noise_rng(state.noise_key, 1, NOISE_PURPOSE).normal(size=4)
    np.testing.assert_array_equal(first, np.random.default_rng([5, 1, 2]).normal(size=4))


def test_delta_of_one_over_n_or_more_is_refused_with_the_population():
    from server.privacy import check_delta

    check_delta(0.0099, 100)  # just below 1/N
    with pytest.raises(ValueError, match=r"'dp-delta' has value 0.01; allowed: below 1/N = 0.01, "
                                         r"N = 100 clients"):  # fmt: skip
        check_delta(0.01, 100)
    with pytest.raises(ValueError) as err:
        check_delta(1e-3, 4000)
    assert str(err.value) == (
        "config key 'dp-delta' has value 0.001; allowed: below 1/N = 0.00025, N = 4000 clients "
        "that can be sampled (delta >= 1/N allows releasing a client's data in the clear); "
        "1/N^1.1 or less is usual"
    )


def test_distributed_dp_must_leave_at_least_one_node_to_add_noise():
    from server.privacy import check_tolerated_drops

    base = DP | {"secagg": True, "dp-mechanism": "distributed"}
    two_drops = parse_settings(base | {"dp-tolerated-drops": 2})
    check_tolerated_drops(two_drops, 3)
    with pytest.raises(ValueError) as err:
        check_tolerated_drops(two_drops, 2)
    assert str(err.value) == (
        "config key 'dp-tolerated-drops' has value 2; allowed: below the 2 nodes connected: "
        "each node adds a 1/(nodes - drops) share of the noise variance"
    )
    check_tolerated_drops(parse_settings(DP | {"dp-noise-multiplier": 1.0}), 1)  # central DP


def test_the_clipped_count_gets_noise_of_std_s_b_and_mean_zero():
    """Adaptive clipping's released fraction b~ = (sum_i (b_i - 1/2) + N(0, s_b^2)) / k + 1/2:
    over 4,000 releases with k = 100 (s_b = k / 20 = 5, so b~ has std 0.05) its mean is the
    true fraction 0.7 and its std 0.05; the round reports C_t and the update's std z_D C_t."""
    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "dp-adaptive": True, "dp-clip-lr": 0.2})
    z_update, count_std = noise_split(cfg, 1.0, expected=100)
    state = PrivacyState(clip=0.8, noise_multiplier=1.0)
    rng = np.random.default_rng(11)
    total, within = {"w": np.zeros(1)}, 100 * (0.7 - 0.5)  # 70 of 100 clients within C
    rounds = [private_mean(total, within, state, cfg, 100, rng) for _ in range(4000)]
    fractions = np.array([r.unclipped_fraction for r in rounds])
    sd = count_std / 100
    assert abs(fractions.mean() - 0.7) < 5 * sd / math.sqrt(4000)
    assert fractions.std() == pytest.approx(sd, rel=0.06)  # 5 standard errors of the std
    deltas = np.array([r.delta["w"][0] for r in rounds])  # (0 + N(0, (z_D C)^2)) / k
    assert deltas.std() == pytest.approx(z_update * 0.8 / 100, rel=0.06)
    first = rounds[0]
    assert first.clip == 0.8 and first.noise_std == pytest.approx(z_update * 0.8)
    assert first.next_clip == pytest.approx(0.8 * math.exp(-0.2 * (fractions[0] - 0.5)))
    fixed = private_mean(total, 0.0, state, _cfg(**{"dp-noise-multiplier": 1.0}), 100, rng)
    assert fixed.clip == 0.8 and fixed.next_clip == 0.8 and fixed.noise_std == 0.8


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_rounds_within_is_the_largest_count_that_fits(accountant):
    """rounds_within's bisection against the definition: r more rounds fit the target and
    r + 1 do not (epsilon grows with the rounds), by the configured accountant (PLD allows
    about 14 here and RDP about 9, so the other accountant's count fails the check), and 0
    when not even one more round fits."""
    from server.privacy import rounds_within

    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": 6.0, "dp-accountant": accountant})
    spent = PrivacyLedger().add(0.2, 1.0, 3)

    def fits(n: int) -> bool:
        return spent.add(0.2, 1.0, n).epsilon(cfg.delta, accountant) <= 6.0

    r = rounds_within(spent, 0.2, 1.0, cfg, 20)
    assert 5 < r < 20 and fits(r) and not fits(r + 1)
    assert rounds_within(spent, 0.2, 1.0, cfg, r - 2) == r - 2  # capped by ``most``
    over = PrivacyLedger().add(0.2, 1.0, 200)  # already past the target
    assert rounds_within(over, 0.2, 1.0, cfg, 20) == 0


def test_start_privacy_checks_delta_and_drops_and_plans_with_q_of_k_over_n():
    """q = k / N: 10 of 100 clients fit target-epsilon 3 over 5 rounds at z = 1 (epsilon
    about 1.6), 10 of 20 do not; delta >= 1/N and too many tolerated drops are refused."""
    from server.privacy import start_privacy

    settings = parse_settings(
        DP | {"dp-noise-multiplier": 1.0, "target-epsilon": 3.0, "num-rounds": 5}
    )
    cfg = DPConfig.from_settings(settings)
    state = start_privacy(settings, cfg, population=100, nodes=2, expected=10, saved=None)
    assert (state.clip, state.noise_multiplier, state.ledger.rounds) == (0.5, 1.0, 0)
    assert PrivacyLedger().add(0.1, 1.0, 5).epsilon(cfg.delta) < 3.0
    assert PrivacyLedger().add(0.5, 1.0, 5).epsilon(cfg.delta) > 3.0
    with pytest.raises(PrivacyBudgetExceeded, match=r"q = 0.5 with"):
        start_privacy(settings, cfg, population=20, nodes=2, expected=10, saved=None)
    with pytest.raises(ValueError, match="'dp-delta'.*N = 100000"):
        start_privacy(settings, cfg, population=100_000, nodes=2, expected=10, saved=None)
    distributed = parse_settings(
        DP | {"secagg": True, "dp-mechanism": "distributed", "dp-tolerated-drops": 1,
              "dp-noise-multiplier": 1.0}
    )  # fmt: skip
    with pytest.raises(ValueError, match="'dp-tolerated-drops'"):
        start_privacy(distributed, DPConfig.from_settings(distributed), 100, 1, 10, None)
    resumed = PrivacyState(0.7, 1.0, PrivacyLedger().add(0.1, 1.0, 2), 99)
    assert start_privacy(settings, cfg, 100, 2, 10, resumed) is resumed
    # the expected cohort reaches the noise split: k = 20 leaves s_b = 1, not above z / 2
    adaptive = parse_settings(DP | {"dp-noise-multiplier": 3.0, "dp-adaptive": True})
    with pytest.raises(ValueError, match="'dp-clipped-count-stddev'.*cohort of 20 clients"):
        start_privacy(adaptive, DPConfig.from_settings(adaptive), 1000, 2, 20, None)
    seeded = parse_settings(DP | {"dp-noise-multiplier": 1.0, "seed": 9,
                                  "dp-reproducible-noise": True})  # fmt: skip
    assert start_privacy(seeded, DPConfig.from_settings(seeded), 100, 2, 10, None).noise_key == 9


def test_a_round_runs_only_while_it_fits_the_target():
    from server.privacy import round_within_budget

    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": 3.0})
    fresh = PrivacyState(0.5, 1.0)
    assert round_within_budget(cfg, fresh, 0.1, 1)
    spent = PrivacyState(0.5, 1.0, PrivacyLedger().add(0.5, 1.0, 5))  # epsilon > 3 already
    assert not round_within_budget(cfg, spent, 0.1, 6)
    unlimited = _cfg(**{"dp-noise-multiplier": 1.0})
    assert round_within_budget(unlimited, spent, 0.1, 6)
    # the target set to the epsilon after exactly one more round: that round runs
    ledger = PrivacyLedger().add(0.1, 1.0, 4)
    one_more = ledger.add(0.1, 1.0, 1).epsilon(1e-5)
    tight = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": one_more})
    assert round_within_budget(tight, PrivacyState(0.5, 1.0, ledger), 0.1, 5)


def test_the_summary_reports_the_configured_accountants_epsilon_and_flags_seeded_noise():
    from server.privacy import privacy_summary

    cfg = _cfg(**{"dp-noise-multiplier": 1.1, "dp-accountant": "rdp", "dp-delta": 1e-6})
    ledger = PrivacyLedger().add(0.1, 1.1, 7)
    out = privacy_summary(cfg, PrivacyState(0.42, 1.1, ledger))
    assert out == {
        "epsilon": ledger.epsilon(1e-6, "rdp"),
        "delta": 1e-6,
        "noise-multiplier": 1.1,
        "final-clip": 0.42,
    }
    assert out["epsilon"] != ledger.epsilon(1e-6, "pld")
    pld = _cfg(**{"dp-noise-multiplier": 1.1, "dp-delta": 1e-6})
    assert privacy_summary(pld, PrivacyState(0.42, 1.1, ledger))["epsilon"] == ledger.epsilon(
        1e-6, "pld"
    )
    seeded = _cfg(**{"dp-noise-multiplier": 1.1, "dp-reproducible-noise": True})
    assert privacy_summary(seeded, PrivacyState(0.42, 1.1, ledger))["not-a-private-release"] == 1.0


def test_a_plan_spending_exactly_the_target_fits_and_one_round_more_is_refused_in_full():
    """epsilon <= target, equality included: the target set to the exact epsilon of 3 + 8
    rounds lets 8 more rounds run, and 9 are refused with one message that says what was
    spent already, what would fit and what to change."""
    from server.privacy import rounds_within

    spent = PrivacyLedger().add(0.2, 1.0, 3)
    exact = spent.add(0.2, 1.0, 8).epsilon(1e-5, "pld")
    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": exact})
    assert check_budget(spent, 0.2, 1.0, 8, cfg) == exact
    assert rounds_within(spent, 0.2, 1.0, cfg, 20) == 8
    with pytest.raises(PrivacyBudgetExceeded) as err:
        check_budget(spent, 0.2, 1.0, 9, cfg)
    nine = spent.add(0.2, 1.0, 9).epsilon(1e-5, "pld")
    assert str(err.value) == (
        f"config key 'target-epsilon' has value {exact!r}; allowed: at least {nine:.4g}: after "
        f"the 3 rounds already run, 9 more rounds at sampling rate q = 0.2 with noise "
        f"multiplier z = 1 spend epsilon = {nine:.4g} at delta = 1e-05 (PLD accountant); 8 "
        "rounds would fit. Lower num-rounds, raise dp-noise-multiplier (or set it to 0 to "
        "calibrate it to target-epsilon), lower fraction-train, or raise target-epsilon"
    )


def test_the_budget_and_the_calibration_use_the_configured_accountant():
    """With RDP (looser than PLD here), 10 rounds at q = 0.2, z = 1 exceed epsilon 5.3 (PLD
    would allow them); calibrating to RDP gives RDP's z, which PLD's smaller z would not
    satisfy under RDP."""
    rdp = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": 5.3, "dp-accountant": "rdp"})
    ten = PrivacyLedger().add(0.2, 1.0, 10)
    assert ten.epsilon(1e-5, "pld") < 5.3 < ten.epsilon(1e-5, "rdp")
    with pytest.raises(PrivacyBudgetExceeded, match=r"\(RDP accountant\)"):
        check_budget(PrivacyLedger(), 0.2, 1.0, 10, rdp)
    settings = parse_settings(
        DP | {"target-epsilon": 2.0, "num-rounds": 50, "dp-accountant": "rdp"}
    )
    state, planned = start_state(settings, DPConfig.from_settings(settings), 0.05, 10, None)
    assert state.noise_multiplier == calibrate_noise(2.0, 0.05, 50, 1e-5, "rdp")
    assert planned <= 2.0


def test_adaptive_clipping_with_too_little_count_noise_stops_before_round_one():
    """start_state splits z for the configured expected cohort before anything runs: with
    z = 2 and k = 20, Andrew et al.'s s_b = k / 20 = 1 is not above z / 2, so the start is
    refused naming the key; with k = 100 (s_b = 5) it starts, with C = dp-clip."""
    settings = parse_settings(
        DP | {"dp-noise-multiplier": 2.0, "dp-adaptive": True, "num-rounds": 3}
    )
    cfg = DPConfig.from_settings(settings)
    with pytest.raises(ValueError, match=r"'dp-clipped-count-stddev' has value 0.0.*cohort of 20"):
        start_state(settings, cfg, q=0.1, expected=20, saved=None)
    state, _ = start_state(settings, cfg, q=0.1, expected=100, saved=None)
    assert (state.clip, state.noise_multiplier) == (0.5, 2.0)


def test_every_dp_setting_reaches_the_dp_config_unchanged():
    s = parse_settings(
        DP | {"dp-noise-multiplier": 1.7, "dp-delta": 1e-6, "target-epsilon": 4.0,
              "dp-adaptive": True, "dp-target-quantile": 0.3, "dp-clip-lr": 0.4,
              "dp-clipped-count-stddev": 2.5, "dp-reproducible-noise": True,
              "dp-accountant": "rdp"}
    )  # fmt: skip
    assert DPConfig.from_settings(s) == DPConfig(1.7, 1e-6, 4.0, True, 0.3, 0.4, 2.5, True, "rdp")


def test_the_noise_split_uses_the_configured_count_stddev_and_names_the_limits():
    """Fixed clipping: all of z on the update, no count noise. Adaptive with s_b = 2.5 set:
    z_D^-2 = z^-2 - (2 s_b)^-2 (Andrew et al. 2021, Thm. 1)."""
    assert noise_split(_cfg(**{"dp-noise-multiplier": 1.3}), 1.3, 10) == (1.3, 0.0)
    cfg = _cfg(**{"dp-noise-multiplier": 2.0, "dp-adaptive": True, "dp-clipped-count-stddev": 2.5})
    z_update, count_std = noise_split(cfg, 2.0, expected=100)
    assert count_std == 2.5
    assert z_update == pytest.approx((2.0**-2 - 5.0**-2) ** -0.5, rel=1e-12)
    small = _cfg(**{"dp-noise-multiplier": 3.0, "dp-adaptive": True})
    with pytest.raises(ValueError) as err:
        noise_split(small, 3.0, expected=20)  # s_b = 20 / 20 = 1, not above z / 2 = 1.5
    assert str(err.value).startswith(
        "config key 'dp-clipped-count-stddev' has value 0.0; allowed: more than z / 2 = 1.5 "
        "with dp-noise-multiplier 3 and an expected cohort of 20 clients (0 means 20/20 = 1): "
    )


def test_pld_ledger_of_two_rounds_and_the_defaults_by_the_library_directly():
    """Two rounds in one run are two compositions (PLD by dp-accounting itself, at the same
    grid step); the default accountant is PLD; no round spends nothing; z = 0 is no privacy."""
    from dp_accounting import dp_event
    from dp_accounting.pld import PLDAccountant

    library = PLDAccountant(value_discretization_interval=1e-3)
    library.compose(dp_event.PoissonSampledDpEvent(0.1, dp_event.GaussianDpEvent(0.9)), count=2)
    ledger = PrivacyLedger().add(0.1, 0.9, 2)
    assert ledger.epsilon(1e-5) == pytest.approx(library.get_epsilon(1e-5), rel=1e-9)
    assert ledger.epsilon(1e-5) != ledger.epsilon(1e-5, "rdp")
    assert PrivacyLedger().epsilon(1e-5) == 0.0
    assert PrivacyLedger().add(0.1, 0.0, 3).epsilon(1e-5) == math.inf


def test_rounds_within_for_every_cap_equals_the_count_that_fits_capped():
    from server.privacy import rounds_within

    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": 6.0, "dp-accountant": "rdp"})
    spent = PrivacyLedger().add(0.2, 1.0, 3)
    eps = [spent.add(0.2, 1.0, n).epsilon(1e-5, "rdp") if n else 0.0 for n in range(22)]
    fit = max(n for n in range(22) if eps[n] <= 6.0)
    assert 3 < fit < 20
    assert [rounds_within(spent, 0.2, 1.0, cfg, most) for most in range(21)] == [
        min(most, fit) for most in range(21)
    ]


def test_a_resumed_plan_counts_only_the_rounds_still_to_run():
    """num-rounds 5 with 3 already in the ledger: the plan is the ledger plus 2 rounds at
    (q, z); with all 5 done, the ledger alone (0 more rounds)."""
    settings = parse_settings(DP | {"dp-noise-multiplier": 1.0, "num-rounds": 5})
    cfg = DPConfig.from_settings(settings)
    three = PrivacyState(0.5, 1.0, PrivacyLedger().add(0.1, 1.0, 3), 1)
    _, planned = start_state(settings, cfg, 0.1, 10, three)
    assert planned == PrivacyLedger().add(0.1, 1.0, 5).epsilon(1e-5)
    five = PrivacyState(0.5, 1.0, PrivacyLedger().add(0.1, 1.0, 5), 1)
    _, planned = start_state(settings, cfg, 0.1, 10, five)
    assert planned == PrivacyLedger().add(0.1, 1.0, 5).epsilon(1e-5)


def test_a_fresh_plan_over_the_target_says_so_without_rounds_already_run():
    cfg = _cfg(**{"dp-noise-multiplier": 1.0, "target-epsilon": 2.0})
    with pytest.raises(PrivacyBudgetExceeded) as err:
        check_budget(PrivacyLedger(), 0.2, 1.0, 30, cfg)
    spent = PrivacyLedger().add(0.2, 1.0, 30).epsilon(1e-5)
    assert f"allowed: at least {spent:.4g}: 30 more rounds at sampling rate" in str(err.value)


def test_a_resume_after_the_last_round_with_another_q_plans_nothing_and_keeps_epsilon():
    """A DP run resumed after all its rounds (a crash before summary.json) with the nodes
    changed since, so q differs: no round is left, so nothing is added to the ledger (a
    zero-round entry made dp-accounting raise 'count must be positive')."""
    settings = parse_settings({"dp": True, "dp-clip": 1.0, "dp-noise-multiplier": 1.0,
                               "num-rounds": 3, "target-epsilon": 50.0})  # fmt: skip
    cfg = DPConfig.from_settings(settings)
    ledger = PrivacyLedger().add(0.1, 1.0, 3)
    saved = PrivacyState(1.0, 1.0, ledger, noise_key=7)
    state, planned = start_state(settings, cfg, 0.25, 5, saved)
    assert state.ledger == ledger and ledger.add(0.25, 1.0, 0) is ledger
    assert planned == pytest.approx(ledger.epsilon(cfg.delta, cfg.accountant), rel=1e-12)

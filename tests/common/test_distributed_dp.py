"""Distributed DP's integer mechanism (common/dp_mechanism.py) through SecAgg+'s own arithmetic:
each node rounds its clients' clipped updates, adds a discrete Gaussian share and sends its
sum mod m; Flower's quantization, modular sum and dequantization (the pairwise masks cancel
mod 2^32) give the server the noised sum, whose noise has the intended distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    parameters_mod,
    parameters_multiply,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from common.dp_mechanism import (
    DistributedNoise,
    conditional_round,
    discrete_gaussian,
    distributed_noise,
    effective_noise_multiplier,
    noised_node_sum,
    rounding_bound,
)
from server.secagg import MODULUS, decode_sum, quantization_range


def _flower_round(node_values: list[np.ndarray], q_range: int) -> np.ndarray:
    """What SecAggPlusWorkflow hands aggregate_fit for these nodes' encoded vectors, as
    secaggplus_mod (weight = max_weight, clipping range 1) and the workflow compute it."""
    summed = None
    for x in node_values:
        encoded = [x.astype(np.float64) * (2 / q_range) - 1]
        quantized = quantize(parameters_multiply(encoded, 1.0), 1.0, q_range)
        # int64 as after the mod adds its (uint32) masks, which cancel in the sum
        vector = [a.astype(np.int64) for a in factor_combine(q_range, quantized)]
        summed = vector if summed is None else [a + b for a, b in zip(summed, vector, strict=True)]
    total_weight, recon = factor_extract(parameters_mod(summed, MODULUS))
    (mean,) = dequantize(recon, 1.0, q_range)
    mean += -(len(node_values) - 1) * 1.0
    return mean * (q_range / total_weight)


def _pipeline(rows_per_node, noise, rng):
    return decode_sum(
        _flower_round([noised_node_sum(r, noise, rng) for r in rows_per_node], noise.modulus),
        len(rows_per_node),
        noise,
    )


@pytest.mark.parametrize("std", [1.0, 1.5])
def test_the_discrete_gaussian_has_the_exact_probabilities(std):
    rng = np.random.default_rng(1)
    draws = 400_000
    x = discrete_gaussian(std, draws, rng)
    support = np.arange(-12, 13)
    pmf = np.exp(-(support**2) / (2 * std**2))
    pmf /= pmf.sum()
    observed = np.array([(x == k).sum() for k in support]) / draws
    # each frequency within 5 binomial standard errors (+ a floor for the far tails)
    tolerance = 5 * np.sqrt(pmf * (1 - pmf) / draws) + 1e-5
    assert np.all(np.abs(observed - pmf) <= tolerance)
    assert x.dtype == np.int64 and np.abs(x).max() <= 12
    assert not discrete_gaussian(0.0, 5, rng).any()


def test_the_conditional_rounding_is_unbiased_and_within_its_bound():
    rng = np.random.default_rng(2)
    v = rng.normal(0, 3.0, 50)
    bound = rounding_bound(float(np.linalg.norm(v)), v.size)
    draws = np.stack([conditional_round(v, bound, rng) for _ in range(4000)])
    assert np.all(np.linalg.norm(draws, axis=1) <= bound)
    assert np.all(np.abs(draws - v) < 1)  # each entry is v rounded down or up
    np.testing.assert_allclose(draws.mean(0), v, atol=5 * 0.5 / math.sqrt(4000))


@pytest.mark.parametrize("summed", [3, 2])  # every node, or one dropped before masking
def test_the_unmasked_sum_minus_the_true_sum_is_the_intended_discrete_noise(summed):
    rng = np.random.default_rng(3 + summed)
    dim, nodes, per_node, node_std = 20_000, 3, 2, 40.0
    step = 2.0**-20  # a power of two: the test's updates lie exactly on the grid
    noise = DistributedNoise(step, bound=1e9, node_std=node_std, modulus=quantization_range(3))
    ints = rng.integers(-500, 500, size=(nodes, per_node, dim))
    rows = [ints[i] * step for i in range(summed)]
    error = _pipeline(rows, noise, rng) / step - ints[:summed].sum(axis=(0, 1))
    assert np.array_equal(error, np.rint(error))  # integers: discrete noise, no float error
    variance = summed * node_std**2  # the shares of the nodes in the sum, and no more
    # sample mean within 5 standard errors; sample variance within 5 of its standard
    # errors (sqrt(2/d) = 1%), so a variance off by a node's share (33-50%) fails
    assert abs(error.mean()) < 5 * math.sqrt(variance / dim)
    assert error.var() == pytest.approx(variance, rel=5 * math.sqrt(2 / dim))
    kurtosis = np.mean((error - error.mean()) ** 4) / error.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.15)  # Gaussian-shaped, not uniform (1.8)


def test_the_chosen_step_leaves_no_room_for_wraparound():
    """Every client at +C on one coordinate, plus noise: the worst case still decodes."""
    rng = np.random.default_rng(4)
    nodes, per_node, dim, clip = 3, 4, 50, 0.01
    noise = distributed_noise(clip, 1.0, dim, nodes * per_node, nodes, nodes, quantization_range(3))
    rows = np.zeros((per_node, dim))
    rows[:, 0] = clip
    total = _pipeline([rows] * nodes, noise, rng)
    sigma = noise.granularity * noise.node_std * math.sqrt(nodes)
    assert abs(total[0] - nodes * per_node * clip) < 6 * sigma
    assert np.all(np.abs(total[1:]) < 6 * sigma)
    assert noise.granularity * nodes * per_node * 2 < clip * 1e-4  # rounding is negligible


def test_effective_noise_counts_only_the_shares_that_survived():
    noise = distributed_noise(0.01, 1.2, 1000, 12, 3, 3, quantization_range(3))
    assert effective_noise_multiplier(noise, 3, 1000) == pytest.approx(1.2, rel=1e-9)
    assert effective_noise_multiplier(noise, 2, 1000) == pytest.approx(1.2 * math.sqrt(2 / 3))
    tolerant = distributed_noise(0.01, 1.2, 1000, 12, 3, 2, quantization_range(3))
    assert effective_noise_multiplier(tolerant, 2, 1000) == pytest.approx(1.2, rel=1e-9)
    # tiny shares: KLS21's tau (the sum of discrete Gaussians is not one) costs privacy
    small = DistributedNoise(1.0, bound=1.0, node_std=0.3, modulus=2**20)
    assert effective_noise_multiplier(small, 3, 1000) < 0.3 * math.sqrt(3)


@pytest.mark.parametrize(
    ("dim", "branch"),
    [(1, "first"), (400, "second")],  # d = 1: the square-root bound wins; d = 400: the other
)
def test_effective_noise_equals_kls21_theorem_1_by_hand(dim, branch):
    """Three shares of std s = 0.8 and sensitivity 1.5, where KLS21's tau is large enough to
    matter: tau = 10 (exp(-2 pi^2 s^2 / 2) + exp(-2 pi^2 s^2 2/3)), then
    eps = min(sqrt(D^2 / (n s^2) + tau d / 2), D / (sqrt(n) s) + tau sqrt(d)), z = 1 / eps."""
    s, bound, n = 0.8, 1.5, 3
    tau = 10 * (math.exp(-(math.pi**2) * 0.64) + math.exp(-(math.pi**2) * 0.64 * 4 / 3))
    first = math.sqrt(2.25 / (3 * 0.64) + tau * dim / 2)
    second = 1.5 / (math.sqrt(3) * 0.8) + tau * math.sqrt(dim)
    assert (first < second) == (branch == "first")
    noise = DistributedNoise(1.0, bound=bound, node_std=s, modulus=2**20)
    assert effective_noise_multiplier(noise, n, dim) == pytest.approx(
        1 / min(first, second), rel=1e-12
    )
    # without tau (one share) the guarantee is the Gaussian's: z = s / D
    assert effective_noise_multiplier(noise, 1, dim) == pytest.approx(0.8 / 1.5, rel=1e-12)
    assert effective_noise_multiplier(noise, 0, dim) == 0.0
    silent = DistributedNoise(1.0, bound=bound, node_std=0.0, modulus=2**20)
    assert effective_noise_multiplier(silent, n, dim) == 0.0


def test_the_grid_step_and_noise_share_by_hand():
    """gamma from the no-wraparound rule written out: z = 1 with 8 nodes of which 2 are
    designed to survive (all-node noise std per Delta_2: 1 * sqrt(8 / 2) = 2), 1,000 clients,
    d = 100, m = 2^32: room = 2^31 - 1000 - 8 * 2 * 10 = 2147482488 and
    c / gamma = 0.5 * room / (1000 + 8 * 2) = 1073741244 / 1016."""
    noise = distributed_noise(0.25, 1.0, 100, 1000, 8, 2, 2**32)
    scaled_clip = 1073741244 / 1016
    assert noise.granularity == pytest.approx(0.25 / scaled_clip, rel=1e-12, abs=0)
    # Delta_2 of KLS21: min((a + sqrt(d))^2, a^2 + d/4 + sqrt(2 ln(1/beta)) (a + sqrt(d)/2)),
    # with beta = exp(-1/2): sqrt(2 ln(1/beta)) = 1
    a = scaled_clip
    assert noise.bound == pytest.approx(math.sqrt(min((a + 10) ** 2, a * a + 25 + a + 5)))
    assert noise.node_std == pytest.approx(noise.bound / math.sqrt(2), rel=1e-12)
    assert noise.modulus == 2**32


def test_a_modulus_too_small_for_the_clients_is_refused_at_the_threshold():
    """Without noise, 10 clients in d = 100: c / gamma = (m / 2 - 10) / 20, which must be at
    least 10 sqrt(d) = 100, so m = 4020 is the smallest modulus allowed."""
    assert distributed_noise(1.0, 0.0, 100, 10, 1, 1, 4020).granularity == pytest.approx(0.01)
    with pytest.raises(ValueError, match="modulus 4018 leaves too little room for 10 clients "
                                         "of dimension 100"):  # fmt: skip
        distributed_noise(1.0, 0.0, 100, 10, 1, 1, 4018)


@pytest.mark.parametrize(
    ("a", "dim", "beta", "want"),
    [
        # default beta = exp(-1/2), so sqrt(2 ln(1/beta)) = 1: the second bound,
        # 9 + 16/4 + 1 * (3 + 4/2) = 18, is below the first, (3 + 4)^2 = 49
        (3.0, 16, math.exp(-0.5), math.sqrt(18.0)),
        # beta = exp(-50): sqrt(2 * 50) = 10, the second bound is 1 + 1/4 + 10 * 1.5 = 16.25,
        # above the first, (1 + 1)^2 = 4
        (1.0, 1, math.exp(-50.0), 2.0),
    ],
)
def test_the_rounding_bound_by_hand(a, dim, beta, want):
    assert rounding_bound(a, dim, beta) == pytest.approx(want, rel=1e-12)


def test_the_rounding_draws_each_entry_on_its_own_and_accepts_the_bound_itself():
    rng = np.random.default_rng(6)
    halves = conditional_round(np.full(400, 0.5), 1e9, rng)
    assert 120 < halves.sum() < 280  # Binomial(400, 1/2): not all up or all down together
    # integers already: the rounding is the vector itself, whose norm 5 equals the bound
    np.testing.assert_array_equal(conditional_round(np.array([3.0, 4.0]), 5.0, rng), [3, 4])
    with pytest.raises(RuntimeError, match="no rounding within L2 bound 1.0 in 1000 tries"):
        conditional_round(np.array([3.0, 4.0]), 1.0, rng)


def test_a_node_rounds_float32_updates_in_float64_and_sends_integers():
    """x / gamma = 123456780 is not a float32 (its spacing there is 8): the share must be
    within one step of the exact quotient, and an integer mod m."""
    x = np.array([[12345.678]], np.float32)
    noise = DistributedNoise(1e-4, bound=1e12, node_std=0.0, modulus=2**40)
    share = noised_node_sum(x, noise, np.random.default_rng(7))
    assert share.dtype == np.int64
    assert abs(share[0] - float(x[0, 0]) / 1e-4) < 1

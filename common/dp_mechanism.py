"""Client-level clipping of stacked updates, shared by the node (which clips) and the server
(which checks what arrives), and the integer mechanism of distributed DP that both sides
parameterise alike.

DP-FedAvg (McMahan et al. 2018) bounds each client's influence by scaling its whole update,
every array of it (theta and, for Meta-SGD, alpha), to an L2 norm of at most C ("flat
clipping", Andrew et al. 2021): u <- u * min(1, C / ||u||). The quantile method of Andrew et
al. also needs, per client, whether its update was already within the bound (the bit b_i).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

WITHIN_CLIP = "dp-within-clip"  # per-client reply metric: b_i, 1 if its update needed no clip


@dataclass(frozen=True)
class ClippedRows:
    updates: dict[str, np.ndarray]  # every row scaled to L2 norm <= bound (dtypes kept)
    norms: np.ndarray  # each row's L2 norm before clipping (float64)
    within: np.ndarray  # b_i: 1.0 where the row's norm was already <= bound, else 0.0


def row_norms(stacked: Mapping[str, np.ndarray]) -> np.ndarray:
    """L2 norm of every row (leading axis) over all keys together, in float64."""
    squares = [
        np.square(np.asarray(v, np.float64)).reshape(len(v), int(np.prod(v.shape[1:]))).sum(1)
        for v in stacked.values()
    ]  # (a node with no sampled client has zero rows)
    return np.sqrt(np.sum(squares, axis=0))


def clip_rows(stacked: Mapping[str, np.ndarray], bound: float) -> ClippedRows:
    """Each row of ``stacked`` (one client per row) scaled by min(1, bound / its norm).

    The scaling is done in float64 and cast back, so a clipped row's norm exceeds ``bound``
    by at most the rounding of its dtype (a relative 1e-7 for float32).
    """
    if not bound > 0:
        raise ValueError(f"the clip bound must be > 0, got {bound}")
    norms = row_norms(stacked)
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    clipped = {
        k: (np.asarray(v, np.float64) * scale.reshape(-1, *([1] * (v.ndim - 1)))).astype(v.dtype)
        for k, v in stacked.items()
    }
    return ClippedRows(clipped, norms, (norms <= bound).astype(np.float64))


# ---- distributed DP under SecAgg+ (Kairouz, Liu and Steinke 2021, "KLS21") ---------------
#
# Each node turns its clients' clipped updates into integers and adds its share of discrete
# Gaussian noise before SecAgg+ masks the result, so the sum the server unmasks is already
# private. Per client: scale by 1/gamma, round randomly and retry until the rounded vector's
# L2 norm is within the bound of KLS21 (conditional randomized rounding); per node: the sum
# of its clients' rounded vectors plus N_Z(0, sigma_node^2), taken mod m. The server's sum
# mod m is the noised integer sum exactly, as long as it does not wrap around, which the
# choice of gamma makes impossible for the clients that exist (see distributed_noise).
ROUNDING_BETA = math.exp(-0.5)  # KLS21's beta: a rounding is retried with prob. <= beta
MAX_ROUNDING_TRIES = 1000


@dataclass(frozen=True)
class DistributedNoise:
    """The integer mechanism's parameters: chosen by the server, used alike by every node."""

    granularity: float  # gamma: one integer step, in update units
    bound: float  # Delta_2: L2 bound of one client's rounded vector (integer units)
    node_std: float  # sigma of each node's discrete Gaussian share (integer units)
    modulus: int  # m: the nodes' integers are summed mod m


def rounding_bound(scaled_clip: float, dim: int, beta: float = ROUNDING_BETA) -> float:
    """Delta_2 of KLS21 (Sec. 4.1): the L2 norm a randomized rounding of a vector of norm
    <= c/gamma in dimension d exceeds with probability at most beta."""
    a, d = scaled_clip, dim
    square = min(
        (a + math.sqrt(d)) ** 2,
        a * a + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (a + math.sqrt(d) / 2),
    )
    return math.sqrt(square)


def distributed_noise(
    clip: float, z: float, dim: int, population: int, nodes: int, design_nodes: int,
    modulus: int,
) -> DistributedNoise:  # fmt: skip
    """gamma, Delta_2 and sigma_node for noise multiplier ``z`` when ``design_nodes`` of the
    ``nodes`` nodes take part (each share is sigma^2 / design_nodes, sigma = z Delta_2).

    gamma is the smallest step for which the sum cannot wrap around mod m: every one of the
    ``population`` clients adds at most c/gamma + 1 per coordinate, and 8 standard
    deviations of all nodes' noise are added (a Gaussian tail of 1e-15), with a margin of 2.
    """
    spread = z * math.sqrt(nodes / design_nodes)  # noise std of all nodes, per Delta_2
    room = modulus / 2 - population - 8 * spread * math.sqrt(dim)
    scaled_clip = 0.5 * room / (population + 8 * spread)  # c / gamma
    if scaled_clip < 10 * math.sqrt(dim):
        raise ValueError(
            f"SecAgg+'s modulus {modulus} leaves too little room for {population} clients "
            f"of dimension {dim} and their noise: the rounding would dominate the update"
        )
    bound = rounding_bound(scaled_clip, dim)
    return DistributedNoise(clip / scaled_clip, bound, z * bound / math.sqrt(design_nodes),
                            modulus)  # fmt: skip


def conditional_round(scaled: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Randomized rounding (each entry up with probability its fractional part, so
    unbiased), retried until the rounded vector's L2 norm is <= ``bound`` (KLS21's
    conditional randomized rounding: the sensitivity is then ``bound`` exactly)."""
    floor = np.floor(scaled)
    fraction = scaled - floor
    for _ in range(MAX_ROUNDING_TRIES):
        rounded = floor + (rng.random(scaled.shape) < fraction)
        if np.sqrt(np.sum(np.square(rounded))) <= bound:
            return rounded.astype(np.int64)
    raise RuntimeError(f"no rounding within L2 bound {bound} in {MAX_ROUNDING_TRIES} tries")


def discrete_gaussian(std: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of N_Z(0, std^2), P(x) ~ exp(-x^2 / (2 std^2)) on the integers, by
    Canonne, Kamath and Steinke (2020), Alg. 3: a discrete Laplace of scale t = floor(std)+1
    accepted with probability exp(-(|y| - std^2/t)^2 / (2 std^2)). In floating point (the
    paper's sampler is exact in rational arithmetic)."""
    out = np.zeros(size, np.int64)
    if std == 0:
        return out
    t = math.floor(std) + 1
    todo = np.arange(size)
    while todo.size:
        p = -math.expm1(-1 / t)  # discrete Laplace = difference of two geometrics
        y = rng.geometric(p, todo.size) - rng.geometric(p, todo.size)
        keep = rng.random(todo.size) < np.exp(-((np.abs(y) - std**2 / t) ** 2) / (2 * std**2))
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def effective_noise_multiplier(noise: DistributedNoise, nodes_summed: int, dim: int) -> float:
    """The Gaussian noise multiplier with the same concentrated-DP guarantee as the sum of
    ``nodes_summed`` discrete Gaussian shares, for sensitivity Delta_2 (KLS21, Thm. 1:
    eps = min(sqrt(D^2/(n s^2) + tau d / 2), D/(sqrt(n) s) + tau sqrt(d)),
    tau = 10 sum_{k<n} exp(-2 pi^2 s^2 k/(k+1)); a Gaussian with multiplier z has eps = 1/z)."""
    n, s, bound = nodes_summed, noise.node_std, noise.bound
    if n == 0 or s == 0:
        return 0.0
    tau = 10 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
    eps = min(
        math.sqrt(bound**2 / (n * s**2) + tau * dim / 2),
        bound / (math.sqrt(n) * s) + tau * math.sqrt(dim),
    )
    return 1 / eps


def noised_node_sum(
    rows: np.ndarray, noise: DistributedNoise, rng: np.random.Generator
) -> np.ndarray:
    """A node's share, in [0, m): its clients' (rows, flattened, clipped) updates rounded
    on the grid of step gamma, summed, plus its discrete Gaussian noise, mod m."""
    total = np.zeros(rows.shape[1], np.int64)
    for row in rows:
        total += conditional_round(np.asarray(row, np.float64) / noise.granularity,
                                   noise.bound, rng)  # fmt: skip
    total += discrete_gaussian(noise.node_std, rows.shape[1], rng)
    return np.mod(total, noise.modulus)


def centered(total: np.ndarray, modulus: int) -> np.ndarray:
    """The representative in [-m/2, m/2) of each entry of a sum mod m."""
    return (np.mod(total, modulus) + modulus // 2) % modulus - modulus // 2

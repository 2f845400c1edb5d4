"""Client-level differential privacy of the meta-updates: noise, adaptive clipping, accounting.

DP-FedAvg (McMahan et al. 2018, Alg. 1) as this server runs it, per round t:

  1. each client i in the round's Poisson sample clips its whole update to L2 norm C_t on
     its own node (common/dp_mechanism.py) and sends it (or its node sends the SecAgg+ sum);
  2. the server adds Gaussian noise N(0, (z_D C_t)^2) to the sum S of the clipped updates
     and divides by the *fixed* expected cohort size k = q N (not by the number that
     answered, which would itself depend on who took part):  Delta = (S + noise) / k;
  3. the server optimizer (SGD or Adam, server/optimizer.py) steps with Delta, so the noise
     enters the meta-update Delta, never the optimizer's own step.

Adaptive clipping (Andrew et al. 2021, Alg. 1): clients also report b_i = 1[||u_i|| <= C_t];
the server releases the noised fraction b~ = (sum_i (b_i - 1/2) + N(0, s_b^2)) / k + 1/2 and
moves the bound geometrically towards the target quantile g:
C_{t+1} = C_t exp(-eta_C (b~ - g)). The two Gaussian releases together cost what one with
the configured z costs when z_D = (z^-2 - (2 s_b)^-2)^-1/2 (their Thm. 1; Flower's
``compute_adaptive_noise_params`` computes it, and we call it).

Accounting: the rounds are a composition of Poisson-subsampled Gaussian mechanisms with
sampling rate q_t (each client joins round t independently with probability q_t = k_t/N_t,
server/nodes.py) and noise multiplier z, under add-or-remove-one-client neighbouring. Google's
``dp-accounting`` computes epsilon at delta from that list of events (:class:`PrivacyLedger`),
which is what the checkpoint stores and a resume replays: by default with its privacy loss
distribution (PLD) accountant, which is exact up to a pessimistic discretisation, or with
the Renyi DP accountant (``dp-accountant = "rdp"``), an upper bound 10-30% looser here.

Unpredictable noise: the Gaussian noise and the Poisson sample are drawn from a 128-bit key
of OS entropy (``secrets``) drawn once per run, never from the experiment seed, which is
written next to the model: anyone who knew the seed could subtract seeded noise and read
the exact clipped mean, and would know who was sampled, which removes the amplification by
sampling that the accountant counts on. The key lives only in the checkpoint (the server's
own state, never released), so a resumed run draws exactly the noise the uninterrupted run
would have. ``dp-reproducible-noise = true`` uses the seed instead, for tests and
benchmarks, and every report of such a run says it is not a private release.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from common.config import ConfigError, Settings

# dp-accounting (and SciPy under it) is imported by the functions that account, so a run
# without DP never loads it: a server starts faster, and a machine without it (the lent GPU
# machines carry only the wheels a run needs) runs everything but DP.
if TYPE_CHECKING:
    from dp_accounting import dp_event

NamedArrays = dict[str, np.ndarray]
NOISE_KEY_BITS = 128
# PLD's grid step on the privacy loss: 10x faster than the library's 1e-4 and, on the runs
# of docs/privacy.md, within 0.05% of it (the discretisation is pessimistic either way).
PLD_INTERVAL = 1e-3
# The smallest z calibration returns with PLD: the privacy loss range, hence the PLD's size,
# grows like 1/z^2 (z = 0.1 takes seconds and hundreds of MB; tinier z ran out of memory),
# and z = 0.3 already means epsilon > 15 for one unsampled round at delta = 1e-5.
PLD_Z_FLOOR = 0.3
NOT_PRIVATE = (
    "dp-reproducible-noise = true: noise and sample drawn from the seed, not a private release"
)


def fresh_noise_key() -> int:
    """A key no one can predict: 128 bits of the operating system's entropy."""
    return secrets.randbits(NOISE_KEY_BITS)


def noise_rng(key: int, server_round: int, purpose: int) -> np.random.Generator:
    """The generator of one round's DP randomness (noise or sample) from the run's key."""
    return np.random.default_rng([key, server_round, purpose])


class PrivacyBudgetExceeded(ConfigError):
    """The planned or next round would spend more than target-epsilon."""


@dataclass(frozen=True)
class DPConfig:
    noise_multiplier: float  # z as configured; 0 with a target: calibrated at start-up
    delta: float
    target_epsilon: float  # 0: no limit
    adaptive: bool
    quantile: float  # g
    clip_lr: float  # eta_C
    count_stddev: float  # s_b; 0: k / 20 (Andrew et al.'s choice, Flower's default)
    reproducible: bool = False  # noise key = the seed: NOT a private release
    accountant: str = "pld"  # "pld" or "rdp"

    @classmethod
    def from_settings(cls, s: Settings) -> DPConfig:
        return cls(
            s.dp_noise_multiplier, s.dp_delta, s.target_epsilon, s.dp_adaptive,
            s.dp_target_quantile, s.dp_clip_lr, s.dp_clipped_count_stddev,
            s.dp_reproducible_noise, s.dp_accountant,
        )  # fmt: skip


def round_event(q: float, z: float, rounds: int = 1) -> dp_event.DpEvent:
    """``rounds`` rounds of the Poisson-subsampled Gaussian mechanism (rate q, multiplier z)."""
    from dp_accounting import dp_event

    one = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))
    return one if rounds == 1 else dp_event.SelfComposedDpEvent(one, rounds)


@dataclass(frozen=True)
class PrivacyLedger:
    """The rounds released so far as runs of equal (q, z): what epsilon is computed from."""

    runs: tuple[tuple[float, float, int], ...] = ()  # (q, z, rounds)

    def add(self, q: float, z: float, rounds: int = 1) -> PrivacyLedger:
        if rounds <= 0:  # nothing released (e.g. a resume after the last round): no entry
            return self
        if self.runs and self.runs[-1][:2] == (q, z):
            *head, (_, _, n) = self.runs
            return PrivacyLedger((*head, (q, z, n + rounds)))
        return PrivacyLedger((*self.runs, (q, z, rounds)))

    @property
    def rounds(self) -> int:
        return sum(n for _, _, n in self.runs)

    def epsilon(
        self, delta: float, accountant: str = "pld", orders: Sequence[float] | None = None
    ) -> float:
        """epsilon at ``delta`` after every round in the ledger, by dp-accounting's PLD
        accountant, or its RDP one (its default Renyi orders unless ``orders`` are given)."""
        if not self.runs:
            return 0.0
        if any(z <= 0 for _, z, _ in self.runs):
            return math.inf
        if accountant == "pld":
            return _pld_epsilon(self.runs, delta)
        from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, compute_epsilon

        grid = tuple(orders if orders is not None else DEFAULT_RDP_ORDERS)
        # RDP composes by addition: n rounds at (q, z) cost n times one round's curve,
        # which is computed once per (q, z) (the ledger is re-read every round)
        total = sum(n * _one_round_rdp(q, z, grid) for q, z, n in self.runs)
        epsilon, _ = compute_epsilon(grid, total, delta)
        return float(epsilon)


@functools.lru_cache(maxsize=256)
def _pld_epsilon(runs: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """PLD epsilon of the ledger's runs (cached: a round re-reads the same ledger)."""
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    for q, z, n in runs:
        accountant.compose(round_event(q, z, n))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)
def _one_round_rdp(q: float, z: float, orders: tuple[float, ...]) -> np.ndarray:
    """The RDP curve of one Poisson-subsampled Gaussian round, at ``orders``.

    dp-accounting's RdpAccountant keeps the curve it composed in ``_rdp``; it has no public
    getter, so this is the one place that reads it (tests check the result against the
    accountant's own epsilon)."""
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=list(orders))
    accountant.compose(round_event(q, z))
    return np.array(accountant._rdp, np.float64)


def calibrate_noise(
    target_epsilon: float, q: float, rounds: int, delta: float, accountant: str = "pld"
) -> float:
    """The smallest z whose ``rounds`` rounds at rate q stay within (target_epsilon, delta),
    by the given accountant; with PLD, never below :data:`PLD_Z_FLOOR`.

    RDP is searched first (cheap at any z); PLD is tighter, so its z lies below RDP's, and
    is searched between the floor (or half RDP's z) and RDP's z."""
    from dp_accounting import mechanism_calibration
    from dp_accounting.rdp import RdpAccountant

    def search(make, interval) -> float:  # type: ignore[no-untyped-def]
        # RDP probes tiny z, where dp-accounting warns that some orders do not converge
        # (and leaves them out); the z found is checked with every order by the caller.
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            return float(mechanism_calibration.calibrate_dp_mechanism(
                make, lambda z: round_event(q, z, rounds), target_epsilon, delta, interval,
                tol=1e-4,
            ))  # fmt: skip
        finally:
            absl.setLevel(level)

    z_rdp = search(RdpAccountant, mechanism_calibration.LowerEndpointAndGuess(1e-3, 1.0))
    if accountant == "rdp":
        return z_rdp
    if z_rdp <= PLD_Z_FLOOR:  # the floor spends less than the target: more noise than needed
        return PLD_Z_FLOOR
    lower = max(PLD_Z_FLOOR, z_rdp / 2)
    if PrivacyLedger().add(q, lower, rounds).epsilon(delta) <= target_epsilon:
        return lower
    from dp_accounting.pld import PLDAccountant

    def pld():  # type: ignore[no-untyped-def]
        return PLDAccountant(value_discretization_interval=PLD_INTERVAL)

    return search(pld, mechanism_calibration.ExplicitBracketInterval(lower, z_rdp))


def rounds_within(ledger: PrivacyLedger, q: float, z: float, cfg: DPConfig, most: int) -> int:
    """How many more rounds at (q, z) keep epsilon <= target (at most ``most``; bisection)."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ledger.add(q, z, mid).epsilon(cfg.delta, cfg.accountant) <= cfg.target_epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_budget(ledger: PrivacyLedger, q: float, z: float, rounds: int, cfg: DPConfig) -> float:
    """epsilon after ``rounds`` more rounds at (q, z); raises PrivacyBudgetExceeded beyond
    target-epsilon, naming how many rounds would fit and what noise would be needed."""
    spent = ledger.add(q, z, rounds).epsilon(cfg.delta, cfg.accountant)
    if not cfg.target_epsilon or spent <= cfg.target_epsilon:
        return spent
    fits = rounds_within(ledger, q, z, cfg, rounds)
    done = f"after the {ledger.rounds} rounds already run, " if ledger.rounds else ""
    raise PrivacyBudgetExceeded(
        "target-epsilon", cfg.target_epsilon,
        f"at least {spent:.4g}: {done}{rounds} more rounds at sampling rate q = {q:.4g} with "
        f"noise multiplier z = {z:.4g} spend epsilon = {spent:.4g} at delta = {cfg.delta:g} "
        f"({cfg.accountant.upper()} accountant); {fits} rounds would fit. Lower num-rounds, raise "
        "dp-noise-multiplier (or set it to 0 to calibrate it to target-epsilon), lower "
        "fraction-train, or raise target-epsilon",
    )  # fmt: skip


@dataclass(frozen=True)
class PrivacyState:
    """What DP carries from round to round (and in the checkpoint)."""

    clip: float  # C for the next round
    noise_multiplier: float  # z in use (configured or calibrated)
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)
    # seeds the noise and the Poisson sample (fresh_noise_key); secret, like the updates
    noise_key: int = 0

    def to_json(self) -> dict:
        return {
            "clip": self.clip,
            "noise-multiplier": self.noise_multiplier,
            "ledger": [list(r) for r in self.ledger.runs],
            "noise-key": format(self.noise_key, "x"),
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> PrivacyState:
        runs = tuple((float(q), float(z), int(n)) for q, z, n in obj["ledger"])
        # a checkpoint written before the key was kept drew its noise from the seed; the
        # rounds still to run get a fresh, unpredictable key
        key = int(obj["noise-key"], 16) if "noise-key" in obj else fresh_noise_key()
        return cls(float(obj["clip"]), float(obj["noise-multiplier"]), PrivacyLedger(runs), key)


def noise_split(cfg: DPConfig, z: float, expected: int) -> tuple[float, float]:
    """(z_D, s_b): the update's noise multiplier and the clipped count's noise std.

    Fixed clipping puts all of z on the update. Adaptive clipping spends part of it on the
    count (Andrew et al. 2021, Thm. 1) through Flower's helper, which raises when s_b is too
    small for z (z >= 2 s_b)."""
    if not cfg.adaptive:
        return z, 0.0
    stddev = cfg.count_stddev or None
    try:
        count_std, z_update = compute_adaptive_noise_params(z, expected, stddev)
    except ValueError as err:
        raise ConfigError(
            "dp-clipped-count-stddev", cfg.count_stddev,
            f"more than z / 2 = {z / 2:.4g} with dp-noise-multiplier {z:.4g} and an expected "
            f"cohort of {expected} clients (0 means {expected}/20 = {expected / 20:.4g}): {err}",
        ) from err  # fmt: skip
    return float(z_update), float(count_std)


@dataclass(frozen=True)
class PrivateRound:
    """One round's DP release, for metrics.jsonl."""

    delta: NamedArrays  # the noised mean Delta the server optimizer steps with
    clip: float  # C_t the clients clipped to
    next_clip: float  # C_{t+1}
    noise_std: float  # std of the noise added to the sum (z_D C_t)
    unclipped_fraction: float | None  # b~, the noised fraction (adaptive only)


def private_mean(
    total: Mapping[str, np.ndarray], within_centered: float, state: PrivacyState,
    cfg: DPConfig, expected: int, rng: np.random.Generator,
) -> PrivateRound:  # fmt: skip
    """Delta = (S + N(0, (z_D C)^2 I)) / k, and the next clip bound.

    ``total`` is S, the sum of the round's clipped updates; ``within_centered`` is
    sum_i (b_i - 1/2) over the same clients (used only by adaptive clipping)."""
    z_update, count_std = noise_split(cfg, state.noise_multiplier, expected)
    std = z_update * state.clip
    delta = {
        k: (np.asarray(v, np.float64) + rng.normal(0.0, std, np.shape(v))) / expected
        for k, v in total.items()
    }
    if not cfg.adaptive:
        return PrivateRound(delta, state.clip, state.clip, std, None)
    fraction = (within_centered + rng.normal(0.0, count_std)) / expected + 0.5
    next_clip = state.clip * math.exp(-cfg.clip_lr * (fraction - cfg.quantile))
    return PrivateRound(delta, state.clip, next_clip, std, float(fraction))


def check_delta(delta: float, population: int) -> None:
    """Refuse delta >= 1/N: a mechanism that publishes one of N clients' data in the clear
    is (0, 1/N)-DP, so such a delta makes any epsilon meaningless."""
    if delta * population >= 1:
        raise ConfigError(
            "dp-delta", delta,
            f"below 1/N = {1 / population:.3g}, N = {population} clients that can be sampled "
            "(delta >= 1/N allows releasing a client's data in the clear); 1/N^1.1 or less "
            "is usual",
        )  # fmt: skip


def check_tolerated_drops(settings: Settings, nodes: int) -> None:
    """Distributed DP spreads the noise over the nodes that must survive: at least one."""
    if settings.dp_mechanism == "distributed" and settings.dp_tolerated_drops >= nodes:
        raise ConfigError(
            "dp-tolerated-drops", settings.dp_tolerated_drops,
            f"below the {nodes} nodes connected: each node adds a 1/(nodes - drops) share of "
            "the noise variance",
        )  # fmt: skip


def start_state(
    settings: Settings, cfg: DPConfig, q: float, expected: int, saved: PrivacyState | None
) -> tuple[PrivacyState, float]:
    """The DP state to run with (a resumed one, or a fresh one with z configured or
    calibrated to target-epsilon) and the epsilon the remaining rounds will have spent.

    Raises PrivacyBudgetExceeded before round 1 (or before the first resumed round) when
    the planned rounds would exceed target-epsilon."""
    if saved is not None:
        state = saved
    else:
        z = cfg.noise_multiplier
        if z == 0 and cfg.target_epsilon:
            z = calibrate_noise(
                cfg.target_epsilon, q, settings.num_rounds, cfg.delta, cfg.accountant
            )
        key = settings.seed if cfg.reproducible else fresh_noise_key()
        state = PrivacyState(settings.dp_clip, z, PrivacyLedger(), key)
    noise_split(cfg, state.noise_multiplier, expected)  # a bad s_b fails now, not in round 1
    remaining = max(settings.num_rounds - state.ledger.rounds, 0)
    planned = check_budget(state.ledger, q, state.noise_multiplier, remaining, cfg)
    return state, planned


def start_privacy(
    settings: Settings, cfg: DPConfig, population: int, nodes: int, expected: int,
    saved: PrivacyState | None,
) -> PrivacyState:  # fmt: skip
    """DP's state for the first round to run: resumed, or with z configured or calibrated.

    The sampling rate q = k / N needs N, the clients on the nodes connected now."""
    check_delta(cfg.delta, population)
    check_tolerated_drops(settings, nodes)
    q = expected / population
    state, planned = start_state(settings, cfg, q, expected, saved)
    log(
        INFO,
        "DP: noise multiplier %.4g, clip %.4g, Poisson sampling q = %d/%d = %.4g; epsilon "
        "after round %d: %.4g at delta %g",
        state.noise_multiplier, state.clip, expected, population, q, settings.num_rounds,
        planned, cfg.delta,
    )  # fmt: skip
    if cfg.reproducible:
        log(WARNING, "DP: %s; epsilon does not hold against anyone who knows the seed", NOT_PRIVATE)
    return state


def round_within_budget(cfg: DPConfig, state: PrivacyState, q: float, server_round: int) -> bool:
    """Whether round ``server_round`` may run without exceeding target-epsilon at today's q.

    The plan is checked before round 1; q grows when nodes leave (k / N with fewer N), so
    each round is checked again and the run stops before the round that would exceed."""
    if not cfg.target_epsilon:
        return True
    try:
        check_budget(state.ledger, q, state.noise_multiplier, 1, cfg)
    except PrivacyBudgetExceeded as err:
        log(WARNING, "round %d not run, the run stops here: %s", server_round, err)
        return False
    return True


def privacy_summary(cfg: DPConfig, state: PrivacyState) -> dict[str, float]:
    """What summary.json says of the run's DP: epsilon spent, delta, z, the final C."""
    out = {
        "epsilon": state.ledger.epsilon(cfg.delta, cfg.accountant),
        "delta": cfg.delta,
        "noise-multiplier": state.noise_multiplier,
        "final-clip": state.clip,
    }
    if cfg.reproducible:  # loudly: this run's epsilon protects no one
        out["not-a-private-release"] = 1.0
    return out

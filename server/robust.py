"""Byzantine-robust aggregation of one round's client updates, as pure functions.

It is the combine stage of a round without DP (server/combine.py, server/round.py): the
collect stage hands over the accepted updates Delta_i (in partition order) with the
num-examples each client claims; :func:`robust_aggregate` returns the one Delta the
optimizer steps on, and what it did to each client, for the run log.

Order of operations, all optional except the rule:
  1. weights: claimed examples, uniform, or claims capped (:func:`client_weights`);
  2. norm bounding: every update whose L2 norm (over all keys, Meta-SGD's ``alpha/`` too)
     exceeds the round's bound is scaled down to it (:func:`clip_to_norm`);
  3. the rule: weighted mean, coordinate-wise median or trimmed mean (Yin et al. 2018),
     Krum / Multi-Krum (Blanchard et al. 2017) or Bulyan (El Mhamdi et al. 2018).

Krum's selection, Bulyan's closest-to-median averaging and the trimmed mean are Flower's
own helpers (``flwr.serverapp.strategy``); the strategies around them aggregate whole node
replies, not our per-client rows, so the thin adapters here call the helpers directly.
A round with fewer accepted clients than a rule needs (Krum: 2f + 3, Bulyan: 4f + 3)
falls back to the coordinate-wise median, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from common.arrays import NamedArrays, to_record
from common.config import Aggregation, ConfigError, Settings, Weighting

FALLBACK = Aggregation.MEDIAN


def weighted_mean(
    updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> NamedArrays:
    """sum_i w_i u_i / sum_i w_i per key, in float64, summed in the order given."""
    if not updates or len(updates) != len(weights):
        raise ValueError(f"need one weight per update, got {len(updates)} and {len(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    w = np.asarray(weights, np.float64) / total
    # einsum without optimize runs its own loops (no BLAS threads): the same sum every run.
    return {
        k: np.einsum("i,i...->...", w, np.stack([np.asarray(u[k], np.float64) for u in updates]))
        for k in updates[0]
    }


@dataclass(frozen=True)
class RobustConfig:
    rule: Aggregation = Aggregation.MEAN
    trim_fraction: float = 0.2  # per side, for trimmed-mean
    byzantine: int = 1  # f: attackers a round is assumed to hold (krum, multi-krum, bulyan)
    keep: int = 0  # m of multi-krum; 0: n - f
    norm_bound: float = 0.0  # fixed L2 bound; 0: off
    median_factor: float = 0.0  # bound = factor x the round's median norm; 0: off
    weighting: Weighting = Weighting.EXAMPLES
    max_weight: float = 0.0  # cap of 'capped' weighting; 0: the round's median claim

    @classmethod
    def from_settings(cls, s: Settings) -> RobustConfig:
        return cls(
            s.aggregation_rule, s.trim_fraction, s.krum_byzantine, s.multi_krum_keep,
            s.norm_bound, s.norm_bound_median_factor, s.weighting_rule, s.max_examples_weight,
        )  # fmt: skip


@dataclass(frozen=True)
class ClientAction:
    """Something the defence did to one client's update, for metrics.jsonl."""

    index: int  # position in the round's accepted updates
    norm: float  # L2 norm of the update as the client sent it
    action: str  # e.g. "clipped to 3.2", "excluded by krum"


@dataclass(frozen=True)
class Aggregate:
    delta: NamedArrays  # float64, what the server optimizer steps on
    weights: list[float]  # each client's weight (also for the round's train metrics)
    norms: list[float]  # each client's update norm as sent (always logged)
    rule: Aggregation  # the rule that ran: the configured one or the fallback
    actions: list[ClientAction]
    bound: float | None  # the round's norm bound, if any
    note: str = ""  # why the configured rule did not run


def min_clients(cfg: RobustConfig) -> int:
    """Fewest accepted updates the configured rule is defined for."""
    if cfg.rule in (Aggregation.KRUM, Aggregation.MULTI_KRUM):
        return 2 * cfg.byzantine + 3  # Blanchard et al. 2017: n > 2f + 2
    if cfg.rule is Aggregation.BULYAN:
        return 4 * cfg.byzantine + 3  # El Mhamdi et al. 2018: n >= 4f + 3
    return 1


def check_round_size(cfg: RobustConfig, n: int) -> None:
    """Raise :class:`ConfigError` if the rule cannot defend a round of ``n`` sampled clients
    (known once the nodes have said which clients they host: fraction-train x clients)."""
    f, rule = cfg.byzantine, cfg.rule.value
    per_round = f"{n} clients per round (fraction-train x clients); raise fraction-train"
    if cfg.rule in (Aggregation.KRUM, Aggregation.MULTI_KRUM, Aggregation.BULYAN):
        need = min_clients(cfg)
        if n < need:
            factor = 4 if cfg.rule is Aggregation.BULYAN else 2
            most = (n - 3) // factor
            allowed = f"at most {most}" if most >= 0 else "none: needs at least 3 clients"
            why = f"{allowed} for {rule} ({factor}f + 3 clients) with {per_round}"
            raise ConfigError("krum-byzantine", f, why)
    if cfg.rule is Aggregation.MULTI_KRUM and cfg.keep > n - f:
        raise ConfigError("multi-krum-keep", cfg.keep, f"at most n - f = {n - f} with {per_round}")
    if cfg.rule is Aggregation.TRIMMED_MEAN and int(cfg.trim_fraction * n) == 0:
        raise ConfigError(
            "trim-fraction", cfg.trim_fraction,
            f"at least 1/{n} = {1 / n:.3g} (so one update per side is trimmed, else this is "
            f"the plain mean) with {per_round}",
        )  # fmt: skip


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of one update over all of its keys, in float64."""
    return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in update.values())))


def client_weights(
    examples: Sequence[float], weighting: Weighting, cap: float = 0.0
) -> tuple[list[float], float | None]:
    """Each client's weight, and the cap applied (None unless 'capped').

    'capped' bounds every claim by ``cap`` or, when it is 0, by the round's median claim,
    so one client claiming 1e9 examples counts like a typical client of the round.
    """
    if weighting is Weighting.UNIFORM:
        return [1.0] * len(examples), None
    if weighting is Weighting.EXAMPLES:
        return [float(e) for e in examples], None
    limit = cap if cap > 0 else float(np.median(examples))
    return [min(float(e), limit) for e in examples], limit


def norm_bound(norms: Sequence[float], fixed: float, median_factor: float) -> float | None:
    """The round's bound: the smaller of the fixed one and factor x median norm (if set)."""
    bounds = [fixed] if fixed > 0 else []
    if median_factor > 0:
        bounds.append(median_factor * float(np.median(norms)))
    return min(bounds) if bounds else None


def clip_to_norm(update: Mapping[str, np.ndarray], norm: float, bound: float) -> NamedArrays:
    """``update`` scaled by min(1, bound / norm), in float64."""
    scale = bound / norm if norm > bound else 1.0
    return {k: np.asarray(v, np.float64) * scale for k, v in update.items()}


def coordinate_median(updates: Sequence[Mapping[str, np.ndarray]]) -> NamedArrays:
    """Per-coordinate median (ours: Flower's FedMedian computes it inline, no helper)."""
    return {k: np.median(_stack(updates, k), axis=0) for k in updates[0]}


def trimmed_mean(updates: Sequence[Mapping[str, np.ndarray]], fraction: float) -> NamedArrays:
    """Per coordinate, the mean after dropping int(fraction * n) values at each end
    (Flower's ``trim_mean``)."""
    return {k: trim_mean(_stack(updates, k), fraction) for k in updates[0]}


def multi_krum_select(
    updates: Sequence[Mapping[str, np.ndarray]], byzantine: int, keep: int
) -> list[int]:
    """Indices (ascending) of the ``keep`` updates with the lowest Krum scores: the sum of
    squared distances to each one's n - f - 2 nearest others (Flower's ``select_multikrum``).
    """
    # Flower's helper takes replies (RecordDicts holding one ArrayRecord) and returns the
    # chosen ones; which were chosen is read back by identity.
    contents = [
        RecordDict({"update": to_record({k: np.asarray(v, np.float64) for k, v in u.items()})})
        for u in updates
    ]
    chosen = {id(c) for c in select_multikrum(contents, byzantine, keep)}
    return [i for i, c in enumerate(contents) if id(c) in chosen]


def bulyan(
    updates: Sequence[Mapping[str, np.ndarray]], byzantine: int
) -> tuple[NamedArrays, list[int]]:
    """Bulyan as Flower implements it: Multi-Krum picks theta = n - 2f updates; per
    coordinate, the mean of the beta = theta - 2f of them closest to their median.
    Returns the aggregate and the picked indices."""
    n = len(updates)
    theta = n - 2 * byzantine
    picked = multi_krum_select(updates, byzantine, theta)
    keys = list(updates[0])
    rows = [[np.asarray(updates[i][k], np.float64) for k in keys] for i in picked]
    medians = [np.median(np.stack(layer), axis=0) for layer in zip(*rows, strict=True)]
    out = aggregate_n_closest_weights(medians, rows, theta - 2 * byzantine)
    return dict(zip(keys, out, strict=True)), picked


def robust_aggregate(
    updates: Sequence[Mapping[str, np.ndarray]], examples: Sequence[float], cfg: RobustConfig
) -> Aggregate:
    """One Delta from the round's accepted updates (see the module docstring)."""
    if not updates or len(updates) != len(examples):
        raise ValueError(f"need one example count per update, got {len(updates)}, {len(examples)}")
    n = len(updates)
    norms = [update_norm(u) for u in updates]  # the bound's input, and always logged
    actions: dict[int, list[str]] = {}
    weights, cap = client_weights(examples, cfg.weighting, cfg.max_weight)
    for i, (claimed, w) in enumerate(zip(examples, weights, strict=True)):
        if cap is not None and w < claimed:
            actions.setdefault(i, []).append(f"weight capped at {cap:g} (claimed {claimed:g})")
    bound = norm_bound(norms, cfg.norm_bound, cfg.median_factor)
    if bound is not None:
        updates = [clip_to_norm(u, norms[i], bound) for i, u in enumerate(updates)]
        for i, norm in enumerate(norms):
            if norm > bound:
                actions.setdefault(i, []).append(f"clipped to {bound:.4g}")
    rule, note = cfg.rule, ""
    if n < min_clients(cfg):
        rule = FALLBACK
        note = (
            f"{cfg.rule.value} needs at least {min_clients(cfg)} accepted updates with "
            f"krum-byzantine={cfg.byzantine}, got {n}: used {FALLBACK.value}"
        )
    kept: list[int] | None = None
    if rule is Aggregation.MEAN:
        delta = weighted_mean(updates, weights)
    elif rule is Aggregation.MEDIAN:
        delta = coordinate_median(updates)
    elif rule is Aggregation.TRIMMED_MEAN:
        delta = trimmed_mean(updates, cfg.trim_fraction)
    elif rule is Aggregation.BULYAN:
        delta, kept = bulyan(updates, cfg.byzantine)
    else:
        keep = 1 if rule is Aggregation.KRUM else (cfg.keep or n - cfg.byzantine)
        kept = multi_krum_select(updates, cfg.byzantine, min(keep, n))
        delta = weighted_mean([updates[i] for i in kept], [weights[i] for i in kept])
    if kept is not None:
        for i in sorted(set(range(n)) - set(kept)):
            actions.setdefault(i, []).append(f"excluded by {rule.value}")
    logged = [ClientAction(i, norms[i], "; ".join(a)) for i, a in sorted(actions.items())]
    return Aggregate(delta, weights, norms, rule, logged, bound, note)


def _stack(updates: Sequence[Mapping[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([np.asarray(u[key], np.float64) for u in updates])

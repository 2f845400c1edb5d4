"""Combine, the second stage of a training round (server/round.py): one Delta from what
the collect stage accepted, as pure functions of (rows or sum, state) -> :class:`Combined`.

* :func:`combine_rows`: the configured aggregation rule (server/robust.py) over the
  accepted updates: the weighted mean by default, or a Byzantine-robust rule.
* :func:`combine_private_rows`: central DP. The accepted (client-clipped) updates are
  summed, re-clipped where a client did not clip, noised and divided by the expected
  cohort (server/privacy.py).
* :func:`combine_secure_sum` / :func:`combine_private_sum`: the mean of a SecAgg+ sum, or
  its DP release.
* :func:`combine_distributed`: distributed DP, where the nodes noised the sum already.

A robust rule exists only over rows, never over a secure sum: robust aggregation with
SecAgg+ cannot be put together (server/round.py), beyond the config check that says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from logging import DEBUG, WARNING

import numpy as np
from flwr.app import MetricRecord
from flwr.supercore import log

from common.arrays import NamedArrays
from common.dp_mechanism import WITHIN_CLIP, DistributedNoise, clip_rows, effective_noise_multiplier
from common.messages import SUM_PREFIX
from common.streams import NOISE_PURPOSE
from server.collect import ClientUpdate, Rows
from server.privacy import (
    NOT_PRIVATE,
    DPConfig,
    PrivacyState,
    noise_rng,
    private_mean,
)  # fmt: skip
from server.robust import Aggregate, RobustConfig, robust_aggregate
from server.secagg import SecureSum

CLIP_TOLERANCE = 1e-5  # relative: a client's clipped float32 row may exceed C by rounding


@dataclass(frozen=True)
class Combined:
    """The round's Delta (None: theta stays as it is) and what the combining did."""

    delta: NamedArrays | None
    metrics: MetricRecord | None  # the round's train metrics, weighted like Delta
    accepted: int | None  # clients in Delta; None: hidden (distributed DP)
    privacy: PrivacyState | None = None  # DP's state after this round's release
    robust: dict = field(default_factory=dict)  # what the rule did, per client
    release: dict = field(default_factory=dict)  # the DP release / the SecAgg+ sum


@dataclass(frozen=True)
class PrivateRound:
    """What a DP release needs besides the sum: the state, the config and the sample rate."""

    state: PrivacyState
    cfg: DPConfig
    expected: int  # k: the expected cohort, Delta's fixed denominator
    q: float  # k / N, the Poisson sampling rate the accountant charges

    @property
    def clip(self) -> float:
        return self.state.clip


def combine_rows(server_round: int, rows: Rows, cfg: RobustConfig) -> Combined:
    """The configured rule over the accepted updates; what it did goes to the run log."""
    accepted = rows.updates
    if not accepted:
        log(WARNING, "round %d: no valid update; theta unchanged", server_round)
        return Combined(None, None, 0)
    result = robust_aggregate([c.update for c in accepted], [c.weight for c in accepted], cfg)
    said = robust_log(result, accepted)
    _log_actions(server_round, result, said)
    metrics = weighted_metrics([c.metrics for c in accepted], result.weights)
    return Combined(result.delta, metrics, len(accepted), robust=said)


def combine_private_rows(
    server_round: int, rows: Rows, dp: PrivateRound, theta: NamedArrays
) -> Combined:
    """Central DP over the accepted updates. DP steps every round, also when no client was
    sampled or none answered: whether a step happens must not reveal whether someone took
    part (only errors from every node, a failure of the federation, skip the round)."""
    accepted = rows.updates
    if not accepted and rows.every_reply_failed:
        log(WARNING, "round %d: no valid update; theta unchanged", server_round)
        return Combined(None, None, 0, dp.state)
    total, within, clipped = checked_sum(server_round, accepted, dp.clip, theta)
    delta, state, release = private_release(server_round, total, sum(w - 0.5 for w in within), dp)
    release = ({"server-clipped": clipped} if clipped else {}) | release
    client_metrics = [{k: v for k, v in c.metrics.items() if k != WITHIN_CLIP} for c in accepted]
    metrics = weighted_metrics(client_metrics, [1.0] * len(accepted)) if accepted else None
    return Combined(delta, metrics, len(accepted), state, release=release)


def combine_secure_sum(server_round: int, result: SecureSum, clip: float) -> Combined:
    """The mean of a SecAgg+ sum over the clients in it."""
    release = {"secagg": secagg_log(result, clip)}
    metrics = node_metric_means(result.node_metrics.values(), result.clients or 0)
    if not result.clients:
        log(WARNING, "round %d: no valid update; theta unchanged", server_round)
        return Combined(None, None, 0, release=release)
    delta = {k: v / result.clients for k, v in result.total.items()}
    return Combined(delta, metrics, result.clients, release=release)


def combine_private_sum(server_round: int, result: SecureSum, dp: PrivateRound) -> Combined:
    """Central DP's release of a SecAgg+ sum (the clients clipped before masking)."""
    metrics = node_metric_means(result.node_metrics.values(), result.clients or 0)
    delta, state, release = private_release(server_round, result.total, result.within_centered, dp)
    release = {"secagg": secagg_log(result, dp.clip)} | release
    return Combined(delta, metrics, result.clients, state, release=release)


def combine_distributed(
    result: SecureSum, dp: PrivateRound, noise: DistributedNoise, nodes: int
) -> Combined:
    """Distributed DP: every node sampled its own clients and added its share of discrete
    Gaussian noise (client/secagg.py), so the unmasked sum is already private and the server
    adds nothing. It learns neither who took part nor any per-client metric; epsilon counts
    the noise shares of the nodes that answered."""
    dim = sum(int(np.size(v)) for v in result.total.values())
    z = effective_noise_multiplier(noise, len(result.nodes), dim)
    ledger = dp.state.ledger.add(dp.q, z)
    state = replace(dp.state, ledger=ledger)
    release = {
        "mechanism": "distributed", "epsilon": ledger.epsilon(dp.cfg.delta, dp.cfg.accountant),
        "accountant": dp.cfg.accountant, "delta": dp.cfg.delta, "q": dp.q,
        "expected-clients": dp.expected, "noise-multiplier": dp.state.noise_multiplier,
        "effective-noise-multiplier": z, "nodes": nodes,
        "nodes-summed": len(result.nodes), "clip": dp.clip,
        "noise-std": noise.granularity * noise.node_std * math.sqrt(len(result.nodes)),
        "granularity": noise.granularity, "modulus": noise.modulus,
        "release": NOT_PRIVATE if dp.cfg.reproducible else "private",
    }  # fmt: skip
    delta = {k: v / dp.expected for k, v in result.total.items()}
    return Combined(delta, None, None, state, release=release)


def private_release(
    server_round: int, total: NamedArrays, within_centered: float, dp: PrivateRound
) -> tuple[NamedArrays, PrivacyState, dict]:
    """DP's noised mean of the round's clipped sum (server/privacy.py), the state after the
    round is accounted, and the release for metrics.jsonl."""
    rng = noise_rng(dp.state.noise_key, server_round, NOISE_PURPOSE)
    release = private_mean(total, within_centered, dp.state, dp.cfg, dp.expected, rng)
    z = dp.state.noise_multiplier
    ledger = dp.state.ledger.add(dp.q, z)
    state = replace(dp.state, clip=release.next_clip, ledger=ledger)
    said = {
        "epsilon": ledger.epsilon(dp.cfg.delta, dp.cfg.accountant),
        "accountant": dp.cfg.accountant, "delta": dp.cfg.delta,
        "q": dp.q, "expected-clients": dp.expected, "noise-multiplier": z,
        "noise-std": release.noise_std, "clip": release.clip,
        "next-clip": release.next_clip, "unclipped-fraction": release.unclipped_fraction,
        "release": NOT_PRIVATE if dp.cfg.reproducible else "private",
    }  # fmt: skip
    return release.delta, state, said


def checked_sum(
    server_round: int, accepted: Sequence[ClientUpdate], clip: float, like: NamedArrays
) -> tuple[NamedArrays, list[bool], list[int]]:
    """The sum of the clipped updates, each client's within-clip bit and the partitions the
    server clipped. Clients clip on their node; a row still above C (a client that did not
    clip) is clipped here, counted as clipped, and logged."""
    within = [c.metrics.get(WITHIN_CLIP, 0.0) >= 0.5 for c in accepted]
    total = {k: np.zeros(v.shape, np.float64) for k, v in like.items()}
    if not accepted:
        return total, within, []
    stacked = {k: np.stack([c.update[k] for c in accepted]) for k in like}
    result = clip_rows(stacked, clip)
    clipped = []
    for i, norm in enumerate(result.norms):
        if norm > clip * (1 + CLIP_TOLERANCE):
            within[i] = False
            clipped.append(accepted[i].partition)
            log(
                WARNING, "round %d: partition %d: update norm %.4g above dp-clip %.4g: "
                "clipped by the server", server_round, accepted[i].partition, norm, clip,
            )  # fmt: skip
    for k, v in result.updates.items():
        total[k] += np.asarray(v, np.float64).sum(axis=0)
    return total, within, clipped


def secagg_log(result: SecureSum, clip: float) -> dict:
    return {
        "nodes": len(result.nodes), "clients": result.clients, "clip": clip,
        "quantization-range": result.quantization_range,
    }  # fmt: skip


def robust_log(result: Aggregate, accepted: Sequence[ClientUpdate]) -> dict:
    """metrics.jsonl's view of one round's aggregation: the rule that ran, the norm bound,
    every accepted client's update norm (as sent) and weight (as used), and every client
    whose update was clipped, down-weighted or excluded."""
    out: dict = {"rule": result.rule.value}
    out["per-client"] = [
        {"partition": c.partition, "norm": norm, "weight": weight}
        for c, norm, weight in zip(accepted, result.norms, result.weights, strict=True)
    ]
    if result.bound is not None:
        out["bound"] = result.bound
    if result.note:
        out["note"] = result.note
    out["clients"] = [
        {"partition": accepted[a.index].partition, "norm": a.norm, "action": a.action}
        for a in result.actions
    ]
    return out


def _log_actions(server_round: int, result: Aggregate, said: dict) -> None:
    """Capping and clipping are routine with the defaults (a claim above the round's
    median; an update above 5 x the median norm, ~3% of honest sinusoid updates), so they
    stay in metrics.jsonl and the debug log; a note or an exclusion is said."""
    for level, kinds in ((DEBUG, ("clipped",)), (WARNING, ("excluded",))):
        lines = [result.note] if result.note and level == WARNING else []
        lines += [
            f"partition {c['partition']} (norm {c['norm']:.4g}) {c['action']}"
            for c in said["clients"]
            if any(k in c["action"] for k in kinds)
        ]
        if lines:
            log(level, "round %d %s: %s", server_round, result.rule.value, "; ".join(lines))


def node_metric_means(node_metrics: Iterable[Mapping], clients: int) -> MetricRecord | None:
    """Train metrics of a SecAgg+ round: the nodes' per-metric sums over their clients."""
    if clients == 0:
        return None
    sums: dict[str, float] = {}
    for metrics in node_metrics:
        for key, value in metrics.items():
            if key.startswith(SUM_PREFIX):
                name = key[len(SUM_PREFIX) :]
                sums[name] = sums.get(name, 0.0) + float(value)
    return MetricRecord({**{k: v / clients for k, v in sums.items()}, "clients": clients})


def weighted_metrics(records: list[dict[str, float]], weights: list[float]) -> MetricRecord:
    total = sum(weights)
    keys = [k for k in records[0] if all(k in r for r in records)]
    out = {k: sum(r[k] * w / total for r, w in zip(records, weights, strict=True)) for k in keys}
    return MetricRecord({**out, "clients": len(records)})

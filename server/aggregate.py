"""Server math as pure functions over named arrays.

Clients reply with updates Delta_i = (local state) - theta. The server forms the
example-weighted mean Delta = sum_i n_i Delta_i / sum_i n_i and treats -Delta as a
pseudo-gradient for its optimizer (Reddi et al. 2021):
  * SGD:  theta <- theta + lr * Delta  (lr = 1 is FedAvg of the local models, and with
    tau local meta-steps it is Per-FedAvg's server step, Fallah et al. 2020, Alg. 1 line 10);
  * Adam: standard Adam with bias correction on -Delta, as FedMeta's server meta-optimizer
    (Chen et al. 2018). Its moments persist across rounds in :class:`OptimizerState`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

NamedArrays = dict[str, np.ndarray]


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
class OptimizerConfig:
    kind: str  # "sgd" | "adam"
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass(frozen=True)
class OptimizerState:
    """Adam's moments and step count (empty for SGD); float64 to avoid drift."""

    step: int = 0
    m: NamedArrays = field(default_factory=dict)
    v: NamedArrays = field(default_factory=dict)


def server_step(
    state: Mapping[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
    cfg: OptimizerConfig,
    opt: OptimizerState,
) -> tuple[NamedArrays, OptimizerState]:
    """One server optimizer step; returns the new state (same dtypes) and optimizer state."""
    if cfg.kind == "sgd":
        new = {k: np.asarray(state[k], np.float64) + cfg.lr * delta[k] for k in state}
        return _cast_like(new, state), OptimizerState(step=opt.step + 1)
    if cfg.kind != "adam":
        raise ValueError(f"unknown server optimizer {cfg.kind!r}; use 'sgd' or 'adam'")
    t = opt.step + 1
    g = {k: -np.asarray(delta[k], np.float64) for k in state}
    m = {k: cfg.beta1 * opt.m.get(k, 0.0) + (1 - cfg.beta1) * g[k] for k in state}
    v = {k: cfg.beta2 * opt.v.get(k, 0.0) + (1 - cfg.beta2) * g[k] ** 2 for k in state}
    new = {}
    for k in state:
        m_hat = m[k] / (1 - cfg.beta1**t)
        v_hat = v[k] / (1 - cfg.beta2**t)
        new[k] = np.asarray(state[k], np.float64) - cfg.lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
    return _cast_like(new, state), OptimizerState(step=t, m=m, v=v)


def _cast_like(new: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> NamedArrays:
    return {k: np.asarray(new[k]).astype(like[k].dtype) for k in like}


@dataclass(frozen=True)
class ClientStats:
    """Distribution of a per-client score across the clients of one round."""

    mean: float
    std: float
    worst10: float  # mean over the worst 10% of clients (at least one)
    count: int


def client_stats(values: Sequence[float], higher_is_better: bool) -> ClientStats:
    if not values:
        raise ValueError("no client values to summarise")
    arr = np.sort(np.asarray(values, np.float64))
    if higher_is_better:  # worst = lowest accuracy
        worst = arr[: max(1, int(np.ceil(0.1 * arr.size)))]
    else:  # worst = highest error
        worst = arr[::-1][: max(1, int(np.ceil(0.1 * arr.size)))]
    return ClientStats(float(arr.mean()), float(arr.std()), float(worst.mean()), int(arr.size))


# A client's personalisation diverged when its loss after adapting is not finite or above
# this many times its loss before adapting. Adapting on a client's own data may overfit,
# but a healthy step never multiplies the held-out loss tenfold (the plots' EXPLODED rule);
# the 1e31 means this guards against came from a few clients at 1e30+.
DIVERGED_LOSS_FACTOR = 10.0


def diverged_clients(before: Sequence[float], after: Sequence[float]) -> list[bool]:
    """Per client, whether its personalisation diverged (see DIVERGED_LOSS_FACTOR). Such a
    client is counted, and left out of the across-client statistics after adapting."""
    b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
    with np.errstate(invalid="ignore"):
        exploded = np.isfinite(b) & (a > DIVERGED_LOSS_FACTOR * np.maximum(b, 1e-12))
    return [bool(x) for x in ~np.isfinite(a) | exploded]

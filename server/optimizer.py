"""The server optimizer, the last stage of a training round (server/round.py), as a pure
function over named arrays.

Clients reply with updates Delta_i = (local state) - theta; the combine stage turns them
into one Delta (server/combine.py), which the server treats as a negative pseudo-gradient
(Reddi et al. 2021):
  * SGD:  theta <- theta + lr * Delta  (lr = 1 is FedAvg of the local models, and with
    tau local meta-steps it is Per-FedAvg's server step, Fallah et al. 2020, Alg. 1 line 10);
  * Adam: standard Adam with bias correction on -Delta, as FedMeta's server meta-optimizer
    (Chen et al. 2018). Its moments persist across rounds in :class:`OptimizerState`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from common.arrays import NamedArrays
from common.config import Settings


@dataclass(frozen=True)
class OptimizerConfig:
    kind: str  # "sgd" | "adam"
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def from_settings(cls, s: Settings) -> OptimizerConfig:
        return cls(s.server_optimizer, s.server_lr, s.server_beta1, s.server_beta2, s.server_eps)


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

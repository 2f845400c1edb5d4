"""Client-level clipping of stacked updates, shared by the node (which clips) and the server
(which checks what arrives).

DP-FedAvg (McMahan et al. 2018) bounds each client's influence by scaling its whole update,
every array of it (theta and, for Meta-SGD, alpha), to an L2 norm of at most C ("flat
clipping", Andrew et al. 2021): u <- u * min(1, C / ||u||). The quantile method of Andrew et
al. also needs, per client, whether its update was already within the bound (the bit b_i).
"""

from __future__ import annotations

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

"""Named arrays <-> Flower ``ArrayRecord``s, and the checks a reply must pass.

One record carries the shared state: theta under each parameter's own name and, for
Meta-SGD, the learned step size of parameter ``n`` under ``alpha/n``. A node replies with
its clients' updates (local state minus the state it received) under the same keys,
stacked on a leading client axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

NamedArrays = dict[str, np.ndarray]
ALPHA_PREFIX = "alpha/"


class UpdateRejected(ValueError):
    """A client's update does not match the shared state and must not touch it."""


def to_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(_numpy(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> NamedArrays:
    return {k: v.numpy() for k, v in record.items()}


def _numpy(v: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def join_state(
    theta: Mapping[str, np.ndarray], alpha: Mapping[str, np.ndarray] | None
) -> NamedArrays:
    state = dict(theta)
    if alpha is not None:
        state |= {ALPHA_PREFIX + n: a for n, a in alpha.items()}
    return state


def split_state(state: Mapping[str, np.ndarray]) -> tuple[NamedArrays, NamedArrays | None]:
    """(theta, alpha or None) from one flat state."""
    theta = {k: v for k, v in state.items() if not k.startswith(ALPHA_PREFIX)}
    alpha = {k[len(ALPHA_PREFIX) :]: v for k, v in state.items() if k.startswith(ALPHA_PREFIX)}
    return theta, (alpha or None)


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    # np.array(copy) first: Flower's arrays may be read-only views of a message buffer.
    # made on ``device`` directly (no host tensor first, and a lost ``device`` is testable)
    return {k: torch.as_tensor(np.array(v), device=device) for k, v in arrays.items()}


def check_stacked(
    stacked: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], clients: int
) -> None:
    """Raise :class:`UpdateRejected` naming the first way in which ``clients`` updates,
    stacked on a leading axis, differ from the shared state in keys, shapes or dtypes.

    Finiteness is left to :func:`nonfinite_rows`: one bad client must not sink the others.
    """
    missing = sorted(set(reference) - set(stacked))
    extra = sorted(set(stacked) - set(reference))
    if missing or extra:
        raise UpdateRejected(f"keys differ from the shared state: missing {missing}, extra {extra}")
    for key, ref in reference.items():
        got = stacked[key]
        if got.shape != (clients, *ref.shape):
            raise UpdateRejected(
                f"'{key}' has shape {got.shape}, expected {(clients, *ref.shape)} "
                f"({clients} client(s) of shape {ref.shape})"
            )
        if got.dtype != ref.dtype:
            raise UpdateRejected(f"'{key}' has dtype {got.dtype}, expected {ref.dtype}")


def nonfinite_rows(stacked: Mapping[str, np.ndarray], clients: int) -> dict[int, str]:
    """Client row -> the first key whose update holds a NaN or an infinite value."""
    bad: dict[int, str] = {}
    if clients == 0:  # no rows (reshape(0, -1) cannot infer a width)
        return bad
    for key, value in stacked.items():
        finite = np.isfinite(value.reshape(clients, -1)).all(axis=1)
        for row in np.flatnonzero(~finite):
            bad.setdefault(int(row), key)
    return bad

"""Sinusoid regression of MAML (Finn et al. 2017, Sec. 5.1): one task per client.

Amplitude ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5]. A client's task and points are a
pure function of (seed, client index), so every process that builds client 17 of seed 3
builds the same one. ``stream`` separates training clients from clients never seen in
training (the server's held-out evaluation), so the two can never collide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.data.types import ClientData
from common.streams import POINTS_DRAW, TASK_DRAW, TRAIN_STREAM

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


@dataclass(frozen=True)
class SinusoidTask:
    amplitude: float
    phase: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (self.amplitude * np.sin(x - self.phase)).astype(np.float32)


def sinusoid_task(seed: int, index: int, stream: int = TRAIN_STREAM) -> SinusoidTask:
    rng = np.random.default_rng([seed, stream, index, TASK_DRAW])
    return SinusoidTask(float(rng.uniform(*AMPLITUDE_RANGE)), float(rng.uniform(*PHASE_RANGE)))


def sinusoid_client(
    seed: int, index: int, n_train: int, n_test: int, stream: int = TRAIN_STREAM
) -> ClientData:
    """Client ``index``'s task with ``n_train`` adaptation points and ``n_test`` scored ones."""
    task = sinusoid_task(seed, index, stream)
    rng = np.random.default_rng([seed, stream, index, POINTS_DRAW])
    x = rng.uniform(*X_RANGE, size=(n_train + n_test, 1)).astype(np.float32)
    y = task(x)
    return ClientData(
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        client_id=f"sinusoid-{stream}-{index}",
    )

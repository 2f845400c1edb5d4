"""What a client holds: its own train/test split, as float32 / int64 numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Data is missing, unreadable, or too small for the configured batches."""


@dataclass(frozen=True)
class ClientData:
    """One client's data. Adaptation only ever reads ``train``; scores only ``test``.

    ``x_*`` are float32 with a leading sample axis; ``y_*`` are int64 class labels for
    classification or float32 ``(n, 1)`` targets for regression.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    client_id: str = ""

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

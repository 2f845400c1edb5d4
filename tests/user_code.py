"""A user's own model module, as a team would write it, for tests to put OUTSIDE the project.

:func:`write_user_module` writes it to a folder under a fresh name; tests put that folder
on ``sys.path`` (in-process) or ``PYTHONPATH`` (Ray workers, SuperNodes), so nothing of
it is importable from the project itself.
"""

from __future__ import annotations

import uuid
from pathlib import Path

SOURCE = '''
"""Models and losses of a user's own project (issue 16's plug-in path)."""
import torch
import torch.nn.functional as F
from torch import nn

from common.models import without_running_stats


def small_mlp(input_shape, num_outputs, hidden=16):
    n = 1
    for d in input_shape:
        n *= d
    layers = [nn.Flatten(), nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, num_outputs)]
    return nn.Sequential(*layers)


class GRURegressor(nn.Module):
    """Reads the input as a sequence of scalars: nn.GRU has no vmap batching rule."""

    def __init__(self, hidden):
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x.reshape(x.shape[0], -1, 1))
        return self.head(out[:, -1])


def gru(input_shape, num_outputs, hidden=8):
    return GRURegressor(hidden)


def flat_output(input_shape, num_outputs):
    """Regression with one value per sample as shape [batch] (not [batch, 1])."""
    layers = [nn.Flatten(), nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, 1)]
    return nn.Sequential(*layers, nn.Flatten(0))


def batchnorm(input_shape, num_outputs):
    layers = [nn.Flatten(), nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8)]
    return nn.Sequential(*layers, nn.Linear(8, num_outputs))


def batchnorm_fixed(input_shape, num_outputs):
    return without_running_stats(batchnorm(input_shape, num_outputs))


def wrong_outputs(input_shape, num_outputs):
    return nn.Linear(input_shape[0], num_outputs + 3)


def not_a_module(input_shape, num_outputs):
    return {"weights": torch.zeros(3)}


def double_mse(pred, target):
    return 2 * F.mse_loss(pred, target)


def per_sample_loss(pred, target):
    return (pred - target) ** 2


NOT_CALLABLE = 3
'''


def write_user_module(folder: Path) -> str:
    """Write the module into ``folder`` under a unique name and return that name."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(SOURCE)
    return name

"""Personalise the final theta on clients never seen in training, and score them.

The promise of meta-learning is a model that adapts quickly to a *new* client. For
sinusoid regression these are tasks from a separate random stream (never a training
client): K ``new-client-train-points`` shots to adapt on, ``sinusoid-test-points`` to
score on, as in MAML's evaluation (Finn et al. 2017, Sec. 5.1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.config import Settings
from common.data.sinusoid import NEW_CLIENT_STREAM, sinusoid_client
from common.meta import Params, StepSize
from common.personalize import evaluate_before_after
from server.aggregate import client_stats


def evaluate_new_clients(
    settings: Settings, model: nn.Module, theta: Params, inner_lr: StepSize, device: torch.device
) -> dict[str, float]:
    """MSE mean/std/worst-10% after 0 and each of ``new-client-steps`` adaptation steps."""
    per_k: dict[int, list[float]] = {0: []} | {k: [] for k in settings.new_client_step_list}
    for index in range(settings.new_clients):
        data = sinusoid_client(
            settings.seed, index, settings.new_client_train_points,
            settings.sinusoid_test_points, stream=NEW_CLIENT_STREAM,
        )  # fmt: skip
        for k in per_k:
            _, after = evaluate_before_after(
                model, theta, inner_lr, data, steps=k, batch_size=settings.batch_size,
                task=settings.task, rng=np.random.default_rng([settings.seed, index, k]),
                device=device,
            )  # fmt: skip
            per_k[k].append(after.loss)
    out: dict[str, float] = {"new-clients": settings.new_clients}
    for k, values in per_k.items():
        stats = client_stats(values, higher_is_better=False)
        out |= {f"new-mse-k{k}-mean": stats.mean, f"new-mse-k{k}-std": stats.std,
                f"new-mse-k{k}-worst10": stats.worst10}  # fmt: skip
    return out

"""Personalise the final theta on clients never seen in training, and score them.

The promise of meta-learning is a model that adapts quickly to a *new* client. Which
data a new client holds is decided in one place, ``load_new_client_data`` of the data
registry: a separate random stream (sinusoid, synthetic), writers no training client is
(FEMNIST), Omniglot's evaluation characters, or samples held out of the partition
(digits, MNIST, Fashion-MNIST). Each is personalised and scored by the same
``personalize_and_score`` the clients use: adapted on its train split (for sinusoid,
K ``new-client-train-points`` shots as in MAML's evaluation, Finn et al. 2017, Sec. 5.1),
scored on its test split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.config import Settings, Task
from common.data.registry import load_new_client_data
from common.meta import Params, StepSize, bounded_step_sizes
from common.scoring import evaluate_cohort
from common.streams import NEW_CLIENT_PURPOSE
from server.evaluation import client_stats, diverged_clients


def evaluate_new_clients(
    settings: Settings, model: nn.Module, theta: Params, inner_lr: StepSize, device: torch.device
) -> dict[str, float]:
    """Mean/std/worst-10% after 0 and each of ``new-client-steps`` adaptation steps.

    Every new client adapts once, for the largest step count, and is scored after each
    requested count along the way: the scores after 1 and after 10 steps are paired (same
    client, same batches). All new clients run as one vmapped cohort (``cohort-size`` at
    a time). Keys ``new-<metric>-k<k>-<stat>``: metric ``mse`` for regression, ``acc``
    (accuracy) for classification, plus ``new-loss-k<k>-mean`` for classification.
    """
    regression = settings.task is Task.REGRESSION
    steps = (0, *settings.new_client_step_list)
    clients = [load_new_client_data(settings, index) for index in range(settings.new_clients)]
    results = evaluate_cohort(
        model, theta, bounded_step_sizes(inner_lr, settings.alpha_bounds), clients,
        [np.random.default_rng([settings.seed, index, NEW_CLIENT_PURPOSE])
         for index in range(settings.new_clients)],
        steps=steps, batch_size=settings.batch_size, task=settings.task, device=device,
        cohort_size=settings.cohort_size, keep_params=False, loss=settings.loss,
    )  # fmt: skip
    out: dict[str, float] = {"new-clients": settings.new_clients}
    start = [r.by_steps[0].loss for r in results]
    for k in sorted(set(steps)):
        # A client whose adaptation diverged (server/evaluation.diverged_clients) is counted
        # and left out of the statistics, as for the training clients.
        bad = diverged_clients(start, [r.by_steps[k].loss for r in results])
        scores = [r.by_steps[k] for r, b in zip(results, bad, strict=True) if not b]
        if k > 0:
            out[f"new-clients-k{k}-diverged"] = sum(bad)
        if not scores:
            continue
        losses = [s.loss for s in scores]
        if regression:
            out |= _stats(f"new-mse-k{k}", losses, higher_is_better=False)
        else:
            accuracies = [s.accuracy for s in scores if s.accuracy is not None]
            out |= _stats(f"new-acc-k{k}", accuracies, higher_is_better=True)
            out[f"new-loss-k{k}-mean"] = float(np.mean(losses))
    return out


def _stats(prefix: str, values: list[float], higher_is_better: bool) -> dict[str, float]:
    stats = client_stats(values, higher_is_better=higher_is_better)
    return {
        f"{prefix}-mean": stats.mean,
        f"{prefix}-std": stats.std,
        f"{prefix}-worst10": stats.worst10,
    }

"""Personalise a functional copy of theta on a client's train split; score on its test split.

This is the only evaluation path, used by clients every round and by the server for
clients never seen in training. Adaptation reads ``x_train``/``y_train`` only and
scoring reads ``x_test``/``y_test`` only, so no score is ever taken on data the model
adapted on (the evaluation leak common in public Per-FedAvg code).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from common.config import Task
from common.data.episodes import EpisodicData, evaluation_episodes
from common.data.types import ClientData
from common.meta import Batch, LossFn, Params, StepSize, adapt


def loss_fn_for(task: Task) -> LossFn:
    return F.mse_loss if task is Task.REGRESSION else F.cross_entropy


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float | None  # None for regression


@torch.no_grad()
def score(model: nn.Module, params: Params, x: Tensor, y: Tensor, task: Task) -> Score:
    out = functional_call(model, params, (x,))
    loss = float(loss_fn_for(task)(out, y))
    if task is Task.REGRESSION:
        return Score(loss, None)
    return Score(loss, float((out.argmax(dim=1) == y).float().mean()))


def sample_batch(x: Tensor, y: Tensor, size: int, rng: np.random.Generator) -> Batch:
    """``size`` distinct examples (all of them when the split is not larger)."""
    n = x.shape[0]
    if n <= size:
        return x, y
    idx = torch.from_numpy(rng.choice(n, size=size, replace=False)).to(x.device)
    return x[idx], y[idx]


def personalize(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    x_train: Tensor,
    y_train: Tensor,
    *,
    steps: int,
    batch_size: int,
    task: Task,
    rng: np.random.Generator,
) -> Params:
    """k gradient steps from theta on batches of the train split; theta is not touched."""
    if steps == 0:
        return params
    support = [sample_batch(x_train, y_train, batch_size, rng) for _ in range(steps)]
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    lr = {n: a.detach() for n, a in inner_lr.items()} if isinstance(inner_lr, dict) else inner_lr
    with torch.enable_grad():
        adapted = adapt(model, leaves, support, loss_fn_for(task), lr, steps, create_graph=False)
    return {n: p.detach() for n, p in adapted.items()}


def tensors_of(data: ClientData, task: Task, device: torch.device) -> tuple[Tensor, ...]:
    """(x_train, y_train, x_test, y_test) as tensors on ``device`` with the task's dtypes."""
    y_dtype = torch.float32 if task is Task.REGRESSION else torch.int64
    return (
        torch.as_tensor(data.x_train, dtype=torch.float32, device=device),
        torch.as_tensor(data.y_train, dtype=y_dtype, device=device),
        torch.as_tensor(data.x_test, dtype=torch.float32, device=device),
        torch.as_tensor(data.y_test, dtype=y_dtype, device=device),
    )


@dataclass(frozen=True)
class Personalized:
    """Scores before and after adaptation, and the adapted parameters themselves."""

    before: Score
    after: Score
    params: Params  # theta after ``steps`` steps on the train split (theta when steps == 0)


def personalize_and_score(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    data: ClientData,
    *,
    steps: int,
    batch_size: int,
    task: Task,
    rng: np.random.Generator,
    device: torch.device,
) -> Personalized:
    """Score theta, personalise it with ``steps`` steps, score the result; test split only.

    An episodic client is scored on ``eval_episodes`` N-way K-shot tasks instead, each
    adapted on its whole K-shot support and scored on held-out drawings of its classes.
    """
    if isinstance(data, EpisodicData):
        return _mean_over_episodes(
            model, params, inner_lr, data, steps=steps, task=task, rng=rng, device=device
        )
    x_tr, y_tr, x_te, y_te = tensors_of(data, task, device)
    before = score(model, params, x_te, y_te, task)
    adapted = personalize(
        model, params, inner_lr, x_tr, y_tr, steps=steps, batch_size=batch_size, task=task, rng=rng
    )
    after = score(model, adapted, x_te, y_te, task) if steps > 0 else before
    return Personalized(before, after, adapted)


def _mean_over_episodes(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    data: EpisodicData,
    *,
    steps: int,
    task: Task,
    rng: np.random.Generator,
    device: torch.device,
) -> Personalized:
    """Scores averaged over episodes; ``params`` of the last episode's adapted model."""
    results = [
        personalize_and_score(
            model,
            params,
            inner_lr,
            episode,
            steps=steps,
            batch_size=episode.num_train,
            task=task,
            rng=rng,
            device=device,
        )  # fmt: skip
        for episode in evaluation_episodes(data, rng)
    ]

    def mean(scores: list[Score]) -> Score:
        accuracies = [s.accuracy for s in scores if s.accuracy is not None]
        return Score(
            float(np.mean([s.loss for s in scores])),
            float(np.mean(accuracies)) if accuracies else None,
        )

    return Personalized(
        mean([r.before for r in results]), mean([r.after for r in results]), results[-1].params
    )

"""A client's local work in one round, as pure functions of (params, data, settings).

Per-FedAvg, Fallah et al. 2020, Algorithm 1 (lines 5-8): tau local steps
theta <- theta - beta * g, where g is the meta-gradient on batches D, D' (and D'' for the
Hessian-free variant) drawn independently from the local train split, or the support and
query of one N-way K-shot episode for episodic datasets (common/tasks.py). fedavg,
fedavg-ft and local take tau plain SGD steps with the same beta and batch size instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from common.config import MetaOrder, Settings
from common.meta import Params, StepSize, gradients, meta_gradient, sgd_step, task_loss
from common.personalize import loss_fn_for
from common.tasks import task_sampler


@dataclass(frozen=True)
class LocalResult:
    params: Params
    inner_lr: Params | None  # the learned alpha after the round (Meta-SGD), else None
    metrics: dict[str, float]


def meta_train(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    x: Tensor,
    y: Tensor,
    settings: Settings,
    order: MetaOrder,
    rng: np.random.Generator,
) -> LocalResult:
    loss_fn = loss_fn_for(settings.task)
    support_losses, query_losses = [], []
    sampler = task_sampler(x, y, settings)
    for _ in range(settings.local_steps):
        d, d_prime, d_second = sampler.meta_batches(rng)
        g = meta_gradient(
            model, params, d, d_prime, loss_fn,
            order=order, inner_lr=inner_lr, inner_steps=settings.inner_steps,
            hessian_batch=d_second, hessian_mode=settings.hessian_free_mode,
            fd_delta=settings.hessian_free_delta,
        )  # fmt: skip
        params = {n: p.detach() for n, p in sgd_step(params, g.params, settings.outer_lr).items()}
        if g.inner_lr is not None and isinstance(inner_lr, dict):
            inner_lr = sgd_step(inner_lr, g.inner_lr, settings.outer_lr)
        support_losses.append(g.support_loss)
        query_losses.append(g.query_loss)
    return LocalResult(
        params=params,
        inner_lr=inner_lr if isinstance(inner_lr, dict) else None,
        metrics={
            "train-support-loss": float(np.mean(support_losses)),
            "train-query-loss": float(np.mean(query_losses)),
        },
    )


def sgd_train(
    model: nn.Module,
    params: Params,
    x: Tensor,
    y: Tensor,
    settings: Settings,
    rng: np.random.Generator,
) -> LocalResult:
    loss_fn = loss_fn_for(settings.task)
    losses = []
    sampler = task_sampler(x, y, settings)
    for _ in range(settings.local_steps):
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        loss = task_loss(model, leaves, sampler.batch(rng), loss_fn)
        grads = gradients(loss, leaves, create_graph=False)
        params = {n: p.detach() for n, p in sgd_step(leaves, grads, settings.outer_lr).items()}
        losses.append(float(loss.detach()))
    return LocalResult(params=params, inner_lr=None, metrics={"train-loss": float(np.mean(losses))})

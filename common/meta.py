"""The meta-learning math as pure functions of (params, batches, step sizes).

Notation follows Finn et al. 2017 (MAML) and Fallah et al. 2020 (Per-FedAvg):
    theta'  = theta - alpha * grad L(theta; D)            (repeated k times)
    meta objective  F(theta) = L(theta'(theta); D')

Parameters travel as ``dict[str, Tensor]`` and the model is only ever called through
``torch.func.functional_call``: nothing is deep-copied, nothing writes ``.data``, and no
optimizer runs inside the inner loop, so the graph from theta (and a learned alpha)
to the query loss stays intact whenever the chosen order needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from common.config import MetaOrder

Params = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
StepSize = float | Params  # a scalar alpha, or one tensor per parameter (Meta-SGD)


def task_loss(model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn) -> Tensor:
    x, y = batch
    return loss_fn(functional_call(model, params, (x,)), y)


def gradients(loss: Tensor, params: Params, create_graph: bool) -> Params:
    """d loss / d params, with zeros for parameters the loss does not reach."""
    names = list(params)
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True
    )
    return {
        n: torch.zeros_like(params[n]) if g is None else g
        for n, g in zip(names, grads, strict=True)
    }


def sgd_step(params: Params, grads: Params, lr: StepSize) -> Params:
    """params - lr * grads; ``lr`` is a scalar or a per-parameter tensor (Meta-SGD)."""
    if isinstance(lr, dict):
        return {n: p - lr[n] * grads[n] for n, p in params.items()}
    return {n: p - lr * grads[n] for n, p in params.items()}


def adapt(
    model: nn.Module,
    params: Params,
    support: Sequence[Batch],
    loss_fn: LossFn,
    lr: StepSize,
    steps: int,
    create_graph: bool,
) -> Params:
    """k inner steps; step i uses ``support[i % len(support)]``.

    With ``create_graph=True`` the result is differentiable in ``params`` through every
    step (second-order MAML). With ``False`` each inner gradient is a constant, so
    d adapted / d params is the identity (first-order) while a tensor ``lr`` still gets
    its exact gradient through the update itself.
    """
    adapted = params
    for i in range(steps):
        loss = task_loss(model, adapted, support[i % len(support)], loss_fn)
        adapted = sgd_step(adapted, gradients(loss, adapted, create_graph), lr)
    return adapted


@dataclass(frozen=True)
class MetaGradient:
    """Gradient of the meta objective, plus the losses seen on the way."""

    params: Params  # dF/dtheta
    inner_lr: Params | None  # dF/dalpha when alpha is learned (Meta-SGD), else None
    support_loss: float  # L(theta; D) before adaptation
    query_loss: float  # L(theta'; D') after adaptation


def _leaves(t: Params) -> Params:
    return {n: v.detach().requires_grad_(True) for n, v in t.items()}


def meta_gradient(
    model: nn.Module,
    params: Params,
    support: Batch,
    query: Batch,
    loss_fn: LossFn,
    *,
    order: MetaOrder,
    inner_lr: StepSize,
    inner_steps: int = 1,
    hessian_batch: Batch | None = None,
    hessian_mode: str = "exact",
    fd_delta: float = 1e-3,
) -> MetaGradient:
    """dF/dtheta (and dF/dalpha for a learned alpha) with the chosen order.

    ``hessian_batch`` is D'' of Per-FedAvg (HF); it defaults to ``support``.
    """
    if order is MetaOrder.HESSIAN_FREE:
        return _hessian_free(
            model,
            params,
            support,
            query,
            hessian_batch or support,
            loss_fn,
            inner_lr,
            hessian_mode,
            fd_delta,
        )
    theta = _leaves(params)
    lr = _leaves(inner_lr) if isinstance(inner_lr, dict) else inner_lr
    support_loss = task_loss(model, theta, support, loss_fn)
    adapted = adapt(
        model, theta, [support], loss_fn, lr, inner_steps, create_graph=order is MetaOrder.SECOND
    )
    query_loss = task_loss(model, adapted, query, loss_fn)
    wrt = dict(theta) | ({f"lr:{n}": v for n, v in lr.items()} if isinstance(lr, dict) else {})
    grads = gradients(query_loss, wrt, create_graph=False)
    return MetaGradient(
        params={n: grads[n] for n in theta},
        inner_lr={n: grads[f"lr:{n}"] for n in theta} if isinstance(lr, dict) else None,
        support_loss=float(support_loss.detach()),
        query_loss=float(query_loss.detach()),
    )


def hessian_vector_product(
    model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn, vector: Params
) -> Params:
    """Exact H(theta; batch) @ vector by double backward (Pearlmutter 1994)."""
    theta = _leaves(params)
    grads = gradients(task_loss(model, theta, batch, loss_fn), theta, create_graph=True)
    dot = sum((grads[n] * vector[n].detach()).sum() for n in theta)
    return gradients(dot, theta, create_graph=False)  # type: ignore[arg-type]


def finite_difference_hvp(
    model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn, vector: Params, delta: float
) -> Params:
    """[grad L(theta + d v) - grad L(theta - d v)] / 2d (Fallah et al. 2020, eq. 10)."""

    def grad_at(sign: float) -> Params:
        shifted = _leaves({n: p + sign * delta * vector[n] for n, p in params.items()})
        return gradients(task_loss(model, shifted, batch, loss_fn), shifted, create_graph=False)

    plus, minus = grad_at(1.0), grad_at(-1.0)
    return {n: (plus[n] - minus[n]) / (2 * delta) for n in params}


def _hessian_free(
    model: nn.Module,
    params: Params,
    support: Batch,
    query: Batch,
    hessian_batch: Batch,
    loss_fn: LossFn,
    inner_lr: StepSize,
    hessian_mode: str,
    fd_delta: float,
) -> MetaGradient:
    """Per-FedAvg (HF), Fallah et al. 2020 eq. 9, one inner step:

        g = (I - alpha H(theta; D'')) grad L(theta'; D'),  theta' = theta - alpha grad L(theta; D)

    For a per-parameter alpha the Jacobian of theta' is I - diag(alpha) H, so the product
    is v - H (alpha * v); dF/dalpha = -grad L(theta; D) * v is exact for one step.
    """
    theta = _leaves(params)
    support_loss = task_loss(model, theta, support, loss_fn)
    g_support = gradients(support_loss, theta, create_graph=False)
    adapted = _leaves(sgd_step(theta, g_support, _detached(inner_lr)))
    query_loss = task_loss(model, adapted, query, loss_fn)
    v = gradients(query_loss, adapted, create_graph=False)
    scaled = (
        {n: inner_lr[n].detach() * v[n] for n in v}
        if isinstance(inner_lr, dict)
        else {n: inner_lr * v[n] for n in v}
    )
    if hessian_mode == "exact":
        hv = hessian_vector_product(model, params, hessian_batch, loss_fn, scaled)
    else:
        hv = finite_difference_hvp(model, params, hessian_batch, loss_fn, scaled, fd_delta)
    return MetaGradient(
        params={n: v[n] - hv[n] for n in v},
        inner_lr={n: -g_support[n] * v[n] for n in v} if isinstance(inner_lr, dict) else None,
        support_loss=float(support_loss.detach()),
        query_loss=float(query_loss.detach()),
    )


def _detached(lr: StepSize) -> StepSize:
    return {n: v.detach() for n, v in lr.items()} if isinstance(lr, dict) else lr

"""The meta-learning math as pure functions of (params, batches, step sizes).

Notation follows Finn et al. 2017 (MAML) and Fallah et al. 2020 (Per-FedAvg):
    theta'  = theta - alpha * grad L(theta; D)            (repeated k times)
    meta objective  F(theta) = L(theta'(theta); D')

Parameters travel as ``dict[str, Tensor]`` and the model is only ever called through
``torch.func.functional_call``: nothing is deep-copied, nothing writes ``.data``, and no
optimizer runs inside the inner loop, so the graph from theta (and a learned alpha)
to the query loss stays intact whenever the chosen order needs it.

Every function here is written with ``torch.func`` transforms (``grad``, ``vjp``) and
returns tensors, never Python floats: nothing syncs with the host and nothing branches on
a tensor's value. So each one is the per-task function of a batch of tasks as it is:
``torch.func.vmap`` runs it over many clients at once (client/train.py,
common/scoring.py), and a single client is the same function called once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vjp

from common.config import MetaOrder

Params = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
StepSize = float | Params  # a scalar alpha, or one tensor per parameter (Meta-SGD)


def task_loss(model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn) -> Tensor:
    x, y = batch
    return loss_fn(functional_call(model, params, (x,)), y)


def loss_and_gradients(
    model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn
) -> tuple[Params, Tensor]:
    """(d loss / d params, loss). Differentiable further wherever ``params`` are."""
    return grad_and_value(lambda p: task_loss(model, p, batch, loss_fn))(params)


def sgd_step(params: Params, grads: Params, lr: StepSize) -> Params:
    """params - lr * grads; ``lr`` is a scalar or a per-parameter tensor (Meta-SGD)."""
    if isinstance(lr, dict):
        return {n: p - lr[n] * grads[n] for n, p in params.items()}
    return {n: p - lr * grads[n] for n, p in params.items()}


def bounded_step_sizes(lr: StepSize, bounds: tuple[float, float] | None) -> StepSize:
    """A learned per-parameter alpha clamped to ``bounds`` (Meta-SGD's safe range).

    A scalar alpha, or ``bounds=None``, passes through. Clamping is elementwise, so it
    runs per client under vmap; inside a differentiated step it passes the gradient where
    alpha is inside the range and none where it sits on a bound.
    """
    if bounds is None or not isinstance(lr, dict):
        return lr
    lo, hi = bounds
    return {n: a.clamp(lo, hi) for n, a in lr.items()}


def _detached(t: Params) -> Params:
    return {n: v.detach() for n, v in t.items()}


def adapt_with_loss(
    model: nn.Module,
    params: Params,
    support: Sequence[Batch],
    loss_fn: LossFn,
    lr: StepSize,
    steps: int,
    create_graph: bool,
) -> tuple[Params, Tensor]:
    """k inner steps (step i on ``support[i % len(support)]``) and the loss before step 1.

    With ``create_graph=True`` the result is differentiable in ``params`` through every
    step (second-order MAML). With ``False`` each inner gradient is detached, so
    d adapted / d params is the identity (first-order) while a tensor ``lr`` still gets
    its exact gradient through the update itself.
    """
    adapted, first_loss = params, None
    for i in range(steps):
        grads, loss = loss_and_gradients(model, adapted, support[i % len(support)], loss_fn)
        adapted = sgd_step(adapted, grads if create_graph else _detached(grads), lr)
        first_loss = loss if first_loss is None else first_loss
    if first_loss is None:  # steps == 0
        first_loss = task_loss(model, params, support[0], loss_fn)
    return adapted, first_loss


def adapt(
    model: nn.Module,
    params: Params,
    support: Sequence[Batch],
    loss_fn: LossFn,
    lr: StepSize,
    steps: int,
    create_graph: bool,
) -> Params:
    """k inner steps; see :func:`adapt_with_loss`."""
    return adapt_with_loss(model, params, support, loss_fn, lr, steps, create_graph)[0]


@dataclass(frozen=True)
class MetaGradient:
    """Gradient of the meta objective, plus the losses seen on the way (0-d tensors)."""

    params: Params  # dF/dtheta
    inner_lr: Params | None  # dF/dalpha when alpha is learned (Meta-SGD), else None
    support_loss: Tensor  # L(theta; D) before adaptation
    query_loss: Tensor  # L(theta'; D') after adaptation


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
            model, params, support, query, hessian_batch or support, loss_fn,
            inner_lr, hessian_mode, fd_delta,
        )  # fmt: skip
    second = order is MetaOrder.SECOND

    def objective(theta: Params, lr: StepSize) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        adapted, support_loss = adapt_with_loss(
            model, theta, [support], loss_fn, lr, inner_steps, create_graph=second
        )
        query_loss = task_loss(model, adapted, query, loss_fn)
        return query_loss, (support_loss, query_loss)

    if isinstance(inner_lr, dict):
        (g, g_lr), (support_loss, query_loss) = grad(objective, argnums=(0, 1), has_aux=True)(
            params, inner_lr
        )
        return MetaGradient(g, g_lr, support_loss, query_loss)
    g, (support_loss, query_loss) = grad(objective, has_aux=True)(params, inner_lr)
    return MetaGradient(g, None, support_loss, query_loss)


def hessian_vector_product(
    model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn, vector: Params
) -> Params:
    """Exact H(theta; batch) @ vector, reverse over reverse (Pearlmutter 1994).

    H is symmetric, so the vector-Jacobian product of the gradient map is H @ v.
    """
    _, pullback = vjp(lambda p: loss_and_gradients(model, p, batch, loss_fn)[0], params)
    return pullback(_detached(vector))[0]


def finite_difference_hvp(
    model: nn.Module, params: Params, batch: Batch, loss_fn: LossFn, vector: Params, delta: float
) -> Params:
    """[grad L(theta + d v) - grad L(theta - d v)] / 2d (Fallah et al. 2020, eq. 10)."""

    def grad_at(sign: float) -> Params:
        shifted = {n: p + sign * delta * vector[n] for n, p in params.items()}
        return loss_and_gradients(model, shifted, batch, loss_fn)[0]

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
    theta = _detached(params)
    lr = _detached(inner_lr) if isinstance(inner_lr, dict) else inner_lr
    g_support, support_loss = loss_and_gradients(model, theta, support, loss_fn)
    adapted = sgd_step(theta, g_support, lr)
    v, query_loss = loss_and_gradients(model, adapted, query, loss_fn)
    scaled = {n: lr[n] * v[n] for n in v} if isinstance(lr, dict) else {n: lr * v[n] for n in v}
    if hessian_mode == "exact":
        hv = hessian_vector_product(model, theta, hessian_batch, loss_fn, scaled)
    else:
        hv = finite_difference_hvp(model, theta, hessian_batch, loss_fn, scaled, fd_delta)
    return MetaGradient(
        params={n: v[n] - hv[n] for n in v},
        inner_lr={n: -g_support[n] * v[n] for n in v} if isinstance(lr, dict) else None,
        support_loss=support_loss,
        query_loss=query_loss,
    )

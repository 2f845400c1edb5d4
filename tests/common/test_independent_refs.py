"""Meta-gradients against references that share no code with common/meta.py.

Every reference here writes its own inner loop (``theta - alpha * grad`` with
``torch.autograd.grad``) and differentiates it with ``torch.autograd.grad`` or builds the
explicit Hessian matrix: nothing goes through the project's ``adapt()``, so a wrong sign
or a wrong step size inside ``adapt()`` cannot cancel out on both sides. Every coordinate
is compared (the models have 50 parameters), plus directional finite differences of the
hand-written objective along random directions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.config import MetaOrder
from common.meta import meta_gradient


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))  # 50 parameters


def _batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)


def _theta(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _loss(model: nn.Module, params: dict, batch) -> torch.Tensor:
    return F.mse_loss(functional_call(model, params, (batch[0],)), batch[1])


def _flat(tensors) -> torch.Tensor:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values])


def hand_objective(model, theta, alpha, support, query, steps, first_order=False):
    """F(theta, alpha) = L(theta_k; D'), theta_{i+1} = theta_i - alpha * grad L(theta_i; D).

    ``alpha`` is a float or one tensor per parameter (Meta-SGD). First order: each inner
    gradient is a constant (detached), so d theta_k / d theta = I while alpha keeps its
    gradient through the update itself."""
    params = dict(theta)
    for _ in range(steps):
        grads = torch.autograd.grad(
            _loss(model, params, support), list(params.values()), create_graph=not first_order
        )
        step = alpha if isinstance(alpha, dict) else dict.fromkeys(params, alpha)
        params = {
            n: p - step[n] * (g.detach() if first_order else g)
            for (n, p), g in zip(params.items(), grads, strict=True)
        }
    return _loss(model, params, query)


def _leaves(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone().requires_grad_(True) for n, t in d.items()}


def _reference(model, theta, alpha, support, query, steps, first_order=False):
    """(dF/dtheta, dF/dalpha or None) of :func:`hand_objective` by torch.autograd.grad."""
    th = _leaves(theta)
    al = _leaves(alpha) if isinstance(alpha, dict) else alpha
    wrt = list(th.values()) + (list(al.values()) if isinstance(al, dict) else [])
    grads = torch.autograd.grad(
        hand_objective(model, th, al, support, query, steps, first_order), wrt
    )
    g_theta = dict(zip(th, grads[: len(th)], strict=True))
    g_alpha = dict(zip(th, grads[len(th) :], strict=True)) if isinstance(al, dict) else None
    return g_theta, g_alpha


def _along(direction_seed: int, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(direction_seed)
    return {n: torch.randn(t.shape, generator=g) for n, t in like.items()}


def _directional_fd(f, point: dict, direction: dict, eps: float = 1e-5) -> float:
    plus = {n: p + eps * direction[n] for n, p in point.items()}
    minus = {n: p - eps * direction[n] for n, p in point.items()}
    with torch.enable_grad():
        return float((f(plus) - f(minus)).detach() / (2 * eps))


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_maml_matches_a_hand_unrolled_reference_on_every_coordinate(steps):
    model, support, query = _net(), _batch(1), _batch(2)
    theta = _theta(model)
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.SECOND, inner_lr=0.3,
        inner_steps=steps,
    )  # fmt: skip
    expected, _ = _reference(model, theta, 0.3, support, query, steps)
    assert _flat(got.params).numel() == 50
    torch.testing.assert_close(_flat(got.params), _flat(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_second_order_maml_matches_directional_finite_differences(seed):
    """<dF/dtheta, d> equals (F(theta + e d) - F(theta - e d)) / 2e of the hand-written
    objective along a random direction d: this touches every coordinate at once."""
    model, support, query = _net(), _batch(1), _batch(2)
    theta = _theta(model)
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.SECOND, inner_lr=0.3,
        inner_steps=2,
    )  # fmt: skip
    d = _along(seed, theta)
    fd = _directional_fd(
        lambda p: hand_objective(model, _leaves(p), 0.3, support, query, 2), theta, d
    )
    assert float(_flat(got.params) @ _flat(d)) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_first_order_maml_matches_a_hand_unrolled_first_order_reference():
    model, support, query = _net(), _batch(1), _batch(2)
    theta = _theta(model)
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.FIRST, inner_lr=0.3,
        inner_steps=3,
    )  # fmt: skip
    expected, _ = _reference(model, theta, 0.3, support, query, 3, first_order=True)
    torch.testing.assert_close(_flat(got.params), _flat(expected), rtol=1e-10, atol=1e-12)
    second, _ = _reference(model, theta, 0.3, support, query, 3)
    assert (_flat(expected) - _flat(second)).norm() > 1e-3 * _flat(second).norm()


def _alpha(theta: dict[str, torch.Tensor], seed: int = 7) -> dict[str, torch.Tensor]:
    """A per-parameter step size that differs on every coordinate (0.05 .. 0.35)."""
    g = torch.Generator().manual_seed(seed)
    return {n: 0.05 + 0.3 * torch.rand(t.shape, generator=g) for n, t in theta.items()}


@pytest.mark.parametrize(
    ("order", "first_order"), [(MetaOrder.SECOND, False), (MetaOrder.FIRST, True)]
)
def test_multi_step_metasgd_matches_the_hand_unrolled_reference_for_theta_and_alpha(
    order, first_order
):
    """Meta-SGD with 3 inner steps: dF/dtheta and dF/dalpha on every coordinate."""
    model, support, query = _net(), _batch(1), _batch(2)
    theta, alpha = _theta(model), _alpha(_theta(model))
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=order, inner_lr=alpha, inner_steps=3
    )
    g_theta, g_alpha = _reference(model, theta, alpha, support, query, 3, first_order)
    assert got.inner_lr is not None and g_alpha is not None
    torch.testing.assert_close(_flat(got.params), _flat(g_theta), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_flat(got.inner_lr), _flat(g_alpha), rtol=1e-10, atol=1e-12)


def test_multi_step_metasgd_alpha_gradient_matches_directional_finite_differences():
    model, support, query = _net(), _batch(1), _batch(2)
    theta, alpha = _theta(model), _alpha(_theta(model))
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.SECOND, inner_lr=alpha,
        inner_steps=3,
    )  # fmt: skip
    d = _along(21, alpha)
    fd = _directional_fd(
        lambda a: hand_objective(model, _leaves(theta), a, support, query, 3), alpha, d
    )
    assert float(_flat(got.inner_lr) @ _flat(d)) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def _explicit_hessian(model, theta, batch) -> torch.Tensor:
    """The full 50 x 50 Hessian of L(theta; batch), built column by column."""
    names, shapes = list(theta), [t.shape for t in theta.values()]
    sizes = [t.numel() for t in theta.values()]

    def loss_of_flat(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return _loss(model, params, batch)

    return torch.autograd.functional.hessian(loss_of_flat, _flat(theta))


@pytest.mark.parametrize("learned", [False, True], ids=["perfedavg-hf", "metasgd-hf"])
def test_hessian_free_with_its_own_hessian_batch_matches_the_explicit_hessian(learned):
    """Per-FedAvg (HF), eq. 9, with D'' different from D:
    g = v - H(D'') (alpha * v), v = grad L(theta - alpha grad L(theta; D); D'),
    with H the explicit Hessian matrix; for a learned alpha also dF/dalpha = -grad L(D) * v."""
    model = _net()
    support, query, hess = _batch(1), _batch(2), _batch(3, n=9)
    theta = _theta(model)
    alpha = _alpha(theta) if learned else 0.25
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.HESSIAN_FREE, inner_lr=alpha,
        hessian_batch=hess,
    )  # fmt: skip
    th = _leaves(theta)
    g_s = torch.autograd.grad(_loss(model, th, support), list(th.values()))
    a = _flat(alpha) if learned else torch.tensor(alpha)
    adapted = _flat(theta) - a * _flat(g_s)
    sizes = [t.numel() for t in theta.values()]
    parts = torch.split(adapted, sizes)
    adapted_params = {
        n: p.reshape(t.shape).requires_grad_(True)
        for (n, t), p in zip(theta.items(), parts, strict=True)
    }
    v = _flat(
        torch.autograd.grad(_loss(model, adapted_params, query), list(adapted_params.values()))
    )
    hessian = _explicit_hessian(model, theta, hess)
    expected = v - hessian @ (a * v)
    torch.testing.assert_close(_flat(got.params), expected, rtol=1e-10, atol=1e-12)
    if learned:
        torch.testing.assert_close(_flat(got.inner_lr), -_flat(g_s) * v, rtol=1e-10, atol=1e-12)
    # The Hessian batch matters: the support's Hessian gives a different answer.
    other = v - _explicit_hessian(model, theta, support) @ (a * v)
    assert (other - expected).norm() > 1e-3 * expected.norm()


def test_support_and_query_losses_are_the_losses_before_and_after_adapting():
    model, support, query = _net(), _batch(1), _batch(2)
    theta = _theta(model)
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.SECOND, inner_lr=0.3,
        inner_steps=3,
    )  # fmt: skip
    assert float(got.support_loss) == pytest.approx(float(_loss(model, theta, support)))
    after = hand_objective(model, _leaves(theta), 0.3, support, query, 3)
    assert float(got.query_loss) == pytest.approx(float(after.detach()), rel=1e-12)


def test_adapt_keeps_the_second_order_path_only_when_asked():
    """adapt(create_graph=True) is differentiable through its inner gradients: the
    vector-Jacobian product of the adapted parameters equals the hand-unrolled one, and
    differs from create_graph=False's, where d adapted / d theta is the identity."""
    from common.meta import adapt

    model, support = _net(), _batch(1)
    theta = _theta(model)
    d = _along(31, theta)

    def vjp_of(create_graph: bool) -> torch.Tensor:
        th = _leaves(theta)
        adapted = adapt(model, th, [support], F.mse_loss, 0.3, 2, create_graph=create_graph)
        pulled = (_flat(adapted) * _flat(d)).sum()
        return _flat(torch.autograd.grad(pulled, list(th.values())))

    th = _leaves(theta)
    params = dict(th)
    for _ in range(2):  # by hand, through the inner gradients
        grads = torch.autograd.grad(
            _loss(model, params, support), list(params.values()), create_graph=True
        )
        params = {n: p - 0.3 * g for (n, p), g in zip(params.items(), grads, strict=True)}
    by_hand = _flat(torch.autograd.grad((_flat(params) * _flat(d)).sum(), list(th.values())))
    torch.testing.assert_close(vjp_of(True), by_hand, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vjp_of(False), _flat(d), rtol=0, atol=0)  # identity


def test_hessian_free_keeps_no_graph_to_theta_or_a_learned_alpha():
    """Per-FedAvg (HF) works on detached values: what it returns holds no autograd graph
    (a kept graph would pin every local step's activations in memory)."""
    model, support, query = _net(), _batch(1), _batch(2)
    theta, alpha = _leaves(_theta(model)), _leaves(_alpha(_theta(model)))
    got = meta_gradient(
        model, theta, support, query, F.mse_loss, order=MetaOrder.HESSIAN_FREE, inner_lr=alpha,
    )  # fmt: skip
    outputs = [*got.params.values(), *got.inner_lr.values(), got.support_loss, got.query_loss]
    assert not any(t.requires_grad for t in outputs)


def test_zero_inner_steps_return_theta_and_its_support_loss():
    from common.meta import adapt_with_loss

    model, support = _net(), _batch(1)
    theta = _theta(model)
    adapted, loss = adapt_with_loss(model, theta, [support], F.mse_loss, 0.3, 0, True)
    assert all(adapted[n] is theta[n] for n in theta)
    assert float(loss) == pytest.approx(float(_loss(model, theta, support)), rel=1e-12)

"""The meta-gradient core against finite differences and hand-unrolled references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.config import MetaOrder
from common.meta import (
    adapt,
    finite_difference_hvp,
    hessian_vector_product,
    meta_gradient,
    task_loss,
)


@pytest.fixture(autouse=True)
def _float64():
    """Finite differences need float64; restore the default for other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )


def _meta_objective(model, params, support, query, lr, steps) -> torch.Tensor:
    adapted = adapt(model, params, [support], F.mse_loss, lr, steps, create_graph=False)
    return task_loss(model, adapted, query, F.mse_loss)


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def test_second_order_matches_central_finite_difference_over_three_steps():
    model, support, query = _net(), _batch(1), _batch(2)
    params = _params(model)
    g = meta_gradient(
        model,
        params,
        support,
        query,
        F.mse_loss,
        order=MetaOrder.SECOND,
        inner_lr=0.3,
        inner_steps=3,
    )
    eps = 1e-6
    for name, p in params.items():
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (
                _meta_objective(model, _leaf(plus), support, query, 0.3, 3)
                - _meta_objective(model, _leaf(minus), support, query, 0.3, 3)
            ) / (2 * eps)
            assert float(g.params[name][idx].detach()) == pytest.approx(
                float(fd.detach()), rel=1e-5, abs=1e-8
            )


def _leaf(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().requires_grad_(True) for k, v in p.items()}


def test_second_order_equals_closed_form_for_linear_regression():
    """L(w) = mean((Xw - y)^2): H = 2 X^T X / n is constant, so after k steps
    dL'(w_k)/dw = ((I - a H)^T)^k grad L'(w_k), an unrolled reference with no autograd."""
    model = nn.Linear(3, 1, bias=False)
    w = torch.tensor([[0.5, -1.0, 2.0]])
    x, y = _batch(3)[0], torch.randn(6, 1, generator=torch.Generator().manual_seed(4))
    xq, yq = _batch(5)[0], torch.randn(6, 1, generator=torch.Generator().manual_seed(6))
    a, k = 0.1, 4
    H = 2 * x.T @ x / x.shape[0]
    wk = w.T.clone()
    for _ in range(k):
        wk = wk - a * 2 * x.T @ (x @ wk - y) / x.shape[0]
    grad_q = 2 * xq.T @ (xq @ wk - yq) / xq.shape[0]
    J = torch.linalg.matrix_power(torch.eye(3) - a * H, k)
    expected = (J.T @ grad_q).T
    g = meta_gradient(
        model,
        {"weight": w},
        (x, y),
        (xq, yq),
        F.mse_loss,
        order=MetaOrder.SECOND,
        inner_lr=a,
        inner_steps=k,
    )
    torch.testing.assert_close(g.params["weight"], expected, rtol=1e-10, atol=1e-12)


def test_first_order_is_plain_gradient_at_adapted_params_and_differs_from_second():
    model, support, query = _net(), _batch(1), _batch(2)
    params = _params(model)
    kw = dict(inner_lr=0.5, inner_steps=2)
    fo = meta_gradient(model, params, support, query, F.mse_loss, order=MetaOrder.FIRST, **kw)
    so = meta_gradient(model, params, support, query, F.mse_loss, order=MetaOrder.SECOND, **kw)
    adapted = {
        k: v.detach().requires_grad_(True)
        for k, v in adapt(model, _leaf(params), [support], F.mse_loss, 0.5, 2, False).items()
    }
    loss = task_loss(model, adapted, query, F.mse_loss)
    plain = dict(zip(adapted, torch.autograd.grad(loss, list(adapted.values())), strict=True))
    torch.testing.assert_close(_flat(fo.params), _flat(plain))
    assert (_flat(fo.params) - _flat(so.params)).norm() > 1e-3 * _flat(so.params).norm()


def test_hessian_free_equals_second_order_for_one_step_when_hessian_batch_is_support():
    model, support, query = _net(), _batch(1), _batch(2)
    params = _params(model)
    so = meta_gradient(
        model, params, support, query, F.mse_loss, order=MetaOrder.SECOND, inner_lr=0.4
    )
    hf = meta_gradient(
        model,
        params,
        support,
        query,
        F.mse_loss,
        order=MetaOrder.HESSIAN_FREE,
        inner_lr=0.4,
        hessian_batch=support,
    )
    torch.testing.assert_close(_flat(hf.params), _flat(so.params), rtol=1e-10, atol=1e-12)
    other = meta_gradient(
        model,
        params,
        support,
        query,
        F.mse_loss,
        order=MetaOrder.HESSIAN_FREE,
        inner_lr=0.4,
        hessian_batch=_batch(9),
    )
    assert not torch.allclose(_flat(other.params), _flat(so.params))


def test_finite_difference_hvp_approximates_exact_hvp():
    model, batch = _net(), _batch(1)
    params = _params(model)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    exact = hessian_vector_product(model, params, batch, F.mse_loss, v)
    approx = finite_difference_hvp(model, params, batch, F.mse_loss, v, delta=1e-4)
    torch.testing.assert_close(_flat(approx), _flat(exact), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("order", [MetaOrder.SECOND, MetaOrder.FIRST, MetaOrder.HESSIAN_FREE])
def test_metasgd_alpha_gradient_matches_finite_difference(order):
    """dF/dalpha is exact for one step under every order (theta' is linear in alpha)."""
    model, support, query = _net(), _batch(1), _batch(2)
    params = _params(model)
    alpha = {k: torch.full_like(p, 0.2) for k, p in params.items()}
    g = meta_gradient(
        model, params, support, query, F.mse_loss, order=order, inner_lr=alpha, inner_steps=1
    )
    assert g.inner_lr is not None and _flat(g.inner_lr).abs().sum() > 0
    name, eps = "0.weight", 1e-6
    plus = {k: v.clone() for k, v in alpha.items()}
    minus = {k: v.clone() for k, v in alpha.items()}
    plus[name][1, 2] += eps
    minus[name][1, 2] -= eps
    fd = (
        _meta_objective(model, _leaf(params), support, query, plus, 1)
        - _meta_objective(model, _leaf(params), support, query, minus, 1)
    ) / (2 * eps)
    assert float(g.inner_lr[name][1, 2]) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)


def test_adaptation_lowers_loss_on_adaptation_batch():
    model, support = _net(), _batch(1)
    params = _leaf(_params(model))
    before = float(task_loss(model, params, support, F.mse_loss))
    adapted = adapt(model, params, [support], F.mse_loss, 0.1, 5, create_graph=False)
    after = float(task_loss(model, adapted, support, F.mse_loss))
    assert after < before


def test_meta_gradient_does_not_modify_inputs():
    model, support, query = _net(), _batch(1), _batch(2)
    params = _params(model)
    copy = {k: v.clone() for k, v in params.items()}
    meta_gradient(model, params, support, query, F.mse_loss, order=MetaOrder.SECOND, inner_lr=0.1)
    for k in params:
        assert torch.equal(params[k], copy[k])
    assert np.isfinite(float(_flat(params).sum()))

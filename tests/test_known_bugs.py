"""Six bugs that once passed the whole fast suite, each pinned by an independent expectation.

Each test computes what the project must produce by hand (plain torch forward passes and
``torch.autograd.grad``, counts done in the test) and checks the project against it, and
where a plausible wrong variant would land close by, it also checks that the wrong answer
is far from the right one at the tolerance used. ``tests/mutants/plant_known_bugs.py``
plants each bug again in a copy of the tree and shows that these tests fail.

1. accuracy from argmin instead of argmax                    (common/scoring.py)
2. a train reply weighted by the test split's size             (client/app.py, train)
3. Meta-SGD evaluated with the fixed inner-lr, not its alpha   (client/app.py, evaluate)
4. training drawing batches from the evaluation RNG stream     (client/app.py, train)
5. hessian-free-mode = "finite-difference" running the exact HVP (common/meta.py)
6. the support loss taken after the last inner step            (common/meta.py)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from client.app import EVALUATE_PURPOSE, TRAIN_PURPOSE
from client.runtime import node_runtime
from client.train import train_cohort
from common import messages
from common.arrays import join_state, split_state
from common.config import MetaOrder, Task, parse_settings
from common.data.registry import load_client_data
from common.meta import meta_gradient
from common.models import model_for
from common.scoring import evaluate_cohort, masked_scores
from common.tasks import draw_indices
from server.app import initial_state
from tests import node_probe

CPU = torch.device("cpu")


def _tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in state.items()}


def _mse_at(model: nn.Module, params: dict, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    out = functional_call(model, params, (torch.as_tensor(x, dtype=torch.float32),))
    return F.mse_loss(out, torch.as_tensor(y, dtype=torch.float32))


# ---- 1. accuracy -------------------------------------------------------------------------

# Identity weights: the logits are the inputs, so each row's argmax is written in the test.
LOGITS = torch.tensor(
    [
        [5.0, 1.0, 0.0],  # argmax 0, label 0: right
        [0.0, 4.0, 1.0],  # argmax 1, label 1: right
        [1.0, 0.0, 3.0],  # argmax 2, label 0: wrong
        [2.0, 7.0, 1.0],  # argmax 1, label 1: right
        [9.0, 9.5, 0.0],  # argmax 1, label 0: wrong, but masked out (padding)
    ]
)
LABELS = torch.tensor([0, 1, 0, 1, 0])
MASK = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])


def test_accuracy_counts_rows_whose_largest_logit_is_the_label():
    model = nn.Linear(3, 3, bias=False)
    params = {"weight": torch.eye(3)}
    _, acc = masked_scores(model, params, (LOGITS, LABELS, MASK), Task.CLASSIFICATION)
    assert float(acc) == pytest.approx(3 / 4)  # 3 of the 4 real rows; argmin would give 0


def _fitted(model: nn.Module, state: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """A theta better than chance (logreg starts at zero: every logit ties), by 30 full-batch
    gradient steps on the client's own train split, so argmax and argmin accuracies differ."""
    params = {k: torch.as_tensor(v).clone().requires_grad_(True) for k, v in state.items()}
    opt = torch.optim.SGD(params.values(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        out = functional_call(model, params, (torch.as_tensor(x),))
        F.cross_entropy(out, torch.as_tensor(y)).backward()
        opt.step()
    return {k: p.detach().numpy() for k, p in params.items()}


def test_a_clients_reported_accuracy_is_its_test_splits_share_of_correct_argmaxes():
    """End to end: the evaluate reply's accuracy equals the share counted here by hand."""
    config = {"algorithm": "fedavg", "dataset": "synthetic", "model": "logreg"}
    settings = parse_settings(config)
    data, model = load_client_data(settings, 1, 2), model_for(settings)
    state = _fitted(model, initial_state(settings), data.x_train, data.y_train)
    reply = node_probe.evaluate(node_probe.node_grid(config, 2), 2, state)
    logits = functional_call(model, _tensors(state), (torch.as_tensor(data.x_test),))
    right = (logits.argmax(1).numpy() == data.y_test).mean()
    wrong = (logits.argmin(1).numpy() == data.y_test).mean()
    assert abs(right - wrong) > 0.05  # the two metrics are told apart at this tolerance
    assert node_probe.metric(reply, messages.ACC_BEFORE) == [pytest.approx(right, abs=1e-6)]


# ---- 2. weights: the train split's size --------------------------------------------------


def test_a_train_reply_counts_each_clients_training_examples_not_its_test_examples():
    config = {"algorithm": "fedavg", "dataset": "synthetic", "model": "logreg",
              "clients-per-node": 2, "local-steps": 1}  # fmt: skip
    settings = parse_settings(config)
    grid = node_probe.node_grid(config, 2)
    for node in (1, 2):
        reply = node_probe.train(grid, node, initial_state(settings))
        pids = node_probe.metric(reply, messages.PARTITION_ID)
        sizes = [load_client_data(settings, p, 4) for p in pids]
        assert [d.num_train for d in sizes] != [d.num_test for d in sizes]
        assert node_probe.metric(reply, messages.NUM_EXAMPLES) == [len(d.x_train) for d in sizes]


# ---- 3. Meta-SGD evaluates with its learned alpha -----------------------------------------

METASGD = {"algorithm": "metasgd", "eval-steps": 1, "inner-lr": 0.01,
           "sinusoid-train-points": 20, "batch-size": 20}  # fmt: skip  # one full batch


def test_metasgd_evaluation_adapts_with_the_learned_alpha_it_receives():
    settings = parse_settings(METASGD)
    theta, _ = split_state(initial_state(settings))
    rng = np.random.default_rng(3)
    alpha = {k: rng.uniform(0.05, 0.5, v.shape).astype(np.float32) for k, v in theta.items()}
    grid = node_probe.node_grid(METASGD, 2)
    reply = node_probe.evaluate(grid, 1, join_state(theta, alpha))

    # By hand: one step on the whole train split (batch-size = its 20 points), then score.
    data, model = load_client_data(settings, 0, 2), model_for(settings)
    params = {k: torch.as_tensor(v).requires_grad_(True) for k, v in theta.items()}
    grads = torch.autograd.grad(
        _mse_at(model, params, data.x_train, data.y_train), list(params.values())
    )

    def after(step: dict[str, torch.Tensor | float]) -> float:
        adapted = {k: p - step[k] * g for (k, p), g in zip(params.items(), grads, strict=True)}
        return float(_mse_at(model, adapted, data.x_test, data.y_test).detach())

    with_alpha = after(_tensors(alpha))
    with_inner_lr = after(dict.fromkeys(theta, settings.inner_lr))
    assert abs(with_alpha - with_inner_lr) > 1e-2 * with_alpha  # alpha moves the score
    assert node_probe.metric(reply, messages.LOSS_AFTER) == [pytest.approx(with_alpha, rel=1e-4)]


# ---- 4. RNG streams: training and evaluation draw independently ---------------------------


def test_rng_purposes_give_different_reproducible_streams():
    settings = parse_settings({"algorithm": "fedavg"})
    grid = node_probe.node_grid({"algorithm": "fedavg"}, 1)
    client = node_runtime(grid.contexts[1]).client(0)
    assert TRAIN_PURPOSE != EVALUATE_PURPOSE
    train_draws = client.rng(3, TRAIN_PURPOSE).random(8)
    np.testing.assert_array_equal(train_draws, client.rng(3, TRAIN_PURPOSE).random(8))
    assert not np.allclose(train_draws, client.rng(3, EVALUATE_PURPOSE).random(8))
    assert not np.allclose(train_draws, client.rng(4, TRAIN_PURPOSE).random(8))
    assert settings.seed == client.settings.seed


def test_training_draws_its_batch_from_the_training_stream():
    """fedavg, one local step on 5 of 20 points: the update is -lr * grad on the 5 points
    the client's training stream picks, computed here by hand; the evaluation stream's
    pick gives a different update."""
    config = {"algorithm": "fedavg", "local-steps": 1, "batch-size": 5, "outer-lr": 0.05}
    settings = parse_settings(config)
    state = initial_state(settings)
    grid = node_probe.node_grid(config, 1)
    reply = node_probe.train(grid, 1, state, server_round=3)
    got = {k: v[0] for k, v in node_probe.updates(reply).items()}
    client = node_runtime(grid.contexts[1]).client(0)
    model = model_for(settings)

    def update_from(purpose: int) -> dict[str, np.ndarray]:
        (idx,) = draw_indices(client.rng(3, purpose), client.data.num_train, 5, 1)
        params = {k: torch.as_tensor(v).requires_grad_(True) for k, v in state.items()}
        loss = _mse_at(model, params, client.data.x_train[idx], client.data.y_train[idx])
        grads = torch.autograd.grad(loss, list(params.values()))
        return {k: -0.05 * g.numpy() for k, g in zip(params, grads, strict=True)}

    expected, other = update_from(TRAIN_PURPOSE), update_from(EVALUATE_PURPOSE)
    for k in state:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-7)
    assert max(np.abs(got[k] - other[k]).max() for k in state) > 1e-4


# ---- 5. finite-difference HVP takes effect ------------------------------------------------


def _tanh_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _regression_batch(seed: int, n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )


def _directional(f, params: list[torch.Tensor], u: list[torch.Tensor]) -> torch.Tensor:
    """d/dt f(params + t u) at t = 0, kept differentiable in ``params``."""
    grads = torch.autograd.grad(f, params, create_graph=True)
    return sum((g * d).sum() for g, d in zip(grads, u, strict=True))


def test_finite_difference_hvp_differs_from_the_exact_one_by_its_predicted_delta_squared_term():
    """Per-FedAvg (HF), eq. 9: g = v - H u with u = alpha v. The central difference
    [grad(theta + d u) - grad(theta - d u)] / 2d equals H u + d^2/6 L''''[u, u, u] + O(d^4);
    that fourth-derivative term is computed here by nested autograd, so the gap between
    the two modes is predicted, not just observed."""
    model, lr, delta = _tanh_net(), 0.3, 0.05
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    support, query, hess = _regression_batch(1), _regression_batch(2), _regression_batch(3)

    def loss_at(params: dict, batch) -> torch.Tensor:
        return F.mse_loss(functional_call(model, params, (batch[0],)), batch[1])

    leaves = [p.clone().requires_grad_(True) for p in theta.values()]
    named = dict(zip(theta, leaves, strict=True))
    g_s = torch.autograd.grad(loss_at(named, support), leaves)
    adapted = {
        n: (p - lr * g).requires_grad_(True) for (n, p), g in zip(theta.items(), g_s, strict=True)
    }
    v = [t.detach() for t in torch.autograd.grad(loss_at(adapted, query), list(adapted.values()))]
    u = [lr * t for t in v]
    first = _directional(loss_at(named, hess), leaves, u)  # grad L . u
    hu = torch.autograd.grad(first, leaves, create_graph=True)  # H u
    second = sum((h * d).sum() for h, d in zip(hu, u, strict=True))  # u' H u
    third = _directional(second, leaves, u)  # L'''[u, u, u]
    fourth = torch.autograd.grad(third, leaves)  # L''''[u, u, u, .]

    def mg(mode: str):
        return meta_gradient(
            model, theta, support, query, F.mse_loss, order=MetaOrder.HESSIAN_FREE,
            inner_lr=lr, hessian_batch=hess, hessian_mode=mode, fd_delta=delta,
        ).params  # fmt: skip

    exact, fd = mg("exact"), mg("finite-difference")
    for i, n in enumerate(theta):
        torch.testing.assert_close(exact[n], v[i] - hu[i].detach(), rtol=1e-10, atol=1e-12)
        predicted_gap = delta**2 / 6 * fourth[i]
        torch.testing.assert_close(exact[n] - fd[n], predicted_gap, rtol=2e-2, atol=1e-12)
    gap = max(float((delta**2 / 6 * f).abs().max()) for f in fourth)
    assert gap > 1e-6  # far above float64 rounding: a mode that is ignored cannot pass


def test_hessian_free_mode_setting_reaches_the_clients_training_step():
    """Through the settings and train_cohort (float32): the finite-difference update
    differs from the exact one, and the gap shrinks ~4x when hessian-free-delta halves."""
    base = {"algorithm": "perfedavg-hf", "hidden-sizes": "16", "activation": "elu",
            "inner-lr": 0.5, "outer-lr": 0.1, "local-steps": 1, "batch-size": 8}  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (8, 1)).astype(np.float32)
    client = (x, (2 * np.sin(x)).astype(np.float32))
    theta = _tensors(split_state(initial_state(parse_settings(base)))[0])

    def update(**extra) -> dict[str, torch.Tensor]:
        s = parse_settings(base | extra)
        out = train_cohort(model_for(s), theta, s.inner_lr, [client],
                           [np.random.default_rng(1)], s, CPU, meta=True)  # fmt: skip
        return out.params

    exact = update()

    def gap(delta: float) -> float:
        fd = update(**{"hessian-free-mode": "finite-difference", "hessian-free-delta": delta})
        return max(float((fd[n] - exact[n]).abs().max()) for n in exact)

    big, small = gap(0.1), gap(0.05)
    assert big > 1e-2  # far above float32 rounding (the gap is ~1 here)
    assert 3.0 < big / small < 5.0  # O(delta^2): the central difference's own error


# ---- 6. the support loss is the loss before adapting -------------------------------------


@pytest.mark.parametrize("order", [MetaOrder.SECOND, MetaOrder.FIRST])
def test_meta_gradient_reports_the_support_loss_before_the_first_inner_step(order):
    model = _tanh_net()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    support, query = _regression_batch(4), _regression_batch(5)
    by_hand = F.mse_loss(model(support[0]), support[1]).item()  # at theta, step 0
    out = meta_gradient(
        model, theta, support, query, F.mse_loss, order=order, inner_lr=0.2, inner_steps=3
    )
    assert out.support_loss.item() == pytest.approx(by_hand, rel=1e-12)
    params = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
    for _ in range(2):  # the loss an off-by-step report would give: before step 3
        g = torch.autograd.grad(
            F.mse_loss(functional_call(model, params, (support[0],)), support[1]),
            list(params.values()),
        )
        params = {n: p - 0.2 * d for (n, p), d in zip(params.items(), g, strict=True)}
    before_last = F.mse_loss(functional_call(model, params, (support[0],)), support[1]).item()
    assert abs(before_last - by_hand) > 1e-3 * by_hand


def test_a_clients_train_support_loss_is_its_loss_at_the_received_theta():
    """maml with 3 inner steps and one local step on the whole (8-point) train split: the
    reported train-support-loss is L(theta; D) before any inner step."""
    config = {"algorithm": "maml", "hidden-sizes": "16", "inner-steps": 3, "inner-lr": 0.1,
              "local-steps": 1, "batch-size": 8}  # fmt: skip
    s = parse_settings(config)
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (8, 1)).astype(np.float32)
    y = (2 * np.sin(x)).astype(np.float32)
    model = model_for(s)
    theta = _tensors(split_state(initial_state(s))[0])
    out = train_cohort(model, theta, s.inner_lr, [(x, y)], [np.random.default_rng(1)], s, CPU,
                       meta=True)  # fmt: skip
    by_hand = float(_mse_at(model, theta, x, y))
    assert out.metrics["train-support-loss"][0] == pytest.approx(by_hand, rel=1e-5)


def test_evaluation_scores_the_cohort_with_the_evaluation_stream():
    """The evaluate reply equals a recomputation with the client's evaluation stream."""
    config = {"algorithm": "maml", "eval-steps": 2, "batch-size": 5}
    settings = parse_settings(config)
    state = initial_state(settings)
    grid = node_probe.node_grid(config, 1)
    reply = node_probe.evaluate(grid, 1, state, server_round=2)
    client = node_runtime(grid.contexts[1]).client(0)

    def loss_after(purpose: int) -> float:
        (result,) = evaluate_cohort(
            model_for(settings), _tensors(state), settings.inner_lr, [client.data],
            [client.rng(2, purpose)], steps=(2,), batch_size=5, task=settings.task, device=CPU,
        )  # fmt: skip
        return result.after.loss

    assert node_probe.metric(reply, messages.LOSS_AFTER) == [
        pytest.approx(loss_after(EVALUATE_PURPOSE))
    ]
    assert loss_after(TRAIN_PURPOSE) != pytest.approx(loss_after(EVALUATE_PURPOSE))

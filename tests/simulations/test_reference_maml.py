"""The reference loop of simulations/reference_maml.py (the floor bench_cohort times the project
against) must compute the same MAML as the project, so its properties are checked here."""

from __future__ import annotations

import math

import torch

from simulations.reference_maml import (
    Adam,
    BareConfig,
    BareFederation,
    draw_batches,
    local_update,
    maml_step,
    mse,
    run_bare,
    sinusoid_net,
)


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {n: p.detach() for n, p in sinusoid_net().named_parameters()}


def _pairs(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = -5 + 10 * torch.rand(n, 1, generator=gen)
    return torch.cat([x, 3 * torch.sin(x - 1)], dim=-1)


def test_two_rounds_of_ten_clients_personalisation_lowers_test_mse():
    rounds = run_bare(BareConfig(clients_per_round=10), rounds=2)
    assert len(rounds) == 2
    for r in rounds:
        assert math.isfinite(r.mse_before) and math.isfinite(r.mse_after)
        assert r.seconds > 0
    # 10 SGD steps on a client's own train points must lower its test error on average.
    assert sum(r.mse_after for r in rounds) < 0.95 * sum(r.mse_before for r in rounds)


def test_maml_step_is_second_order_maml_unrolled_by_hand():
    cfg, net = BareConfig(), sinusoid_net()
    theta, support, query = _params(), _pairs(5, 1), _pairs(5, 2)

    def reference(create_graph: bool) -> dict[str, torch.Tensor]:
        leaves = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
        loss = mse(net, leaves, support[:, :1], support[:, 1:])
        inner = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
        adapted = {n: p - cfg.inner_lr * g for (n, p), g in zip(leaves.items(), inner, strict=True)}
        outer = torch.autograd.grad(
            mse(net, adapted, query[:, :1], query[:, 1:]), list(leaves.values())
        )
        return {n: p - cfg.outer_lr * g for (n, p), g in zip(theta.items(), outer, strict=True)}

    got, second, first = (
        maml_step(net, cfg, theta, support, query),
        reference(True),
        reference(False),
    )
    for n in theta:
        torch.testing.assert_close(got[n], second[n], rtol=1e-5, atol=1e-7)
    # The second-order term is really there: the first-order step differs.
    assert any(not torch.allclose(got[n], first[n], rtol=0, atol=1e-9) for n in theta)


def test_vmapped_cohort_equals_clients_one_at_a_time():
    fed = BareFederation(BareConfig(clients_per_round=4))
    clients = torch.tensor([0, 3, 7, 11])
    batches = draw_batches(fed.train, clients, (fed.cfg.local_steps, 2), 5, fed.gen)
    assert batches.shape == (4, fed.cfg.local_steps, 2, 5, 2)
    together = fed._train(fed.theta, batches)
    for i in range(len(clients)):
        alone = local_update(fed.net, fed.cfg, fed.theta, batches[i])
        for n in alone:
            torch.testing.assert_close(together[n][i], alone[n], rtol=1e-5, atol=1e-7)


def test_batches_hold_distinct_points_of_their_own_client():
    data = torch.arange(3 * 20 * 2, dtype=torch.float32).view(3, 20, 2)
    clients = torch.tensor([2, 0])
    b = draw_batches(data, clients, (7,), 5, torch.Generator().manual_seed(0))
    for i, c in enumerate(clients.tolist()):
        rows = b[i].reshape(-1, 2)
        assert all(any(torch.equal(r, d) for d in data[c]) for r in rows)
        assert all(len({tuple(p.tolist()) for p in batch}) == 5 for batch in b[i])


def test_first_adam_step_moves_every_weight_by_lr_along_the_update():
    theta = {"w": torch.zeros(3)}
    delta = {"w": torch.tensor([2.0, -0.5, 1e-3])}
    new = Adam(0.03, (0.9, 0.999), 1e-8).apply(theta, delta)
    torch.testing.assert_close(new["w"], 0.03 * torch.sign(delta["w"]), rtol=1e-4, atol=1e-6)

"""Federated MAML on sinusoids in one screen of plain torch.func: the reference to read
next to common/meta.py and client/train.py.

No project code and no Flower: N sinusoid clients (Finn et al. 2017, Sec. 5.1); each round
the server samples C of them, each runs ``local_steps`` second-order MAML steps (Per-FedAvg's
Algorithm 1: theta_i <- theta_i - beta grad F_i, F_i(theta) = L(theta - alpha grad L(theta;
D); D')) under one ``torch.func.vmap`` over clients, the server takes the example-weighted
mean of the updates theta_i - theta and an Adam step on its negative (FedMeta), and 0.1 N
other clients are personalised (k SGD steps on their train points) and scored before and
after on their held-out points. simulations/bench/bench_cohort.py times it as the floor the
project is measured against (the same math without messages, records or nodes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

Params = dict[str, Tensor]


@dataclass(frozen=True)
class BareConfig:
    """The sinusoid MAML setting of the benchmark (MAML: Finn et al. 2017, Sec. 5.1)."""

    clients_per_round: int = 100
    fraction: float = 0.1  # fraction-train = fraction-evaluate; N = C / fraction clients
    train_points: int = 20
    test_points: int = 50
    local_steps: int = 5  # tau
    batch_size: int = 5  # |D| = |D'|
    inner_lr: float = 0.01  # alpha
    outer_lr: float = 0.001  # beta
    eval_steps: int = 10  # k at evaluation
    server_lr: float = 0.03  # Adam
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0

    @property
    def num_clients(self) -> int:
        return round(self.clients_per_round / self.fraction)


def sinusoid_clients(n: int, points: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(x, y) of shape (n, points, 1): amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5]."""
    amplitude = 0.1 + 4.9 * torch.rand(n, 1, 1, generator=gen)
    phase = math.pi * torch.rand(n, 1, 1, generator=gen)
    x = -5.0 + 10.0 * torch.rand(n, points, 1, generator=gen)
    return x, amplitude * torch.sin(x - phase)


def sinusoid_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )


def mse(net: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    return ((functional_call(net, params, (x,)) - y) ** 2).mean()


def sgd(params: Params, grads: Params, lr: float) -> Params:
    return {n: p - lr * grads[n] for n, p in params.items()}


def maml_step(
    net: nn.Module, cfg: BareConfig, params: Params, support: Tensor, query: Tensor
) -> Params:
    """theta - beta grad_theta L(theta - alpha grad L(theta; D); D'), second order.

    ``support`` and ``query`` are (batch, 2) tensors of (x, y) pairs.
    """

    def query_loss(theta: Params) -> Tensor:
        inner = grad(mse, argnums=1)(net, theta, support[:, :1], support[:, 1:])
        return mse(net, sgd(theta, inner, cfg.inner_lr), query[:, :1], query[:, 1:])

    return sgd(params, grad(query_loss)(params), cfg.outer_lr)


def local_update(net: nn.Module, cfg: BareConfig, theta: Params, batches: Tensor) -> Params:
    """One client's tau MAML steps from theta; ``batches`` is (tau, 2, batch, 2)."""
    params = theta
    for t in range(cfg.local_steps):
        params = maml_step(net, cfg, params, batches[t, 0], batches[t, 1])
    return {n: params[n] - theta[n] for n in theta}


def personalized_scores(
    net: nn.Module, cfg: BareConfig, theta: Params, batches: Tensor, test: Tensor
) -> Tensor:
    """Test MSE (before, after) k plain SGD steps on train batches ``(k, batch, 2)``."""
    params = theta
    for t in range(cfg.eval_steps):
        g = grad(mse, argnums=1)(net, params, batches[t, :, :1], batches[t, :, 1:])
        params = sgd(params, g, cfg.inner_lr)
    x, y = test[:, :1], test[:, 1:]
    return torch.stack([mse(net, theta, x, y), mse(net, params, x, y)])


def draw_batches(
    data: Tensor, clients: Tensor, shape: tuple[int, ...], size: int, gen: torch.Generator
) -> Tensor:
    """(clients, *shape, size, 2): ``size`` distinct points per batch, batches independent."""
    n_points = data.shape[1]
    idx = torch.rand(len(clients), *shape, n_points, generator=gen).argsort(-1)[..., :size]
    rows = clients.view(-1, *([1] * (idx.dim() - 1)))
    return data[rows, idx]


@dataclass
class Adam:
    """Adam with bias correction on the pseudo-gradient -Delta (as server/optimizer.py)."""

    lr: float
    betas: tuple[float, float]
    eps: float
    step: int = 0
    m: Params = field(default_factory=dict)
    v: Params = field(default_factory=dict)

    def apply(self, theta: Params, delta: Params) -> Params:
        self.step += 1
        b1, b2 = self.betas
        out = {}
        for n, p in theta.items():
            g = -delta[n]
            self.m[n] = b1 * self.m.get(n, torch.zeros_like(p)) + (1 - b1) * g
            self.v[n] = b2 * self.v.get(n, torch.zeros_like(p)) + (1 - b2) * g**2
            m_hat = self.m[n] / (1 - b1**self.step)
            v_hat = self.v[n] / (1 - b2**self.step)
            out[n] = p - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return out


@dataclass(frozen=True)
class BareRound:
    seconds: float
    mse_before: float  # mean over the evaluated clients
    mse_after: float


class BareFederation:
    """N sinusoid clients; each round trains C sampled clients and scores 0.1 N others."""

    def __init__(self, cfg: BareConfig) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left as it was
            torch.manual_seed(cfg.seed)
            self.net = sinusoid_net()
        self.theta = {n: p.detach() for n, p in self.net.named_parameters()}
        n = cfg.num_clients
        x, y = sinusoid_clients(n, cfg.train_points + cfg.test_points, self.gen)
        points = torch.cat([x, y], dim=-1)  # (n, points, 2)
        self.train, self.test = points[:, : cfg.train_points], points[:, cfg.train_points :]
        self.weights = torch.full((n,), float(cfg.train_points))  # examples per client
        self.adam = Adam(cfg.server_lr, cfg.betas, cfg.eps)
        # theta is shared by every client (in_dims None); data and batches are per client.
        self._train = vmap(lambda th, b: local_update(self.net, cfg, th, b), in_dims=(None, 0))
        self._score = vmap(
            lambda th, b, t: personalized_scores(self.net, cfg, th, b, t), in_dims=(None, 0, 0)
        )

    def _sample(self, k: int) -> Tensor:
        return torch.randperm(self.cfg.num_clients, generator=self.gen)[:k].sort().values

    def round(self) -> BareRound:
        cfg, t0 = self.cfg, time.perf_counter()
        clients = self._sample(cfg.clients_per_round)
        batches = draw_batches(self.train, clients, (cfg.local_steps, 2), cfg.batch_size, self.gen)
        deltas = self._train(self.theta, batches)
        w = self.weights[clients] / self.weights[clients].sum()
        mean = {n: torch.tensordot(w, d, dims=1) for n, d in deltas.items()}
        self.theta = self.adam.apply(self.theta, mean)
        scored = self._sample(max(1, int(cfg.num_clients * cfg.fraction)))
        eval_batches = draw_batches(self.train, scored, (cfg.eval_steps,), cfg.batch_size, self.gen)
        before, after = self._score(self.theta, eval_batches, self.test[scored]).mean(0).tolist()
        return BareRound(time.perf_counter() - t0, before, after)


def run_bare(cfg: BareConfig, rounds: int, threads: int | None = 1) -> list[BareRound]:
    """``rounds`` rounds of the bare loop with torch at ``threads`` threads (as an actor)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        fed = BareFederation(cfg)
        return [fed.round() for _ in range(rounds)]
    finally:
        torch.set_num_threads(previous)

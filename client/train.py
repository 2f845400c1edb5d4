"""A node's local work in one round, for one client or a whole cohort of them.

Per-FedAvg, Fallah et al. 2020, Algorithm 1 (lines 5-8): tau local steps
theta <- theta - beta * g, where g is the meta-gradient on batches D, D' (and D'' for the
Hessian-free variant) drawn independently from the local train split, or the support and
query of one N-way K-shot episode for episodic datasets (common/tasks.py). fedavg,
fedavg-ft and local take tau plain SGD steps with the same beta and batch size instead.

:func:`meta_train_steps` and :func:`sgd_train_steps` are the per-client functions (pure,
tensors in and out). :func:`train_cohort` draws every client's batches on the host from
that client's own RNG, stacks them, and runs the per-client function for all clients in
lockstep under ``torch.func.vmap``: a cohort of one is the single-client case, and a
client's result does not depend on which other clients share its cohort (beyond float
rounding of batched kernels). A model vmap cannot batch runs the same per-client function
client by client (common/batching.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.batching import map_clients, probe_key, torch_seed
from common.config import MetaOrder, Settings
from common.meta import (
    Batch,
    LossFn,
    Params,
    StepSize,
    bounded_step_sizes,
    loss_and_gradients,
    meta_gradient,
    sgd_step,
)
from common.scoring import loss_fn_for, stack_to_device
from common.tasks import task_sampler


@dataclass(frozen=True)
class MetaStepConfig:
    order: MetaOrder
    inner_steps: int
    outer_lr: float
    hessian_mode: str
    fd_delta: float
    alpha_bounds: tuple[float, float] | None = None  # Meta-SGD: clamp alpha after each step


def meta_train_steps(
    model: nn.Module,
    loss_fn: LossFn,
    params: Params,
    inner_lr: StepSize,
    batches: dict[str, Batch],
    cfg: MetaStepConfig,
) -> dict[str, Tensor | Params]:
    """tau local meta-steps of one client; ``batches`` = support, query (and hessian for
    Per-FedAvg HF), each with a leading step axis."""
    support_losses, query_losses = [], []
    steps = batches["support"][0].shape[0]
    for t in range(steps):
        d, d_prime = ((batches[k][0][t], batches[k][1][t]) for k in ("support", "query"))
        hessian = batches.get("hessian")
        d_second = (hessian[0][t], hessian[1][t]) if hessian is not None else None
        g = meta_gradient(
            model, params, d, d_prime, loss_fn,
            order=cfg.order, inner_lr=inner_lr, inner_steps=cfg.inner_steps,
            hessian_batch=d_second, hessian_mode=cfg.hessian_mode, fd_delta=cfg.fd_delta,
        )  # fmt: skip
        params = sgd_step(params, g.params, cfg.outer_lr)
        if g.inner_lr is not None and isinstance(inner_lr, dict):
            inner_lr = bounded_step_sizes(
                sgd_step(inner_lr, g.inner_lr, cfg.outer_lr), cfg.alpha_bounds
            )
        support_losses.append(g.support_loss)
        query_losses.append(g.query_loss)
    out: dict[str, Tensor | Params] = {
        "params": params,
        "train-support-loss": torch.stack(support_losses).mean(),
        "train-query-loss": torch.stack(query_losses).mean(),
    }
    if isinstance(inner_lr, dict):
        out["inner_lr"] = inner_lr
    return out


def sgd_train_steps(
    model: nn.Module, loss_fn: LossFn, params: Params, batches: Batch, outer_lr: float
) -> dict[str, Tensor | Params]:
    """tau plain SGD steps of one client on ``batches`` (leading step axis)."""
    losses = []
    xs, ys = batches
    for t in range(xs.shape[0]):
        grads, loss = loss_and_gradients(model, params, (xs[t], ys[t]), loss_fn)
        params = sgd_step(params, grads, outer_lr)
        losses.append(loss)
    return {"params": params, "train-loss": torch.stack(losses).mean()}


@dataclass(frozen=True)
class CohortResult:
    """Every client's state after its local steps, stacked on a leading client axis."""

    params: Params  # (clients, *shape) per parameter
    inner_lr: Params | None  # Meta-SGD's alpha after the round, stacked; else None
    metrics: dict[str, np.ndarray]  # one value per client


def train_cohort(
    model: nn.Module,
    theta: Params,
    inner_lr: StepSize,
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    rngs: Sequence[np.random.Generator],
    settings: Settings,
    device: torch.device,
    *,
    meta: bool,
    start: Params | None = None,
) -> CohortResult:
    """Local steps for every client (train split ``clients[i]``, randomness ``rngs[i]``).

    All clients start from ``theta`` or, with ``start``, each from its own row of it (the
    'local' baseline's personal models). ``meta`` picks meta-steps with the settings'
    order, else plain SGD. At most ``cohort-size`` clients run in one vmapped call.
    Meta-SGD's alpha starts, and stays after every local step, inside ``alpha_bounds``
    when the settings bound it (the reply's alpha update then includes that projection).
    """
    if not clients:
        raise ValueError("train_cohort needs at least one client")
    inner_lr = bounded_step_sizes(inner_lr, settings.alpha_bounds)
    size = settings.cohort_size or len(clients)
    parts = [
        _train_chunk(
            model,
            theta,
            inner_lr,
            clients[i : i + size],
            rngs[i : i + size],
            settings,
            device,
            meta=meta,
            start=None if start is None else {n: p[i : i + size] for n, p in start.items()},
        )  # fmt: skip
        for i in range(0, len(clients), size)
    ]
    if len(parts) == 1:
        return parts[0]
    return CohortResult(
        params={n: torch.cat([p.params[n] for p in parts]) for n in parts[0].params},
        inner_lr=None
        if parts[0].inner_lr is None
        else {n: torch.cat([p.inner_lr[n] for p in parts]) for n in parts[0].inner_lr},  # type: ignore[index]
        metrics={k: np.concatenate([p.metrics[k] for p in parts]) for k in parts[0].metrics},
    )


def _train_chunk(
    model: nn.Module,
    theta: Params,
    inner_lr: StepSize,
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    rngs: Sequence[np.random.Generator],
    s: Settings,
    device: torch.device,
    *,
    meta: bool,
    start: Params | None,
) -> CohortResult:
    loss_fn = loss_fn_for(s.task, s.loss)
    seeds = [torch_seed(rng) for rng in rngs]  # the model's own randomness (dropout)
    samplers = [task_sampler(x, y, s) for x, y in clients]
    params, in_dim = (start, 0) if start is not None else (theta, None)
    if meta:
        if s.meta_order is None:
            raise ValueError(f"algorithm {s.algorithm!r} has no meta-gradient order")
        cfg = MetaStepConfig(
            s.meta_order, s.inner_steps, s.outer_lr, s.hessian_free_mode, s.hessian_free_delta,
            s.alpha_bounds,
        )  # fmt: skip
        drawn = [
            sm.meta_batches(rng, s.local_steps) for sm, rng in zip(samplers, rngs, strict=True)
        ]
        # Every client draws D'' (one random stream for every order); only Per-FedAvg (HF)
        # computes with it.
        used = ["support", "query"] + (["hessian"] if cfg.order is MetaOrder.HESSIAN_FREE else [])
        batches = {k: stack_to_device([getattr(m, k) for m in drawn], s.task, device) for k in used}

        def one_meta(p: Params, b: dict[str, Batch]) -> dict:
            return meta_train_steps(model, loss_fn, p, inner_lr, b, cfg)

        out = map_clients(
            one_meta, (in_dim, 0), (params, batches), seeds=seeds, device=device,
            key=probe_key(f"train-{cfg.order.value}", model, s.loss),
        )  # fmt: skip
    else:
        plain = stack_to_device(
            [sm.batches(rng, s.local_steps) for sm, rng in zip(samplers, rngs, strict=True)],
            s.task, device,
        )  # fmt: skip

        def one_sgd(p: Params, b: Batch) -> dict:
            return sgd_train_steps(model, loss_fn, p, b, s.outer_lr)

        out = map_clients(
            one_sgd, (in_dim, 0), (params, plain), seeds=seeds, device=device,
            key=probe_key("train-sgd", model, s.loss),
        )  # fmt: skip
    metrics = {
        k: v.detach().double().cpu().numpy() for k, v in out.items() if isinstance(v, Tensor)
    }
    return CohortResult(
        params={n: p.detach() for n, p in out["params"].items()},
        inner_lr={n: a.detach() for n, a in out["inner_lr"].items()} if "inner_lr" in out else None,
        metrics=metrics,
    )

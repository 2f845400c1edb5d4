"""Curvature along new clients' adaptation paths: why an initialisation's adaptation explodes.

    python -m simulations.analysis.curvature results/bench/sinusoid/perfedavg-hf/seed0/model.pt

Gradient descent with step size alpha on a loss whose Hessian has largest eigenvalue
lambda_max is stable along that direction only while alpha * lambda_max < 2. For each of a
run's new clients (``server/new_clients.py``: data no training client holds) this takes
``--steps`` full-batch steps of the run's alpha on the client's train split from the saved
theta, calls the adaptation *exploded* when its train loss ends non-finite or above
``--blowup`` times where it started, and prints alpha * lambda_max (the exact Hessian's, in
float64) at steps 0 .. ``--track`` for every exploded client and, as a reference, for the
first ``--sample`` clients. Full-batch on the train split is what new-client evaluation does
when the split is one batch (sinusoid's 5 shots); otherwise it is a stand-in. The Hessian is
formed whole, so this is for small models (at most ``MAX_PARAMS`` parameters), and for a
scalar alpha (Meta-SGD's per-parameter alpha and episodic datasets are refused).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, hessian

MAX_PARAMS = 20_000


@dataclass(frozen=True)
class AdaptationPath:
    """One client's adaptation path: losses at steps 0..steps, alpha*lambda_max at 0..track."""

    losses: list[float]
    sharpness: list[float]  # alpha * lambda_max; empty when not tracked

    def exploded(self, blowup: float) -> bool:
        end = self.losses[-1]
        return not math.isfinite(end) or end > blowup * self.losses[0]


def adaptation_path(
    loss, theta: torch.Tensor, alpha: float, steps: int, track: int
) -> tuple[list[float], list[float]]:
    """Losses after 0..steps steps of v <- v - alpha * grad(loss)(v), and alpha * lambda_max
    of loss's Hessian at steps 0..track (fewer if the path turned non-finite first)."""
    v, losses, sharpness = theta.clone(), [], []
    for step in range(steps + 1):
        losses.append(float(loss(v)))
        finite = bool(torch.isfinite(v).all())
        if step <= track and finite:
            sharpness.append(alpha * float(torch.linalg.eigvalsh(hessian(loss)(v))[-1]))
        if step < steps:
            v = v - alpha * grad(loss)(v) if finite else v
    return losses, sharpness


def client_paths(
    model_path: Path, clients: int, steps: int, track: int, sample: int, blowup: float
):
    from client.personalize import load_global_model
    from common.config import Task
    from common.data.registry import load_new_client_data
    from common.models import model_for
    from common.scoring import loss_fn_for, tensors_of

    g = load_global_model(model_path)
    s = g.settings
    if g.alpha is not None or s.episodic:
        raise SystemExit(
            f"error: {model_path} is a {s.algorithm} run on {s.dataset}; this tool takes a "
            "scalar alpha and plain (non-episodic) clients"
        )
    n_params = sum(t.numel() for t in g.theta.values())
    if n_params > MAX_PARAMS:
        raise SystemExit(f"error: the model has {n_params} parameters; the Hessian is formed "
                         f"whole, so at most {MAX_PARAMS}")  # fmt: skip
    clients = min(clients, s.new_clients)
    if clients == 0:
        raise SystemExit(f"error: the run in {model_path.parent} has no new clients")
    model = model_for(s).double()
    names = list(g.theta)
    shapes = [g.theta[n].shape for n in names]
    theta = torch.cat([g.theta[n].reshape(-1).double() for n in names])
    loss_fn = loss_fn_for(s.task, s.loss)

    sizes = [int(np.prod(sh)) for sh in shapes]

    def shaped(v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, sizes)
        return {n: p.reshape(sh) for n, p, sh in zip(names, parts, shapes, strict=True)}

    out = []
    for index in range(clients):
        x, y, _, _ = tensors_of(load_new_client_data(s, index), s.task, torch.device("cpu"))
        x = x.double()
        y = y.double() if s.task is Task.REGRESSION else y

        def loss(v, x=x, y=y):
            return loss_fn(functional_call(model, shaped(v), (x,)), y)

        # Hessians only where they are reported: the sampled clients, and (a second pass)
        # any other client whose adaptation explodes
        tracked = track if index < sample else -1
        path = AdaptationPath(*adaptation_path(loss, theta, s.inner_lr, steps, tracked))
        if tracked < 0 and path.exploded(blowup):
            path = AdaptationPath(*adaptation_path(loss, theta, s.inner_lr, steps, track))
        out.append(path)
    return s, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="run-dir/model.pt of a run")
    parser.add_argument("--clients", type=int, default=1000, help="new clients to check")
    parser.add_argument("--steps", type=int, default=10, help="adaptation steps")
    parser.add_argument("--track", type=int, default=3, help="steps with alpha*lambda_max")
    parser.add_argument("--sample", type=int, default=40, help="reference clients tracked")
    parser.add_argument("--blowup", type=float, default=10.0, help="exploded: loss x this")
    args = parser.parse_args(argv)
    s, paths = client_paths(
        args.model, args.clients, args.steps, args.track, args.sample, args.blowup
    )
    bad = [p for p in paths if p.exploded(args.blowup)]
    head = f"{args.model}: {s.algorithm}, alpha = {s.inner_lr}, {len(paths)} new clients"
    print(f"{head}, {args.steps} steps: {len(bad)} exploded (loss non-finite or x{args.blowup:g})")
    for p in bad:
        sharp = np.round(p.sharpness, 2).tolist()
        losses = " ".join(f"{v:.3g}" for v in p.losses[: args.track + 3])
        print(f"  exploded: alpha*lambda_max at steps 0..{args.track} {sharp} | loss {losses}")
    tracked = [p.sharpness for p in paths[: args.sample] if not p.exploded(args.blowup)]
    ref = np.array([t for t in tracked if len(t) == args.track + 1])
    if len(ref):
        for k in (0, args.track):
            print(
                f"  the other first {len(ref)}: alpha*lambda_max at step {k}: "
                f"median {np.median(ref[:, k]):.2f}, max {ref[:, k].max():.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

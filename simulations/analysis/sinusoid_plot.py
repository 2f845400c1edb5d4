"""A few new sinusoid clients: the true function, the K shots, and what each algorithm's
final model predicts before and after adapting on those shots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from common.arrays import to_tensors
from common.config import parse_settings
from common.data.sinusoid import X_RANGE, sinusoid_client, sinusoid_task
from common.models import model_for
from common.scoring import personalize_and_score
from common.streams import NEW_CLIENT_STREAM

PREFERRED = ("maml", "fedavg-ft", "perfedavg-fo", "perfedavg-hf", "metasgd", "fedavg", "local")


def plot_new_clients(exp, algorithms: list[str], out: Path, clients: int = 4) -> Path | None:
    import matplotlib.pyplot as plt

    shown = [a for a in PREFERRED if a in algorithms][:3] or algorithms[:3]
    models = {a: _load(out / a / f"seed{exp.seeds[0]}" / "model.pt") for a in shown}
    models = {a: m for a, m in models.items() if m is not None}
    if not models:
        return None
    fig, axes = plt.subplots(1, clients, figsize=(4 * clients, 3.4), sharey=True)
    x = torch.linspace(*X_RANGE, 200).unsqueeze(1)
    for i, ax in enumerate(np.atleast_1d(axes)):
        for j, (name, (model, theta, lr, s)) in enumerate(models.items()):
            steps = max(s.new_client_step_list)
            data = sinusoid_client(
                s.seed,
                i,
                s.new_client_train_points,
                s.sinusoid_test_points,
                stream=NEW_CLIENT_STREAM,
            )
            if j == 0:
                task = sinusoid_task(s.seed, i, NEW_CLIENT_STREAM)
                ax.plot(x, task(x.numpy()), "k-", lw=2, label="true function")
                ax.plot(data.x_train, data.y_train, "k^", ms=8, label=f"{len(data.x_train)} shots")
            adapted = personalize_and_score(
                model, theta, lr, data, steps=steps, batch_size=s.batch_size, task=s.task,
                rng=np.random.default_rng(i), device=torch.device("cpu"),
            ).params  # fmt: skip
            with torch.no_grad():
                before = functional_call(model, theta, (x,))
                after = functional_call(model, adapted, (x,))
            line = ax.plot(x, after, lw=1.5, label=f"{name}, {steps} steps")[0]
            ax.plot(x, before, "--", lw=1, color=line.get_color(), label=f"{name}, before")
        ax.set_title(f"new client {i}")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "sinusoid_new_clients.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _load(path: Path):
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=True)
    settings = parse_settings(json.loads(saved["settings"]))
    device = torch.device("cpu")
    theta = to_tensors({k: v.numpy() for k, v in saved["theta"].items()}, device)
    lr = (
        to_tensors({k: v.numpy() for k, v in saved["alpha"].items()}, device)
        if "alpha" in saved
        else settings.inner_lr
    )
    return model_for(settings), theta, lr, settings

"""Evaluation adapts on the train split only and never on the data it scores."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import common.meta as meta
from common.config import Task
from common.data.types import ClientData
from common.personalize import personalize, personalize_and_score


def _data() -> ClientData:
    rng = np.random.default_rng(0)
    # train inputs live in [0, 1), test inputs in [10, 11): any batch that touches the
    # test split is recognisable by its values.
    x_tr = rng.random((12, 2)).astype(np.float32)
    x_te = (10 + rng.random((7, 2))).astype(np.float32)
    return ClientData(x_tr, x_tr[:, :1] * 2, x_te, x_te[:, :1] * 2)


def test_adaptation_only_ever_sees_the_train_split(monkeypatch):
    seen: list[torch.Tensor] = []
    original = meta.task_loss

    def recording(model, params, batch, loss_fn):
        seen.append(batch[0].detach().clone())
        return original(model, params, batch, loss_fn)

    monkeypatch.setattr(meta, "task_loss", recording)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    result = personalize_and_score(
        model,
        params,
        0.05,
        _data(),
        steps=5,
        batch_size=4,
        task=Task.REGRESSION,
        rng=np.random.default_rng(1),
        device=torch.device("cpu"),
    )
    assert len(seen) == 5  # one loss per adaptation step, none for scoring
    assert all(float(x.max()) < 1.0 for x in seen)
    assert result.after.loss != result.before.loss


def test_personalised_params_do_not_depend_on_the_test_split():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    d = _data()
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    a = personalize(
        model,
        params,
        0.1,
        x,
        y,
        steps=3,
        batch_size=4,
        task=Task.REGRESSION,
        rng=np.random.default_rng(3),
    )
    b = personalize(
        model,
        params,
        0.1,
        x,
        y,
        steps=3,
        batch_size=4,
        task=Task.REGRESSION,
        rng=np.random.default_rng(3),
    )
    for n in a:
        assert torch.equal(a[n], b[n])
        assert not torch.equal(a[n], params[n])  # theta itself is left untouched

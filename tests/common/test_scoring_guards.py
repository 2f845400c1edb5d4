"""evaluate_cohort refuses a cohort whose clients and random streams do not pair up (a
client scored with another's stream, or silently left out, would change its score)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.config import Task
from common.data.types import ClientData
from common.scoring import evaluate_cohort


def test_evaluate_cohort_needs_one_rng_per_client():
    r = np.random.default_rng(0)
    client = ClientData(
        r.random((6, 2)).astype(np.float32), r.random((6, 1)).astype(np.float32),
        r.random((3, 2)).astype(np.float32), r.random((3, 1)).astype(np.float32),
    )  # fmt: skip
    model = nn.Linear(2, 1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="zip"):
        evaluate_cohort(
            model, params, 0.1, [client, client], [np.random.default_rng(1)], steps=(1,),
            batch_size=3, task=Task.REGRESSION, device=torch.device("cpu"),
        )  # fmt: skip

"""Synthetic(alpha, beta) of FedProx (Li et al. 2020, Sec. 5.1): one user per client.

For user k: u_k ~ N(0, alpha) and W_k (60x10), b_k (10) ~ N(u_k, 1) set its labelling
model; B_k ~ N(0, beta) and v_k ~ N(B_k, 1) (per dimension) set where its inputs lie;
x ~ N(v_k, Sigma) with Sigma = diag(j^-1.2), and y = argmax(softmax(x W_k + b_k)).
``alpha`` controls how much the models differ between users, ``beta`` how much the inputs
do. As in FedProx's generator, alpha and beta are standard deviations (numpy's
``normal(0, alpha)``).

A user has int(lognormal(4, 2)) + 50 samples (median ~105), capped at ``MAX_SAMPLES``:
the lognormal's tail is heavy (about 1 user in 200 would have over 10,000 samples, 1 in
10,000 over 100,000) and one such user would dominate memory and a round's time. The cap
touches about 7.7% of users and leaves the rest of the size distribution as published.

Each user is a pure function of (seed, stream, index), so clients can be built
independently in any process.
"""

from __future__ import annotations

import numpy as np

from common.data.types import ClientData
from common.streams import TRAIN_STREAM

NUM_FEATURES = 60
NUM_CLASSES = 10
MIN_SAMPLES = 50
MAX_SAMPLES = 1000

# Sigma = diag(j^-1.2), j = 1..60: later features vary less (FedProx's generator).
_FEATURE_STD = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6


def _num_samples(rng: np.random.Generator) -> int:
    return min(int(rng.lognormal(4.0, 2.0)) + MIN_SAMPLES, MAX_SAMPLES)


def synthetic_samples(
    seed: int, index: int, alpha: float, beta: float, stream: int = TRAIN_STREAM
) -> tuple[np.ndarray, np.ndarray]:
    """All of user ``index``'s samples: x float32 (n, 60), y int64 (n,)."""
    rng = np.random.default_rng([seed, stream, index])
    u = rng.normal(0.0, alpha)
    weights = rng.normal(u, 1.0, size=(NUM_FEATURES, NUM_CLASSES))
    bias = rng.normal(u, 1.0, size=NUM_CLASSES)
    input_mean = rng.normal(rng.normal(0.0, beta), 1.0, size=NUM_FEATURES)
    n = _num_samples(rng)
    x = input_mean + rng.standard_normal((n, NUM_FEATURES)) * _FEATURE_STD
    # softmax is monotone, so its argmax is the argmax of the logits.
    y = np.argmax(x @ weights + bias, axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def synthetic_client(
    seed: int,
    index: int,
    alpha: float,
    beta: float,
    test_fraction: float,
    stream: int = TRAIN_STREAM,
) -> ClientData:
    """User ``index`` with the last ``test_fraction`` of its samples held out for scoring.

    Samples within a user are i.i.d., so a prefix/suffix split is a random split.
    """
    x, y = synthetic_samples(seed, index, alpha, beta, stream)
    n_test = min(max(round(len(y) * test_fraction), 1), len(y) - 1)
    n_train = len(y) - n_test
    return ClientData(
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        client_id=f"synthetic-{stream}-{index}",
    )

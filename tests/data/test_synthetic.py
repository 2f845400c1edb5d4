"""Synthetic(alpha, beta): shapes, sizes, purity, and the statistics the recipe implies."""

from __future__ import annotations

import numpy as np

from common.data.synthetic import (
    MAX_SAMPLES,
    MIN_SAMPLES,
    NUM_CLASSES,
    NUM_FEATURES,
    synthetic_client,
    synthetic_samples,
)
from common.streams import NEW_CLIENT_STREAM


def test_client_shapes_dtypes_and_split() -> None:
    data = synthetic_client(0, 3, alpha=0.5, beta=0.5, test_fraction=0.2)
    n = data.num_train + data.num_test
    assert MIN_SAMPLES <= n <= MAX_SAMPLES
    assert data.num_test == round(0.2 * n)
    assert data.x_train.shape == (data.num_train, NUM_FEATURES)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    x, _ = synthetic_samples(0, 3, 0.5, 0.5)
    assert np.array_equal(np.concatenate([data.x_train, data.x_test]), x)


def test_a_user_is_a_pure_function_of_seed_stream_and_index() -> None:
    first, again = (synthetic_samples(1, 7, 1.0, 1.0) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    for other in (synthetic_samples(2, 7, 1.0, 1.0), synthetic_samples(1, 8, 1.0, 1.0)):
        assert other[0].shape != first[0].shape or not np.array_equal(other[0], first[0])
    new_client = synthetic_samples(1, 7, 1.0, 1.0, stream=NEW_CLIENT_STREAM)
    assert new_client[0].shape != first[0].shape or not np.array_equal(new_client[0], first[0])


def test_sizes_follow_the_capped_lognormal() -> None:
    sizes = np.array([len(synthetic_samples(0, k, 0.5, 0.5)[1]) for k in range(300)])
    assert sizes.min() >= MIN_SAMPLES and sizes.max() <= MAX_SAMPLES
    # int(lognormal(4, 2)) + 50 has median e^4 + 50 ~ 105; ~7.7% of users hit the cap.
    assert 80 < np.median(sizes) < 135
    assert 0.03 < np.mean(sizes == MAX_SAMPLES) < 0.13


def test_all_classes_occur_and_users_differ_in_labels() -> None:
    labels = [synthetic_samples(0, k, 1.0, 1.0)[1] for k in range(30)]
    assert set(np.concatenate(labels).tolist()) == set(range(NUM_CLASSES))
    majority = {int(np.bincount(y).argmax()) for y in labels}
    assert len(majority) > 3  # each user's own W_k, b_k favour different classes


def test_feature_variance_decays_as_j_to_the_minus_1_2() -> None:
    sizes = [len(synthetic_samples(0, k, 0.0, 0.0)[1]) for k in range(50)]
    x, _ = synthetic_samples(0, int(np.argmax(sizes)), 0.0, 0.0)  # enough samples
    assert len(x) >= 500
    ratio = x.var(axis=0) / np.arange(1, NUM_FEATURES + 1) ** -1.2
    assert 0.6 < np.median(ratio) < 1.5


def test_beta_spreads_users_inputs_apart() -> None:
    def spread(beta: float) -> float:
        means = [synthetic_samples(0, k, 0.0, beta)[0].mean() for k in range(40)]
        return float(np.std(means))

    # A user's mean input is ~ B_k ~ N(0, beta) plus N(0, 1/60) from v_k.
    assert spread(0.0) < 0.3
    assert spread(3.0) > 1.5

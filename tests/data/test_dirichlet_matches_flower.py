"""partition_dirichlet is Flower's DirichletPartitioner restated without HuggingFace datasets:
the same seed gives the same clients, index for index, in the same order."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from common.data import partition as part
from common.data.types import DataError
from common.streams import DIRICHLET_STREAM

flwr_datasets = pytest.importorskip("flwr_datasets")


def flowers_partitions(labels: np.ndarray, n: int, alpha: float, seed: int, min_size: int):
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=n, partition_by="label", alpha=alpha, min_partition_size=min_size,
        self_balancing=False, seed=part._derived_seed(seed, DIRICHLET_STREAM),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return part.flower_partitions(partitioner, labels)


@pytest.mark.parametrize(
    ("n", "alpha", "seed", "min_size", "classes"),
    [
        (3, 0.5, 0, 10, 10),  # the deployment demo: digits over 3 nodes
        (20, 0.3, 1, 10, 10),  # digits.yaml: redraws happen at this skew
        (50, 0.5, 7, 1, 10),
        (7, 100.0, 3, 10, 3),
    ],
)
def test_same_clients_as_flowers_partitioner(n, alpha, seed, min_size, classes):
    labels = np.random.default_rng(seed).integers(0, classes, size=1797)
    ours = part.partition_dirichlet(labels, n, alpha, seed, min_partition_size=min_size)
    theirs = flowers_partitions(labels, n, alpha, seed, min_size)
    assert len(ours) == len(theirs) == n
    for mine, flowers in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, flowers)
        assert mine.dtype == np.int64


def test_string_labels_are_split_like_flower():
    labels = np.random.default_rng(0).choice(np.array(["cat", "dog", "eel"]), size=300)
    ours = part.partition_dirichlet(labels, 4, 0.5, 2, min_partition_size=5)
    for mine, flowers in zip(ours, flowers_partitions(labels, 4, 0.5, 2, 5), strict=True):
        np.testing.assert_array_equal(mine, flowers)


def test_both_give_up_on_the_same_draws():
    labels = np.random.default_rng(7).integers(0, 5, size=1797)
    with pytest.raises(ValueError, match="max number of attempts"):
        flowers_partitions(labels, 50, 0.1, 7, 1)
    with pytest.raises(DataError, match="11 draws"):
        part.partition_dirichlet(labels, 50, 0.1, 7, min_partition_size=1)


def test_impossible_requests_are_named():
    with pytest.raises(DataError, match="5 samples into 6 clients is impossible"):
        part.partition_dirichlet(np.zeros(5, dtype=int), 6, 0.5, 0)
    with pytest.raises(DataError, match="raise dirichlet-alpha or use fewer clients"):
        part.partition_dirichlet(np.arange(50) % 10, 10, 0.5, 0, min_partition_size=10)

"""Partitioners: disjoint, covering, seeded, and shaped the way each scheme promises."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from common.data import partition as part
from common.data.types import DataError

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """3,000 labels with unequal class sizes, in shuffled order like a real dataset."""
    counts = np.arange(200, 200 + 20 * NUM_CLASSES, 20)
    ordered = np.repeat(np.arange(NUM_CLASSES), counts)
    return np.random.default_rng(0).permutation(ordered)


def assert_disjoint(parts: list[np.ndarray]) -> np.ndarray:
    """All indices of ``parts``, checked to be unique across and within partitions."""
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)
    return everything


def mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over clients of the entropy (nats) of their label distribution."""
    entropies = []
    for p in parts:
        freq = np.bincount(labels[p], minlength=NUM_CLASSES) / len(p)
        freq = freq[freq > 0]
        entropies.append(float(-(freq * np.log(freq)).sum()))
    return float(np.mean(entropies))


def test_dirichlet_is_a_disjoint_cover_with_min_size(labels: np.ndarray) -> None:
    parts = part.partition_dirichlet(labels, 20, alpha=0.5, seed=1, min_partition_size=10)
    assert len(parts) == 20
    assert np.array_equal(np.sort(assert_disjoint(parts)), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 10
    assert all(p.dtype == np.int64 for p in parts)


def test_dirichlet_small_alpha_is_more_skewed(labels: np.ndarray) -> None:
    skewed = part.partition_dirichlet(labels, 20, alpha=0.1, seed=1, min_partition_size=1)
    even = part.partition_dirichlet(labels, 20, alpha=100.0, seed=1, min_partition_size=1)
    # alpha -> inf gives every client the global mix (entropy ~ log 10 = 2.30 nats).
    assert mean_label_entropy(even, labels) > 2.2
    assert mean_label_entropy(skewed, labels) < 0.6 * mean_label_entropy(even, labels)


def test_dirichlet_that_cannot_meet_min_size_raises_data_error(labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="Dirichlet"):
        part.partition_dirichlet(labels[:50], 10, alpha=0.5, seed=0, min_partition_size=10)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_exactly_k_classes_and_uses_every_class(
    labels: np.ndarray, k: int
) -> None:
    parts = part.partition_pathological(labels, 20, classes_per_partition=k, seed=3)
    assert [len(np.unique(labels[p])) for p in parts] == [k] * 20
    # With at least as many clients as classes, every sample is used.
    assert np.array_equal(np.sort(assert_disjoint(parts)), np.arange(len(labels)))


def test_pathological_with_more_classes_than_exist_raises(labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="pathological"):
        part.partition_pathological(labels, 5, classes_per_partition=11, seed=0)


def test_natural_groups_by_sorted_id() -> None:
    ids = np.array(["w3", "w1", "w3", "w2", "w1", "w3"])
    parts = part.partition_natural(ids)
    assert [ids[p].tolist() for p in parts] == [["w1", "w1"], ["w2"], ["w3"] * 3]
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]


def test_natural_agrees_with_flowers_natural_id_partitioner() -> None:
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner

    ids = np.random.default_rng(0).choice([f"writer{i}" for i in range(7)], size=200)
    flower = NaturalIdPartitioner(partition_by="id")
    flower.dataset = datasets.Dataset.from_dict({"id": ids, "idx": np.arange(200)})
    ours = part.partition_natural(ids)
    assert flower.num_partitions == len(ours)
    for pid, p in enumerate(ours):
        assert flower.load_partition(pid)["idx"][:] == p.tolist()


SEEDED: dict[str, Callable[[np.ndarray, int], list[np.ndarray]]] = {
    "dirichlet": lambda y, seed: part.partition_dirichlet(y, 10, 0.5, seed),
    "pathological": lambda y, seed: part.partition_pathological(y, 10, 2, seed),
    "perfedavg": lambda y, seed: part.partition_perfedavg(y, 10, seed),
}


@pytest.mark.parametrize("scheme", SEEDED)
def test_same_seed_same_partition_other_seed_another(labels: np.ndarray, scheme: str) -> None:
    first, again, other = (SEEDED[scheme](labels, s) for s in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_perfedavg_follows_the_papers_recipe(labels: np.ndarray) -> None:
    a, n = 20, 10
    parts = part.partition_perfedavg(labels, n, seed=0, per_class=a)
    assert_disjoint(parts)
    for i, p in enumerate(parts):
        counts = np.bincount(labels[p], minlength=NUM_CLASSES)
        if i < n // 2:  # a images of each of the first five classes
            assert counts.tolist() == [a] * 5 + [0] * 5
        else:  # a/2 of one of the first five, 2a of one of the last five
            j = i - n // 2
            expected = np.zeros(NUM_CLASSES, dtype=int)
            expected[j % 5], expected[5 + j % 5] = a // 2, 2 * a
            assert counts.tolist() == expected.tolist()


def test_perfedavg_default_a_is_the_largest_that_fits(labels: np.ndarray) -> None:
    parts = part.partition_perfedavg(labels, 10, seed=0)
    a = len(parts[0]) // 5
    # Class 0 (200 samples) is asked for 5a (first half) + a/2 (client 5): 5.5 a <= 200.
    assert a == int(200 // 5.5)
    with pytest.raises(DataError, match="a <= 36"):
        part.partition_perfedavg(labels, 10, seed=0, per_class=a + 1)


def test_split_train_test_is_a_seeded_disjoint_cover() -> None:
    indices = np.arange(100, 200)
    train, test = part.split_train_test(indices, 0.25, seed=0, partition_id=3)
    assert len(test) == 25 and len(train) == 75
    assert np.array_equal(np.sort(np.concatenate([train, test])), indices)
    again = part.split_train_test(indices, 0.25, seed=0, partition_id=3)
    other = part.split_train_test(indices, 0.25, seed=0, partition_id=4)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)


@pytest.mark.parametrize(("n", "n_test"), [(0, 0), (1, 0), (2, 1), (3, 1)])
def test_split_train_test_keeps_both_sides_when_it_can(n: int, n_test: int) -> None:
    train, test = part.split_train_test(np.arange(n), 0.01, seed=0, partition_id=0)
    assert (len(train), len(test)) == (n - n_test, n_test)

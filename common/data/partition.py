"""Split one labelled dataset into federated clients: lists of sample indices, seeded.

Every partitioner returns ``list[np.ndarray]``: entry ``i`` holds the (int64) indices of
the samples client ``i`` owns. Partitions are disjoint; which samples they cover is
documented per function. Each is a pure function of its arguments, so every process that
partitions the same labels with the same seed gets the same clients.

The pathological split is Flower's own (``flwr_datasets.partitioner``); it takes a
HuggingFace ``datasets.Dataset``, so the labels are wrapped with an ``idx`` column and each
partition's ``idx`` is read back. The Dirichlet split is Flower's ``DirichletPartitioner``
algorithm restated over a label array (same RNG calls in the same order: a test checks the
partitions are identical), because importing ``flwr_datasets`` pulls in HuggingFace
``datasets``, pandas, pyarrow and matplotlib: ~2 s and ~60 MiB on a device that needs none
of them. Only the pathological partitioner imports them, lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.data.types import DataError
from common.streams import (
    DIRICHLET_STREAM,
    PATHOLOGICAL_STREAM,
    PERFEDAVG_STREAM,
    SPLIT_STREAM,
)


def _derived_seed(seed: int, purpose: int) -> int:
    """An int seed for APIs (Flower's partitioners) that accept nothing richer."""
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def flower_partitions(partitioner: Any, labels: np.ndarray) -> list[np.ndarray]:
    """Run a Flower partitioner over ``labels`` and return each partition's row indices."""
    import datasets  # lazy: see module docstring

    partitioner.dataset = datasets.Dataset.from_dict(
        {"label": np.asarray(labels), "idx": np.arange(len(labels), dtype=np.int64)}
    )
    parts = []
    for pid in range(partitioner.num_partitions):
        # Arrow format reads the column without a per-row Python conversion.
        column = partitioner.load_partition(pid).with_format("arrow")["idx"]
        parts.append(column.to_numpy().astype(np.int64, copy=False))
    return parts


def partition_dirichlet(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Label skew of Yurochkin et al. 2019: each class is split over clients ~ Dir(alpha).

    Smaller ``alpha`` gives each client fewer dominant classes. If some client gets fewer
    than ``min_partition_size`` samples the proportions are redrawn (Flower retries up to
    ten times). Covers every sample. Identical to Flower's ``DirichletPartitioner``
    (``self_balancing=False``, ``shuffle=True``) seeded with the derived seed.
    """
    labels = np.asarray(labels)
    if num_partitions < 1 or num_partitions > len(labels):
        raise DataError(
            f"Dirichlet partition of {len(labels)} samples into {num_partitions} clients is "
            "impossible: give between 1 and as many clients as samples"
        )
    if not alpha > 0:
        raise DataError(f"Dirichlet partition needs alpha > 0, got {alpha}")
    rng = np.random.default_rng(seed=_derived_seed(seed, DIRICHLET_STREAM))
    concentration = np.full(num_partitions, float(alpha))
    members = [np.nonzero(labels == k)[0] for k in sorted(np.unique(labels).tolist())]
    for _attempt in range(11):  # Flower: the first draw and up to ten redraws
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for indices in members:
            shares = np.cumsum(rng.dirichlet(concentration)) * len(indices)
            for part, chunk in zip(parts, np.split(indices, shares.astype(int)[:-1]), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_partition_size:
            for part in parts:
                rng.shuffle(part)  # on the list, as Flower does: the same permutation
            return [np.asarray(p, dtype=np.int64) for p in parts]
    raise DataError(
        f"Dirichlet partition of {len(labels)} samples into {num_partitions} clients "
        f"(alpha={alpha}, min size {min_partition_size}) failed: 11 draws each left a client "
        "with fewer samples; raise dirichlet-alpha or use fewer clients"
    )


def partition_pathological(
    labels: np.ndarray, num_partitions: int, classes_per_partition: int, seed: int
) -> list[np.ndarray]:
    """Each client holds exactly ``classes_per_partition`` classes (Li et al. 2021).

    Client ``i``'s first class is class ``i mod C`` and the rest are drawn at random, so
    with at least C clients every class is used; each class's samples are divided evenly
    among the clients that hold it. Unlike McMahan et al.'s 2-shards-per-client scheme,
    two shards can never land on the same class, so "k classes" is exact. With fewer
    clients than classes, some classes are not used (Flower warns).
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=classes_per_partition,
        class_assignment_mode="first-deterministic",
        seed=_derived_seed(seed, PATHOLOGICAL_STREAM),
    )
    try:
        return flower_partitions(partitioner, labels)
    except ValueError as err:
        raise DataError(
            f"pathological partition of {len(labels)} samples into {num_partitions} "
            f"clients with {classes_per_partition} classes each failed: {err}"
        ) from err


def partition_natural(ids: np.ndarray) -> list[np.ndarray]:
    """One client per distinct id (writer, user); client ``i`` is the ``i``-th sorted id.

    Same semantics as Flower's ``NaturalIdPartitioner`` (a test checks they agree), done
    with one stable sort instead of its per-row Python loop and progress bar. Indices
    within a client keep the dataset's order. Covers every sample.
    """
    ids = np.asarray(ids)
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)]


def _perfedavg_plan(classes: np.ndarray, num_partitions: int) -> list[list[tuple[Any, int]]]:
    """Per client, (class, multiple of a/2) pairs: 2 = a images, 1 = a/2, 4 = 2a.

    Clients ``0 .. n//2 - 1`` hold ``a`` of each of the first half of the classes; client
    ``n//2 + j`` holds ``a/2`` of first-half class ``j mod h`` and ``2a`` of second-half
    class ``j mod h`` (round robin, so each class is asked for as evenly as possible).
    """
    half = len(classes) // 2
    first, last = classes[:half], classes[half:]
    plan = [[(c, 2) for c in first] for _ in range(num_partitions // 2)]
    for j in range(num_partitions - num_partitions // 2):
        plan.append([(first[j % half], 1), (last[j % half], 4)])
    return plan


def partition_perfedavg(
    labels: np.ndarray, num_partitions: int, seed: int, per_class: int | None = None
) -> list[np.ndarray]:
    """The (Fashion-)MNIST split of Per-FedAvg (Fallah et al. 2020, Sec. 5).

    Half of the clients hold ``a = per_class`` images of each of the first five classes;
    the other half hold ``a/2`` images of one of the first five classes and ``2a`` of one
    of the last five. ``per_class=None`` takes the largest ``a`` the label counts allow,
    so the partition uses as much data as its shape permits. Images are drawn at random
    (seeded) without replacement; samples no client asks for are left out.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or len(classes) % 2:
        raise DataError(f"perfedavg partition needs an even number of classes, got {classes}")
    plan = _perfedavg_plan(classes, num_partitions)
    halves_asked = {c: 0 for c in classes}  # in units of a/2 images
    for client in plan:
        for c, halves in client:
            halves_asked[c] += halves
    largest = min(
        int(2 * n // max(halves_asked[c], 1)) for c, n in zip(classes, counts, strict=True)
    )
    a = largest if per_class is None else per_class
    if a < 2 or a > largest:
        raise DataError(
            f"perfedavg partition of {len(labels)} samples into {num_partitions} clients "
            f"needs 2 <= a <= {largest} images per class (label counts "
            f"{dict(zip(classes.tolist(), counts.tolist(), strict=True))}), got a={a}"
        )
    rng = np.random.default_rng([seed, PERFEDAVG_STREAM])
    pools = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    parts = []
    for client in plan:
        taken: list[int] = []
        for c, halves in client:
            n = halves * a // 2
            taken += pools[c][:n]
            del pools[c][:n]
        parts.append(np.array(taken, dtype=np.int64))
    return parts


def split_train_test(
    indices: np.ndarray, test_fraction: float, seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's own train/test split of ``indices``, fixed by (seed, partition id).

    For datasets without a split of their own. Not stratified. With two or more samples
    both sides are non-empty, so the test set is never borrowed from adaptation data.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    n_test = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
    shuffled = np.random.default_rng([seed, SPLIT_STREAM, partition_id]).permutation(indices)
    return shuffled[n_test:], shuffled[:n_test]

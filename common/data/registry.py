"""Which data a client gets: dispatch on ``settings.dataset`` and ``settings.partition``.

Sinusoid and synthetic clients are pure functions of (seed, client index) and cost
nothing to build. The real datasets are read whole and partitioned once per process (a
simulation process serves many clients), cached on the few settings that determine the
result, and each client's :class:`ClientData` is cut from that on request.

Conventions (see ``readers`` for pixels): MNIST and Fashion-MNIST pool their train and
t10k files, partition the 70,000 images and give each client its own seeded train/test
split, since personalization is scored per client and the official split has no clients.
FEMNIST's natural clients are its writers, each keeping LEAF's own train/test split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Settings
from common.data import partition as part
from common.data import readers
from common.data.sinusoid import sinusoid_client
from common.data.synthetic import NUM_CLASSES as SYNTHETIC_CLASSES
from common.data.synthetic import NUM_FEATURES as SYNTHETIC_FEATURES
from common.data.synthetic import synthetic_client
from common.data.types import ClientData, DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know before any data is read."""

    input_shape: tuple[int, ...]  # one sample, without the batch axis
    num_classes: int | None  # None for regression


_INFO = {
    "sinusoid": DatasetInfo((1,), None),
    "synthetic": DatasetInfo((SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES),
    "digits": DatasetInfo((1, 8, 8), 10),
    "mnist": DatasetInfo((1, 28, 28), 10),
    "fashion-mnist": DatasetInfo((1, 28, 28), 10),
    "femnist": DatasetInfo((1, 28, 28), 62),  # 10 digits, 26 upper, 26 lower case
}

_PARTITIONS = {
    "digits": ("dirichlet", "pathological"),
    "mnist": ("dirichlet", "pathological", "perfedavg"),
    "fashion-mnist": ("dirichlet", "pathological", "perfedavg"),
    "femnist": ("natural", "dirichlet", "pathological"),
}


def dataset_info(settings: Settings) -> DatasetInfo:
    return _INFO[settings.dataset]


def input_shape(settings: Settings) -> tuple[int, ...]:
    return dataset_info(settings).input_shape


def num_classes(settings: Settings) -> int | None:
    return dataset_info(settings).num_classes


def check_data_available(settings: Settings) -> None:
    """Fail before round 1 if the data is missing, unreadable or can't be partitioned so.

    Reads only headers and directory listings, so the server can call it cheaply.
    """
    _check_partition_kind(settings.dataset, settings.partition)
    if settings.dataset in ("mnist", "fashion-mnist"):
        readers.check_idx_folder(_path(settings), settings.dataset)
    elif settings.dataset == "femnist":
        readers.check_femnist(_path(settings))


def _check_partition_kind(dataset: str, partition: str) -> None:
    allowed = _PARTITIONS.get(dataset)
    if allowed is not None and partition not in allowed:
        raise DataError(
            f"dataset '{dataset}' cannot be split with partition '{partition}'; "
            f"allowed: {', '.join(allowed)}"
            + (" (it has no writer ids for 'natural')" if partition == "natural" else "")
        )


def _path(settings: Settings) -> Path:
    return Path(settings.data_path).expanduser()


@dataclass(frozen=True)
class _Split:
    """The settings that decide a partition: the cache key of :func:`_client_indices`."""

    dataset: str
    data_path: str
    partition: str
    num_partitions: int
    seed: int
    classes_per_client: int
    dirichlet_alpha: float
    test_fraction: float

    @classmethod
    def of(cls, settings: Settings, num_partitions: int) -> _Split:
        return cls(
            settings.dataset,
            str(_path(settings)),
            settings.partition,
            num_partitions,
            settings.seed,
            settings.classes_per_client,
            settings.dirichlet_alpha,
            settings.test_fraction,
        )


def load_client_data(settings: Settings, partition_id: int, num_partitions: int) -> ClientData:
    """Client ``partition_id`` of ``num_partitions``: its train and test arrays."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition id {partition_id} is outside 0..{num_partitions - 1}")
    if settings.dataset == "sinusoid":
        return sinusoid_client(
            settings.seed,
            partition_id,
            settings.sinusoid_train_points,
            settings.sinusoid_test_points,
        )
    if settings.dataset == "synthetic":
        alpha, beta = settings.synthetic_alpha, settings.synthetic_beta
        return synthetic_client(settings.seed, partition_id, alpha, beta, settings.test_fraction)
    _check_partition_kind(settings.dataset, settings.partition)  # before reading anything
    split = _Split.of(settings, num_partitions)
    names, indices = _client_indices(split)
    images = _read(split.dataset, split.data_path)  # cached by _client_indices
    train, test = indices[partition_id]
    return ClientData(
        x_train=images.x[train],
        y_train=images.y[train],
        x_test=images.x[test],
        y_test=images.y[test],
        client_id=f"{split.dataset}-{names[partition_id]}",
    )


@functools.lru_cache(maxsize=2)
def _read(dataset: str, data_path: str) -> readers.LabeledImages:
    """The whole dataset, read once per process (MNIST: ~220 MB as float32)."""
    if dataset == "digits":
        return readers.read_digits()
    if dataset == "femnist":
        return readers.read_femnist(data_path)
    return readers.read_mnist_folder(data_path, dataset)


ClientIndices = tuple[tuple[str, ...], tuple[tuple[np.ndarray, np.ndarray], ...]]


@functools.lru_cache(maxsize=4)
def _client_indices(split: _Split) -> ClientIndices:
    """Per client, a name and (train, test) sample indices into :func:`_read`'s arrays."""
    images = _read(split.dataset, split.data_path)
    if split.partition == "natural":
        return _natural_clients(images, split.num_partitions)
    parts = _partition(images.y, split)
    halves = tuple(
        part.split_train_test(p, split.test_fraction, split.seed, i) for i, p in enumerate(parts)
    )
    return tuple(f"{split.partition}-{i}" for i in range(len(parts))), halves


def _partition(labels: np.ndarray, split: _Split) -> list[np.ndarray]:
    n, seed = split.num_partitions, split.seed
    if split.partition == "dirichlet":
        return part.partition_dirichlet(labels, n, split.dirichlet_alpha, seed)
    if split.partition == "pathological":
        return part.partition_pathological(labels, n, split.classes_per_client, seed)
    return part.partition_perfedavg(labels, n, seed)


def _natural_clients(images: readers.LabeledImages, num_partitions: int) -> ClientIndices:
    """The first ``num_partitions`` writers in sorted order, each with its own split."""
    assert images.writer is not None and images.is_test is not None  # by _PARTITIONS
    writers = np.unique(images.writer)
    if num_partitions > len(writers):
        raise DataError(
            f"{num_partitions} clients asked for, but the data has only {len(writers)} "
            "writers (natural partition: one writer per client)"
        )
    parts = part.partition_natural(images.writer)[:num_partitions]
    halves = tuple((p[~images.is_test[p]], p[images.is_test[p]]) for p in parts)
    return tuple(str(w) for w in writers[:num_partitions]), halves

"""Which data a client gets: dispatch on ``settings.dataset`` and ``settings.partition``.

Sinusoid and synthetic clients are pure functions of (seed, client index) and cost
nothing to build. The real datasets are read whole and partitioned once per process (a
simulation process serves many clients), cached on the few settings that determine the
result, and each client's :class:`ClientData` is cut from that on request.

Conventions (see ``readers`` for pixels): MNIST and Fashion-MNIST pool their train and
t10k files, partition the 70,000 images and give each client its own seeded train/test
split, since personalization is scored per client and the official split has no clients.
FEMNIST's natural clients are its writers, each keeping LEAF's own train/test split.
Omniglot's clients own consecutive blocks of background characters (about an alphabet
each) and are served episodes (common/data/episodes.py).

New clients (never trained on; scored by the server, see server/new_clients.py) come
from data no training client holds: a separate random stream (sinusoid, synthetic), the
writers after the trained ones (FEMNIST by writer), the evaluation characters
(Omniglot), or a share ``new-client-fraction`` of the pooled samples set aside before
the partition (digits, MNIST, Fashion-MNIST).

A user's own data (dataset 'table', 'client-folders', 'hf-disk') goes through the same
functions to common/data/user_data.py: natural clients by a client column or file, or rows
split by Flower Datasets' partitioners; on a SuperNode that holds its own data, the node's
clients (:func:`hosted_client_numbers`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import OMNIGLOT_DRAWERS, USER_DATASETS, Settings, omniglot_test_drawers
from common.data import partition as part
from common.data import readers, shakespeare, user_data
from common.data.episodes import EpisodicData, episode_spec
from common.data.sinusoid import sinusoid_client
from common.data.synthetic import NUM_CLASSES as SYNTHETIC_CLASSES
from common.data.synthetic import NUM_FEATURES as SYNTHETIC_FEATURES
from common.data.synthetic import synthetic_client
from common.data.types import ClientData, DataError
from common.streams import NEW_CLIENT_POOL, NEW_CLIENT_STREAM


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know before any data is read."""

    input_shape: tuple[int, ...]  # one sample, without the batch axis
    num_classes: int | None  # None for regression


_INFO = {
    "sinusoid": DatasetInfo((1,), None),
    "synthetic": DatasetInfo((SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES),
    "digits": DatasetInfo((1, 8, 8), 10),
    "mnist": DatasetInfo((1, 28, 28), readers.MNIST_CLASSES),
    "fashion-mnist": DatasetInfo((1, 28, 28), readers.MNIST_CLASSES),
    "femnist": DatasetInfo((1, 28, 28), readers.FEMNIST_CLASSES),
}
OMNIGLOT_SIZE = 28  # drawings are area-downsampled from 105 x 105, as in MAML

_PARTITIONS = {
    "digits": ("dirichlet", "pathological"),
    "mnist": ("dirichlet", "pathological", "perfedavg"),
    "fashion-mnist": ("dirichlet", "pathological", "perfedavg"),
    "femnist": ("natural", "dirichlet", "pathological"),
}


def dataset_info(settings: Settings) -> DatasetInfo:
    if settings.dataset in USER_DATASETS:  # from the data, or the config on a data-less server
        return DatasetInfo(*user_data.user_dataset_info(settings))
    if settings.dataset == "omniglot":  # an episode's N classes, relabelled 0..N-1
        return DatasetInfo((1, OMNIGLOT_SIZE, OMNIGLOT_SIZE), settings.n_way)
    if settings.dataset == "shakespeare":  # a window of character ids -> the next one
        return DatasetInfo((settings.shakespeare_seq_len,), shakespeare.VOCABULARY)
    return _INFO[settings.dataset]


def input_shape(settings: Settings) -> tuple[int, ...]:
    return dataset_info(settings).input_shape


def num_classes(settings: Settings) -> int | None:
    return dataset_info(settings).num_classes


def check_data_available(settings: Settings) -> None:
    """Fail before round 1 if the data is missing, corrupt or can't be partitioned so.

    Reads what a client will read, whole, through the same per-process caches the clients
    use: a truncated or corrupt file, an x/y length mismatch or a label out of range is
    named here, once, as a DataError, instead of failing every client in every round.
    The server process pays one read (in the loop engine the clients then reuse it).
    """
    _check_partition_kind(settings.dataset, settings.partition)
    if settings.dataset in USER_DATASETS:
        user_data.check_user_data(settings)
    elif settings.dataset in ("mnist", "fashion-mnist", "femnist"):
        images = _read(settings.dataset, str(_path(settings)))
        if images.x.shape[1:] != input_shape(settings):
            raise DataError(
                f"{settings.dataset} images at '{_path(settings)}' are "
                f"{images.x.shape[2:]} pixels; the model takes {input_shape(settings)[1:]}"
            )
    elif settings.dataset == "omniglot":
        _omniglot(str(_path(settings)), "background")
        if settings.new_clients > 0:
            _omniglot(str(_path(settings)), "evaluation")
    elif settings.dataset == "shakespeare":
        shakespeare.check_available(settings)


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
    new_clients: int  # > 0: a share of the samples is held out for new clients
    new_client_fraction: float

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
            settings.new_clients,
            settings.new_client_fraction,
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
    if settings.dataset == "omniglot":
        return _omniglot_client(settings, "background", partition_id, num_partitions)
    if settings.dataset == "shakespeare":
        return shakespeare.shakespeare_client(settings, partition_id, num_partitions)
    if settings.dataset in USER_DATASETS:
        return user_data.load_user_client(settings, partition_id, num_partitions)
    _check_partition_kind(settings.dataset, settings.partition)  # before reading anything
    split = _Split.of(settings, num_partitions)
    names, indices = _client_indices(split)
    images = _read(split.dataset, split.data_path)  # cached by _client_indices
    return _cut(images, indices[partition_id], f"{split.dataset}-{names[partition_id]}")


def load_new_client_data(settings: Settings, index: int) -> ClientData:
    """New client ``index`` of ``new-clients``: data no training client ever holds."""
    if not 0 <= index < settings.new_clients:
        raise DataError(f"new client {index} is outside 0..{settings.new_clients - 1}")
    if settings.dataset == "sinusoid":
        return sinusoid_client(
            settings.seed, index, settings.new_client_train_points,
            settings.sinusoid_test_points, stream=NEW_CLIENT_STREAM,
        )  # fmt: skip
    if settings.dataset == "synthetic":
        alpha, beta = settings.synthetic_alpha, settings.synthetic_beta
        return synthetic_client(
            settings.seed, index, alpha, beta, settings.test_fraction, stream=NEW_CLIENT_STREAM
        )
    if settings.dataset == "omniglot":
        return _omniglot_client(settings, "evaluation", index, settings.new_clients)
    if settings.dataset == "shakespeare":
        return shakespeare.shakespeare_new_client(settings, index)
    if settings.dataset in USER_DATASETS:
        return user_data.load_user_new_client(settings, index)
    _check_partition_kind(settings.dataset, settings.partition)
    split = _Split.of(settings, num_partitions=0)  # new clients do not depend on it
    names, indices = _new_client_indices(split)
    images = _read(split.dataset, split.data_path)
    return _cut(images, indices[index], f"{split.dataset}-new-{names[index]}")


def smallest_train_split(settings: Settings) -> int | None:
    """The fewest train samples of a client, where known before any client runs."""
    if settings.dataset == "sinusoid":
        return settings.sinusoid_train_points
    if settings.dataset == "shakespeare":
        return shakespeare.smallest_train_split(settings)
    if settings.dataset in USER_DATASETS:
        return user_data.smallest_user_train_split(settings)
    return None


def hosted_client_numbers(settings: Settings) -> tuple[int, ...]:
    """A SuperNode's own data (node config data-path, no partition-id): its clients' numbers.

    A number is hashed from the client's id (``user_data.client_number``), so nodes that
    never talk to each other still name their clients apart.
    """
    if settings.dataset not in USER_DATASETS:
        raise DataError(
            f"a SuperNode without partition-id hosts its own data, which needs dataset "
            f"{', '.join(repr(d) for d in USER_DATASETS)}; dataset '{settings.dataset}' is "
            "split by partition-id and num-partitions in the node config"
        )
    return tuple(sorted(user_data.hosted_clients(settings)))


def load_hosted_client_data(settings: Settings, number: int) -> ClientData:
    """The node's own client with this number (from :func:`hosted_client_numbers`)."""
    return user_data.load_hosted_client(settings, number)


def _cut(
    images: readers.LabeledImages, halves: tuple[np.ndarray, np.ndarray], client_id: str
) -> ClientData:
    train, test = halves
    return ClientData(
        x_train=images.x[train],
        y_train=images.y[train],
        x_test=images.x[test],
        y_test=images.y[test],
        client_id=client_id,
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
        return _natural_clients(images, split.num_partitions, split.new_clients)
    pool, _ = _pools(len(images), split)
    return _partitioned(images.y, pool, split.num_partitions, split, first_id=0)


@functools.lru_cache(maxsize=2)
def _new_client_indices(split: _Split) -> ClientIndices:
    """Like :func:`_client_indices`, for the ``new_clients`` held-out clients."""
    images = _read(split.dataset, split.data_path)
    if split.partition == "natural":
        return _natural_new_clients(images, split.new_clients)
    _, held_out = _pools(len(images), split)
    # first_id offsets the split seeds, so no new client's split repeats a training one
    return _partitioned(images.y, held_out, split.new_clients, split, first_id=1_000_000)


def _pools(n: int, split: _Split) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, new-client pool): disjoint sample positions, fixed by the seed."""
    if split.new_clients == 0:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng([split.seed, NEW_CLIENT_POOL]).permutation(n)
    n_held = round(n * split.new_client_fraction)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def _partitioned(
    labels: np.ndarray, pool: np.ndarray, num_partitions: int, split: _Split, first_id: int
) -> ClientIndices:
    parts = [pool[p] for p in _partition(labels[pool], split, num_partitions)]
    halves = tuple(
        part.split_train_test(p, split.test_fraction, split.seed, first_id + i)
        for i, p in enumerate(parts)
    )
    return tuple(f"{split.partition}-{i}" for i in range(len(parts))), halves


def _partition(labels: np.ndarray, split: _Split, n: int) -> list[np.ndarray]:
    seed = split.seed
    if split.partition == "dirichlet":
        return part.partition_dirichlet(labels, n, split.dirichlet_alpha, seed)
    if split.partition == "pathological":
        return part.partition_pathological(labels, n, split.classes_per_client, seed)
    return part.partition_perfedavg(labels, n, seed)


def _natural_clients(
    images: readers.LabeledImages, num_partitions: int, new_clients: int
) -> ClientIndices:
    """The first ``num_partitions`` writers in sorted order, each with its own split.

    The last ``new_clients`` writers are reserved for new clients and never trained on.
    """
    writers = _writers(images)
    if num_partitions + new_clients > len(writers):
        raise DataError(
            f"{num_partitions} clients (+ {new_clients} new clients) asked for, but the data "
            f"has only {len(writers)} writers (natural partition: one writer per client)"
        )
    return _writer_slice(images, 0, num_partitions)


def _natural_new_clients(images: readers.LabeledImages, new_clients: int) -> ClientIndices:
    n = len(_writers(images))
    return _writer_slice(images, n - new_clients, n)


def _writers(images: readers.LabeledImages) -> np.ndarray:
    assert images.writer is not None and images.is_test is not None  # by _PARTITIONS
    return np.unique(images.writer)


def _writer_slice(images: readers.LabeledImages, start: int, stop: int) -> ClientIndices:
    assert images.writer is not None and images.is_test is not None
    parts = part.partition_natural(images.writer)[start:stop]
    halves = tuple((p[~images.is_test[p]], p[images.is_test[p]]) for p in parts)
    return tuple(str(w) for w in _writers(images)[start:stop]), halves


# ---------------------------------------------------------------- Omniglot


def _omniglot_source(folder: Path, which: str) -> Path:
    """``images_<which>`` as npz, zip or unzipped folder inside ``folder``."""
    for name in (f"images_{which}.npz", f"images_{which}.zip", f"images_{which}"):
        if (folder / name).exists():
            return folder / name
    raise readers.unreadable(
        f"Omniglot {which} set (images_{which}.npz, .zip or folder)", folder, "not found",
        "omniglot",
    )  # fmt: skip


@functools.lru_cache(maxsize=2)
def _omniglot(folder: str, which: str) -> np.ndarray:
    """float32 (characters, drawers, 28, 28), read once per process."""
    source = _omniglot_source(Path(folder), which)
    chars = readers.read_omniglot(source, OMNIGLOT_SIZE)
    if chars.shape[1] != OMNIGLOT_DRAWERS:
        raise DataError(
            f"Omniglot {which} set at '{source}' has {chars.shape[1]} drawers per character, "
            f"not {OMNIGLOT_DRAWERS}"
        )
    return chars


def _omniglot_client(settings: Settings, which: str, index: int, num_clients: int) -> EpisodicData:
    """Block ``index`` of ``num_clients`` blocks of consecutive characters of a set.

    Each character keeps its last ``test-fraction`` drawings for scoring.
    """
    chars = _omniglot(str(_path(settings)), which)
    block = np.array_split(np.arange(len(chars)), num_clients)[index]
    if len(block) < settings.n_way:
        raise DataError(
            f"Omniglot client {index} of {num_clients} ({which} set) owns {len(block)} "
            f"characters, fewer than n-way={settings.n_way}; use fewer clients"
        )
    n_train = OMNIGLOT_DRAWERS - omniglot_test_drawers(settings.test_fraction)
    classes = chars[block]  # (characters, drawers, size, size)
    if settings.omniglot_rotations and which == "background":
        # class 4c + r is character c turned r x 90 degrees (MAML's augmentation)
        turned = [np.rot90(classes, r, axes=(2, 3)) for r in range(4)]
        classes = np.stack(turned, axis=1).reshape(-1, *classes.shape[1:])
    labels = np.arange(len(classes), dtype=np.int64)

    def images(drawers: slice) -> tuple[np.ndarray, np.ndarray]:
        x = classes[:, drawers]
        return x.reshape(-1, 1, OMNIGLOT_SIZE, OMNIGLOT_SIZE), np.repeat(labels, x.shape[1])

    (x_train, y_train), (x_test, y_test) = images(slice(0, n_train)), images(slice(n_train, None))
    return EpisodicData(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        client_id=f"omniglot-{which}-{block[0]}-{block[-1]}", spec=episode_spec(settings),
    )  # fmt: skip

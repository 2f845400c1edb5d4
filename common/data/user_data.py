"""Clients of a user's own data: dataset 'table', 'client-folders' or 'hf-disk' at data-path.

The registry (common/data/registry.py) sends these datasets here. A user table is read
once per process (:func:`read_user_table`) and clients are index arrays into it:

* **natural clients** (``client-column``, or one file per client): one client per distinct
  id, the i-th sorted id being client i, the rule of Flower Datasets'
  ``NaturalIdPartitioner`` (a test checks the two agree). ``new-clients`` ids, drawn with
  the run seed, are held out: never trained on, scored by the server.
* **partitioned rows** (no client column): Flower Datasets' Dirichlet, pathological, IID,
  shard, linear, square or exponential partitioner over the rows, after a share
  ``new-client-fraction`` of the rows is held out for new clients.

Each client uses the split column when there is one, else its own split of
``test-fraction`` seeded by (seed, client): a natural client's by a number hashed from its
id (:func:`client_number`), so client 'alice' gets the same split wherever it is served.

**A device's own data**: a SuperNode whose node config has ``data-path`` and no
``partition-id`` hosts every client of its own file (client/runtime.py); its clients are
known to the server by :func:`client_number`, so nodes need no coordination to tell their
clients apart. The server then reads no data: it builds the model from ``feature-columns``
(or ``input-shape``) and ``num-classes``, and each node checks its own file.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Settings, Task
from common.data import partition as part
from common.data.table import Columns, UserTable, check_table, labels_for, num_classes_of
from common.data.types import ClientData, DataError
from common.streams import NEW_CLIENT_POOL, USER_PARTITIONER_STREAM

NEW_CLIENT_IDS = 1_000_000  # offset of new partitioned clients' split seeds


@dataclass(frozen=True)
class Source:
    """What decides the table read: the cache key of :func:`read_user_table`."""

    dataset: str
    data_path: str
    columns: Columns

    @classmethod
    def of(cls, s: Settings) -> Source:
        features = tuple(f.strip() for f in s.feature_columns.split(",") if f.strip())
        columns = Columns(s.client_column, s.label_column, features, s.split_column)
        return cls(s.dataset, str(Path(s.data_path).expanduser()), columns)


@functools.lru_cache(maxsize=2)
def read_user_table(source: Source) -> UserTable:
    if source.dataset == "table":
        from common.data.tables import read_tables

        return read_tables(source.data_path, source.columns)
    if source.dataset == "client-folders":
        from common.data.client_folders import read_client_folders

        return read_client_folders(source.data_path)
    from common.data.hf_disk import read_hf_disk

    return read_hf_disk(source.data_path, source.columns)


def client_number(name: object) -> int:
    """A client's stable number from its id: 48 bits of BLAKE2b (exact in int64 and float64)."""
    return int.from_bytes(hashlib.blake2b(str(name).encode(), digest_size=6).digest(), "big")


# ---------------------------------------------------------------- what the model needs


def data_on_nodes(s: Settings) -> bool:
    """No data-path in the run: the data lives on the SuperNodes and the server reads none."""
    return not s.data_path


def user_dataset_info(s: Settings) -> tuple[tuple[int, ...], int | None]:
    """(input shape, classes or None for regression), from the data or, without it, the config."""
    classification = s.task is Task.CLASSIFICATION
    if data_on_nodes(s):
        return _configured_shape(s), (_configured_classes(s) if classification else None)
    table = read_user_table(Source.of(s))
    shape = tuple(int(d) for d in table.x.shape[1:])
    if s.input_shape and shape != _input_shape_key(s):
        raise DataError(
            f"{table.files[0]}: samples have shape {shape}, but input-shape is "
            f"'{s.input_shape}'; fix input-shape or clear it to take the data's"
        )
    return shape, (num_classes_of(table, s.num_classes) if classification else None)


def _input_shape_key(s: Settings) -> tuple[int, ...]:
    """The ``input-shape`` key as sizes."""
    return tuple(int(d) for d in s.input_shape.split(","))


def _configured_shape(s: Settings) -> tuple[int, ...]:
    if s.input_shape:
        return _input_shape_key(s)
    if s.dataset == "table" and Source.of(s).columns.features:
        return (len(Source.of(s).columns.features),)
    raise DataError(
        f"dataset '{s.dataset}' has no data-path here, so the data lives on the SuperNodes and "
        "the server builds the model without reading it: set "
        + ("feature-columns (a table's inputs)" if s.dataset == "table" else "input-shape")
        + " in the run config"
    )


def _configured_classes(s: Settings) -> int:
    if s.num_classes:
        return s.num_classes
    raise DataError(
        f"dataset '{s.dataset}' has no data-path here, so the data lives on the SuperNodes: "
        "set num-classes in the run config, so that the server and every node build the "
        "same model (or task = 'regression' for a real-valued label)"
    )


# ---------------------------------------------------------------- the start-up check


def check_user_data(s: Settings) -> None:
    """One DataError line for the first problem, before round 1 (server or node)."""
    if data_on_nodes(s):
        user_dataset_info(s)  # the server can build the model from the config alone
        if s.new_clients:
            raise DataError(
                f"new-clients={s.new_clients} needs the new clients' data on the server, but "
                f"dataset '{s.dataset}' has no data-path here (it lives on the SuperNodes); "
                "set new-clients = 0 or give the server a data-path"
            )
        return
    table = read_user_table(Source.of(s))
    _, classes = user_dataset_info(s)
    check_table(table, s.task, classes or 0)
    if _natural(s):
        training, new = _natural_clients(table, s.seed, s.test_fraction, s.new_clients)
        for clients in (training, new):
            _check_sizes(table, clients, s.batch_size)


def _check_sizes(table: UserTable, clients: Clients, batch_size: int) -> None:
    for name, (train, test) in zip(clients.names, clients.halves, strict=True):
        file = table.file_at(int(np.concatenate([train, test])[0]))
        if len(train) < batch_size:
            raise DataError(
                f"{file}: client '{name}' (column '{table.columns.client}') "
                f"has {len(train)} training rows (of {len(train) + len(test)}), fewer than "
                f"batch-size={batch_size}; lower batch-size or drop this client's rows"
            )
        if len(test) == 0:
            raise DataError(
                f"{file}: client '{name}' (column '{table.columns.client}') "
                "has no test rows to be scored on; give it 'test' rows in the split column"
            )


def smallest_user_train_split(s: Settings) -> int | None:
    if data_on_nodes(s) or not _natural(s):
        return None
    table = read_user_table(Source.of(s))
    training, _ = _natural_clients(table, s.seed, s.test_fraction, s.new_clients)
    return min((len(t) for t, _ in training.halves), default=None)


# ---------------------------------------------------------------- clients


@dataclass(frozen=True)
class Clients:
    names: tuple[str, ...]
    halves: tuple[tuple[np.ndarray, np.ndarray], ...]  # per client: (train rows, test rows)


def _natural(s: Settings) -> bool:
    return s.dataset == "client-folders" or bool(s.client_column)


@functools.lru_cache(maxsize=4)
def _natural_clients(
    table: UserTable, seed: int, test_fraction: float, new_clients: int
) -> tuple[Clients, Clients]:
    """(training clients, held-out new clients): one per distinct id, in sorted id order."""
    assert table.client is not None
    ids, inverse = np.unique(table.client, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(ids)))])
    if new_clients >= len(ids):
        raise DataError(
            f"new-clients={new_clients} would hold out every one of the {len(ids)} clients "
            f"(column '{table.columns.client}'); use fewer new clients"
        )
    held = np.zeros(len(ids), dtype=bool)
    if new_clients:
        rng = np.random.default_rng([seed, NEW_CLIENT_POOL])
        held[rng.choice(len(ids), size=new_clients, replace=False)] = True

    def clients(which: np.ndarray) -> Clients:
        names = tuple(str(ids[k]) for k in which)
        rows = [order[bounds[k] : bounds[k + 1]] for k in which]
        halves = tuple(
            _split(table, r, test_fraction, seed, client_number(n))
            for r, n in zip(rows, names, strict=True)
        )
        return Clients(names, halves)

    return clients(np.flatnonzero(~held)), clients(np.flatnonzero(held))


def _split(
    table: UserTable, rows: np.ndarray, test_fraction: float, seed: int, key: int
) -> tuple[np.ndarray, np.ndarray]:
    if table.is_test is not None:
        test = table.is_test[rows]
        return rows[~test], rows[test]
    return part.split_train_test(rows, test_fraction, seed, key)


@dataclass(frozen=True)
class _Rows:
    """The settings that decide a partition of rows: the cache key of :func:`_partitioned`."""

    source: Source
    partition: str
    num_partitions: int
    seed: int
    test_fraction: float
    dirichlet_alpha: float
    classes_per_client: int
    new_clients: int
    new_client_fraction: float
    task: Task

    @classmethod
    def of(cls, s: Settings, num_partitions: int) -> _Rows:
        return cls(
            Source.of(s), s.partition, num_partitions, s.seed, s.test_fraction,
            s.dirichlet_alpha, s.classes_per_client, s.new_clients, s.new_client_fraction,
            s.task,
        )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _partitioned(rows: _Rows, new: bool) -> Clients:
    """The rows split by a Flower Datasets partitioner, each part with its seeded split."""
    table = read_user_table(rows.source)
    n = len(table)
    pool = np.arange(n)
    if rows.new_clients:
        order = np.random.default_rng([rows.seed, NEW_CLIENT_POOL]).permutation(n)
        held = round(n * rows.new_client_fraction)
        pool = np.sort(order[:held] if new else order[held:])
    count = rows.new_clients if new else rows.num_partitions
    parts = [pool[p] for p in _flower_partition(table.y[pool], rows, count)]
    first = NEW_CLIENT_IDS if new else 0
    return Clients(
        tuple(f"{rows.partition}-{'new-' if new else ''}{i}" for i in range(len(parts))),
        tuple(
            _split(table, p, rows.test_fraction, rows.seed, first + i) for i, p in enumerate(parts)
        ),
    )


def _flower_partition(labels: np.ndarray, rows: _Rows, count: int) -> list[np.ndarray]:
    if rows.partition in ("dirichlet", "pathological", "shard") and rows.task is Task.REGRESSION:
        raise DataError(
            f"partition '{rows.partition}' splits by class, but task is regression; use iid, "
            "linear, square or exponential, or a client-column"
        )
    seed = int(np.random.SeedSequence([rows.seed, USER_PARTITIONER_STREAM]).generate_state(1)[0])
    if rows.partition == "dirichlet":
        return part.partition_dirichlet(labels, count, rows.dirichlet_alpha, rows.seed)
    if rows.partition == "pathological":
        return part.partition_pathological(labels, count, rows.classes_per_client, rows.seed)
    from flwr_datasets import partitioner as fp

    flower = {
        "iid": lambda: fp.IidPartitioner(count),
        "shard": lambda: fp.ShardPartitioner(
            count, "label", num_shards_per_partition=rows.classes_per_client, seed=seed
        ),
        "linear": lambda: fp.LinearPartitioner(count),
        "square": lambda: fp.SquarePartitioner(count),
        "exponential": lambda: fp.ExponentialPartitioner(count),
    }[rows.partition]()
    try:
        return part.flower_partitions(flower, labels)
    except ValueError as err:
        raise DataError(
            f"partition '{rows.partition}' of {len(labels)} rows into {count} clients failed: {err}"
        ) from err


# ---------------------------------------------------------------- a client's arrays


def _cut(
    table: UserTable, halves: tuple[np.ndarray, np.ndarray], name: str, task: Task
) -> ClientData:
    train, test = halves
    return ClientData(
        x_train=table.x[train],
        y_train=labels_for(table.y[train], task),
        x_test=table.x[test],
        y_test=labels_for(table.y[test], task),
        client_id=name,
    )


def _no_data_here(s: Settings) -> DataError:
    return DataError(
        f"dataset '{s.dataset}' has no data-path in this process: a SuperNode needs its own "
        "data-path in its node config (--node-config 'data-path=...')"
    )


def load_user_client(s: Settings, partition_id: int, num_partitions: int) -> ClientData:
    """Client ``partition_id`` of ``num_partitions`` (simulation: the run's data-path)."""
    if data_on_nodes(s):
        raise _no_data_here(s)
    table = read_user_table(Source.of(s))
    if _natural(s):
        clients, _ = _natural_clients(table, s.seed, s.test_fraction, s.new_clients)
        if num_partitions > len(clients.names):
            raise DataError(
                f"{num_partitions} clients asked for, but {table.files[0]} has "
                f"{len(clients.names)} clients (column '{table.columns.client}') besides "
                f"{s.new_clients} new ones; run fewer clients"
            )
    else:
        clients = _partitioned(_Rows.of(s, num_partitions), new=False)
    return _cut(table, clients.halves[partition_id], clients.names[partition_id], s.task)


def load_user_new_client(s: Settings, index: int) -> ClientData:
    if data_on_nodes(s):
        raise _no_data_here(s)
    table = read_user_table(Source.of(s))
    if _natural(s):
        _, clients = _natural_clients(table, s.seed, s.test_fraction, s.new_clients)
    else:
        clients = _partitioned(_Rows.of(s, 0), new=True)
    return _cut(table, clients.halves[index], clients.names[index], s.task)


# ---------------------------------------------------------------- a device's own clients


def hosted_clients(s: Settings) -> dict[int, str]:
    """Every client of this node's own data: client number -> id (natural clients only)."""
    if data_on_nodes(s):
        raise _no_data_here(s)
    if not _natural(s):
        raise DataError(
            f"a SuperNode's own data (dataset '{s.dataset}') needs client-column, naming the "
            "client of each row (the node hosts one client per id)"
        )
    table = read_user_table(Source.of(s))
    clients, _ = _natural_clients(table, s.seed, s.test_fraction, 0)
    numbers = {client_number(n): n for n in clients.names}
    if len(numbers) < len(clients.names):  # 48-bit hashes: practically never
        raise DataError(f"{table.files[0]}: two client ids hash to one client number; rename one")
    return numbers


def load_hosted_client(s: Settings, number: int) -> ClientData:
    table = read_user_table(Source.of(s))
    clients, _ = _natural_clients(table, s.seed, s.test_fraction, 0)
    name = hosted_clients(s)[number]
    return _cut(table, clients.halves[clients.names.index(name)], name, s.task)

"""A user's data as one table in memory, and the checks that name a bad file, column and client.

Every user format (``tables``: CSV/Parquet, ``client_folders``: a file per client,
``hf_disk``: a Hugging Face dataset) is read into one :class:`UserTable`: a float32
feature array with a leading row axis, the labels as read, and per row its client id, its
split (when the data has a split column) and the file it came from. Clients are index
arrays into it (common/data/user_data.py), so a 100,000-row table with 1,000 clients is held
once, not copied per client; a client's arrays are cut only when that client is served.

The checks run once per process before round 1 (the server's start-up check in a
simulation, the node's own check in a deployment) and raise a :class:`DataError` of one
line that names the file, the column and the client, and says how to fix it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from common.config import Task
from common.data.types import DataError


@dataclass(frozen=True)
class Columns:
    """What the user called things, to name them in messages."""

    client: str  # the client column ("" when the rows have no clients)
    label: str
    features: tuple[str, ...]
    split: str = ""


@dataclass(frozen=True, eq=False)  # hashed by identity: the per-process caches key on it
class UserTable:
    x: np.ndarray  # float32 (rows, *sample shape)
    y: np.ndarray  # labels as read (any numeric dtype)
    client: np.ndarray | None  # per row: its client id; None when the rows have no clients
    is_test: np.ndarray | None  # per row: True for the test split; None: split per client
    files: tuple[str, ...]  # the files read, in order
    file_of: np.ndarray  # per row: index into ``files``
    first_row: np.ndarray  # per file: the table row of its first row
    columns: Columns
    row_word: str = "row"  # how a row is addressed in its file: "line" (CSV) or "row"
    row_base: int = 0  # the number of a file's first row (CSV: 2, after the header line)

    def __len__(self) -> int:
        return len(self.y)

    def file_at(self, row: int) -> str:
        return self.files[int(self.file_of[row])]

    def where(self, row: int) -> str:
        """'<file>, line 13 (client 'u7')': a row in its file, and its client."""
        f = int(self.file_of[row])
        place = f"{self.files[f]}, {self.row_word} {row - int(self.first_row[f]) + self.row_base}"
        if self.client is None:
            return place
        return f"{place} (client '{self.client[row]}', column '{self.columns.client}')"


def check_table(table: UserTable, task: Task, num_classes: int) -> None:
    """One-line DataError for the first bad feature, label or client of the whole table."""
    check_features(table)
    check_labels(table, task, num_classes)
    check_one_file_per_client(table)


def check_features(table: UserTable) -> None:
    finite = np.isfinite(table.x.reshape(len(table), -1))
    if finite.all():
        return
    row, col = (int(i[0]) for i in np.nonzero(~finite))
    value = table.x.reshape(len(table), -1)[row, col]
    names = table.columns.features
    name = names[col] if len(names) == finite.shape[1] else f"{names[0]}[{col}]"
    what = "is empty or NaN" if np.isnan(value) else f"holds {value}"
    raise DataError(
        f"{table.where(row)}: feature column '{name}' {what}; features must be finite "
        f"numbers: fill or drop such rows ({int((~finite).any(axis=1).sum())} rows affected)"
    )


def check_labels(table: UserTable, task: Task, num_classes: int) -> None:
    """Classification: integer class ids 0..C-1 (C = num_classes); regression: finite."""
    y = table.y
    if not np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_:
        _bad_label(table, 0, f"is of type {y.dtype}, not numbers", task)
    if task is Task.REGRESSION:
        bad = ~np.isfinite(y.astype(np.float64))
        if bad.any():
            _bad_label(table, int(np.argmax(bad)), f"holds {y[np.argmax(bad)]}", task)
        return
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            row = int(np.argmax(bad))
            _bad_label(table, row, f"holds {y[row]}, not an integer class id", task)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        _bad_label(
            table, row, f"holds {y[row]:g}, outside the classes 0..{num_classes - 1}"
            + (" (num-classes)" if num_classes else ""), task,
        )  # fmt: skip


def _bad_label(table: UserTable, row: int, what: str, task: Task) -> None:
    fix = (
        "labels must be integer class ids 0..C-1 (map names or codes to ids, or set "
        "num-classes to C); a real-valued target needs task = 'regression'"
        if task is Task.CLASSIFICATION
        else "regression targets must be finite numbers"
    )
    raise DataError(f"{table.where(row)}: label column '{table.columns.label}' {what}; {fix}")


def check_one_file_per_client(table: UserTable) -> None:
    """A client's rows come from one file: the same id in two files is two users, or a copy."""
    if table.client is None or len(table.files) < 2:
        return
    ids, inverse = np.unique(table.client, return_inverse=True)
    pairs = np.unique(np.stack([inverse, table.file_of]), axis=1)
    client_of_pair = pairs[0]
    repeated = np.flatnonzero(np.bincount(client_of_pair) > 1)
    if len(repeated) == 0:
        return
    k = int(repeated[0])
    files = [table.files[f] for f in pairs[1][client_of_pair == k]]
    raise DataError(
        f"client '{ids[k]}' (column '{table.columns.client}') is in two files, {files[0]} "
        f"and {files[1]}: a client's rows must be in one file; rename one of the ids or "
        f"merge the rows ({len(repeated)} client ids are repeated)"
    )


def num_classes_of(table: UserTable, configured: int) -> int:
    """``num-classes`` when set, else the largest label + 1 (labels are checked after)."""
    if configured:
        return configured
    y = table.y
    if len(y) == 0 or not np.issubdtype(y.dtype, np.number):
        return 0
    top = np.nanmax(y.astype(np.float64))
    return int(top) + 1 if np.isfinite(top) and top >= 0 else 0


def labels_for(y: np.ndarray, task: Task) -> np.ndarray:
    """Checked labels as a model takes them: int64 classes or float32 (n, 1) targets."""
    if task is Task.REGRESSION:
        return y.astype(np.float32).reshape(-1, 1)
    return y.astype(np.int64)


@dataclass(frozen=True)
class FilePart:
    """The rows one file holds, before they are joined into a :class:`UserTable`."""

    file: str
    x: np.ndarray
    y: np.ndarray
    client: np.ndarray | None
    split: np.ndarray | None  # the split column's values as read


def join_parts(parts: list[FilePart], columns: Columns, row_word: str, row_base: int) -> UserTable:
    """One table from per-file parts (one file: no copy); split values become flags."""
    sizes = np.array([len(p.y) for p in parts])

    def joined(arrays: list) -> np.ndarray:
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    table = UserTable(
        x=joined([p.x for p in parts]),
        y=joined([p.y for p in parts]),
        client=None if parts[0].client is None else joined([p.client for p in parts]),
        is_test=None,
        files=tuple(p.file for p in parts),
        file_of=np.repeat(np.arange(len(parts), dtype=np.int32), sizes),
        first_row=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        columns=columns,
        row_word=row_word,
        row_base=row_base,
    )
    if parts[0].split is None:
        return table
    return dataclasses.replace(table, is_test=split_flags(table, joined([p.split for p in parts])))


def split_flags(table: UserTable, values: np.ndarray) -> np.ndarray:
    """'train'/'test' per row (any case) as True for test; one line for any other value."""
    text = np.char.lower(np.asarray(values).astype(str))
    bad = (text != "train") & (text != "test")
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{table.where(row)}: split column '{table.columns.split}' holds {values[row]!r}; "
            "use 'train' or 'test' (or clear split-column for a seeded split per client)"
        )
    return text == "test"

"""A Hugging Face dataset saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``).

Columns are named as for a table (client-column, label-column, feature-columns,
split-column). Features are numeric columns, stacked into one vector per row, or one
array or image column (``Image``, ``Array2D``, nested sequences), kept in its shape:
images become float32 in [0, 1], channels first. A ``DatasetDict``'s splits are pooled,
and each row's split name is kept in a column ``split`` (unless the data has one), so
``split-column = "split"`` keeps the saved train/test split and an empty split-column gives
every client its own seeded split. Clients are then formed by Flower Datasets' partitioners
(common/data/user_data.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.table import Columns, FilePart, UserTable, join_parts
from common.data.types import DataError

SPLIT_NAME_COLUMN = "split"


def read_hf_disk(data_path: str, columns: Columns) -> UserTable:
    import datasets  # lazy: ~2 s of imports that only this format needs

    path = Path(data_path).expanduser()
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"data-path '{path}' is not a dataset saved with save_to_disk: {err}"
        ) from err
    ds = _pooled(saved) if isinstance(saved, datasets.DatasetDict) else saved
    present = list(ds.column_names)
    for key, name in (
        ("client-column", columns.client), ("label-column", columns.label),
        ("split-column", columns.split), *(("feature-columns", f) for f in columns.features),
    ):  # fmt: skip
        if name and name not in present:
            raise DataError(
                f"{path}: no column '{name}' ({key}); its columns are: {', '.join(present)}"
            )
    taken = {columns.client, columns.label, columns.split, SPLIT_NAME_COLUMN}
    features = columns.features or tuple(c for c in present if c not in taken)
    if not features:
        raise DataError(f"{path}: no feature column left besides {sorted(taken - {''})}")
    columns = Columns(columns.client, columns.label, features, columns.split)
    arrays = ds.with_format("numpy")
    client = _column(arrays, columns.client).astype(str) if columns.client else None
    part = FilePart(
        file=str(path),
        x=_features(ds, arrays, columns, path),
        y=_column(arrays, columns.label),
        client=client,
        split=_column(arrays, columns.split) if columns.split else None,
    )
    return join_parts([part], columns, "row", 0)


def _pooled(saved):  # DatasetDict -> Dataset with a split-name column
    import datasets

    parts = []
    for name, ds in saved.items():
        if SPLIT_NAME_COLUMN not in ds.column_names:
            ds = ds.add_column(SPLIT_NAME_COLUMN, [name] * len(ds))
        parts.append(ds)
    return datasets.concatenate_datasets(parts)


def _column(arrays, name: str) -> np.ndarray:
    return np.asarray(arrays[name])


def _features(ds, arrays, columns: Columns, path: Path) -> np.ndarray:
    import datasets

    names = columns.features
    kinds = [ds.features[n] for n in names]
    if len(names) == 1 and not isinstance(kinds[0], datasets.Value):
        x = _column(arrays, names[0])
        if isinstance(kinds[0], datasets.Image):
            x = x.astype(np.float32) / np.float32(255.0)
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return _numbers(x, names[0], path)
    for n, kind in zip(names, kinds, strict=True):
        if not isinstance(kind, datasets.Value):
            raise DataError(
                f"{path}: feature column '{n}' is {type(kind).__name__}, not a number; an "
                "array or image column must be the only feature column"
            )
    return np.stack([_numbers(_column(arrays, n), n, path) for n in names], axis=1)


def _numbers(x: np.ndarray, name: str, path: Path) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        row = (
            0
            if x.dtype != object
            else next((i for i, v in enumerate(x) if not isinstance(v, int | float)), 0)
        )
        raise DataError(
            f"{path}, row {row}: feature column '{name}' is not numeric (it holds "
            f"{x[row]!r}); convert it to numbers, or leave it out of feature-columns"
        )
    return x.astype(np.float32, copy=False)

"""CSV and Parquet tables: a client column, feature columns and a label column.

``data-path`` is one ``.csv`` / ``.parquet`` file or a folder of them (read in name order;
each file is checked on its own, and a client's rows must all be in one file). Files are
read with pyarrow, the engine under Hugging Face ``datasets``' csv and parquet loaders,
straight into one float32 feature matrix: no Arrow cache is written to disk and no row is
converted one by one, so a 100,000-row table loads in well under a second
(simulations/bench/bench_user_table.py). Which rows belong to which client is decided later
(common/data/user_data.py), by Flower Datasets' rule for natural ids or its partitioners.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.table import Columns, FilePart, UserTable, join_parts
from common.data.types import DataError

SUFFIXES = (".csv", ".parquet")


def table_files(data_path: str) -> list[Path]:
    """The file, or the folder's .csv/.parquet files in name order."""
    path = Path(data_path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if files:
            return files
        raise DataError(f"folder '{path}' holds no .csv or .parquet file (data-path)")
    raise DataError(
        f"data-path '{path}' is no file or folder: give a .csv/.parquet file or a folder"
    )


def read_tables(data_path: str, columns: Columns) -> UserTable:
    """Every file of ``data_path``, checked for its columns, as one table."""
    files = table_files(data_path)
    csv = [f.suffix.lower() == ".csv" for f in files]
    if any(csv) and not all(csv):
        raise DataError(f"folder '{data_path}' mixes .csv and .parquet files: keep one kind")
    parts, names = [], columns
    for f in files:
        part, names = _read_file(f, columns)
        parts.append(part)
    import pyarrow

    # The Arrow tables are gone once their columns are numpy arrays, but Arrow's allocator
    # keeps their pages: ~50 MiB of resident memory for a 22 MiB CSV until released here.
    pyarrow.default_memory_pool().release_unused()
    return join_parts(parts, names, "line" if csv[0] else "row", 2 if csv[0] else 0)


def _read_arrow(path: Path):  # -> pyarrow.Table
    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            return csv.read_csv(path)
        from pyarrow import parquet

        return parquet.read_table(path)
    except Exception as err:  # pyarrow raises its own types for malformed files
        raise DataError(f"{path}: cannot be read as a table: {err}") from err


def _read_file(path: Path, wanted: Columns) -> tuple[FilePart, Columns]:
    arrow = _read_arrow(path)
    present = list(arrow.column_names)
    for key, name in (
        ("client-column", wanted.client), ("label-column", wanted.label),
        ("split-column", wanted.split),
        *(("feature-columns", f) for f in wanted.features),
    ):  # fmt: skip
        if name and name not in present:
            raise DataError(
                f"{path}: no column '{name}' ({key}); its columns are: {', '.join(present)}"
            )
    taken = {wanted.client, wanted.label, wanted.split}
    features = wanted.features or tuple(c for c in present if c not in taken)
    if not features:
        raise DataError(f"{path}: no feature column left besides {sorted(taken - {''})}")
    columns = Columns(wanted.client, wanted.label, features, wanted.split)
    client = _client_ids(arrow, path, columns) if columns.client else None
    part = FilePart(
        file=str(path),
        x=_features(arrow, path, columns, client),
        y=_labels(arrow, path, columns, client),
        client=client,
        split=arrow.column(columns.split).to_numpy(zero_copy_only=False) if columns.split else None,
    )
    return part, columns


def _numeric(column) -> bool:  # a pyarrow ChunkedArray
    import pyarrow as pa

    t = column.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _first_non_number(column) -> tuple[int, object]:
    """The first row whose value is not a number (only called once a column failed)."""
    for row, value in enumerate(column.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return row, value
    return 0, column[0].as_py()


def _at(path: Path, row: int, client: np.ndarray | None, columns: Columns, csv: bool) -> str:
    place = f"{path}, {'line' if csv else 'row'} {row + (2 if csv else 0)}"
    if client is None:
        return place
    return f"{place} (client '{client[row]}', column '{columns.client}')"


def _features(arrow, path: Path, columns: Columns, client: np.ndarray | None) -> np.ndarray:
    csv = path.suffix.lower() == ".csv"
    x = np.empty((arrow.num_rows, len(columns.features)), dtype=np.float32)
    for j, name in enumerate(columns.features):
        col = arrow.column(name)
        if not _numeric(col):
            row, value = _first_non_number(col)
            raise DataError(
                f"{_at(path, row, client, columns, csv)}: feature column '{name}' is not "
                f"numeric (it holds {value!r}); convert it to numbers, or leave it out of "
                "feature-columns"
            )
        x[:, j] = col.to_numpy(zero_copy_only=False)  # nulls become NaN: checked later
    return x


def _labels(arrow, path: Path, columns: Columns, client: np.ndarray | None) -> np.ndarray:
    col = arrow.column(columns.label)
    if not _numeric(col):
        row, value = _first_non_number(col)
        raise DataError(
            f"{_at(path, row, client, columns, path.suffix.lower() == '.csv')}: label column "
            f"'{columns.label}' holds {value!r}, not a number; labels must be integer class "
            "ids 0..C-1 (map names to ids), or real targets with task = 'regression'"
        )
    if col.null_count:
        return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls as NaN
    return col.to_numpy(zero_copy_only=False)


def _client_ids(arrow, path: Path, columns: Columns) -> np.ndarray:
    col = arrow.column(columns.client)
    if col.null_count:
        row = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(
            f"{path}, row {row}: client column '{columns.client}' is empty; every row needs "
            "its client's id"
        )
    if not _numeric(col):  # ids through Arrow's dictionary: no Python string per row
        encoded = col.combine_chunks().dictionary_encode()
        names = encoded.dictionary.to_numpy(zero_copy_only=False).astype(str)
        return names[encoded.indices.to_numpy(zero_copy_only=False)]
    return col.to_numpy(zero_copy_only=False)

"""Bad user data: one line, before round 1, naming the file, the column and the client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import parse_settings
from common.data import registry, user_data
from common.data.types import DataError
from tests.data.test_user_data import user_rows, write_csv


@pytest.fixture(autouse=True)
def fresh_caches():
    user_data.read_user_table.cache_clear()
    user_data._natural_clients.cache_clear()


def refused(path: Path, **extra) -> str:
    """The start-up check's message, checked to be a single line."""
    s = parse_settings(
        {"dataset": "table", "data-path": str(path), "client-column": "user"} | extra
    )
    with pytest.raises(DataError) as err:
        registry.check_data_available(s)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"


def test_a_missing_column(tmp_path: Path):
    path = write_csv(tmp_path / "users.csv", user_rows(3, 10))
    names(refused(path, **{"label-column": "activity"}), "users.csv", "'activity'",
          "label-column", "its columns are: user, a, b, label")  # fmt: skip
    names(refused(path, **{"feature-columns": "a,speed"}), "users.csv", "'speed'")
    names(refused(path, **{"client-column": "device"}), "users.csv", "'device'")


def test_a_non_numeric_feature(tmp_path: Path):
    rows = user_rows(3, 10)
    rows[13]["b"] = "fast"
    names(
        refused(write_csv(tmp_path / "users.csv", rows)),
        "users.csv, line 15", "column 'b'", "client 'u1'", "'fast'",
    )  # fmt: skip


@pytest.mark.parametrize("value, shown", [("nan", "NaN"), ("", "NaN"), ("inf", "inf")])
def test_a_nan_or_infinite_feature(tmp_path: Path, value: str, shown: str):
    rows = user_rows(3, 10)
    rows[25]["a"] = value
    names(
        refused(write_csv(tmp_path / "users.csv", rows)),
        "users.csv, line 27", "column 'a'", "client 'u2'", shown,
    )  # fmt: skip


@pytest.mark.parametrize("label", ["2.5", "walking"])
def test_a_label_that_is_not_an_integer(tmp_path: Path, label: str):
    rows = user_rows(3, 10)
    rows[4]["label"] = label
    names(
        refused(write_csv(tmp_path / "users.csv", rows)),
        "users.csv, line 6", "label column 'label'", "client 'u0'", label, "regression",
    )  # fmt: skip


def test_a_label_out_of_range(tmp_path: Path):
    rows = user_rows(3, 10)
    rows[11]["label"] = 3
    path = write_csv(tmp_path / "users.csv", rows)
    names(
        refused(path, **{"num-classes": 3}),
        "users.csv, line 13", "label column 'label'", "client 'u1'", "outside the classes 0..2",
    )  # fmt: skip
    rows[11]["label"] = -1
    user_data.read_user_table.cache_clear()  # the same path, rewritten
    names(refused(write_csv(path, rows)), "line 13", "client 'u1'", "-1")


def test_a_client_with_fewer_rows_than_a_batch(tmp_path: Path):
    rows = user_rows(3, 10) + user_rows(1, 4, prefix="tiny")
    names(
        refused(write_csv(tmp_path / "users.csv", rows), **{"batch-size": 5}),
        "users.csv", "client 'tiny0'", "column 'user'", "3 training rows", "batch-size=5",
    )  # fmt: skip


def test_the_same_client_id_in_two_files(tmp_path: Path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_csv(folder / "a.csv", user_rows(3, 10))
    write_csv(folder / "b.csv", user_rows(2, 10, prefix="v") + user_rows(1, 10, seed=3))
    names(refused(folder), "client 'u0'", "column 'user'", "a.csv", "b.csv", "two files")


def test_the_same_client_as_npz_and_image_folder(tmp_path: Path):
    np.savez(tmp_path / "alice.npz", x=np.zeros((8, 1, 2, 2)), y=np.zeros(8, int))
    (tmp_path / "alice" / "0").mkdir(parents=True)
    from PIL import Image

    for i in range(8):
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "alice" / "0" / f"{i}.png")
    s = parse_settings({"dataset": "client-folders", "data-path": str(tmp_path)})
    with pytest.raises(DataError, match=r"client 'alice' .*two files") as err:
        registry.check_data_available(s)
    names(str(err.value), "alice.npz", "file name")

"""common.arrays.nonfinite_rows names each bad client row once, and takes zero rows."""

from __future__ import annotations

import numpy as np

from common.arrays import nonfinite_rows


def test_each_bad_row_is_named_by_its_first_bad_key():
    stacked = {
        "a": np.array([[1.0, np.nan], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32),
        "b": np.array([[np.inf], [0.0], [-np.inf]], dtype=np.float32),
    }
    assert nonfinite_rows(stacked, 3) == {0: "a", 2: "b"}


def test_zero_rows_have_nothing_to_report():
    stacked = {"a": np.zeros((0, 4), dtype=np.float32), "b": np.zeros((0,), dtype=np.float32)}
    assert nonfinite_rows(stacked, 0) == {}

"""read_digits reads scikit-learn's bundled file itself: the same arrays as load_digits."""

from __future__ import annotations

import numpy as np
import pytest

from common.data import readers
from common.data.types import DataError


def test_same_arrays_as_load_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    ours, theirs = readers.read_digits(), datasets.load_digits()
    np.testing.assert_array_equal(ours.x, (theirs.images / 16.0).astype(np.float32)[:, None])
    np.testing.assert_array_equal(ours.y, theirs.target)
    assert ours.x.dtype == np.float32 and ours.y.dtype == np.int64


def test_without_scikit_learn_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        readers.read_digits()

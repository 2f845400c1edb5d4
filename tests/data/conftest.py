"""The real datasets each test needs, below ``data_dir`` (see ``tests/conftest.py``).

A test whose files are absent is skipped with the path it looked at.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _require(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"real data not found at '{path}' (set FEDMETA_DATA_DIR)")
    return path


@pytest.fixture
def fashion_mnist_dir(data_dir: Path) -> Path:
    return _require(data_dir, "fashion-mnist")


@pytest.fixture
def femnist_npz(data_dir: Path) -> Path:
    return _require(data_dir, "femnist/femnist105.npz")


@pytest.fixture
def femnist_leaf(data_dir: Path) -> Path:
    return _require(data_dir, "femnist/leaf")


@pytest.fixture
def omniglot_dir(data_dir: Path) -> Path:
    return _require(data_dir, "omniglot")

"""Where the real datasets are for tests: $FEDMETA_DATA_DIR, else ../shared/data.

Only tests know this location; the project itself always takes a data path. A test whose
files are absent is skipped with the path it looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    override = os.environ.get("FEDMETA_DATA_DIR")
    return Path(override) if override else PROJECT_ROOT.parent / "shared" / "data"


def _require(relative: str) -> Path:
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"real data not found at '{path}' (set FEDMETA_DATA_DIR)")
    return path


@pytest.fixture
def fashion_mnist_dir() -> Path:
    return _require("fashion-mnist")


@pytest.fixture
def femnist_npz() -> Path:
    return _require("femnist/femnist105.npz")


@pytest.fixture
def femnist_leaf() -> Path:
    return _require("femnist/leaf")


@pytest.fixture
def omniglot_dir() -> Path:
    return _require("omniglot")

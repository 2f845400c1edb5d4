"""Shared fixtures. Real datasets are read from ``$FEDMETA_DATA_DIR`` or, by default, the
``shared/data`` folder beside the project checkout (never from inside the project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("FEDMETA_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared datasets not found at {d} (set FEDMETA_DATA_DIR)")
    return d

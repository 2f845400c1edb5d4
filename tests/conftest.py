"""Shared fixtures. Real datasets are read from ``$FEDMETA_DATA_DIR`` or, by default, the
``shared/data`` folder beside the project checkout (never from inside the project).
Tests marked ``cuda`` are skipped where no CUDA device is visible."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("FEDMETA_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared datasets not found at {d} (set FEDMETA_DATA_DIR)")
    return d


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run where a CUDA device is visible and are skipped elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def private_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's Simulation Engine runs on a private Ray (issue 20).

    Ray's ``init()`` joins the cluster named by ``RAY_ADDRESS``, else the one ``ray start``
    last recorded on this machine; a user's live (or dead) cluster must never capture the
    suite. Tests of the cluster path set their own address.
    """
    monkeypatch.setenv("RAY_ADDRESS", "local")

"""A ClientApp on sinusoid, synthetic, digits (Dirichlet), IDX or FEMNIST data imports none of
pandas, matplotlib, HuggingFace datasets, flwr_datasets, pyarrow, scikit-learn or SciPy; the
pathological split, which is Flower's and needs them, does (so the probe can see them)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from deploy.measure.clientapp_cost import HEAVY_MODULES, probe, probe_in_turn


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Fashion-MNIST-shaped IDX folder: 300 training and 100 test images."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 100)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.fixture(scope="module")
def femnist_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FEMNIST npz: 3 writers with 40 characters each, a quarter of them test."""
    path = tmp_path_factory.mktemp("femnist") / "femnist.npz"
    rng, n = np.random.default_rng(1), 120
    np.savez(
        path, x=rng.integers(0, 255, (n, 28, 28)).astype(np.uint8), y=np.arange(n) % 62,
        writer=np.repeat(["w0", "w1", "w2"], n // 3),
        split=np.where(np.arange(n) % 4 == 0, "test", "train"),
    )  # fmt: skip
    return path


def test_light_datasets_import_nothing_heavy(idx_folder: Path, femnist_npz: Path):
    configs = {
        "sinusoid": {"dataset": "sinusoid"},
        "synthetic": {"dataset": "synthetic"},
        "digits, dirichlet": {"dataset": "digits", "partition": "dirichlet"},
        "IDX": {"dataset": "fashion-mnist", "partition": "dirichlet", "data-path": str(idx_folder)},
        "femnist": {"dataset": "femnist", "partition": "natural", "data-path": str(femnist_npz)},
    }
    results = probe_in_turn(list(configs.values()))  # one interpreter, one after the other
    for name, result in zip(configs, results, strict=True):
        assert result["num-train"] > 0, name
        assert result["heavy-modules"] == [], f"loading {name} imported {result['heavy-modules']}"


def test_the_probe_sees_what_the_pathological_split_imports():
    result = probe({"dataset": "digits", "partition": "pathological"})
    assert {"datasets", "flwr_datasets"} <= set(result["heavy-modules"]) <= set(HEAVY_MODULES)

"""Readers: official formats parsed exactly, one pixel convention, errors that name paths."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.data import readers
from common.data.types import DataError


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file as the MNIST page defines it: 0, 0, type 0x08 (ubyte), ndim, sizes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_idx_folder(folder: Path, n_train: int = 6, n_test: int = 2) -> np.ndarray:
    """Four tiny 4x3 MNIST-style files; returns the pooled uint8 images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train + n_test, 4, 3), dtype=np.uint8)
    labels = np.arange(n_train + n_test, dtype=np.uint8) % 10
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:n_train], compress=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:n_train], compress=True)
    write_idx(folder / "t10k-images-idx3-ubyte", images[n_train:])  # plain files work too
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[n_train:])
    return images


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    # The reader sniffs gzip from the content, so the name need not say ".gz".
    read = readers.read_idx(write_idx(tmp_path / "images", array, compress))
    assert read.dtype == np.uint8 and np.array_equal(read, array)


def test_idx_with_bad_magic_or_truncated_data_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        readers.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(write_idx(tmp_path / "ok", np.zeros((5, 2), np.uint8)).read_bytes()[:-3])
    with pytest.raises(DataError, match="asks for 10"):
        readers.read_idx(short)


def test_mnist_folder_pools_train_and_test_ink_high(tmp_path: Path) -> None:
    images = write_idx_folder(tmp_path)
    data = readers.read_mnist_folder(tmp_path)
    assert data.x.shape == (8, 1, 4, 3) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x[:, 0], images / 255.0, rtol=1e-6)
    assert data.y.dtype == np.int64 and data.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert data.is_test is not None and data.is_test.tolist() == [False] * 6 + [True] * 2


def test_missing_idx_folder_or_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere") as err:
        readers.read_mnist_folder(tmp_path / "nowhere", "fashion-mnist")
    assert "zalandoresearch/fashion-mnist" in str(err.value)
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        readers.read_mnist_folder(tmp_path)


def test_idx_reader_catches_mismatched_counts(tmp_path: Path) -> None:
    write_idx_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="test files"):
        readers.read_mnist_folder(tmp_path)


def test_real_fashion_mnist(fashion_mnist_dir: Path) -> None:
    data = readers.read_mnist_folder(fashion_mnist_dir, "fashion-mnist")
    assert data.x.shape == (70_000, 1, 28, 28) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.x.mean() < 0.5  # background is 0
    assert np.bincount(data.y).tolist() == [7_000] * 10
    assert data.is_test is not None and int(data.is_test.sum()) == 10_000


def test_femnist_npz_is_ink_high_with_writers_and_splits(femnist_npz: Path) -> None:
    data = readers.read_femnist(femnist_npz)
    assert data.x.shape == (16_393, 1, 28, 28) and data.x.dtype == np.float32
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert np.median(data.x) == 0.0  # most pixels are background
    assert data.y.dtype == np.int64 and data.y.min() >= 0 and data.y.max() <= 61
    assert data.writer is not None and len(np.unique(data.writer)) == 105
    assert data.is_test is not None and int(data.is_test.sum()) == 1_685


def test_leaf_json_and_npz_give_the_same_writer_identically(
    femnist_npz: Path, femnist_leaf: Path
) -> None:
    leaf, npz = readers.read_femnist(femnist_leaf), readers.read_femnist(femnist_npz)
    assert leaf.writer is not None and npz.writer is not None
    assert leaf.is_test is not None and npz.is_test is not None
    shared = sorted(set(leaf.writer) & set(npz.writer))
    assert shared, "the LEAF shard's writers should be in the npz subset"
    for writer in shared:
        for test in (False, True):
            in_leaf = (leaf.writer == writer) & (leaf.is_test == test)
            in_npz = (npz.writer == writer) & (npz.is_test == test)
            assert np.array_equal(leaf.y[in_leaf], npz.y[in_npz])
            np.testing.assert_allclose(leaf.x[in_leaf], npz.x[in_npz], atol=1e-6)


def test_femnist_missing_or_malformed_path_says_what_to_get(tmp_path: Path) -> None:
    missing = tmp_path / "femnist.npz"
    with pytest.raises(DataError, match="preprocess.sh") as err:
        readers.read_femnist(missing)
    assert str(missing) in str(err.value)
    (tmp_path / "train").mkdir()  # a folder without test/ is not LEAF's layout
    with pytest.raises(DataError, match="neither an npz file nor a LEAF folder"):
        readers.read_femnist(tmp_path)
    missing.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable"):
        readers.read_femnist(missing)


def test_omniglot_npz_is_ink_high_and_downsampled(omniglot_dir: Path) -> None:
    images = readers.read_omniglot(omniglot_dir / "images_evaluation.npz", size=28)
    assert images.shape == (659, 20, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert 0.02 < images.mean() < 0.2  # strokes are a small part of each drawing


def test_omniglot_pngs_match_the_npz_rows(omniglot_dir: Path, tmp_path: Path) -> None:
    # Two characters of the official PNG layout, unzipped: <alphabet>/character<NN>/.
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as archive:
        names = [n for n in archive.namelist() if "/Latin/character0" in n and "png" in n]
        names = [n for n in names if "/character01/" in n or "/character02/" in n]
        archive.extractall(tmp_path, members=names)
    ids = sorted({int(Path(n).stem.split("_")[0]) for n in names})
    pngs = readers.read_omniglot(tmp_path, size=None)
    full = np.load(omniglot_dir / "images_background.npz")["images"]
    expected = (~full[np.array(ids) - 1]).astype(np.float32)  # row = official id - 1
    assert pngs.shape == (2, 20, 105, 105) and np.array_equal(pngs, expected)


def test_omniglot_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="brendenlake/omniglot") as err:
        readers.read_omniglot(tmp_path / "images_background.npz")
    assert str(tmp_path) in str(err.value)


def test_digits_are_8x8_in_unit_range() -> None:
    data = readers.read_digits()
    assert data.x.shape == (1_797, 1, 8, 8) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert sorted(set(data.y.tolist())) == list(range(10))
